"""The runner: starts queued jobs in their own processes, tails them, reaps them.

One thread owns every child process (the kernel's parent-death signal is tied
to the thread that forked, so it must live as long as the service). It keeps
the service warm: a Ray head for the service's lifetime (unless ``--ray-address``)
and ``warm_runners`` job processes (default: one per ``max_concurrent`` slot) that
have already imported the driver's code, connected to Ray and started their spare
workers, each used for one job and then replaced.

Queued jobs start highest priority first, then in submission order, skipping those
of a token already running its quota of jobs (``max_running`` in the job's params).
Started jobs that wait for Ray to grant their reservations ask it one at a time, in
the same order (:mod:`fedcollab.service.reservations`): Ray's own queue knows
nothing of priorities.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

from fedcollab.io import atomic_write_bytes
from fedcollab.service import reservations
from fedcollab.service.store import JobRecord, JobStore

__all__ = ["Hub", "Runner", "read_events"]

CANCEL_GRACE_SECONDS = 3.0
RAY_START_TIMEOUT = 120.0


class _Feed:
    """One job's round lines, read once from its events.jsonl and kept in memory."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.offset = 0
        self.lines: list[dict[str, Any]] = []
        self.loaded = False


class _Waiting:
    """The futures of one job's waiters on one event loop with one timeout, and the
    timer that wakes them if no publish does first. Touched only on that loop,
    except `futures`, which is filled under the hub's lock."""

    __slots__ = ("futures", "timer", "woken")

    def __init__(self) -> None:
        self.futures: dict[asyncio.Future[None], None] = {}
        self.timer: Optional[asyncio.TimerHandle] = None
        self.woken = False

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def wake(self, size: int) -> None:
        """Wake every future, `size` at a time, Hub.WAKE_GAP_SECONDS apart (the group
        is detached from the hub by then: later waiters form a new one)."""
        self.woken = True
        self.disarm()
        _wake_slices(asyncio.get_running_loop(), list(self.futures), 0, size)


#: The runner's passes are at least this far apart (a job starts, a cancel is
#: signalled, a round is read at most this much later than it could be).
LOOP_GAP_SECONDS = 0.025


