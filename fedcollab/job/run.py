"""A whole job: connect to Ray, assemble the collaborators, run the rounds, release.

The parts are named and live in their own modules: the roster and sampler
(:mod:`~fedcollab.job.sampling`), the :class:`~fedcollab.cluster.pool.WorkerPool`, the
:class:`~fedcollab.aggregation.Aggregator`, DP (:class:`~fedcollab.privacy.server.DpServer`),
secure aggregation (:class:`~fedcollab.job.secure.SecureCoordinator`), the
:class:`~fedcollab.job.rounds.RoundLoop` and the outputs as callbacks
(:mod:`~fedcollab.job.callbacks`). This module only puts them together in order, resumes
from the last committed round, and writes the release and the summary.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

import numpy as np

from fedcollab.cluster.pool import plan_workers
from fedcollab.errors import FedcollabError
from fedcollab.io import append_line_durably, atomic_write_bytes, load_npz
from fedcollab.job.callbacks import (
    CallbackList,
    Checkpointer,
    MetricsLog,
    Plots,
    ProgressBar,
    RoundCallback,
    SummaryFile,
    TensorBoardLog,
)
from fedcollab.job.outdir import OutDirPlan, plan_out_dir
from fedcollab.job.records import JobInfo, RoundRecord, Summary
from fedcollab.job.rounds import RoundLoop
from fedcollab.spec import JobSpec, spec_to_dict
from fedcollab.spec.roster import ParticipantInfo, policy, roster
from fedcollab.types import Weights
from fedcollab.worker.messages import Pool

if TYPE_CHECKING:
    from fedcollab.cluster.reserve import ReservationGate

__all__ = ["RunOptions", "JobResult", "JobFailedError", "run_job"]


class JobFailedError(FedcollabError):
    """The job ran but learned nothing (every update of every round was refused)."""


class RemoteParticipants(Protocol):
    """Participants that run elsewhere, reached over a link (a vendor's silo:
    :class:`fedcollab.silo.remote.SiloParticipants`): the job's own workers do not
    host them, and the pool it builds wraps theirs."""

    def pids(self, spec: JobSpec) -> frozenset[int]:
        """The roster indices hosted remotely."""
        ...

    def pool(self, local: Pool, spec: JobSpec, out_dir: Path) -> Pool:
        """The job's pool: ``local`` (the other participants) and the remote ones."""
        ...


@dataclass(frozen=True)
class RunOptions:
    """How to run a job (the spec says what to run)."""

    out_dir: Optional[Path] = None
    address: Optional[str] = None
    quiet: bool = False
    progress: Optional[bool] = None   # None: on when stderr is a terminal and not quiet
    resume: bool = False
    release: bool = True
    keep_checkpoints: int = 2
    callbacks: Sequence[RoundCallback] = ()
    on_round: Optional[Callable[[dict[str, Any]], None]] = None  # each metrics line
    # workers started ahead of the job (fedcollab.cluster.reuse.start_spares): a warm service's
    spares: Sequence[Any] = ()
    # hold the workers' resources in Ray for the whole job (a placement group) and wait
    # for them: jobs sharing a cluster queue instead of contending (the job service's)
    reserve: bool = False
    # with `reserve`: ask Ray only while this gate is held (the job service's priority
    # order between its jobs; fedcollab.cluster.reserve.ReservationGate)
    reserve_gate: Optional[ReservationGate] = None
    # where the participants run: "ray" (a cluster, or an embedded Ray) or "inprocess"
    # (this process: no Ray; for debugging, tests and one-host runs of small jobs)
    transport: str = "ray"
    # participants hosted elsewhere (docs/cross-silo.md): `fedcollab run --silo-listen`
    remote: Optional[RemoteParticipants] = None


