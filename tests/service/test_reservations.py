"""The runner's baton for Ray reservations: files in real job directories, and the
job side's gate against the runner's arbitration."""
from __future__ import annotations

from pathlib import Path

from fedcollab.service.reservations import (
    GO_FILE,
    STATE_FILE,
    Contender,
    FileGate,
    arbitrate,
    clear,
    pending,
)


def _job(tmp_path: Path, name: str, priority: int, seq: int, state: str = "") -> Contender:
    job_dir = tmp_path / name
    job_dir.mkdir()
    if state:
        (job_dir / STATE_FILE).write_text(state)
    return Contender(job_dir, priority, seq)


def _holds(c: Contender) -> bool:
    return (c.job_dir / GO_FILE).exists()


def test_arbitrate_waiting_jobs_baton_goes_to_highest_priority(tmp_path: Path) -> None:
    low = _job(tmp_path, "low", 0, 1, "waiting")
    high = _job(tmp_path, "high", 5, 2, "waiting")

    arbitrate([low, high])

    assert (_holds(low), _holds(high)) == (False, True)


def test_arbitrate_same_priority_oldest_first(tmp_path: Path) -> None:
    old = _job(tmp_path, "old", 1, 1, "waiting")
    new = _job(tmp_path, "new", 1, 2, "waiting")

    arbitrate([new, old])

    assert (_holds(old), _holds(new)) == (True, False)


def test_arbitrate_asking_low_job_loses_baton_before_high_gets_it(tmp_path: Path) -> None:
    low = _job(tmp_path, "low", 0, 1, "asking")
    (low.job_dir / GO_FILE).write_bytes(b"")
    high = _job(tmp_path, "high", 5, 2, "waiting")

    arbitrate([low, high])
    first = (_holds(low), _holds(high))  # taken from low; high waits: low is in Ray's queue
    (low.job_dir / STATE_FILE).write_text("waiting")  # low removed its request
    arbitrate([low, high])

    assert first == (False, False)
    assert (_holds(low), _holds(high)) == (False, True)


def test_arbitrate_granted_and_unstarted_jobs_take_no_part(tmp_path: Path) -> None:
    done = _job(tmp_path, "done", 9, 1, "granted")
    fresh = _job(tmp_path, "fresh", 9, 2)  # has not asked yet
    low = _job(tmp_path, "low", 0, 3, "waiting")

    arbitrate([done, fresh, low])

    assert (_holds(done), _holds(fresh), _holds(low)) == (False, False, True)


def test_clear_new_attempt_forgets_old_state_and_may_start_with_baton(tmp_path: Path) -> None:
    job = _job(tmp_path, "job", 0, 1, "asking")
    (job.job_dir / GO_FILE).write_bytes(b"")

    clear(job.job_dir, go=False)
    without = (pending(job.job_dir), _holds(job))
    clear(job.job_dir, go=True)

    assert without == (False, False)
    assert _holds(job) and pending(job.job_dir)  # holds the baton, not yet granted


def test_file_gate_follows_the_runner(tmp_path: Path) -> None:
    low = _job(tmp_path, "low", 0, 1)
    high = _job(tmp_path, "high", 5, 2)
    low_gate, high_gate = FileGate(low.job_dir), FileGate(high.job_dir)

    assert not low_gate.acquire(timeout=0.0)  # says "waiting"
    arbitrate([low, high])
    assert low_gate.acquire(timeout=0.0)
    low_gate.asking()
    assert not high_gate.acquire(timeout=0.0)
    arbitrate([low, high])
    taken = not low_gate.held()
    low_gate.acquire(timeout=0.0)  # what Reservation.wait does once it gave its place back
    arbitrate([low, high])
    high_got = high_gate.acquire(timeout=0.0)
    high_gate.asking()
    high_gate.granted()
    arbitrate([low, high])

    assert taken and high_got
    assert low_gate.held() and not pending(high.job_dir)
