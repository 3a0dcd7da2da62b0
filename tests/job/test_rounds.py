"""The round loop with a fake pool: one round on one screen, no Ray, no TensorFlow."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest

from fedcollab.aggregation import Aggregator
from fedcollab.job.callbacks import CallbackList, RoundCallback
from fedcollab.job.records import RoundRecord
from fedcollab.job.rounds import RoundLoop
from fedcollab.privacy.server import DpServer
from fedcollab.spec import spec_from_dict
from fedcollab.spec.roster import roster
from fedcollab.types import Update
from fedcollab.worker.inprocess import InProcessPool
from fedcollab.worker.messages import Attendance, RoundConfig, RoundOutput, TrainCalls

SHAPES = [(2,), (1, 2)]


def _spec(**changes: Any) -> Any:
    data: dict[str, Any] = {"name": "fake", "rounds": 3,
                            "participants": [{"name": "c", "count": 4}]}
    data.update(changes)
    return spec_from_dict(data)


class FakePool(InProcessPool):
    """The in-process pool with its training replaced: each participant sends a
    constant update (no TensorFlow, no worker)."""

    def __init__(self, values: dict[int, float], *, dropped: Optional[list[int]] = None) -> None:
        self.values = values
        self.dropped = dropped or []
        self.suspect: set[int] = set()
        self.healed = 0
        self.configs: list[RoundConfig] = []
        self.private_pids: list[int] = []
        self.placement = [{"node_id": "fake", "device": "cpu"}]
        self.replaced = 0
        self.committed = 0

    @property
    def needs_heal(self) -> bool:
        return bool(self.suspect)

    def _start_training(self, weights: Any, round_id: int, chosen: Any, config: RoundConfig,
                        inbox: Any) -> TrainCalls:
        self.configs.append(config)
        updates = [Update(p, [np.full(s, self.values[p], np.float32) for s in SHAPES], 10, 0.5)
                   for p in chosen if p not in self.dropped]
        return TrainCalls(round_id, [(0, list(chosen),
                                      RoundOutput(updates, {}, {}, dropped=list(self.dropped)))])

    def heal(self) -> list[int]:
        self.healed += 1
        self.suspect.clear()
        return [0]

    def evaluate_personalised(self, weights: Any, *, classification: bool = True) -> dict:
        return {}

    def where(self, out: RoundOutput) -> dict:
        return {"workers": {"0": {"node_id": "fake", "device": "cpu"}}}


class Recorder(RoundCallback):
    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def on_round_end(self, record: RoundRecord) -> None:
        self.records.append(record)


def _loop(spec: Any, pool: FakePool, recorder: Recorder) -> RoundLoop:
    weights = [np.zeros(s, np.float32) for s in SHAPES]
    return RoundLoop(spec, roster(spec), pool=pool,
                     aggregator=Aggregator.from_spec(spec, SHAPES, max_samples=10),
                     dp=DpServer(spec.privacy.dp, sampling_rate=1.0, rounds=spec.rounds),
                     evaluate=lambda w: (float(np.sum(w[0])), 0.5), weights=weights,
                     weight_scale=10.0, classification=True,
                     callbacks=CallbackList([recorder]))


def test_run_round_averages_updates_and_tells_callbacks() -> None:
    spec, recorder = _spec(), Recorder()
    loop = _loop(spec, FakePool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}), recorder)

    record = loop.run_round(1)

    np.testing.assert_allclose(loop.weights[0], [3.0, 3.0])
    assert recorder.records == [record]
    assert record.accepted == 4 and record.trained == 4 and record.changed_model
    assert sorted(record.update_sha256) == ["0", "1", "2", "3"]
    assert record.bytes_up == 4 * (2 * 4 + 2 * 4 + 16) and record.loss == 6.0
    assert loop.bytes_up == record.bytes_up


class DecliningPool(FakePool):
    """Participants 2 and 3 are a remote party that declines round 1 (as a vendor whose
    state refuses the round's start after a restart)."""

    def __init__(self, values: dict[int, float]) -> None:
        super().__init__(values)
        self.trained: list[list[int]] = []

    def begin_round(self, round_id: int, weights: Any, chosen: Any,
                    config: RoundConfig) -> Optional[Attendance]:
        if round_id == 1:
            return Attendance(absent={2: "declined", 3: "declined"})
        return None

    def _start_training(self, weights: Any, round_id: int, chosen: Any, config: RoundConfig,
                        inbox: Any) -> TrainCalls:
        self.trained.append(list(chosen))
        return super()._start_training(weights, round_id, chosen, config, inbox)


def test_run_round_a_declined_round_goes_on_without_the_absent_as_dropped() -> None:
    spec, recorder = _spec(), Recorder()
    pool = DecliningPool({0: 1.0, 1: 3.0, 2: 100.0, 3: 100.0})
    loop = _loop(spec, pool, recorder)

    first = loop.run_round(1)
    after_first = np.array(loop.weights[0])
    second = loop.run_round(2)

    assert pool.trained[0] == [0, 1] and first.dropped == (2, 3)
    assert first.changed_model and first.participants == 4 and first.aborted is None
    np.testing.assert_allclose(after_first, [2.0, 2.0])  # the mean of 0's and 1's alone
    assert pool.trained[1] == [0, 1, 2, 3] and second.dropped == ()
    np.testing.assert_allclose(loop.weights[0], [53.0, 53.0])


def test_run_round_all_updates_rejected_leaves_model_and_says_so() -> None:
    spec = _spec(aggregation={"norm_bound": 0.1})
    loop = _loop(spec, FakePool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}), Recorder())

    record = loop.run_round(1)

    assert record.accepted == 0 and not record.changed_model
    assert set(record.rejected) == {"0", "1", "2", "3"}
    assert all(r.startswith("norm:") for r in record.rejected.values())
    assert all(np.all(w == 0) for w in loop.weights)


