"""WorkerPool on a real local Ray: placement, one call per worker, a lost worker replaced."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedcollab.spec import spec_from_dict
from fedcollab.spec.roster import roster
from fedcollab.worker.messages import RoundConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec_data() -> dict[str, Any]:
    return {"name": "pool", "rounds": 2, "resources": {"workers": 2, "cpus_per_worker": 0.5},
            "participants": [{"name": "community", "count": 4},
                             {"name": "vendor", "role": "vendor", "count": 2,
                              "data_fraction": 0.3, "private_layers": ["head"]}]}


def _spec() -> Any:
    return spec_from_dict(_spec_data())


def _kill(ray: Any, actor: Any, *, timeout: float = 30.0) -> None:
    """Kill ``actor`` and return once it is dead. ``ray.kill`` only asks for it: a call
    made right after it could still reach the live actor and be answered."""
    import time

    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=timeout)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the actor still answers {timeout:g} s after ray.kill")


def test_pool_trains_hosts_and_replaces_a_dead_worker(ray_local: Any, tmp_path: Path) -> None:
    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.job.run import _Driver

    spec = _spec()
    weights = _Driver.build(spec).weights
    pool = WorkerPool(ray_local, spec, roster(spec), tmp_path)
    assert len(pool) == 2
    assert sorted(p for w in pool.placement for p in w["participants"]) == list(range(6))

    out = pool.train(weights, 1, [0, 1, 4], RoundConfig(), {})
    assert sorted(u.pid for u in out.updates) == [0, 1, 4] and not out.dropped

    pool.save_private(1)()
    victim = pool.owner[4]
    _kill(ray_local, pool.workers[victim])
    lost = pool.train(weights, 2, [0, 4], RoundConfig(), {})
    hosted_by_victim = {p for p in pool.hosted[victim]}
    assert set(lost.dropped) == {0, 4} & hosted_by_victim and pool.suspect == {victim}

    assert pool.heal() == [victim] and pool.replaced == 1 and not pool.suspect
    again = pool.train(weights, 2, [0, 4], RoundConfig(), {})
    assert sorted(u.pid for u in again.updates) == [0, 4] and not again.dropped
    assert pool.evaluate_personalised(weights)["vendor_accuracy"] >= 0
    pool.shutdown()


def test_pool_losing_the_private_layer_worker_heals_instead_of_raising(
        ray_local: Any, tmp_path: Path) -> None:
    """The vendor's private-layer worker lost between training and the round's
    private save or personalised evaluation: marked for heal like any lost worker."""
    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.job.run import _Driver

    spec = _spec()
    weights = _Driver.build(spec).weights
    pool = WorkerPool(ray_local, spec, roster(spec), tmp_path)
    pool.train(weights, 1, [0, 4, 5], RoundConfig(), {})
    victim = pool.owner[4]
    _kill(ray_local, pool.workers[victim])

    pool.save_private(1)()
    evaluated = pool.evaluate_personalised(weights)

    assert pool.suspect == {victim}
    assert evaluated == {} or set(evaluated) >= {"vendor_accuracy"}
    assert pool.heal() == [victim]
    again = pool.train(weights, 2, [4, 5], RoundConfig(), {})
    assert sorted(u.pid for u in again.updates) == [4, 5]
    assert pool.evaluate_personalised(weights)["vendor_accuracy"] >= 0
    pool.shutdown()


def test_pool_configures_spare_workers_instead_of_starting_new_ones(ray_local: Any,
                                                                    tmp_path: Path) -> None:
    """A warm service's spares (TensorFlow already imported) become the job's workers;
    a spare the job does not need is killed; the job trains as with fresh workers."""
    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.cluster.reuse import start_spares
    from fedcollab.job.run import _Driver

    spec = _spec()
    spares = start_spares(ray_local, 3)
    ray_local.get([s.__ray_ready__.remote() for s in spares])  # TensorFlow imported
    pool = WorkerPool(ray_local, spec, roster(spec), tmp_path, spares=spares, wait=False)
    pool.wait_ready()
    assert pool.workers == spares[:2]
    assert sorted(p for w in pool.placement for p in w["participants"]) == list(range(6))
    with pytest.raises(ray_local.exceptions.RayActorError):
        ray_local.get(spares[2].__ray_ready__.remote(), timeout=30)  # the leftover was killed

    weights = _Driver.build(spec).weights
    fresh = WorkerPool(ray_local, spec, roster(spec), tmp_path / "fresh")
    a = pool.train(weights, 1, [0, 1, 4], RoundConfig(), {})
    b = fresh.train(weights, 1, [0, 1, 4], RoundConfig(), {})
    for x, y in zip(sorted(a.updates, key=lambda u: u.pid), sorted(b.updates, key=lambda u: u.pid)):
        assert all((p is None and q is None) or (p == q).all() for p, q in zip(x.delta, y.delta))
    with pytest.raises(ray_local.exceptions.RayTaskError, match="already configured"):
        ray_local.get(pool.workers[0].configure.remote(pool._config(0)))
    pool.shutdown()
    fresh.shutdown()


def test_a_pool_takes_parked_workers_replaces_dead_ones_and_kills_misfits(
        ray_local: Any, tmp_path: Path) -> None:
    """Inside worker_reuse (ray_local's), a finished pool's workers wait for the next
    pool: one of the same shape configures them (one that died meanwhile is replaced
    by a new worker); one of another shape kills them first, so their CPUs are free
    for its own workers (here it needs both CPUs of this Ray)."""
    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.job.run import _Driver

    spec = _spec()
    weights = _Driver.build(spec).weights
    first = WorkerPool(ray_local, spec, roster(spec), tmp_path / "1")
    before = [w["pid"] for w in first.placement]
    first.shutdown()
    assert ray_local.get(first.workers[0].ready.remote())["participants"] == []  # forgot it
    _kill(ray_local, first.workers[1])  # dies while parked

    second = WorkerPool(ray_local, spec, roster(spec), tmp_path / "2")
    after = [w["pid"] for w in second.placement]
    assert after[0] == before[0] and after[1] != before[1]
    assert sorted(p for w in second.placement for p in w["participants"]) == list(range(6))
    out = second.train(weights, 1, [0, 1, 4], RoundConfig(), {})
    assert sorted(u.pid for u in out.updates) == [0, 1, 4] and not out.dropped
    second.shutdown()

    one_cpu = spec_from_dict({**_spec_data(), "resources": {"workers": 2}})
    other = WorkerPool(ray_local, one_cpu, roster(one_cpu), tmp_path / "3", wait=False)
    for worker in second.workers:  # parked, half-CPU: no slot of this pool fits them
        with pytest.raises(ray_local.exceptions.RayActorError):
            ray_local.get(worker.ready.remote(), timeout=60)
    other.wait_ready()
    assert not {w["pid"] for w in other.placement} & set(after)
    other.shutdown()


def test_weights_inline_or_through_the_object_store_train_the_same(
        ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small weights ride inside the calls, large ones go through the object store
    once: both reach the workers as the same arrays and give the same updates."""
    from fedcollab.cluster import pool as pool_module
    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.job.run import _Driver

    spec = _spec()
    weights = _Driver.build(spec).weights
    assert sum(w.nbytes for w in weights) * 2 <= pool_module.INLINE_WEIGHT_BYTES
    pool = WorkerPool(ray_local, spec, roster(spec), tmp_path)
    puts: list[Any] = []
    real_put = ray_local.put
    monkeypatch.setattr(ray_local, "put", lambda value: puts.append(value) or real_put(value))
    inline = pool.train(weights, 1, [0, 1, 2, 3], RoundConfig(), {})
    assert puts == []  # nothing went through the object store
    monkeypatch.setattr(pool_module, "INLINE_WEIGHT_BYTES", 0)
    stored = pool.train(weights, 1, [0, 1, 2, 3], RoundConfig(), {})
    assert len(puts) == 1  # once for both workers
    assert [u.pid for u in inline.updates] == [u.pid for u in stored.updates] == [0, 1, 2, 3]
    for a, b in zip(inline.updates, stored.updates):
        assert all((x == y).all() for x, y in zip(a.delta, b.delta))
    pool.shutdown()


def test_pool_hands_over_the_model_evaluates_and_exports_like_the_driver(
        ray_local: Any, tmp_path: Path) -> None:
    """A job's driver does not load TensorFlow: a worker gives it the initial weights,
    evaluates each round and exports model.keras, bit-equal to doing it in process."""
    import numpy as np

    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.job.release import weights_sha256
    from fedcollab.job.run import _Driver
    from fedcollab.worker.models import ModelFile

    spec = _spec()
    local = _Driver.build(spec)
    pool = WorkerPool(ray_local, spec, roster(spec), tmp_path)
    remote = _Driver.from_pool(pool)
    assert weights_sha256(remote.weights) == weights_sha256(local.weights)
    assert (remote.classification, remote.weight_scale) == (local.classification,
                                                            local.weight_scale)
    trained = [w + np.float32(0.01) for w in local.weights]
    assert pool.evaluate(trained) == local.evaluate(trained)  # exactly the same floats
    pending = remote.evaluate.submit(trained)
    assert pending() == local.evaluate(trained)

    exported = pool.export_model(trained)
    assert isinstance(exported, ModelFile) and exported.data[:2] == b"PK"  # a zip
    assert [w["shape"] for w in exported.weights] == [list(w.shape) for w in trained]

    evaluator = pool._idle_index()
    _kill(ray_local, pool.workers[evaluator])
    assert pool.evaluate(trained) == local.evaluate(trained)  # another worker answers
    assert evaluator in pool.suspect
    pool.shutdown()


def test_pool_evaluates_after_losing_its_only_worker(ray_local: Any, tmp_path: Path) -> None:
    """With every worker lost (a one-worker job), evaluating recreates them, as the
    next round would, instead of failing the job."""
    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.job.run import _Driver
    from fedcollab.spec import spec_from_dict

    spec = spec_from_dict({"name": "one", "rounds": 1,
                           "resources": {"workers": 1, "cpus_per_worker": 0.5},
                           "participants": [{"name": "community", "count": 2}]})
    local = _Driver.build(spec)
    pool = WorkerPool(ray_local, spec, roster(spec), tmp_path)
    _kill(ray_local, pool.workers[0])
    lost = pool.train(local.weights, 1, [0, 1], RoundConfig(), {})
    assert sorted(lost.dropped) == [0, 1] and pool.suspect == {0}
    assert pool.evaluate(local.weights) == local.evaluate(local.weights)
    assert pool.replaced == 1 and not pool.suspect
    pool.shutdown()


@pytest.mark.parametrize("where", ["ray", "inprocess"])
def test_pool_a_failed_private_save_is_one_line_and_keeps_the_last_saved_round(
        ray_local: Any, tmp_path: Path, where: str) -> None:
    """A private-layer save that fails on its worker (here: the round's file path is
    taken by a directory, as a full or read-only disk would fail it) ends the job or
    the vendor's gateway with one line naming the round and the round a resume starts
    from, not a Ray traceback; the worker is not taken for lost, and the saved round
    before it is left as it was."""
    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.errors import CheckpointError
    from fedcollab.job.run import _Driver
    from fedcollab.worker.inprocess import InProcessPool

    spec = _spec()
    weights = _Driver.build(spec).weights
    pool: Any = (WorkerPool(ray_local, spec, roster(spec), tmp_path) if where == "ray"
                 else InProcessPool(spec, tmp_path))
    try:
        pool.train(weights, 1, [4, 5], RoundConfig(), {})
        pool.save_private(1)()
        pool.commit(1)
        private = tmp_path / "checkpoints" / "private"
        saved = {p.name: p.read_bytes() for p in private.iterdir()}
        assert sorted(saved) == ["participant-00004-round-00001.npz",
                                 "participant-00005-round-00001.npz"]
        (private / "participant-00004-round-00002.npz").mkdir()

        with pytest.raises(CheckpointError) as failed:
            pool.save_private(2)()

        said = str(failed.value)
        assert "\n" not in said and "after round 2 failed on a worker" in said, said
        assert "IsADirectoryError" in said and "the last saved round is 1" in said, said
        assert {p.name: p.read_bytes() for p in private.iterdir() if p.is_file()
                and p.name.endswith("round-00001.npz")} == saved
        assert not getattr(pool, "suspect", set())
    finally:
        pool.shutdown()
