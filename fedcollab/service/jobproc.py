"""The job process: one per job, so a failing job cannot take the service down.

The runner starts ``python -m fedcollab.service.jobproc`` ahead of time: it
imports the round loop and the outputs, connects to the service's Ray and then
waits for one task on stdin (one JSON line). It runs that job through
``fedcollab.job.run.run_job`` with ``on_round`` appending each round's line
to ``events.jsonl`` (which the service tails for WatchJob) and exits: a process
is used for one job, then replaced.

Grade tasks exec ``fedcollab grade SPEC --budget B --priority P --out JOB_DIR``.

Every job process dies with the service (``PR_SET_PDEATHSIG``) and runs in its
own process group, so CancelJob can signal the job and everything it started.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

from fedcollab.errors import raise_on_sigterm

__all__ = ["RUN_DIR", "tie_to_parent", "grade_command", "main"]

#: The job's own output directory inside its service directory (what ``fedcollab run
#: --out`` would hold); the service's files (request.yaml, events.jsonl, job.log,
#: result.json, run.lock) stay beside it.
RUN_DIR = "run"

_PR_SET_PDEATHSIG = 1
_HELD: list[Any] = []  # the Ray connection, held until the process exits


#: Linux's scheduler autogroup of the calling process: a process the service starts in
#: a session of its own (``start_new_session``) gets an autogroup of its own, and where
#: autogroups are on (``kernel.sched_autogroup_enabled``, the default on most
#: distributions) the CPU is shared between autogroups by *their* nice value: a
#: process's own nice only ranks it inside its group.
_AUTOGROUP = Path("/proc/self/autogroup")


def autogroup(pid: int | str = "self") -> tuple[str, int] | None:
    """``(name, nice)`` of a process's scheduler autogroup, or None where the kernel has
    none to show: no such file (not Linux, autogroups compiled out, the process gone) or
    a file that does not read as ``/autogroup-N nice K`` (some sandboxed kernels, such as
    gVisor's, present an empty one)."""
    try:
        return parse_autogroup((Path("/proc") / str(pid) / "autogroup").read_text())
    except OSError:
        return None


def parse_autogroup(text: str) -> tuple[str, int] | None:
    """``/autogroup-N nice K`` as ``(name, nice)``; anything else as None."""
    fields = text.split()
    if len(fields) != 3 or fields[1] != "nice":
        return None
    try:
        return fields[0], int(fields[2])
    except ValueError:
        return None


def lower_priority(nice: int) -> None:
    """Lower this process's CPU priority by ``nice``, and its autogroup's to ``nice``.

    Without the second, ``os.nice`` in a process of its own session ranked it only
    against its own children: a job's training (its Ray workers at nice 19) still took
    an equal share of the cores from the service answering calls (measured: the
    workers' group used more CPU than the service during ``service_load``)."""
    if nice <= 0:
        return
    try:
        os.nice(nice)
    except OSError:
        pass
    try:  # raising an autogroup's nice needs no privilege; absent off Linux
        _AUTOGROUP.write_text(f"{nice}\n")
    except OSError:
        pass


def tie_to_parent(parent_pid: int, nice: int = 0) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux), and lower
    its CPU priority by ``nice`` (inherited by what it starts: Ray's processes, a
    job's workers), so the service's own API and health checks run first."""
    lower_priority(nice)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _warm_driver() -> None:
    """Import what a job's driver needs (the round loop, the outputs, matplotlib for
    the plots) ahead of the task. TensorFlow is not among them: a job's workers
    build, evaluate and export the model, and the driver never loads it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    from tensorboard.compat.proto.event_pb2 import Event  # noqa: F401
    from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: F401

    import fedcollab.aggregation  # noqa: F401
    import fedcollab.data  # noqa: F401
    import fedcollab.job.release  # noqa: F401
    import fedcollab.job.rounds  # noqa: F401
    import fedcollab.job.run  # noqa: F401


def _connect(address: str) -> Any:
    """Join the service's Ray through fedcollab's connect path (a loopback head kept
    on loopback, its token presented), retrying Ray's start-up time-out."""
    from fedcollab.cluster.connect import (
        EMBEDDED_STARTS,
        ClusterError,
        connect,
        is_startup_timeout,
    )

    # Ray's own pre-started worker processes do not help: Ray gives each actor a fresh
    # process and never reuses a pre-started one. Spare actors do (below).
    for start in range(1, EMBEDDED_STARTS + 1):
        held = connect(address)
        try:
            ray = held.__enter__()
            _HELD.append(held)  # a collected context manager would disconnect
            break
        except ClusterError as err:
            if start < EMBEDDED_STARTS and is_startup_timeout(err):
                continue
            raise
    ray.cluster_resources()  # the connection is up and answering
    return ray