class Hub:
    """Wakes WatchJob and CancelJob callers when a job changes, and holds what they
    send, so a thousand watchers cost one reader.

    The runner's thread reads each running job's new event lines (:meth:`feed`) and
    publishes; the server's event loop awaits :meth:`changed` and reads the lines and
    the job's record from memory (:meth:`events`, :meth:`record`): nothing is re-read
    per watcher. The first watcher of a job that is not running loads its file once,
    off the event loop.
    """

    #: How long a cached job record answers before the next reader refreshes it
    #: (every change the service makes publishes, which refreshes it at once).
    RECORD_SECONDS = 2.0

    def __init__(self, max_jobs: int = 512) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        # job id -> its waiters, one group per (event loop, timeout)
        self._waiters: dict[str, dict[tuple[asyncio.AbstractEventLoop, float], _Waiting]] = {}
        self._feeds: OrderedDict[str, _Feed] = OrderedDict()
        self._records: dict[str, tuple[int, Any, float]] = {}
        self._max_jobs = max_jobs

    #: A broadcast wakes its watchers a slice at a time, WAKE_GAP_SECONDS apart: a
    #: thousand watchers get a round's event over ~0.3 s instead of all at once, and
    #: the calls that arrive meanwhile (GetJob, health) are served between slices
    #: rather than behind the whole broadcast's writes, completions and reads (what
    #: was measured, with and without: docs/service.md, "Serving under load").
    WAKE_SLICE = 32
    WAKE_GAP_SECONDS = 0.01

    def publish(self, job_id: str) -> None:
        with self._lock:
            self._versions[job_id] = self._versions.get(job_id, 0) + 1
            groups = self._waiters.pop(job_id, {})
        for (loop, _), group in groups.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(group.wake, self.WAKE_SLICE)

    def version(self, job_id: str) -> int:
        with self._lock:
            return self._versions.get(job_id, 0)

    async def changed(self, job_id: str, seen: int, timeout: float) -> None:
        """Return when the job's version is no longer `seen`, or after at most
        `timeout` s (sooner is possible: callers re-check what they wait for).

        A thousand watchers of a job cost a future each and one timer between them
        (per event loop and timeout): the timer is armed when the first one waits and
        disarmed by the publish that wakes them, so jobs that report often never fire
        it, and nothing per watcher goes into the event loop's timer heap.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._versions.get(job_id, 0) != seen:
                return
            groups = self._waiters.setdefault(job_id, {})
            group = groups.get((loop, timeout))
            if group is None:
                group = groups[(loop, timeout)] = _Waiting()
            group.futures[future] = None
        if group.timer is None and not group.woken:  # on this loop: no publish ran since
            group.timer = loop.call_later(timeout, self._expire, job_id, loop, timeout, group)
        try:
            await future
        finally:
            if not future.done() or future.cancelled():  # the caller went away
                with self._lock:
                    group.futures.pop(future, None)
                    attached = self._waiters.get(job_id)
                    if not group.futures and attached is not None and \
                            attached.get((loop, timeout)) is group:
                        del attached[(loop, timeout)]
                        if not attached:
                            del self._waiters[job_id]
                        group.disarm()

    def _expire(self, job_id: str, loop: asyncio.AbstractEventLoop, timeout: float,
                group: "_Waiting") -> None:
        """A group's timer fired (no publish within its timeout): wake it."""
        with self._lock:
            groups = self._waiters.get(job_id)
            if groups is not None and groups.get((loop, timeout)) is group:
                del groups[(loop, timeout)]
                if not groups:
                    del self._waiters[job_id]
        group.timer = None
        group.wake(self.WAKE_SLICE)

    # ------------------------------------------------------------ what watchers read
    def _feed(self, job_id: str) -> _Feed:
        with self._lock:
            feed = self._feeds.get(job_id)
            if feed is None:
                feed = self._feeds[job_id] = _Feed()
                while len(self._feeds) > self._max_jobs:
                    old, _ = self._feeds.popitem(last=False)
                    self._records.pop(old, None)
            else:
                self._feeds.move_to_end(job_id)
            return feed

    def feed(self, job_id: str, job_dir: Path) -> list[dict[str, Any]]:
        """Read the job's new complete lines (the runner, once per change); returns
        them (all of them, the first time)."""
        feed = self._feed(job_id)
        with feed.lock:
            before = len(feed.lines)
            _read_new(feed, job_dir / "events.jsonl")
            feed.loaded = True
            return feed.lines[before:]

    def is_loaded(self, job_id: str) -> bool:
        with self._lock:
            feed = self._feeds.get(job_id)
        return feed is not None and feed.loaded

    def events(self, job_id: str, job_dir: Path) -> list[dict[str, Any]]:
        """The job's round lines so far (a list that only grows: index into it).

        Loads the file the first time (blocking: call it off the event loop unless
        :meth:`is_loaded`)."""
        feed = self._feed(job_id)
        if not feed.loaded:
            with feed.lock:
                if not feed.loaded:
                    _read_new(feed, job_dir / "events.jsonl")
                    feed.loaded = True
        return feed.lines

    def record(self, job_id: str, fetch: Callable[[str], Any]) -> Any:
        """The job's record, read through `fetch` at most once per change (or per
        RECORD_SECONDS), however many watchers ask."""
        now = time.monotonic()
        with self._lock:
            version = self._versions.get(job_id, 0)
            cached = self._records.get(job_id)
            if cached is not None and cached[0] == version and \
                    now - cached[2] < self.RECORD_SECONDS:
                return cached[1]
        record = fetch(job_id)
        with self._lock:
            self._records[job_id] = (version, record, now)
        return record