def test_run_round_too_few_updates_for_krum_is_a_skipped_round() -> None:
    spec = _spec(aggregation={"rule": "krum", "krum_f": 1},
                 participants=[{"name": "c", "count": 5}])
    loop = _loop(spec, FakePool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0, 4: 1.0}, dropped=[2, 3]),
                 Recorder())

    record = loop.run_round(1)

    assert record.skipped and "krum" in record.skipped and record.dropped == (2, 3)
    assert "skipped" in record.to_json()
    assert all(np.all(w == 0) for w in loop.weights)


def test_run_round_heals_suspect_workers_first_and_records_it() -> None:
    spec, pool = _spec(), FakePool({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})
    pool.suspect.add(0)
    loop = _loop(spec, pool, Recorder())

    record = loop.run_round(1)

    assert pool.healed == 1 and record.workers_replaced == (0,)
    assert record.to_json()["workers_replaced"] == [0]


def test_round_config_carries_dp_settings_under_dp() -> None:
    spec = _spec(privacy={"dp": {"mode": "local", "noise_multiplier": 1.0, "clip_norm": 0.5}})
    pool = FakePool({0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0})
    loop = _loop(spec, pool, Recorder())

    record = loop.run_round(1)

    assert pool.configs[0].dp_mode == "local" and pool.configs[0].clip_norm == 0.5
    assert pool.configs[0].weight_scale == 1.0
    assert record.privacy is not None and record.privacy["epsilon"] > 0


def test_a_dp_round_that_samples_nobody_is_skipped_and_accounted() -> None:
    spec = _spec(fraction=0.25, participants=[{"name": "c", "count": 4}],
                 privacy={"dp": {"mode": "central", "noise_multiplier": 1.0}})
    pool = FakePool({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})
    loop = _loop(spec, pool, Recorder())
    loop.sampler.sample = lambda r: []  # type: ignore[method-assign]  # P = 0.75^4

    record = loop.run_round(1)

    assert record.skipped == "nobody sampled" and record.participants == 0
    assert pool.configs == []  # nobody trained
    assert record.privacy is not None and record.privacy["epsilon"] > 0
    assert loop.dp.ledger.rounds == 1


def test_round_record_json_round_trips() -> None:
    record = RoundRecord(round=3, participants=5, loss=0.25, accuracy=0.9, trained=5,
                         accepted=5, dropped=(1,), rejected={"2": "norm: too big"},
                         bytes_up=10, bytes_down=20, seconds=0.1, train_seconds=0.05,
                         update_sha256={"0": "ab"}, privacy={"epsilon": 1.5, "delta": 1e-5},
                         vendor={"vendor_accuracy": 0.8})
    line = record.to_json()
    assert line["epsilon"] == 1.5 and line["vendor_accuracy"] == 0.8
    assert RoundRecord.from_json(line) == record


def test_snapshot_and_restore_continue_exactly() -> None:
    spec = _spec(aggregation={"server_optimizer": "fedadam"})
    first = _loop(spec, FakePool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}), Recorder())
    first.run_round(1)
    arrays, meta = first.snapshot()
    second = _loop(spec, FakePool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}), Recorder())
    second.restore(arrays, meta)
    first.run_round(2)
    second.run_round(2)
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a, b)
    assert second.bytes_up == first.bytes_up


@pytest.mark.parametrize("bad", [float("nan"), 1e30, -3])
def test_claimed_sample_counts_are_validated(bad: float) -> None:
    agg = Aggregator(SHAPES, max_samples=100)
    update = Update(0, [np.ones(s, np.float32) for s in SHAPES], bad, 0.0)  # type: ignore[arg-type]
    step = agg.step([np.zeros(s, np.float32) for s in SHAPES], [update])
    assert step.rejected[0].startswith("samples:") and not step.applied