@dataclass(frozen=True)
class JobResult:
    """What a finished job returns (its files are in ``out_dir``)."""

    out_dir: Path
    summary: dict[str, Any]   # summary.json as a plain dict: ``record.to_json()``
    weights: Weights
    metrics: list[dict[str, Any]] = field(default_factory=list)   # the metrics.jsonl lines
    records: list[RoundRecord] = field(default_factory=list)
    record: Optional[Summary] = None   # summary.json as the frozen record the job built

    @classmethod
    def of(cls, out_dir: Path, record: Summary, weights: Weights,
           metrics: list[dict[str, Any]], records: list[RoundRecord]) -> JobResult:
        """The result whose ``summary`` is ``record``'s dict."""
        return cls(out_dir, record.to_json(), weights, metrics, records, record)

    @property
    def rounds_completed(self) -> int:
        return int(self.summary["rounds_completed"])

    @property
    def final_accuracy(self) -> Optional[float]:
        return self.summary.get("final_accuracy")

    @property
    def release_dir(self) -> Optional[Path]:
        release = self.summary.get("release")
        return Path(release) if release else None


class _OnRound(RoundCallback):
    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_round_end(self, record: RoundRecord) -> None:
        self.fn(record.to_json())


@dataclass
class _Driver:
    """The driver's view of the model: its initial weights, and who evaluates and
    exports it.

    A job's driver does not load TensorFlow (the slowest import, contending for CPU with
    Ray's start and the workers' own import): the workers build the model from the
    job's seed anyway, so one of them hands over the initial weights, evaluates each
    round's global weights on the held-out set and exports the release's
    ``model.keras`` (:meth:`from_pool`). :meth:`build` does it all in this process, for
    ``fedcollab validate --deep`` and tests.
    """

    weights: Weights
    classification: bool
    weight_scale: float
    evaluate: Any              # weights -> (loss, accuracy), with submit() when remote
    export: Callable[[Weights], Any]  # weights -> a Keras model or release.ModelFile
    private_arrays: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # by group

    @classmethod
    def from_pool(cls, pool: Pool) -> _Driver:
        info = pool.model_info()
        return cls(list(info.weights), info.classification, info.max_samples,
                   _RemoteEvaluation(pool), pool.export_model, dict(info.private_arrays))

    @classmethod
    def build(cls, spec: JobSpec) -> _Driver:
        """Build and check the model in this process (imports TensorFlow)."""
        from fedcollab.data import load_federation
        from fedcollab.worker.models import (
            build_checked_model,
            misfit_as_spec_error,
            private_arrays_by_group,
        )
        from fedcollab.worker.training import LocalTrainer, configure_tensorflow

        configure_tensorflow(threads=1, deterministic=True)
        data = load_federation(spec)
        model = build_checked_model(spec, data)
        weights = [np.array(v.numpy()) for v in model.weights]
        classification = data.num_classes > 0
        with misfit_as_spec_error(spec, data):
            evaluator = LocalTrainer(model, classification=classification)
            evaluator.evaluate(weights, data.x_test[:2], data.y_test[:2])  # trace now

        def evaluate(w: Weights) -> tuple[float, float]:
            loss, acc = evaluator.evaluate(w, data.x_test, data.y_test)
            return float(loss), float(acc)

        # Secure weights are n_i / weight_scale so they fit the fixed-point range; the
        # server only needs this public bound on a participant's dataset size.
        return cls(weights, classification, float(data.max_samples()), evaluate,
                   lambda w: model, private_arrays_by_group(model, spec))


