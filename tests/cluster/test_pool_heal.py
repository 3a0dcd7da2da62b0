"""A heal that cannot place every lost worker again, on a real 2-node Ray cluster.

The cluster is ``ray_cluster``'s: a head with one CPU and a node that offers the
custom resource ``vendor_site``. The vendor group is pinned to it; losing that node
leaves its worker with nowhere to go. A vendor's silo (``strict=False``) then heals
what it can and leaves that worker unplaced, its participants dropouts at once;
``fedcollab run`` (``strict``, the default) stops with one line.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from fedcollab.spec import spec_from_dict
from fedcollab.spec.roster import roster
from fedcollab.worker.messages import RoundConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]

T = TypeVar("T")
#: community (open) 0-1 and lab (secure) 2-3 share the general worker; vendor 4-5 (secure)
#: have the worker pinned to the vendor_site node
COMMUNITY, LAB, VENDOR = [0, 1], [2, 3], [4, 5]


def _spec() -> Any:
    return spec_from_dict({
        "name": "heal", "rounds": 3, "task": {"dataset": "digits", "model": "mlp"},
        "resources": {"workers": 1, "cpus_per_worker": 0.5},
        "secure": {"min_group": 3},
        "participants": [
            {"name": "community", "count": 2, "sharing": "open"},
            {"name": "lab", "count": 2, "sharing": "secure"},
            {"name": "vendor", "role": "vendor", "count": 2, "sharing": "secure",
             "resources": {"vendor_site": 1}}]})


def _bounded(call: Callable[[], T], seconds: float) -> T:
    """``call()``, failing the test if it takes longer than ``seconds``."""
    running = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return running.submit(call).result(timeout=seconds)
    finally:
        running.shutdown(wait=False)  # a call still blocked does not hold the test too


def _kill(ray: Any, actor: Any) -> None:
    """Kill ``actor`` and return once it is dead (``ray.kill`` only asks)."""
    ray.kill(actor, no_restart=True)
    for _ in range(600):
        try:
            ray.get(actor.ready.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the actor still answers after ray.kill")


def _lose_vendor_node(cluster: Any, pool: Any) -> str:
    """The vendor_site node goes, its worker processes with it (a removed raylet's
    workers would linger until they notice); returns its node id."""
    node = next(iter(cluster.worker_nodes))
    cluster.remove_node(node, allow_graceful=False)
    for where in pool.placement:
        if where["node_id"] == node.node_id:
            try:
                os.kill(where["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    return str(node.node_id)


def _wait_dead(ray: Any, node_id: str, seconds: float = 60.0) -> None:
    """Until Ray's control store marks ``node_id`` dead (it misses its heartbeats)."""
    deadline = time.monotonic() + seconds
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, f"node {node_id} still alive after {seconds:g} s"
        time.sleep(0.2)


class _Holder:
    """An actor that holds a node's ``vendor_site`` while it lives."""

    def ready(self) -> bool:
        return True


def _is_pinned(ray: Any, pool: Any, index: int) -> bool:
    """Worker ``index`` holds a pinned group setup: another one is refused."""
    members, seed, _ = pool.secure_terms
    try:
        ray.get(pool.workers[index].secure_setup.remote(members, seed, b"another job" * 2, {}),
                timeout=60)
    except ray.exceptions.RayTaskError as err:
        assert "RegistryPinnedError" in str(err), err
        return True
    return False