def _read_new(feed: _Feed, path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < feed.offset:  # the file was replaced: start over
                feed.offset, feed.lines[:] = 0, []
            handle.seek(feed.offset)
            data = handle.read(size - feed.offset)
    except FileNotFoundError:
        return
    end = data.rfind(b"\n") + 1  # the last piece may still be being written
    for raw in data[:end].split(b"\n")[:-1]:
        try:
            feed.lines.append(json.loads(raw))
        except ValueError:
            continue
    feed.offset += end


def _wake(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def _wake_slices(loop: asyncio.AbstractEventLoop, futures: list["asyncio.Future[None]"],
                 start: int, size: int) -> None:
    for future in futures[start:start + size]:
        _wake(future)
    if start + size < len(futures):  # the rest a moment later
        loop.call_later(Hub.WAKE_GAP_SECONDS, _wake_slices, loop, futures, start + size, size)


def read_events(job_dir: Path) -> list[dict[str, Any]]:
    """The round lines a job reported so far (a resumed job may repeat rounds)."""
    try:
        text = (job_dir / "events.jsonl").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.split("\n")[:-1]:  # the last piece may still be being written
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


@dataclass
class _Running:
    job: JobRecord
    proc: subprocess.Popen[bytes]
    job_dir: Path
    events_size: int = -1
    cancel_at: Optional[float] = None


@dataclass
class _Pool:
    procs: deque[subprocess.Popen[bytes]] = field(default_factory=deque)


class Runner:
    """Runs the store's QUEUED jobs, at most `max_concurrent` at a time."""

    def __init__(self, store: JobStore, state_dir: Path, hub: Hub, *, max_concurrent: int = 1,
                 ray_address: Optional[str] = None, warm_runners: Optional[int] = None,
                 eager: bool = False, job_nice: int = 10) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self.hub = hub
        self.max_concurrent = max_concurrent
        self.ray_address = ray_address
        #: One warm job process per slot unless told otherwise: jobs started together
        #: (a burst) each take a warm one, none waits for a cold start.
        self.warm_runners = max_concurrent if warm_runners is None else warm_runners
        self.eager = eager
        #: Job processes and the service's own Ray head (so every Ray worker) run this
        #: much below the service in CPU priority: on a busy host the API, watchers and
        #: health checks are served before training (a job only waits for a core the
        #: service wants; an idle service costs it nothing)
        self.job_nice = job_nice
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancels: deque[str] = deque()
        self._running: dict[str, _Running] = {}
        self._pool = _Pool()
        self._ray_head: Optional[subprocess.Popen[bytes]] = None
        self._own_head: Optional[bool] = False if ray_address else None
        self._ray_tmp: Optional[str] = None
        self._log: Optional[IO[bytes]] = None
        self._thread = threading.Thread(target=self._loop, name="fedcollab-runner", daemon=True)
        self.ray_error = ""
        self._env = {k: v for k, v in os.environ.items()
                     if k not in ("PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONSAFEPATH")}
        self._env["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
        # Ray forwards the job's workers' output to its driver, the job process, whose
        # output is job.log: what `fedcollab logs` and StreamJobLogs serve. A file, so
        # the "(RayWorker pid=N)" prefixes go without terminal colours.
        self._env.setdefault("FEDCOLLAB_WORKER_LOGS", "1")
        self._env.setdefault("RAY_COLOR_PREFIX", "0")
        # The service's own code, wherever it was imported from (a checkout too), is
        # the one directory added to the job processes' path.
        home = str(Path(__file__).resolve().parents[2])
        self._env["PYTHONPATH"] = os.pathsep.join(
            [home, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                     if p and p != home]])
        #: Job processes (and the Ray they start) run in this empty directory with
        #: python -P: neither the service's working directory nor a job's files land
        #: on a worker's sys.path.
        self._cwd = self.state_dir / "cwd"
        #: Called with False while the service cannot run jobs (its Ray head is
        #: down), True when it can again: the server's health status follows.
        self.on_health: Callable[[bool], None] = lambda ok: None
        #: Called with each round line a running job reports (metrics).
        self.on_round: Callable[[dict[str, Any]], None] = lambda line: None
        self.ray_restarts = 0
        self._probed = 0.0
        self._ray_down = False  # lost and not yet restarted: start no job meanwhile

    # ------------------------------------------------------------ API (any thread)
    def start(self) -> None:
        self._log = open(self.state_dir / "service.log", "ab")
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        self._cancels.append(job_id)
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the jobs (they go back to the queue and resume on the next start)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._log is not None:
            self._log.close()

    # ------------------------------------------------------------ the runner thread
    def _loop(self) -> None:
        if self.eager and self.max_concurrent > 0:
            try:
                self._ensure_ray()
            except RuntimeError:
                pass  # noted in service.log; jobs fail with that line until Ray starts
        while not self._stopping.is_set():
            self._wake.wait(0.2)
            # Wakes that come faster than LOOP_GAP_SECONDS are taken together: every
            # submit wakes the runner, and under a submit storm one pass per submit
            # took a tenth of a core (and the GIL) from the calls being served.
            self._stopping.wait(LOOP_GAP_SECONDS)
            self._wake.clear()
            try:
                self._watch_ray()
                self._handle_cancels()
                self._reap()
                self._arbitrate()
                self._start_queued()
                self._fill_pool()
            except Exception:  # keep the service serving; the traceback goes to the log
                import traceback

                self._note(traceback.format_exc())
        self._shutdown()

    def _note(self, text: str) -> None:
        if self._log is not None:
            self._log.write(f"[{time.strftime('%H:%M:%S')}] {text.rstrip()}\n".encode())
            self._log.flush()

    def _clean_cwd(self) -> Path:
        self._cwd.mkdir(mode=0o700, exist_ok=True)
        for stray in self._cwd.iterdir():  # nothing may wait there for a job to import
            if stray.is_dir() and not stray.is_symlink():
                shutil.rmtree(stray, ignore_errors=True)
            else:
                stray.unlink(missing_ok=True)
        return self._cwd

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-P", *args, "--parent-pid", str(os.getpid()),
             "--nice", str(self.job_nice)],
            stdin=subprocess.PIPE, stdout=self._log or subprocess.DEVNULL,
            stderr=self._log or subprocess.DEVNULL, start_new_session=True, env=self._env,
            cwd=self._clean_cwd())

    def _ensure_ray(self) -> str:
        if self._own_head is False:
            assert self.ray_address is not None
            return self.ray_address
        if self._ray_head is None or self._ray_head.poll() is not None:
            self._own_head = True
            self._ray_tmp = self._fresh_ray_tmp()
            from fedcollab.cluster.connect import ensure_token_file

            # The head's token lives in the state dir, 0600, never ~/.ray/auth_token;
            # the head and every job process present it.
            token = ensure_token_file(self.state_dir / "ray-auth-token")
            token.chmod(0o600)
            self._env.update({"RAY_AUTH_TOKEN_PATH": str(token), "RAY_AUTH_MODE": "token"})
            self._env.pop("RAY_AUTH_TOKEN", None)
            self._ray_head = subprocess.Popen(
                [sys.executable, "-P", "-m", "fedcollab.service.rayhead", "--parent-pid",
                 str(os.getpid()), "--temp-dir", self._ray_tmp, "--nice", str(self.job_nice)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                start_new_session=True, env=self._env, cwd=self._clean_cwd())
            assert self._ray_head.stdout is not None
            line = self._ray_head.stdout.readline()
            try:
                head = json.loads(line)
                self.ray_address = str(head["address"])
            except (ValueError, KeyError):
                self.ray_error = "the service's Ray head did not start (see service.log)"
                self._note(self.ray_error)
                raise RuntimeError(self.ray_error) from None
            self.ray_error = ""
            self._note(f"Ray head up at {self.ray_address}")
        assert self.ray_address is not None
        return self.ray_address

    def _fresh_ray_tmp(self) -> str:
        """Ray's temp dir: STATE_DIR/ray (0700) where its socket paths fit (Unix socket
        paths are limited to 107 bytes), else a private /tmp/fcray-* directory
        recorded in the state dir so the next start removes it if this one is killed."""
        record = self.state_dir / "ray-temp-dir"
        try:
            old = record.read_text().strip()
            if old.startswith("/tmp/fcray-"):
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
        inside = self.state_dir / "ray"
        if len(str(inside)) <= 40:
            shutil.rmtree(inside, ignore_errors=True)
            inside.mkdir(mode=0o700)
            path = str(inside)
        else:
            path = tempfile.mkdtemp(prefix="fcray-", dir="/tmp")  # mode 0700
        record.write_text(path + "\n")
        return path

    def _watch_ray(self) -> None:
        """A lost Ray head: say so (health NOT_SERVING), put its running jobs back in
        the queue (they resume from their checkpoints, bit-exact), start a new head
        and the warm pool on it, then serve again."""
        head = self._ray_head
        if not self._own_head or head is None:
            return
        if head.poll() is None:
            now = time.monotonic()
            if now - self._probed < 2.0 or self.ray_address is None:
                return
            self._probed = now
            if _answers(self.ray_address):
                return
            _signal_group(head, signal.SIGKILL)  # its GCS is gone: take the rest down
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(10)
        _signal_group(head, signal.SIGKILL)  # the head's Ray processes share its group
        self.on_health(False)
        self._note(f"Ray head exited (code {head.returncode}); restarting it, running "
                   "jobs resume from their checkpoints")
        self._requeue_running()
        for proc in self._pool.procs:
            _signal_group(proc, signal.SIGKILL)
        self._pool.procs.clear()
        self.ray_address = None
        self.ray_restarts += 1
        self._ray_down = True
        try:
            self._ensure_ray()
        except RuntimeError:
            return  # still down: the next turn tries again; queued jobs wait
        self._ray_down = False
        self.on_health(True)

    def _requeue_running(self) -> None:
        """Stop every running job's process and put the job back in the queue (an
        interruption, not a failure: its next attempt resumes)."""
        for run in self._running.values():
            _signal_group(run.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(10)
            (run.job_dir / "result.json").unlink(missing_ok=True)
            self.store.transition(run.job.id, ["RUNNING"], "QUEUED")
            self.hub.publish(run.job.id)
        self._running.clear()

    def _fill_pool(self) -> None:
        if self.max_concurrent <= 0 or self.ray_error or self._ray_down:
            return
        if not self.eager and self.ray_address is None and self._ray_head is None:
            return  # lazy: no Ray (and no pool) until the first job needs it
        target = self.warm_runners
        if self._running:
            # Warming a runner is CPU-heavy (its spare workers import TensorFlow):
            # while jobs run, warm only for the jobs already waiting (each needs one
            # as soon as a slot frees; warming it now overlaps the running jobs
            # instead of following them). The rest of the pool fills once idle.
            target = self.store.count_state("QUEUED", at_most=target)
        alive = deque(p for p in self._pool.procs if p.poll() is None)
        self._pool.procs = alive
        while len(self._pool.procs) < target:
            address = self._ensure_ray()
            self._pool.procs.append(self._spawn(["-m", "fedcollab.service.jobproc",
                                                 "--address", address]))

    def _take_runner(self) -> subprocess.Popen[bytes]:
        while self._pool.procs:
            proc = self._pool.procs.popleft()
            if proc.poll() is None:
                return proc
        return self._spawn(["-m", "fedcollab.service.jobproc", "--address", self._ensure_ray()])

    def _start_queued(self) -> None:
        if self._ray_down:
            return
        # One at a time: each start may bring its token to its quota.
        while len(self._running) < self.max_concurrent:
            found = self.store.next_queued(1, skip_owners=self._at_quota())
            if not found:
                return
            job = found[0]
            job_dir = self.state_dir / "jobs" / job.id
            if not self.store.transition(job.id, ["QUEUED"], "RUNNING", started=time.time(),
                                         attempts=job.attempts + 1, error=""):
                continue  # cancelled meanwhile
            job = self.store.get(job.id)
            task = {"job_dir": str(job_dir), "resume": job.attempts > 1, **job.params}
            try:
                self._prepare_dir(job, job_dir)
                # no other job waits for Ray: this one asks at once (else _arbitrate
                # gives it the baton in priority order)
                reservations.clear(job_dir, go=job.kind == "run" and not any(
                    reservations.pending(run.job_dir) for run in self._running.values()))
                if job.kind == "grade":
                    proc = self._spawn(["-m", "fedcollab.service.jobproc", "--mode", "grade"])
                else:
                    proc = self._take_runner()
                assert proc.stdin is not None
                proc.stdin.write((json.dumps(task) + "\n").encode())
                proc.stdin.close()
            except (OSError, RuntimeError) as err:
                self.store.transition(job.id, ["RUNNING"], "FAILED", finished=time.time(),
                                      error=f"could not start: {err}")
                self.hub.publish(job.id)
                continue
            self._running[job.id] = _Running(job, proc, job_dir)
            self._note(f"job {job.id} started (attempt {job.attempts}, pid {proc.pid})")
            self.hub.publish(job.id)

    def _arbitrate(self) -> None:
        """Running jobs ask Ray for their reservations one at a time, in priority
        order (see fedcollab.service.reservations)."""
        if len(self._running) > 1 or any(
                reservations.pending(run.job_dir) for run in self._running.values()):
            reservations.arbitrate([
                reservations.Contender(run.job_dir, run.job.priority, run.job.seq)
                for run in self._running.values()])

    def _at_quota(self) -> list[str]:
        """Owner ids running as many jobs as their token's quota allows (the quota a
        job carries is its token's when it was submitted)."""
        running: dict[str, int] = {}
        quota: dict[str, int] = {}
        for run in self._running.values():
            owner = run.job.owner_id
            running[owner] = running.get(owner, 0) + 1
            limit = int(run.job.params.get("max_running") or 0)
            if limit:
                quota[owner] = min(quota.get(owner, limit), limit)
        return sorted(owner for owner, limit in quota.items() if running[owner] >= limit)

    def _prepare_dir(self, job: JobRecord, job_dir: Path) -> None:
        """The job's directory with request.yaml, the spec as submitted (kept from an
        earlier attempt, or from a service that wrote it at submit time)."""
        job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # An earlier attempt's result says nothing about this one.
        (job_dir / "result.json").unlink(missing_ok=True)
        request = job_dir / "request.yaml"
        if request.is_file():
            return
        text = self.store.spec(job.id)
        if not text:
            raise RuntimeError("its spec is missing (neither in the store nor request.yaml)")
        atomic_write_bytes(request, text.encode("utf-8"))

    def _tail(self, run: _Running) -> None:
        try:
            size = (run.job_dir / "events.jsonl").stat().st_size
        except FileNotFoundError:
            return
        if size == run.events_size:
            return
        run.events_size = size
        new = self.hub.feed(run.job.id, run.job_dir)  # the job's one reader
        for line in new:
            self.on_round(line)
        if new:
            self.store.set_progress(run.job.id, int(new[-1].get("round", 0)))
            self.hub.publish(run.job.id)

    def _reap(self) -> None:
        for job_id, run in list(self._running.items()):
            self._tail(run)
            code = run.proc.poll()
            if code is None:
                if run.cancel_at is not None and \
                        time.monotonic() - run.cancel_at > CANCEL_GRACE_SECONDS:
                    _signal_group(run.proc, signal.SIGKILL)
                continue
            if code != 0 and self._own_head and self.ray_address and \
                    not _answers(self.ray_address):
                self._probed = 0.0  # its Ray is gone, not the job: _watch_ray requeues it
                continue
            del self._running[job_id]
            self._finish(run, code)

    def _finish(self, run: _Running, code: int) -> None:
        run.events_size = -1
        self._tail(run)  # its last lines, before watchers see it end
        now = time.time()
        job_id = run.job.id
        if run.cancel_at is not None:
            self.store.transition(job_id, ["RUNNING"], "CANCELLED", finished=now)
        elif code == 0 and (run.job.kind == "grade" or _result_ok(run.job_dir)):
            summary = ""
            try:
                summary = (run.job_dir / "run" / "summary.json").read_text(encoding="utf-8")
            except FileNotFoundError:
                pass
            self.store.transition(job_id, ["RUNNING"], "SUCCEEDED", finished=now,
                                  summary=summary)
        else:
            error = _failure(run.job_dir, code)
            if not (run.job_dir / "result.json").exists() or _result_ok(run.job_dir):
                # It died before writing its result (or after writing "ok"): leave one
                # that says it failed, so the job's files agree with the store.
                atomic_write_bytes(run.job_dir / "result.json", json.dumps(
                    {"ok": False, "error": error}).encode(), mode=0o600)
            self.store.transition(job_id, ["RUNNING"], "FAILED", finished=now, error=error)
        self._note(f"job {job_id} ended with exit code {code}")
        self.hub.publish(job_id)

    def _handle_cancels(self) -> None:
        while self._cancels:
            job_id = self._cancels.popleft()
            run = self._running.get(job_id)
            if run is not None and run.cancel_at is None:
                run.cancel_at = time.monotonic()
                _signal_group(run.proc, signal.SIGTERM)

    def _shutdown(self) -> None:
        for run in self._running.values():
            _signal_group(run.proc, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        for run in self._running.values():
            try:
                run.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(run.proc, signal.SIGKILL)
                run.proc.wait()
            # Interrupted, not failed: it resumes from its checkpoint on the next start.
            self.store.transition(run.job.id, ["RUNNING"], "QUEUED")
            self.hub.publish(run.job.id)
        self._running.clear()
        for proc in self._pool.procs:
            _close(proc)
        if self._ray_head is not None:
            _close(self._ray_head, timeout=20.0)
        if self._ray_tmp:
            shutil.rmtree(self._ray_tmp, ignore_errors=True)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _close(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Close a helper's stdin (its signal to exit); kill it if it lingers."""
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout)
    except (OSError, subprocess.TimeoutExpired):
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _answers(address: str, timeout: float = 1.0) -> bool:
    """Whether the Ray head's GCS port still accepts a connection."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _result_ok(job_dir: Path) -> bool:
    try:
        return json.loads((job_dir / "result.json").read_text(encoding="utf-8")).get("ok") \
            is True
    except (OSError, ValueError, AttributeError):
        return False


def _failure(job_dir: Path, code: int) -> str:
    try:
        result = json.loads((job_dir / "result.json").read_text(encoding="utf-8"))
        if result.get("error"):
            return str(result["error"])
    except (OSError, ValueError):
        pass
    last = ""
    try:
        lines = [x for x in (job_dir / "job.log").read_text(errors="replace").splitlines()
                 if x.strip()]
        last = lines[-1].strip()[:300] if lines else ""
    except OSError:
        pass
    if code == 0:
        return "job process exited without a result (see job.log)"
    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"job process {how}" + (f": {last}" if last else "") + " (see job.log)"