class _RemoteEvaluation:
    """Evaluation on a worker of the pool, startable ahead of its result."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def __call__(self, weights: Weights) -> tuple[float, float]:
        return self.pool.evaluate(weights)

    def submit(self, weights: Weights) -> Callable[[], tuple[float, float]]:
        return self.pool.submit_evaluate(weights)


class _Status:
    """One-line progress messages on a terminal's stderr while a job starts.

    Off when quiet or when stderr is not a terminal (as for the progress bar), so a
    script that reads stderr sees only errors, each on one line.
    """

    def __init__(self, *, quiet: bool) -> None:
        self.enabled = not quiet and sys.stderr.isatty()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"fedcollab: {message}", file=sys.stderr, flush=True)


class _ConsoleWarnings(RoundCallback):
    """A warning line for every round that did not change the model, and why."""

    def on_round_end(self, record: RoundRecord) -> None:
        if record.aborted:
            why = f"aborted: {record.aborted}"
        elif record.skipped:
            why = f"skipped: {record.skipped}"
        elif record.accepted == 0:
            kinds: dict[str, int] = {}
            for reason in record.rejected.values():
                kind = reason.split(":")[0]
                kinds[kind] = kinds.get(kind, 0) + 1
            detail = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) or "none arrived"
            why = f"no update was accepted ({detail}); the model did not change"
        else:
            return
        print(f"fedcollab: warning: round {record.round} {why}", file=sys.stderr, flush=True)


def _learned(metrics: Sequence[Mapping[str, Any]]) -> bool:
    return any(m.get("accepted", m.get("trained", 0)) > 0 and "aborted" not in m
               and "skipped" not in m for m in metrics)


@dataclass(frozen=True)
class _Committed:
    """The last committed round of an output directory, read back for a resume."""

    round: int
    arrays: Mapping[str, np.ndarray]
    meta: Mapping[str, Any]
    history: list[dict[str, Any]]
    uncommitted: int = 0  # rounds that ran after the commit (the server saw them)
    # under DP, each round that started after the commit: (its sample, or None when
    # lost; the least multiplier its journal entry or metrics line records)
    lost: list[tuple[Optional[list[int]], Optional[float]]] = field(default_factory=list)


def _read_committed(out: Path) -> Optional[_Committed]:
    """The committed round in ``out`` (None if none), metrics trimmed to it.

    Lines after the committed round, and a torn last line from a crash during an
    append, are dropped: the file is rewritten (atomically) to the committed rounds.
    """
    pointer = out / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    latest = json.loads(pointer.read_text())
    arrays, meta = load_npz(out / "checkpoints" / latest["file"])
    committed = int(meta["round"])
    history: list[dict[str, Any]] = []
    later: set[int] = set()
    multipliers: dict[int, float] = {}
    spent_nothing: set[int] = set()
    nobody: set[int] = set()  # rounds that sampled nobody (the release reader's event)
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        for text in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue  # a torn line: the crash came before its round was committed
            if isinstance(line, dict) and 0 < line.get("round", 0) <= committed:
                history.append(line)
            elif isinstance(line, dict) and line.get("round", 0) > committed:
                later.add(int(line["round"]))
                if "budget_stop" in line:  # refused before it trained: nothing spent
                    spent_nothing.add(int(line["round"]))
                elif isinstance(line.get("accounted_multiplier"), (int, float)):
                    multipliers[int(line["round"])] = float(line["accounted_multiplier"])
                if line.get("participants") == 0:
                    nobody.add(int(line["round"]))
        atomic_write_bytes(metrics, "".join(json.dumps(m) + "\n" for m in history).encode())
    journal: dict[int, dict[str, Any]] = {}
    path = out / "checkpoints" / JOURNAL
    if path.exists():
        for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(text)
                if int(entry["round"]) > committed:
                    journal[int(entry["round"])] = entry
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a torn last line: that round had not started training
    lost: list[tuple[Optional[list[int]], Optional[float]]] = []
    for r in sorted((later | set(journal)) - spent_nothing):
        entry = journal.get(r, {})
        known = [m for m in (entry.get("multiplier"), multipliers.get(r)) if m is not None]
        sampled = [] if r in nobody else entry.get("sampled")
        lost.append((sampled, min(known) if known else None))
    return _Committed(committed, arrays, meta, history, len(later), lost)


#: Under DP, one line per round written before it trains: its sample and multiplier.
JOURNAL = "privacy-journal.jsonl"


class _Journal:
    """Appends a round's DP spending before the round trains (fsync'd: it must survive
    the crash that makes the round run twice)."""

    def __init__(self, out: Path) -> None:
        self.path = out / "checkpoints" / JOURNAL

    def __call__(self, entry: dict[str, Any]) -> None:
        append_line_durably(self.path, json.dumps(entry))


def run_job(spec: JobSpec, options: RunOptions = RunOptions()) -> JobResult:
    """Run a whole job against Ray (embedded when ``options.address`` is None).

    Every check a user's mistake can fail runs first, before anything is written: the
    output directory, the data, the secure encoding and the release key before Ray
    starts, then the model against the data, in the workers that build it.

    The driver does not load TensorFlow: Ray starts on an idle machine and the
    workers import TensorFlow and trace their graphs, while the driver only waits;
    one worker hands over the model's initial weights, evaluates every round and
    exports the release's model (``summary.json`` ``phases_seconds`` says where the
    time went).

    Raises:
        fedcollab.job.outdir.JobAlreadyFinished: ``resume`` of a finished job (exit 0).
        JobFailedError: the job ran but no round accepted an update (exit 1).
    """
    from fedcollab.job.preflight import preflight

    wall0 = time.perf_counter()
    phases: dict[str, float] = {}
    say = _Status(quiet=options.quiet)
    say(f"checking {spec.name}: the spec, the data and the output directory")
    plan = plan_out_dir(spec, options.out_dir, resume=options.resume)
    preflight(spec)
    phases["checks"] = time.perf_counter() - wall0
    t = time.perf_counter()
    with _connected(spec, options, say) as ray:
        phases["ray_start"] = time.perf_counter() - t
        t = time.perf_counter()
        pool = _start_pool(ray, spec, plan, options, say)
        try:
            _load_protocol(spec)  # while the workers start, not in the job's set-up
            pool.wait_ready()  # a model that does not fit the data fails here
            phases["workers_ready"] = time.perf_counter() - t
            t = time.perf_counter()
            driver = _Driver.from_pool(pool)
            plan.create()
            job = _Job(spec, options, wall0, plan, driver, say, phases, pool=pool)
            phases["setup"] = time.perf_counter() - t
            result = job.run()
        finally:
            # free the workers' CPUs now: on a shared Ray (a grade's mixes, the job
            # service, tests) the next job's workers would otherwise wait for them
            pool.shutdown()
        t = time.perf_counter()
    phases["shutdown"] = time.perf_counter() - t
    assert result.record is not None  # _Job.run builds its result from a Summary
    record = replace(result.record, wall_seconds=time.perf_counter() - wall0,
                     phases_seconds=dict(phases))
    result = JobResult.of(result.out_dir, record, result.weights, result.metrics,
                          result.records)
    if (result.out_dir / "summary.json").exists():  # now with the shutdown's time
        from fedcollab.io import atomic_write_json

        atomic_write_json(result.out_dir / "summary.json", result.summary)
    return result


def _committed_round(plan: OutDirPlan) -> int:
    """The round a resumed job continues after (0: none), read without changing a file."""
    pointer = plan.path / "checkpoints" / "latest.json"
    if not plan.resume or not pointer.exists():
        return 0
    try:
        return int(json.loads(pointer.read_text())["round"])
    except (ValueError, KeyError, TypeError):
        return 0


@contextlib.contextmanager
def _connected(spec: JobSpec, options: RunOptions, say: _Status) -> Iterator[Any]:
    """The ``ray`` module, connected (or an embedded Ray started) for the job; ``None``
    for a job whose participants run in this process (``transport: inprocess``)."""
    if options.transport == "inprocess":
        yield None
        return
    from fedcollab.cluster.connect import connect

    say("starting Ray")
    custom: dict[str, float] = {}
    for group in spec.participants:
        for key, amount in group.resources.items():
            custom[key] = max(custom.get(key, 0.0), float(amount))
    with connect(options.address, resources=custom, num_cpus=_embedded_cpus(spec)) as ray:
        yield ray


def _start_pool(ray: Any, spec: JobSpec, plan: OutDirPlan, options: RunOptions,
                say: _Status) -> Pool:
    """Create the job's workers; on Ray without waiting for them (they start meanwhile).

    In process, the workers host what the Ray pool's plan for an embedded Ray gives
    them, so a job's updates and weights are the same on either transport.
    """
    people = roster(spec)
    resume_round = _committed_round(plan)
    resuming = f" (resuming after round {resume_round})" if resume_round else ""
    remote = options.remote
    elsewhere = remote.pids(spec) if remote is not None else frozenset()
    local: Pool
    if ray is None:
        from fedcollab.worker.inprocess import InProcessPool

        # the embedded plan less the remote participants: the local ones are hosted as
        # in an embedded run, so their updates come back in the same order
        hosted = [[p for p in pids if p not in elsewhere]
                  for _, pids in plan_workers(spec, people, _embedded_cpus(spec))]
        hosted = [pids for pids in hosted if pids]
        say(f"loading {len(hosted)} workers in this process for {len(people)} "
            f"participants{resuming}")
        local = InProcessPool(spec, plan.path.resolve(), hosted=hosted,
                              resume_round=resume_round)
    else:
        from fedcollab.cluster.pool import WorkerPool

        pool = WorkerPool(ray, spec, people, plan.path.resolve(), resume_round=resume_round,
                          spares=options.spares, wait=False, reserve=options.reserve,
                          on_wait=None if options.quiet else _waiting, exclude=elsewhere,
                          gate=options.reserve_gate)
        say(f"starting {len(pool)} workers for {len(people)} participants{resuming}")
        local = pool
    if remote is None:
        return local
    say(f"{len(elsewhere)} participants are remote (cross-silo)")
    return remote.pool(local, spec, plan.path.resolve())


def _waiting(message: str) -> None:
    """Why a job has not started its rounds yet: worth a line even in a log file."""
    print(f"fedcollab: {message}", file=sys.stderr, flush=True)


def _load_protocol(spec: JobSpec) -> None:
    """Import the secure-aggregation server of a job with a secure group (its
    ``cryptography`` and the protocol's modules) while the driver only waits."""
    if any(policy(g.sharing).in_secure_sum for g in spec.participants):
        import fedcollab.job.secure  # noqa: F401
        import fedcollab.secure.server  # noqa: F401


def _embedded_cpus(spec: JobSpec) -> int:
    pinned = len({tuple(sorted(g.resources.items())) for g in spec.participants if g.resources})
    return max(os.cpu_count() or 1, pinned + 1)


class _Job:
    """One run of a job: the collaborators, assembled in order."""

    def __init__(self, spec: JobSpec, options: RunOptions, wall0: float,
                 plan: OutDirPlan, driver: _Driver, say: _Status,
                 phases: Optional[dict[str, float]] = None, *, pool: Pool) -> None:
        from fedcollab.aggregation import Aggregator
        from fedcollab.privacy.server import DpServer

        self.spec = spec
        self.options = options
        self.wall0 = wall0
        self.phases = phases if phases is not None else {}
        self.out = plan.path.resolve()
        people = roster(spec)
        self.people: Sequence[ParticipantInfo] = people
        self.driver = driver
        committed = _read_committed(self.out) if plan.resume else None
        if plan.resume and committed is None:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)  # no round was committed
        self.start_round = committed.round + 1 if committed else 1
        self.history = committed.history if committed else []
        atomic_write_bytes(self.out / "spec.yaml", _yaml(spec_to_dict(spec)).encode())
        shapes = [w.shape for w in self.driver.weights]
        by_group = self.driver.private_arrays
        aggregator = Aggregator.from_spec(
            spec, shapes, max_samples=self.driver.weight_scale,
            private={pid: arrays for g, arrays in by_group.items()
                     for pid in people.group_range(g)})
        from fedcollab.spec.roster import group_sampling_rates

        rates = group_sampling_rates(spec)
        dp = DpServer.from_spec(spec, dim=sum(int(np.prod(s)) for s in shapes))
        if dp.on and max(rates.values()) > spec.fraction + 1e-9:
            exposed = max(rates, key=lambda g: rates[g])
            print(f"fedcollab: warning: privacy: group {exposed!r} takes part with rate "
                  f"{rates[exposed]:.2f} per round, not fraction={spec.fraction:g} (groups "
                  "are sampled to at least one member, secure groups to secure.min_group); "
                  f"the release reader's epsilon is accounted at {rates[exposed]:.2f}",
                  file=sys.stderr, flush=True)
        self.pool = pool
        secure = None
        if any(policy(g.sharing).in_secure_sum for g in spec.participants):
            from fedcollab.job.secure import SecureCoordinator

            secure = SecureCoordinator(spec, self.pool)
        self.callbacks = CallbackList()
        self.loop = RoundLoop(spec, self.people, pool=self.pool, aggregator=aggregator, dp=dp,
                              evaluate=self.driver.evaluate, weights=self.driver.weights,
                              weight_scale=self.driver.weight_scale,
                              classification=self.driver.classification, secure=secure,
                              callbacks=self.callbacks,
                              journal=_Journal(self.out) if dp.on else None)
        if committed:
            self.loop.restore(committed.arrays, committed.meta)
            if dp.on:
                # rounds that started after the commit were seen by the server: they
                # run again now, and both runs are spent, with everything they spent
                for sampled, multiplier in committed.lost:
                    dp.account_lost(sampled, multiplier)
        self.checkpointer = Checkpointer(self.out, self.loop, keep=options.keep_checkpoints)
        self.tensorboard = TensorBoardLog(self.out)
        builtin: list[RoundCallback] = [
            MetricsLog(self.out), self.checkpointer, self.tensorboard, _ConsoleWarnings(),
            ProgressBar(spec.rounds, enabled=options.progress, quiet=options.quiet,
                        classification=self.driver.classification, wall_start=wall0)]
        if options.on_round is not None:
            builtin.append(_OnRound(options.on_round))
        # the user's callbacks see each round after it is logged; the plots and the
        # summary come last, once the user's on_job_end has run
        for cb in [*builtin, *options.callbacks, Plots(self.out),
                   SummaryFile(self.out, wall_start=wall0)]:
            self.callbacks.append(cb)

    def run(self) -> JobResult:
        spec = self.spec
        info = JobInfo(spec, self.out, self.start_round, self.driver.classification,
                       tuple(RoundRecord.from_json(m) for m in self.history))
        records: list[RoundRecord] = []
        rounds_seconds = 0.0
        try:
            self.callbacks.on_job_begin(info)
            for r in range(self.start_round, spec.rounds + 1):
                if self.loop.stopped:  # the privacy budget: no further round may run
                    break
                t0 = time.perf_counter()
                records.append(self.loop.run_round(r))
                rounds_seconds += time.perf_counter() - t0
            self.checkpointer.flush()
        except BaseException:
            self.checkpointer.close()
            self.tensorboard.close()  # what it holds is flushed; its file is not leaked
            raise
        self.phases["rounds"] = rounds_seconds
        t_release = time.perf_counter()
        metrics = list(self.history) + [r.to_json() for r in records]
        record = self._summary(metrics, rounds_seconds)
        if record.failure is not None:
            self.callbacks.on_job_end(JobResult.of(self.out, record, self.loop.weights,
                                                   metrics, records))
            raise JobFailedError(f"{spec.name}: {record.failure}; no release was written "
                                 f"(see {self.out / 'metrics.jsonl'})")
        if self.options.release:
            from fedcollab.job.release import write_release

            release = write_release(self.out / "release",
                                    model=self.driver.export(self.loop.weights),
                                    weights=self.loop.weights, spec=spec,
                                    participants=self.people, summary=record.to_json(),
                                    key_path=spec.release.key, sign=spec.release.sign)
            record = replace(record, release=str(release))
        self.phases["release"] = time.perf_counter() - t_release
        if self.options.reserve:
            # the workers are done (the release is exported): give their reserved CPUs
            # to the next queued job now, not after the plots and the summary
            self.pool.shutdown()
        # shutdown is added once Ray has stopped
        record = replace(record, phases_seconds=dict(self.phases))
        result = JobResult.of(self.out, record, self.loop.weights, metrics, records)
        self.callbacks.on_job_end(result)
        return result

    def _summary(self, metrics: Sequence[dict[str, Any]], rounds_seconds: float) -> Summary:
        """The job's summary.json once its rounds end: succeeded, or failed and why."""
        spec, loop = self.spec, self.loop
        last = metrics[-1] if metrics else {}
        groups = [{"name": g.name, "role": g.role, "count": g.count, "sharing": g.sharing,
                   "private_layers": list(g.private_layers)} for g in spec.participants]
        reasons: dict[str, int] = {}
        for m in metrics:
            for reason in m["rejected"].values():
                kind = reason.split(":")[0]
                reasons[kind] = reasons.get(kind, 0) + 1
        # a resumed job's rounds before the resume count too: their seconds are in
        # its metrics lines (the loop's time per round)
        all_rounds = rounds_seconds + sum(float(m.get("seconds") or 0.0) for m in self.history)
        failure = None
        if not _learned(metrics):
            failure = ("no round accepted an update: every update was rejected ("
                       + ", ".join(f"{k}: {n}" for k, n in sorted(reasons.items())) + ")"
                       if reasons else "no round changed the model (aborted or skipped rounds)")
            if "non_finite" in reasons:  # the first cause, whichever group sent them
                failure = ("updates were non-finite (NaN or inf): the training diverged; "
                           "lower local.learning_rate or check the data; " + failure)
        return Summary(
            name=spec.name, out_dir=str(self.out),
            rounds=spec.rounds, rounds_completed=len(metrics),
            wall_seconds=time.perf_counter() - self.wall0, rounds_seconds=all_rounds,
            seconds_per_round=all_rounds / max(len(metrics), 1),
            participants={"total": len(self.people), "groups": groups},
            workers=self.pool.placement, workers_replaced=self.pool.replaced,
            bytes_up=int(loop.bytes_up), bytes_down=int(loop.bytes_down),
            rejected_updates=loop.rejected_total,
            final_loss=last.get("loss"),
            seed=spec.seed,
            final_accuracy=last.get("accuracy") if self.driver.classification else None,
            vendor_accuracy=last.get("vendor_accuracy"),
            privacy=_privacy_summary(loop.dp),
            aggregation={"rule": spec.aggregation.rule,
                         "server_optimizer": spec.aggregation.server_optimizer},
            rejected_by_reason=reasons,
            status="failed" if failure else "succeeded", failure=failure)


def _privacy_summary(server: Any) -> dict[str, Any]:
    """summary.json's ``privacy``: the settings, then every observer's epsilon
    (docs/privacy.md). ``epsilon`` is the largest over the observers the mode does not
    trust; ``epsilon_by_observer`` has each (null: sees data without noise)."""
    dp = server.spec
    out: dict[str, Any] = {
        "mode": server.mode, "noise_multiplier": server.noise_multiplier, "delta": dp.delta,
        "epsilon": server.epsilon, "clip_norm": server.clip_norm if server.on else None,
        "sampling_rate": server.sampling_rate if server.on else None,
        "group_sampling_rates": server.group_rates if server.on else None}
    figures = server.figures()
    if figures is not None:
        out.update({"adjacency": figures["adjacency"],
                    "epsilon_by_observer": figures["by_observer"],
                    "trusted": figures["trusted"],
                    "organisation_epsilon": figures["organisation"],
                    "target_epsilon": dp.target_epsilon,
                    "planned_rounds_per_participant": server.planned_rounds})
    if server.stopped is not None:
        out["budget_stop"] = server.stopped
    return out


def _yaml(data: Any) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False))
