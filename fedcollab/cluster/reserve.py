"""A job's worker resources held in Ray for the whole job: one placement group.

Without it a job's warm (spare) workers hold no CPU in Ray, so jobs sharing a
cluster all run at once and contend for the same cores (two jobs on two cores ran
2.2x slower each). With it each job asks Ray for one bundle per worker (its CPUs,
GPUs and custom resources, what the worker's actor would ask for) and starts its
rounds only once Ray has granted them all: a job that does not fit waits in
Ray's queue until an earlier job ends and its placement group is removed.

Ray removes a job's placement groups when the job's driver exits, so a killed job
frees its reservation too.

Ray grants waiting placement groups in its own order, blind to the jobs'
priorities. A :class:`ReservationGate` (the job service's) puts priority back: a
gated job asks Ray only while its gate is held, and gives its place in Ray's queue
back (removes its ungranted group) when the gate is taken from it for a job of
higher priority.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, Protocol

from fedcollab.cluster.placement import WorkerRequest

__all__ = ["Reservation", "ReservationGate"]


class ReservationGate(Protocol):
    """Who may ask Ray for a reservation now: one job at a time, the one of highest
    priority among those waiting (the job service arbitrates between its jobs)."""

    def acquire(self, timeout: float) -> bool:
        """Whether this job may ask Ray now; waits up to `timeout` s for it."""

    def held(self) -> bool:
        """Whether it still may (False: give the place in Ray's queue back)."""

    def asking(self) -> None:
        """This job's request is in Ray's queue."""

    def granted(self) -> None:
        """Ray granted it: the gate may pass to the next job."""


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
        gate: Ask Ray only while the gate is held (see :class:`ReservationGate`);
            if it is not held at once, the request waits for :meth:`wait`. A
            request may be withdrawn before Ray grants it, and the actors placed in
            it with it: start those after :meth:`wait`.

    Asks Ray (ungated) and returns at once; actors placed in its bundles (:meth:`strategy`)
    start when Ray grants it, and :meth:`wait` blocks until then, so the driver can do
    its own set-up while the job is queued in Ray.
    """

    def __init__(self, ray: Any, requests: Sequence[WorkerRequest], *,
                 avoid_nodes: Sequence[str] = (),
                 on_wait: Optional[Callable[[str], None]] = None,
                 quiet_seconds: float = 1.0,
                 gate: Optional[ReservationGate] = None) -> None:
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
        self._gate = gate
        self._bundles = bundles
        self._options: dict[str, Any] = {}
        if any(selectors):
            self._options["bundle_label_selector"] = selectors
        if not bundles:
            if gate is not None:
                gate.granted()  # nothing to hold: nothing to wait for
        elif gate is None or gate.acquire(timeout=0.0):
            # ask now (the driver sets up while Ray decides); behind a gate, only if
            # it is ours already (no other job waits), else wait() asks in its turn
            self.group = self._ask()
            if gate is not None:
                gate.asking()

    def _ask(self) -> Any:
        from ray.util.placement_group import placement_group

        return placement_group(self._bundles, strategy="PACK", **self._options)

    def wait(self) -> None:
        """Block until Ray has granted every bundle, however long that takes (the job
        is queued in Ray, or behind its gate; SIGTERM still ends the wait, between
        polls)."""
        if self.granted:
            return
        start = time.monotonic()
        said = False
        poll = min(self._quiet, 0.5) if self._gate is not None else self._quiet
        while True:
            if self.group is None:
                assert self._gate is not None  # ungated reservations asked in __init__
                if self._gate.acquire(timeout=poll):
                    self.group = self._ask()
                    self._gate.asking()
            elif self.group.wait(timeout_seconds=poll):
                break
            elif self._gate is not None and not self._gate.held():
                # a job of higher priority waits: give it our place in Ray's queue
                self._remove()
            if not said and self._on_wait is not None and \
                    time.monotonic() - start >= self._quiet:
                self._on_wait(f"waiting for Ray to grant {_describe(self.wants)} "
                              "(other jobs hold them; this job starts when they end)")
                said = True
        self.waited_seconds = time.monotonic() - start
        self.granted = True
        if self._gate is not None:
            self._gate.granted()

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
        self._remove()

    def _remove(self) -> None:
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