def test_pool_heal_leaves_an_unplaceable_worker_out_and_places_it_once_it_can(
        ray_cluster: Any, tmp_path: Path) -> None:
    import ray

    from fedcollab.cluster.placement import ClusterError
    from fedcollab.cluster.pool import WorkerPool
    from fedcollab.job.run import _Driver

    spec = _spec()
    weights = _Driver.build(spec).weights
    pool = WorkerPool(ray, spec, roster(spec), tmp_path)
    try:
        pinned, general = pool.owner[VENDOR[0]], pool.owner[LAB[0]]
        assert pool.hosted[pinned] == VENDOR and pool.hosted[general] == COMMUNITY + LAB
        pool.setup_identities()
        assert pool.pinned and _is_pinned(ray, pool, general)

        # both workers lost: the general one killed, the pinned one with its node
        _kill(ray, pool.workers[general])
        node_id = _lose_vendor_node(ray_cluster, pool)
        lost = _bounded(lambda: pool.train(weights, 1, COMMUNITY + VENDOR, RoundConfig(), {}),
                        120)
        assert sorted(lost.dropped) == COMMUNITY + VENDOR
        assert pool.suspect == {pinned, general}

        # the node is gone for good (Ray marked it dead): the pinned worker has nowhere
        # to go; the general one is recreated
        _wait_dead(ray, node_id)
        t0 = time.monotonic()
        assert pool.heal(timeout=60, strict=False) == [general]
        assert time.monotonic() - t0 < 60
        assert list(pool.unplaced) == [pinned] and not pool.suspect and pool.needs_heal
        assert f"worker {pinned} was lost and cannot be placed again" in pool.unplaced[pinned]
        # the recreated worker gets the group's pinned setup; its participants train,
        # the unplaced worker's drop at once (nothing calls it)
        pool.setup_identities()
        assert _is_pinned(ray, pool, general)
        out = _bounded(lambda: pool.train(weights, 2, COMMUNITY + LAB + VENDOR, RoundConfig(),
                                          {}), 60)
        assert sorted(out.seconds) == COMMUNITY + LAB and sorted(out.dropped) == VENDOR
        stage = _bounded(lambda: pool.secure_stage("share_keys", 2,
                                                   {p: b"" for p in VENDOR}), 10)
        assert not stage.replies and not stage.refused and not pool.suspect

        # still no node for it: each later heal tries it again, at once; strict stops
        t0 = time.monotonic()
        assert pool.heal(timeout=30, strict=False) == [] and list(pool.unplaced) == [pinned]
        assert time.monotonic() - t0 < 10
        with pytest.raises(ClusterError, match=f"worker {pinned} was lost and cannot be placed "
                                               "again") as stopped:
            pool.heal(timeout=30)
        assert "\n" not in str(stopped.value)

        # a node again, but its vendor_site taken: the new worker stays pending past the
        # heal's timeout; it is unplaced (never called: its participants drop at once)
        ray_cluster.add_node(num_cpus=1, resources={"vendor_site": 1})
        ray_cluster.wait_for_nodes()
        holder = ray.remote(num_cpus=0, resources={"vendor_site": 1})(_Holder).remote()
        assert ray.get(holder.ready.remote(), timeout=60)
        t0 = time.monotonic()
        assert pool.heal(timeout=3, strict=False) == [] and list(pool.unplaced) == [pinned]
        assert time.monotonic() - t0 < 10
        assert pool.unplaced[pinned].startswith(f"worker {pinned} could not be recreated within")
        pending = pool.workers[pinned]
        t0 = time.monotonic()  # a later heal does not wait for it again: it had a round
        assert pool.heal(timeout=30, strict=False) == [] and list(pool.unplaced) == [pinned]
        assert time.monotonic() - t0 < 5 and pool.workers[pinned] is pending
        t0 = time.monotonic()
        out = _bounded(lambda: pool.train(weights, 3, LAB + VENDOR, RoundConfig(), {}), 60)
        assert sorted(out.seconds) == LAB and sorted(out.dropped) == VENDOR
        assert time.monotonic() - t0 < 30

        # the resource free: Ray places that same worker, and a round start later a heal
        # finds it ready
        ray.kill(holder, no_restart=True)
        ray.get(pending.ready.remote(), timeout=120)
        assert pool.heal(timeout=30, strict=False) == [pinned]
        assert pool.workers[pinned] is pending
        assert not pool.unplaced and not pool.needs_heal and pool.replaced == 2
        pool.setup_identities()
        assert _is_pinned(ray, pool, pinned)
        again = pool.train(weights, 4, VENDOR, RoundConfig(), {})
        assert sorted(again.seconds) == VENDOR and not again.dropped
    finally:
        pool.shutdown()
