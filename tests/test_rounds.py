"""The round loop with a fake pool: one round on one screen, no Ray, no TensorFlow."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest

from fedcollab.aggregation import Aggregator
from fedcollab.outgoing import RoundConfig
from fedcollab.outputs import CallbackList, RoundCallback
from fedcollab.pool import RoundOutput
from fedcollab.privacy.server import DpServer
from fedcollab.roster import roster
from fedcollab.rounds import RoundLoop, RoundRecord
from fedcollab.spec import spec_from_dict
from fedcollab.types import Update

SHAPES = [(2,), (1, 2)]


def _spec(**changes: Any) -> Any:
    data: dict[str, Any] = {"name": "fake", "rounds": 3,
                            "participants": [{"name": "c", "count": 4}]}
    data.update(changes)
    return spec_from_dict(data)


class FakePool:
    """Stands in for WorkerPool: each participant sends a constant update."""

    def __init__(self, values: dict[int, float], *, dropped: Optional[list[int]] = None) -> None:
        self.values = values
        self.dropped = dropped or []
        self.suspect: set[int] = set()
        self.healed = 0
        self.configs: list[RoundConfig] = []

    def train(self, weights: Any, round_id: int, chosen: Any, config: RoundConfig,
              inbox: Any) -> RoundOutput:
        self.configs.append(config)
        updates = [Update(p, [np.full(s, self.values[p], np.float32) for s in SHAPES], 10, 0.5)
                   for p in chosen if p not in self.dropped]
        return RoundOutput(updates, {}, {}, dropped=list(self.dropped))

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
    return RoundLoop(spec, roster(spec), pool=pool,  # type: ignore[arg-type]
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


def test_run_round_all_updates_rejected_leaves_model_and_says_so() -> None:
    spec = _spec(aggregation={"norm_bound": 0.1})
    loop = _loop(spec, FakePool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}), Recorder())

    record = loop.run_round(1)

    assert record.accepted == 0 and not record.changed_model
    assert set(record.rejected) == {"0", "1", "2", "3"}
    assert all(r.startswith("norm:") for r in record.rejected.values())
    assert all(np.all(w == 0) for w in loop.weights)


def test_run_round_too_few_updates_for_krum_is_a_skipped_round() -> None:
    spec = _spec(aggregation={"rule": "krum", "krum_f": 1})
    loop = _loop(spec, FakePool({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0}, dropped=[2, 3]), Recorder())

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