def _spares(ray: Any) -> list[Any]:
    """Worker actors started now, without a job: each imports TensorFlow while this
    process waits for one, and the job's pool configures them instead of starting
    its own (``workers: auto`` needs one per CPU). They hold no CPU while idle, so
    they never keep a running job's workers from being placed.
    ``FEDCOLLAB_SPARE_WORKERS=N`` sets how many (0: none)."""
    from fedcollab.cluster.reuse import start_spares

    text = os.environ.get("FEDCOLLAB_SPARE_WORKERS", "").strip()
    count = int(text) if text.isdigit() else int(ray.cluster_resources().get("CPU", 1))
    return start_spares(ray, count, wait=True)


def _redirect_output(log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _lock(job_dir: Path, timeout: float = 60.0) -> int:
    """Hold the job directory's lock, so two processes never run one job (restarts)."""
    fd = os.open(job_dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{job_dir} is locked by another job process") from None
            time.sleep(0.2)


def _result(job_dir: Path, ok: bool, error: str = "") -> None:
    from fedcollab.io import atomic_write_json

    atomic_write_json(job_dir / "result.json", {"ok": ok, "error": error})


def _run(task: dict[str, Any], address: str, spares: Sequence[Any] = ()) -> int:
    from fedcollab.errors import FedcollabError, Terminated
    from fedcollab.job.run import RunOptions, run_job
    from fedcollab.service.reservations import FileGate
    from fedcollab.service.specs import parse_spec_text

    job_dir = Path(task["job_dir"])
    out = job_dir / RUN_DIR
    events = job_dir / "events.jsonl"

    def on_round(line: dict[str, Any]) -> None:
        with events.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, allow_nan=False) + "\n")

    try:
        _lock(job_dir)
        spec = parse_spec_text((job_dir / "request.yaml").read_text(encoding="utf-8"),
                               check_data=False)
        if spec.task.dataset == "file" and "data_roots" in task:
            from fedcollab.service.policy import confine_data_path, normalise_roots

            # Checked at submit; again now, in case a symlink was swapped in since.
            confine_data_path(str(spec.task.path), normalise_roots(task["data_roots"]))
        # Resume only what got as far as writing its spec; an attempt killed before
        # that left nothing worth keeping (and a new job needs an empty directory).
        resume = bool(task.get("resume")) and (out / "spec.yaml").is_file()
        if not resume and out.exists():
            shutil.rmtree(out)
        # job.log is not a terminal: a plain progress line per round (at most one per 5 s)
        run_job(spec, RunOptions(out_dir=out, address=address, quiet=False, progress=None,
                                 resume=resume, on_round=on_round, spares=spares,
                                 reserve=True, reserve_gate=FileGate(job_dir)))
    except Terminated:  # the service's cancel: the run stays resumable
        _result(job_dir, False, "terminated by SIGTERM (cancelled)")
        return Terminated.exit_code
    except FedcollabError as err:
        _result(job_dir, False, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return 1
    except Exception as err:  # an internal bug: keep its traceback in job.log
        traceback.print_exc()
        _result(job_dir, False, f"internal error: {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''} (see job.log)")
        return 1
    _result(job_dir, True)
    return 0


def grade_command(task: dict[str, Any]) -> list[str]:
    """The grader CLI as the job's command."""
    job_dir = Path(task["job_dir"])
    return [sys.executable, "-m", "fedcollab.cli", "grade", str(job_dir / "request.yaml"),
            "--budget", str(task.get("budget") or "fast"),
            "--priority", str(task.get("priority") or "balanced"), "--out",
            str(job_dir / RUN_DIR)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fedcollab.service.jobproc")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--address", default=None, help="the service's Ray address")
    parser.add_argument("--mode", choices=("run", "grade"), default="run")
    parser.add_argument("--nice", type=int, default=0, help="lower CPU priority by this")
    args = parser.parse_args(argv)
    tie_to_parent(args.parent_pid, args.nice)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spares: list[Any] = []
    if args.mode == "run":
        from fedcollab.errors import FedcollabError

        t0 = time.perf_counter()
        _warm_driver()
        try:
            spares = _spares(_connect(args.address))
        except FedcollabError as err:  # one line in service.log, not a traceback
            print(f"[{time.strftime('%H:%M:%S')}] job process {os.getpid()}: {err}",
                  file=sys.stderr, flush=True)
            return 3
        raise_on_sigterm()  # after ray.init: a cancel ends the job cleanly (exit 143)
        print(f"[{time.strftime('%H:%M:%S')}] job process {os.getpid()} warm in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the service shut down the pool
    task = json.loads(line)
    job_dir = Path(task["job_dir"])
    _redirect_output(job_dir / "job.log")
    if args.mode == "grade":
        shutil.rmtree(job_dir / RUN_DIR, ignore_errors=True)  # a grade starts afresh
        command = grade_command(task)
        print(f"$ {subprocess.list2cmdline(command)}", flush=True)
        os.execv(command[0], command)
    code = _run(task, str(args.address), spares)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # Ray tears the job's actors down when this driver goes


if __name__ == "__main__":
    sys.exit(main())
