"""Workers that outlive a job: spares started ahead of one, and finished jobs'
workers parked for the next job of the same process (:func:`worker_reuse`)."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["start_spares", "worker_reuse"]


def start_spares(ray: Any, count: int, *, cpus_per_worker: float = 0.0,
                 wait: bool = False) -> list[Any]:
    """Start ``count`` workers with no job yet: each imports TensorFlow now, so a job
    that takes them (``WorkerPool(..., spares=...)``) skips that start-up.

    ``cpus_per_worker`` defaults to 0: an idle spare must not hold CPUs that a running
    job's workers (or their replacements) need. ``wait``: return once every spare
    has started (imported TensorFlow).
    """
    from fedcollab.cluster.actor import actor_class

    actor_cls = actor_class(ray)
    spares = [actor_cls.options(num_cpus=cpus_per_worker, max_restarts=0,
                                max_task_retries=0).remote() for _ in range(count)]
    if wait:
        ray.get([s.__ray_ready__.remote() for s in spares])
    return spares


#: Actor options a worker was created with: (CPUs, GPUs, custom resources).
_Options = tuple[float, float, tuple[tuple[str, float], ...]]


class _Parking:
    """Workers of this process's finished jobs, waiting for its next job (one Ray
    connection; see :func:`worker_reuse`)."""

    def __init__(self, session: str) -> None:
        self.session = session
        self.idle: list[tuple[_Options, Any]] = []


_parking_lock = threading.Lock()


_parking: _Parking | None = None


def _session(ray: Any) -> str:
    """The current Ray connection (a new ``ray.init`` is a new job id)."""
    return str(ray.get_runtime_context().get_job_id())


@contextlib.contextmanager
def worker_reuse(ray: Any) -> Iterator[None]:
    """Within the block, a finished job's workers wait for the next job of this process
    instead of exiting, and that job configures them instead of starting new ones.

    A worker is a process that imports TensorFlow (most of its start-up); jobs run one after
    another on one Ray connection (a grade's mixes, a script or a test module that
    runs several jobs) then pay that once per worker, not once per job. A parked
    worker forgets its job (:meth:`~fedcollab.worker.worker.ParticipantWorker.release`:
    its data, model, participants and Keras' global state), so the next job's
    results are what fresh workers give (same weights, same release). It keeps its
    CPU reservation while it waits, so the block should hold only jobs run back to
    back: its end kills every worker still parked, and so does a job whose workers
    need other resources than the parked ones offer. Jobs of one process share
    workers, so only jobs of one user should: the job service runs each job in a
    process of its own. Nested blocks are one block; a block outside an initialised
    Ray does nothing.
    """
    global _parking
    with _parking_lock:
        outer = _parking is not None or not ray.is_initialized()
        if not outer:
            _parking = _Parking(_session(ray))
    try:
        yield
    finally:
        if not outer:
            with _parking_lock:
                left, _parking = _parking, None
            _kill_and_wait(ray, [worker for _, worker in left.idle] if left is not None else [])


def _kill_quietly(ray: Any, worker: Any) -> None:
    try:
        ray.kill(worker, no_restart=True)
    except Exception:  # noqa: BLE001 - gone already, or its Ray is
        pass


def _kill_and_wait(ray: Any, workers: Sequence[Any], timeout: float = 10.0) -> None:
    """Kill ``workers`` and return once Ray reports them dead (at most ``timeout``
    seconds): their CPUs are free for whatever the caller runs next, and no kill is
    still in flight if the caller then disconnects from Ray."""
    import time

    for worker in workers:
        _kill_quietly(ray, worker)
    deadline = time.monotonic() + timeout
    for worker in workers:
        while time.monotonic() < deadline:
            try:  # answered: the kill has not reached it yet
                ray.get(worker.__ray_ready__.remote(), timeout=deadline - time.monotonic())
            except Exception:  # noqa: BLE001 - dead (what we wait for), or out of time
                break
            time.sleep(0.05)


def _active_parking(ray: Any) -> _Parking | None:
    """The open :func:`worker_reuse` block of this Ray connection, if any (hold the lock)."""
    if _parking is None or not ray.is_initialized() or _parking.session != _session(ray):
        return None
    return _parking


def _take_parked(ray: Any) -> list[tuple[_Options, Any]]:
    """Every parked worker of this Ray connection (none outside :func:`worker_reuse`)."""
    with _parking_lock:
        parking = _active_parking(ray)
        if parking is None:
            return []
        idle, parking.idle = parking.idle, []
        return idle


def _park(ray: Any, workers: Sequence[tuple[_Options, Any]]) -> bool:
    """Park ``workers`` for the next job; False outside :func:`worker_reuse` (or after
    its Ray connection ended)."""
    with _parking_lock:
        parking = _active_parking(ray)
        if parking is None:
            return False
        for _, worker in workers:
            worker.release.remote()  # runs after every call already queued to it
        parking.idle.extend(workers)
        return True
