"""Reservations on a real local Ray (2 CPUs): a job's workers hold their CPUs for the
whole job, and a second job that does not fit waits in Ray until the first ends."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fedcollab.cluster.placement import WorkerRequest
from fedcollab.spec import spec_from_dict
from fedcollab.spec.roster import roster

pytestmark = [pytest.mark.ray]


def _free_cpus(ray: Any, expected: float, timeout: float = 30.0) -> float:
    """Ray's free CPUs once they read `expected` (its resource view lags a little
    behind placement groups made and removed), or what they read at the deadline."""

    deadline = time.monotonic() + timeout
    while True:
        free = float(ray.available_resources().get("CPU", 0.0))
        if free == expected or time.monotonic() > deadline:
            return free
        time.sleep(0.1)


def test_reservation_second_that_does_not_fit_waits_until_first_released(
        ray_local: Any) -> None:
    from fedcollab.cluster.reserve import Reservation

    first = Reservation(ray_local, [WorkerRequest(cpus=1.0), WorkerRequest(cpus=1.0)])
    first.wait()
    said: list[str] = []
    granted = threading.Event()
    second: list[Reservation] = []

    def reserve_again() -> None:
        second.append(Reservation(ray_local, [WorkerRequest(cpus=1.0)],
                                  on_wait=said.append, quiet_seconds=0.2))
        second[0].wait()  # queued in Ray behind the first
        granted.set()

    thread = threading.Thread(target=reserve_again, daemon=True)
    thread.start()
    try:
        assert not granted.wait(2.0)  # both CPUs are held: it queues in Ray
        assert said == ["waiting for Ray to grant 1 CPU (other jobs hold them; this job "
                        "starts when they end)"]
        first.release()
        assert granted.wait(30.0)
    finally:
        first.release()
        thread.join(30.0)
        for held in second:
            held.release()
    assert second[0].waited_seconds >= 1.5


class _Baton:
    """A ReservationGate held while `go` is set (what the job service's runner
    decides, here decided by the test)."""

    def __init__(self, held: bool) -> None:
        self.go = threading.Event()
        if held:
            self.go.set()
        self.states: list[str] = []

    def acquire(self, timeout: float) -> bool:
        self._say("waiting")
        return self.go.wait(timeout)

    def held(self) -> bool:
        return self.go.is_set()

    def asking(self) -> None:
        self._say("asking")

    def granted(self) -> None:
        self._say("granted")

    def _say(self, state: str) -> None:
        if not self.states or self.states[-1] != state:
            self.states.append(state)


def test_reservation_gate_taken_back_withdraws_request_and_later_one_is_granted_first(
        ray_local: Any) -> None:
    from fedcollab.cluster.reserve import Reservation

    holder = Reservation(ray_local, [WorkerRequest(cpus=1.0), WorkerRequest(cpus=1.0)])
    holder.wait()
    low_gate, high_gate = _Baton(held=True), _Baton(held=False)
    low = Reservation(ray_local, [WorkerRequest(cpus=2.0)], gate=low_gate, quiet_seconds=0.2)
    high = Reservation(ray_local, [WorkerRequest(cpus=2.0)], gate=high_gate,
                       quiet_seconds=0.2)
    asked_first = low.group is not None and high.group is None  # low holds the gate
    done = {"low": threading.Event(), "high": threading.Event()}
    threads = [threading.Thread(target=lambda r=r, n=n: (r.wait(), done[n].set()), daemon=True)
               for n, r in (("low", low), ("high", high))]
    for thread in threads:
        thread.start()
    try:
        assert not done["low"].wait(1.0)  # queued in Ray behind the holder
        low_gate.go.clear()  # a job of higher priority waits: low gives its place back
        deadline = time.monotonic() + 10
        while low.group is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        withdrawn = low.group is None
        high_gate.go.set()
        holder.release()  # two CPUs free: only high is asking
        assert done["high"].wait(30.0)
        low_waiting = not done["low"].is_set()
        high.release()
        low_gate.go.set()
        assert done["low"].wait(30.0)
    finally:
        holder.release()
        for gate in (low_gate, high_gate):
            gate.go.set()
        for thread in threads:
            thread.join(30.0)
        low.release()
        high.release()

    assert asked_first and withdrawn and low_waiting
    assert low_gate.states == ["waiting", "asking", "waiting", "asking", "granted"]
    assert high_gate.states == ["waiting", "asking", "granted"]


def test_reservation_worker_asking_nothing_has_no_bundle(ray_local: Any) -> None:
    from fedcollab.cluster.reserve import Reservation

    held = Reservation(ray_local, [WorkerRequest(cpus=0.0), WorkerRequest(cpus=0.5)])
    try:
        assert held.bundle_of == [None, 0]
        assert held.wants == {"CPU": 0.5}
        assert held.strategy(0) == {}
        assert "scheduling_strategy" in held.strategy(1)
    finally:
        held.release()


def test_reservation_general_bundles_avoid_kept_nodes_by_label(ray_local: Any) -> None:
    from fedcollab.cluster.reserve import Reservation

    kept = "f" * 56  # a node kept for a pinned group (none here): this one is fine
    held = Reservation(ray_local, [WorkerRequest(cpus=0.5), WorkerRequest(cpus=0.5)],
                       avoid_nodes=[kept])
    try:
        held.wait()
        assert held.granted
    finally:
        held.release()


@pytest.mark.slow
def test_pool_reserve_holds_cpus_while_running_and_frees_them_at_shutdown(
        ray_local: Any, tmp_path: Path) -> None:
    from fedcollab.cluster.pool import WorkerPool

    spec = spec_from_dict({"name": "reserved", "rounds": 1,
                           "resources": {"workers": 2, "cpus_per_worker": 1.0},
                           "participants": [{"name": "community", "count": 4}]})
    assert _free_cpus(ray_local, 2.0) == 2.0  # the earlier tests' reservations are gone
    pool = WorkerPool(ray_local, spec, roster(spec), tmp_path, reserve=True)
    try:
        assert pool.reservation is not None and pool.reservation.wants == {"CPU": 2.0}
        assert _free_cpus(ray_local, 0.0) == 0.0  # held in Ray, by this job alone
    finally:
        pool.shutdown()
    assert _free_cpus(ray_local, 2.0) == 2.0