class PipelinedPool(FakePool):
    """A FakePool that logs when each round's training starts."""

    def __init__(self, values: dict[int, float], events: list[str]) -> None:
        super().__init__(values)
        self.events = events
        self.started: list[tuple[int, list[np.ndarray]]] = []

    def _start_training(self, weights: Any, round_id: int, chosen: Any, config: RoundConfig,
                        inbox: Any) -> TrainCalls:
        self.events.append(f"train {round_id}")
        self.started.append((round_id, [np.array(w) for w in weights]))
        return super()._start_training(weights, round_id, chosen, config, inbox)


class Order(Recorder):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def on_round_end(self, record: RoundRecord) -> None:
        super().on_round_end(record)
        self.events.append(f"logged {record.round}")


def test_the_next_round_trains_while_this_one_is_logged_with_the_same_result() -> None:
    """Round r+1 starts training from round r's weights before r's callbacks run
    (the evaluation's round trip and the logging no longer sit between rounds); the
    records are those of rounds run one after the other."""
    values = {0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}
    events: list[str] = []
    spec = _spec()
    pool = PipelinedPool(values, events)
    loop = _loop(spec, pool, Order(events))  # type: ignore[arg-type]
    records = [loop.run_round(r) for r in (1, 2, 3)]
    assert events == ["train 1", "train 2", "logged 1", "train 3", "logged 2", "logged 3"]
    # each round starts from the one before's result
    assert [w[0][0] for _, w in pool.started] == [0.0, pytest.approx(3.0), pytest.approx(6.0)]
    serial = _loop(spec, FakePool(values), Recorder())
    expected = [serial.run_round(r) for r in (1, 2, 3)]
    assert [(r.loss, r.accepted, dict(r.update_sha256)) for r in records] == \
        [(r.loss, r.accepted, dict(r.update_sha256)) for r in expected]
    np.testing.assert_array_equal(loop.weights[0], serial.weights[0])


@pytest.mark.parametrize("why", ["private layers", "a lost worker"])
def test_the_next_round_waits_when_this_ones_callbacks_must_come_first(why: str) -> None:
    events: list[str] = []
    pool = PipelinedPool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}, events)
    if why == "private layers":
        pool.private_pids = [3]  # the checkpoint saves them after the round they are from
    loop = _loop(_spec(), pool, Order(events))  # type: ignore[arg-type]
    if why == "a lost worker":
        original = pool._collect_training

        def lose_one(pending: Any) -> RoundOutput:
            pool.suspect.add(0)
            return original(pending)
        pool._collect_training = lose_one  # type: ignore[method-assign]
    for r in (1, 2):
        loop.run_round(r)
    assert events == ["train 1", "logged 1", "train 2", "logged 2"]


def test_a_round_started_ahead_keeps_its_one_poisson_draw() -> None:
    """Under DP a round's sample is one Poisson draw: an empty one drawn ahead is the
    round's (a second draw would change the sampling the accountant assumes)."""
    events: list[str] = []
    spec = _spec(fraction=0.5, privacy={"dp": {"mode": "central", "noise_multiplier": 1.0}})
    pool = PipelinedPool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}, events)
    loop = _loop(spec, pool, Order(events))  # type: ignore[arg-type]
    draws: list[int] = []

    def sample(r: int) -> list[int]:
        draws.append(r)
        return [] if r == 2 else [0, 1]
    loop.sampler.sample = sample  # type: ignore[method-assign]
    records = [loop.run_round(r) for r in (1, 2, 3)]
    assert draws == [1, 2, 3]
    assert records[1].skipped == "nobody sampled"
    assert events == ["train 1", "logged 1", "logged 2", "train 3", "logged 3"]


def test_a_secure_round_counts_the_noise_planned_for_its_whole_sample() -> None:
    """The round's config split the distributed noise over m = every sampled secure
    member; when some sit the round out after it left (a silo that declines), the
    SecureRound over those taking part still reports m as sampled, so the accountant
    charges the noise they took with them as a shortfall (survivors / m), not a
    smaller round with its full noise."""
    from fedcollab.job.secure import SecureRound
    from fedcollab.worker.messages import RoundConfig

    config = RoundConfig("distributed", 1.0, 1.0, 10)
    assert SecureRound(None, 1, list(range(6)), config, [(2,)]).sampled == 10
    assert SecureRound(None, 1, list(range(10)), config, [(2,)]).sampled == 10
    assert SecureRound(None, 1, [], config, [(2,)]).sampled == 0
    assert SecureRound(None, 1, [1, 2], RoundConfig(), [(2,)]).sampled == 2
