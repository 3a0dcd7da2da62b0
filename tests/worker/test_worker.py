"""The worker actor's body, run in process: training, what leaves, private checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab.spec import spec_from_dict, spec_to_dict
from fedcollab.worker.messages import RoundConfig, WorkerConfig

pytestmark = pytest.mark.slow


def _spec(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "inproc", "seed": 0, "rounds": 2,
        "participants": [
            {"name": "community", "count": 2},
            {"name": "vendor", "role": "vendor", "count": 1, "data_fraction": 0.3,
             "private_layers": ["head"]},
            {"name": "flip", "count": 1, "behaviour": "sign_flip", "attack_scale": 2.0},
        ]}
    data.update(changes)
    return spec_from_dict(data)


@pytest.fixture(scope="module")
def worker_and_weights(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from fedcollab.job.run import _Driver
    from fedcollab.worker.worker import ParticipantWorker

    spec = _spec()
    out = tmp_path_factory.mktemp("worker")
    worker = ParticipantWorker(WorkerConfig(spec_to_dict(spec), (0, 1, 2, 3), str(out), 0))
    return spec, out, worker, _Driver.build(spec).weights


def test_worker_open_participants_send_updates_over_shared_arrays(worker_and_weights: Any) -> None:
    spec, _, worker, weights = worker_and_weights
    out = worker.train_round(weights, 1, [0, 1, 2, 3], RoundConfig())
    by_pid = {u.pid: u for u in out.updates}
    assert sorted(by_pid) == [0, 1, 2, 3] and not out.masked
    head = [i for i, d in enumerate(by_pid[2].delta) if d is None]
    assert head == [len(weights) - 2, len(weights) - 1]       # the vendor's head stays home
    assert all(d is not None for d in by_pid[0].delta)
    assert all(d.dtype == np.float32 for d in by_pid[0].delta if d is not None)


def test_worker_same_round_same_seed_trains_identically(worker_and_weights: Any) -> None:
    _, _, worker, weights = worker_and_weights
    a = worker.train_round(weights, 5, [0], RoundConfig()).updates[0]
    b = worker.train_round(weights, 5, [0], RoundConfig()).updates[0]
    assert all(np.array_equal(x, y) for x, y in zip(a.delta, b.delta))


def test_worker_attacker_sends_its_attack(worker_and_weights: Any) -> None:
    _, _, worker, weights = worker_and_weights
    flip = worker.train_round(weights, 2, [3], RoundConfig()).updates[0]
    assert flip.norm > 0
    total = np.sqrt(sum(float(np.sum(np.square(d))) for d in flip.delta if d is not None))
    assert total == pytest.approx(2.0 * flip.norm, rel=1e-5)   # -2 x its honest update


def test_worker_private_layers_reload_from_the_committed_round(worker_and_weights: Any) -> None:
    from fedcollab.worker.worker import ParticipantWorker

    spec, out, worker, weights = worker_and_weights
    worker.train_round(weights, 3, [2], RoundConfig())
    assert worker.save_private(3, keep_from=3) == 1
    saved = [np.array(w) for w in worker.participants[2].private]
    worker.train_round(weights, 4, [2], RoundConfig())           # moves on after the save
    again = ParticipantWorker(WorkerConfig(spec_to_dict(spec), (2,), str(out), 0,
                                           resume_round=3))
    for a, b in zip(again.participants[2].private, saved):
        np.testing.assert_array_equal(a, b)
    assert (Path(out) / "checkpoints" / "private" / "participant-00002-round-00003.npz").exists()


def test_worker_lost_before_it_saved_the_committed_round_reloads_its_last_save(
        worker_and_weights: Any) -> None:
    """A worker lost before it saved the committed round (its peers did) heals from
    the last round its participant did save, not from the initial private layers."""
    from fedcollab.worker.worker import ParticipantWorker

    spec, out, worker, weights = worker_and_weights
    worker.train_round(weights, 6, [2], RoundConfig())
    assert worker.save_private(6, keep_from=6) == 1
    saved = [np.array(w) for w in worker.participants[2].private]
    again = ParticipantWorker(WorkerConfig(spec_to_dict(spec), (2,), str(out), 0,
                                           resume_round=7))  # round 7: never saved
    loaded = again.participants[2].private
    assert loaded is not None and len(loaded) == len(saved) == 2  # not the initial head
    for a, b in zip(loaded, saved):
        np.testing.assert_array_equal(a, b)


def test_worker_leaves_no_autograph_files_once_loaded(tmp_path: Path) -> None:
    """A worker killed at the end of a job never runs AutoGraph's exit handler: the
    converted functions' source files are removed once the graphs are traced, and
    training still runs (the imported code does not need them). A model with a layer
    of the user's own is traced through AutoGraph (Keras' own layers are not)."""
    import sys

    from fedcollab.worker.worker import ParticipantWorker

    spec = _spec(task={"dataset": "digits", "model": "tests.user_models:custom_layer"})
    worker = ParticipantWorker(WorkerConfig(spec_to_dict(spec), (0, 1), str(tmp_path), 0))
    generated = {name: getattr(m, "__file__", None) for name, m in sys.modules.items()
                 if name.startswith("__autograph_generated_file")}
    assert generated  # the training graph was converted, so there were files
    assert [f for f in generated.values() if f and Path(f).exists()] == []
    weights = worker.initial_weights
    assert sorted(u.pid for u in worker.train_round(weights, 1, [0, 1]).updates) == [0, 1]
    assert worker.evaluate(weights)[1] >= 0


def _secure_round_sum(worker: Any, weights: Any, pids: list[int], spec: Any) -> np.ndarray:
    """One SecAgg+ round of ``pids`` through ``worker``, the server driven in process."""
    from fedcollab.secure.graph import graph_seed_for
    from fedcollab.secure.layout import secure_dim
    from fedcollab.secure.params import SecAggParams
    from fedcollab.secure.server import SecureServer

    params = SecAggParams.from_spec(spec)
    server = SecureServer(pids, params, rng_seed=0)
    registry = worker.secure_identities(pids) if params.malicious else {}
    assert worker.secure_setup(pids, graph_seed_for(0), b"job", registry) == []
    dim = secure_dim([w.shape for w in weights], clip_bit=False)
    need = server.begin_round(1, pids, dim=dim)
    rosters = server.receive_advertisements(
        worker.secure_stage("advertise", 1, {p: b"" for p in need}))
    inbox = server.receive_key_shares(worker.secure_stage("share_keys", 1, rosters))
    out = worker.train_round(weights, 1, pids, RoundConfig(weight_scale=100.0), inbox)
    assert not out.updates and sorted(out.masked) == pids and not out.failed
    requests = server.receive_masked_inputs(out.masked)
    result = server.receive_unmask_responses(worker.secure_stage("unmask", 1, requests))
    return np.asarray(result.integer_sum)


def test_worker_masks_a_batch_of_trainings_as_it_masks_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secure updates are masked after a batch of trainings (the masking evicted
    TensorFlow from the caches between participants); holding none back, every
    update masked as soon as it is trained, the unmasked sum is the same."""
    import fedcollab.worker.worker as participants
    from fedcollab.job.run import _Driver

    spec = _spec(participants=[{"name": "c", "count": 5, "sharing": "secure"}],
                 secure={"protocol": "secaggplus", "server": "honest_but_curious"})
    weights = _Driver.build(spec).weights
    pids = [0, 1, 2, 3, 4]
    sums = []
    for held in (participants._HELD_BYTES, -1):  # -1: none held back
        monkeypatch.setattr(participants, "_HELD_BYTES", held)
        worker = participants.ParticipantWorker(
            WorkerConfig(spec_to_dict(spec), tuple(pids), str(tmp_path / str(held)), 0))
        sums.append(_secure_round_sum(worker, weights, pids, spec))
    np.testing.assert_array_equal(sums[0], sums[1])
    assert np.count_nonzero(sums[0])


