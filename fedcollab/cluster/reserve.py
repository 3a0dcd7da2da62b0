"""A job's worker resources held in Ray for the whole job: one placement group.

Without it a job's warm (spare) workers hold no CPU in Ray, so jobs sharing a
cluster all run at once and contend for the same cores (two jobs on two cores ran
2.2x slower each). With it each job asks Ray for one bundle per worker (its CPUs,
GPUs and custom resources, what the worker's actor would ask for) and starts its
rounds only once Ray has granted them all: a job that does not fit waits in
Ray's queue until an earlier job ends and its placement group is removed.

Ray removes a job's placement groups when the job's driver exits, so a killed job
frees its reservation too.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from fedcollab.cluster.placement import WorkerRequest

__all__ = ["Reservation"]


class Reservation:
    """One placement group holding a bundle per worker that asks for anything.

    Args:
        ray: The connected ``ray`` module.
        requests: What each worker asks for (:func:`~fedcollab.cluster.placement.worker_requests`).
        avoid_nodes: Node ids the general workers (those with no custom resource)
            must stay off (nodes kept for pinned groups).
        on_wait: Called once with a line if Ray does not grant the reservation within
            ``quiet_seconds`` of :meth:`wait` (another job holds the resources).
        quiet_seconds: How long to wait before saying so.

    Asks Ray and returns at once; actors placed in its bundles (:meth:`strategy`)
    start when Ray grants it, and :meth:`wait` blocks until then, so the driver can do
    its own set-up while the job is queued in Ray.
    """

    def __init__(self, ray: Any, requests: Sequence[WorkerRequest], *,
                 avoid_nodes: Sequence[str] = (),
                 on_wait: Optional[Callable[[str], None]] = None,
                 quiet_seconds: float = 1.0) -> None:
        from ray.util.placement_group import placement_group

        self.ray = ray
        self.bundle_of: list[Optional[int]] = []  # worker index -> bundle index (None: none)
        bundles: list[dict[str, float]] = []
        selectors: list[dict[str, str]] = []
        avoid = f"!in({', '.join(avoid_nodes)})" if avoid_nodes else ""
        for request in requests:
            wants = request.wants()
            if not wants:  # asks for nothing (cpus_per_worker: 0): nothing to hold
                self.bundle_of.append(None)
                continue
            self.bundle_of.append(len(bundles))
            bundles.append(wants)
            selectors.append({"ray.io/node-id": avoid} if avoid and not request.resources
                             else {})
        self.wants = _total(bundles)
        self.group: Any = None
        self.granted = not bundles
        self.waited_seconds = 0.0
        self._on_wait = on_wait
        self._quiet = quiet_seconds
        if not bundles:
            return
        options: dict[str, Any] = {}
        if any(selectors):
            options["bundle_label_selector"] = selectors
        self.group = placement_group(bundles, strategy="PACK", **options)

    def wait(self) -> None:
        """Block until Ray has granted every bundle, however long that takes (the job
        is queued in Ray; SIGTERM still ends the wait, between polls)."""
        if self.granted or self.group is None:
            return
        start = time.monotonic()
        said = False
        while not self.group.wait(timeout_seconds=self._quiet):
            if not said and self._on_wait is not None:
                self._on_wait(f"waiting for Ray to grant {_describe(self.wants)} "
                              "(other jobs hold them; this job starts when they end)")
                said = True
        self.waited_seconds = time.monotonic() - start
        self.granted = True

    def strategy(self, index: int) -> dict[str, Any]:
        """Actor options that place worker ``index`` in its bundle ({} if it has none)."""
        bundle = self.bundle_of[index]
        if self.group is None or bundle is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=bundle,
            placement_group_capture_child_tasks=False)}

    def release(self) -> None:
        """Give the resources back to Ray (idempotent; call after the workers are killed)."""
        group, self.group = self.group, None
        if group is None:
            return
        from ray.util.placement_group import remove_placement_group

        try:
            remove_placement_group(group)
        except Exception:  # noqa: BLE001 - its Ray is gone: so is the group
            pass


def _total(bundles: Sequence[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for key, amount in bundle.items():
            total[key] = total.get(key, 0.0) + amount
    return total


def _describe(wants: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {key}" for key, amount in sorted(wants.items()))
