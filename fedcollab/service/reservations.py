"""Ray reservations in the service's priority order.

Ray grants waiting placement groups in its own order (as it asks and retries them),
blind to the service's priorities. The job service runs several jobs at once
(``--max-concurrent``), and each asks Ray for its reservation as soon as its process
starts: a low-priority job that started first could be granted the CPUs a later
high-priority job is waiting for. So the runner holds
a baton that only one waiting job has at a time, the one of highest priority
(then the oldest): only that job has a request in Ray's queue. When a job of higher
priority starts waiting, the baton is taken from the one holding it, which removes
its ungranted request (:class:`fedcollab.cluster.reserve.Reservation` does, between
polls), and passes once that one has left Ray's queue.

The two sides talk through two files in the job's directory: ``reserve.state``
(written by the job: ``waiting`` for the baton, ``asking`` Ray, ``granted``) and
``reserve.go`` (the baton: created and removed by the runner).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fedcollab.io import atomic_write_bytes

__all__ = ["STATE_FILE", "GO_FILE", "FileGate", "Contender", "arbitrate", "clear", "pending"]

STATE_FILE = "reserve.state"
GO_FILE = "reserve.go"
_WANTING = ("waiting", "asking")


def _write(path: Path, data: bytes) -> None:
    """Atomic (the other side reads whole files) but not durable: after a crash both
    files are reset anyway (:func:`clear`), so a job's start pays no fsync for them."""
    atomic_write_bytes(path, data, mode=0o600, durable=False)


class FileGate:
    """The job process's side (a :class:`fedcollab.cluster.reserve.ReservationGate`)."""

    POLL_SECONDS = 0.05

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = Path(job_dir)
        self._state = ""

    def _say(self, state: str) -> None:
        if state != self._state:
            _write(self.job_dir / STATE_FILE, state.encode())
            self._state = state

    def acquire(self, timeout: float) -> bool:
        self._say("waiting")
        deadline = time.monotonic() + timeout
        while not self.held():
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_SECONDS)
        return True

    def held(self) -> bool:
        return (self.job_dir / GO_FILE).exists()

    def asking(self) -> None:
        self._say("asking")

    def granted(self) -> None:
        self._say("granted")


@dataclass(frozen=True)
class Contender:
    """A running job as the runner sees it: where its files are, and its rank."""

    job_dir: Path
    priority: int
    seq: int


def _state(job_dir: Path) -> str:
    try:
        return (job_dir / STATE_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def arbitrate(running: Sequence[Contender]) -> None:
    """Give the baton to the running job that should ask Ray next (the runner, each
    turn): the highest priority, then the oldest, of those waiting or asking. It is
    taken from any other, and given only once no other is still asking (still has a
    request in Ray's queue)."""
    wanting = [(c, _state(c.job_dir)) for c in running]
    wanting = [(c, state) for c, state in wanting if state in _WANTING]
    if not wanting:
        return
    best = max(wanting, key=lambda w: (w[0].priority, -w[0].seq))[0]
    others_asking = False
    for contender, state in wanting:
        if contender is not best:
            (contender.job_dir / GO_FILE).unlink(missing_ok=True)
            others_asking = others_asking or state == "asking"
    go = best.job_dir / GO_FILE
    if not others_asking and not go.exists():
        _write(go, b"")


def clear(job_dir: Path, *, go: bool) -> None:
    """A new attempt's files: no state from an earlier one; the baton at once (`go`)
    when no other job is waiting for it, so an uncontended job loses no time."""
    (job_dir / STATE_FILE).unlink(missing_ok=True)
    if go:
        _write(job_dir / GO_FILE, b"")
    else:
        (job_dir / GO_FILE).unlink(missing_ok=True)


def pending(job_dir: Path) -> bool:
    """Whether the job holds or wants the baton and Ray has not granted it yet."""
    state = _state(job_dir)
    return state in _WANTING or (state != "granted" and (job_dir / GO_FILE).exists())