def test_worker_pins_the_group_setup_once(worker_and_weights: Any) -> None:
    """Issue 27, finding 4: the setup channel (its own method, not secure_stage) pins the
    group; a second install that differs is refused, the same one is a no-op, and the
    round-message method no longer installs anything."""
    from fedcollab.secure.errors import RegistryPinnedError

    _, _, worker, _ = worker_and_weights
    assert worker.secure_setup([0, 1, 2], b"seed", b"job", {}) == []
    assert worker.secure_setup([0, 1, 2], b"seed", b"job", {}) == []
    for members, seed, job in (([0, 1, 2, 3], b"seed", b"job"), ([0, 1], b"seed", b"job"),
                               ([0, 1, 2], b"other", b"job"), ([0, 1, 2], b"seed", b"other")):
        with pytest.raises(RegistryPinnedError):
            worker.secure_setup(members, seed, job, {})
    import inspect

    assert "registry" not in inspect.signature(worker.secure_stage).parameters


def test_workers_bind_one_model_hash_per_round_over_the_arrays_every_member_receives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #31: the secure shares' associated data binds the round's model hash, which
    each worker computes once per round (not per participant) from the weights it got,
    over the arrays no group keeps private: two workers agree (their members open each
    other's shares and the sum unmasks), and for a vendor it is exactly the hash of the
    inbound weights its gateway checks (``silo.terms.shared_sha256``)."""
    import fedcollab.secure.model as model_module
    from fedcollab.job.run import _Driver
    from fedcollab.secure.graph import graph_seed_for
    from fedcollab.secure.layout import secure_dim
    from fedcollab.secure.params import SecAggParams
    from fedcollab.secure.server import SecureServer
    from fedcollab.silo.terms import shared_sha256
    from fedcollab.worker.worker import ParticipantWorker

    spec = _spec(participants=[
        {"name": "c", "count": 3, "sharing": "secure"},
        {"name": "v", "role": "vendor", "count": 3, "sharing": "secure",
         "private_layers": ["head"]}],
        secure={"protocol": "secaggplus", "server": "honest_but_curious"})
    weights = _Driver.build(spec).weights
    pids = [0, 1, 2, 3, 4, 5]
    hosted = {0: [0, 1, 2], 1: [3, 4, 5]}  # community on one worker, vendor on another
    workers = {w: ParticipantWorker(WorkerConfig(spec_to_dict(spec), tuple(mine),
                                                 str(tmp_path / str(w)), w))
               for w, mine in hosted.items()}
    calls = []
    original = model_module.model_sha256
    monkeypatch.setattr(model_module, "model_sha256",
                        lambda arrays: calls.append(1) or original(arrays))
    server = SecureServer(pids, SecAggParams.from_spec(spec), rng_seed=0)
    for worker in workers.values():
        assert worker.secure_setup(pids, graph_seed_for(0), b"job", {}) == []

    def stage(name: str, messages: dict[int, bytes]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for w, mine in hosted.items():
            got = workers[w].secure_stage(name, 1, {p: m for p, m in messages.items()
                                                     if p in mine})
            out.update({p: r for p, r in got.items() if isinstance(r, bytes)})
        return out

    need = server.begin_round(1, pids, dim=secure_dim([w.shape for w in weights],
                                                      clip_bit=False))
    inbox = server.receive_key_shares(stage("share_keys", server.receive_advertisements(
        stage("advertise", {p: b"" for p in need}))))
    masked: dict[int, bytes] = {}
    for w, mine in hosted.items():
        out = workers[w].train_round(weights, 1, mine, RoundConfig(weight_scale=100.0),
                                     {p: inbox[p] for p in mine})
        assert sorted(out.masked) == mine and not out.failed
        masked.update(out.masked)
    result = server.receive_unmask_responses(stage("unmask", server.receive_masked_inputs(masked)))
    assert sorted(result.survivors) == pids and np.count_nonzero(result.integer_sum)
    assert len(calls) == 2  # once per worker and round, not once per participant
    layers = workers[1].model_info().layers
    inbound = [(layers[i], w) for i, w in enumerate(weights) if layers[i] != "head"]
    assert len(inbound) == len(weights) - 2
    expected = bytes.fromhex(shared_sha256(inbound))
    assert {workers[w]._secure[p]._round_model for w, mine in hosted.items()
            for p in mine} == {(1, expected)}
