"""`fedcollab grade`: run the task under each policy mix, attack each, write the scorecard.

All runs share one Ray session (:func:`fedcollab.cluster.connect` yields an
initialised Ray and :func:`fedcollab.job.run.run_job` reuses it) and run side
by side, each :func:`run_job` in a thread of this process. Threads rather than Ray
tasks: a run's work is already in its own Ray worker actors, and what is left in
the driver (the round loop, secure-sum unmasking) is light and mostly waits on
Ray; a Ray task per run would be one more process per mix, and would need CPUs of
its own that the runs' workers then lack.

How many run at once is bounded by what the cluster can place: every run's worker
actors together (one worker per run unless the spec says otherwise, plus a worker
per pinned group) must fit in the resources available when grading starts, for
every run admitted, so no two runs can each hold part of what they need and wait on
each other for ever (each run waits for all its workers). At least one runs.

run_job is safe to run in threads here: it installs no signal handlers, changes
neither the working directory nor (on an initialised Ray) the environment, and with
``quiet``/``progress=False`` prints only warnings; each run has its own output
directory, TensorBoard writer and checkpoint thread. A run's driver neither imports
TensorFlow nor builds a model (its workers build, evaluate and export it), so
nothing process-wide is shared between runs; every model the grader itself needs
is built in this process (:class:`~fedcollab.grading.measure.TaskMeasurer`). With
that each run's weights and metrics are what it would give alone, in any order.

While the runs train, the driver thread does the work that needs no run (the LiRA
shadow models), then attacks each mix as it finishes; the poisoning simulations
(backdoor, Byzantine) start from the final model of the first finished run without DP,
so they attack a model near convergence while the other runs train. The attacks are
the pure functions of this package, run on what each run produced (final weights,
per-round metrics, its checkpoints) and on a replay of what the server saw. The
scorecard keeps the planned order of mixes whatever order they finish in.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Union

from fedcollab.errors import FedcollabError
from fedcollab.grading.measure import BUDGETS, Budget, Progress, TaskMeasurer, Timer
from fedcollab.grading.report import Scorecard, write_scorecard

__all__ = ["grade", "Budget", "BUDGETS", "GradeError", "parallel_slots", "run_request"]


class GradeError(FedcollabError):
    """Grading cannot proceed (bad option, no mix can run)."""

    exit_code = 2


def grade(spec_or_path: Union[str, Path, Any], *, mixes: str = "all",
          priority: str = "balanced", budget: str = "fast", out: Optional[Union[str, Path]] = None,
          address: Optional[str] = None, progress: Optional[bool] = None,
          on_progress: Optional[Progress] = None,
          max_parallel: Optional[int] = None) -> Scorecard:
    """Grade a task under each policy mix and write scorecard.{json,md,html} to `out`.

    Args:
        spec_or_path: a JobSpec or a spec file.
        mixes: "all" or comma-separated mix names (built-in or the spec's grading.mixes).
        priority: privacy | utility | cost | balanced (what the recommendation weighs most).
        budget: fast | standard | full (shadow models, attack rounds, gradient matching;
            standard and full add the privacy-utility frontier sweep).
        out: output directory (default runs/<name>-grade-<UTC timestamp>/).
        address: Ray cluster address (None: an embedded local Ray).
        progress: a rich progress bar on stderr (None: when stderr is a terminal).
        on_progress: called with ("mix" | "attack", name) as each finishes (from the
            thread that finished it; never two calls at once).
        max_parallel: at most this many runs at once (None: as many as the cluster
            can place side by side; 1: one after the other).

    Raises:
        FedcollabError: a bad spec or option (one line), an unreachable cluster.
    """
    from fedcollab.grading.grades import PRIORITIES
    from fedcollab.spec import JobSpec, read_spec_data, spec_to_dict

    if priority not in PRIORITIES:
        raise GradeError(f"--priority: got {priority!r}, expected one of {', '.join(PRIORITIES)}")
    if budget not in BUDGETS:
        raise GradeError(f"--budget: got {budget!r}, expected one of {', '.join(BUDGETS)}")
    if max_parallel is not None and max_parallel < 1:
        raise GradeError(f"max_parallel: got {max_parallel!r}, expected 1 or more")
    if isinstance(spec_or_path, JobSpec):
        spec, data = spec_or_path, spec_to_dict(spec_or_path)
    else:
        from fedcollab.spec import load_spec

        spec = load_spec(spec_or_path)  # validates; resolves a data file's path
        data = read_spec_data(spec_or_path)
        if spec.task.dataset == "file":
            data.setdefault("task", {})["path"] = spec.task.path
    from fedcollab.grading.mixes import frontier_mixes, mix_spec, select_mixes

    chosen = select_mixes(data, spec, mixes)
    if BUDGETS[budget].frontier:  # the privacy-utility sweep, after the mixes asked for
        chosen += [m for m in frontier_mixes(data) if m.name not in {c.name for c in chosen}]
    planned, skipped = [], {}
    for mix in chosen:
        mspec, why = mix_spec(data, mix)
        if mspec is None:
            skipped[mix.name] = why
        else:
            planned.append((mix, mspec))
    if not planned:
        raise GradeError("no mix can run on this spec: " +
                         "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    repeats = dp_repeats(planned, BUDGETS[budget].dp_repeats)
    audits = canary_runs([(m, s) for m, s in planned] + [(m, s) for m, s, _ in repeats],
                         BUDGETS[budget].canaries)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(out) if out is not None else Path("runs") / f"{spec.name}-grade-{stamp}"
    out_dir = out_dir.resolve()
    check_grade_out(out_dir)
    with _Bar(len(planned) + len(repeats) + len(audits), enabled=progress) as bar:
        lock = threading.Lock()

        def report(kind: str, name: str) -> None:
            with lock:  # runs finish in their own threads
                bar.step(kind, name)
                if on_progress is not None:
                    on_progress(kind, name)

        card = _grade(spec, planned, skipped, priority=priority, budget=budget,
                      out_dir=out_dir, address=address, report=report,
                      max_parallel=max_parallel, repeats=repeats, audits=audits)
    card = dataclasses.replace(card, out_dir=str(out_dir))
    write_scorecard(card, out_dir)
    return card


def check_grade_out(out_dir: Path) -> None:
    """Refuse an output directory a grade cannot use, before Ray starts: a file, one
    that already holds something (a grade starts afresh: it has no ``--resume``), one
    that cannot be written, a full disk."""
    from fedcollab.job.outdir import check_can_write

    if out_dir.exists() and not out_dir.is_dir():
        raise GradeError(f"--out {out_dir}: is a file, expected a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        what = "a scorecard" if (out_dir / "scorecard.json").exists() else (
            "a grade's runs" if (out_dir / "mixes").exists() else "other files")
        raise GradeError(f"--out {out_dir} already holds {what}; a grade starts afresh: "
                         "choose a new directory (or leave out --out)")
    check_can_write(out_dir)


def dp_repeats(planned: Sequence[tuple[Any, Any]], runs: int) -> list[tuple[Any, Any, str]]:
    """Extra runs of each DP mix (not the frontier's sweep), so that its figures carry the
    spread of the noise: ``runs - 1`` more of each, named ``<mix>~2``, ``<mix>~3``, ...
    (the same spec and seed; DP noise comes from fresh entropy in every run)."""
    from fedcollab.grading.mixes import frontier_point

    out = []
    for mix, mspec in planned:
        if mspec.privacy.dp.mode != "none" and frontier_point(mix.name) is None:
            out += [(dataclasses.replace(mix, name=f"{mix.name}~{k}"), mspec, mix.name)
                    for k in range(2, runs + 1)]
    return out


@dataclasses.dataclass(frozen=True)
class AuditRun:
    """A mix's audit run: its spec with canary clients added (``canaries.canary_spec``)."""

    mix: Any          # named ``<mix>+canaries``
    spec: Any
    base: str         # the graded mix (or DP repeat) it audits
    sharing: str      # how the canaries share (open, or inside the secure sum)


def canary_runs(mixes: Sequence[tuple[Any, Any]], canaries: int) -> list[AuditRun]:
    """One audit run per mix (graded mixes and DP repeats): the same spec and seed with
    ``canaries`` canary clients added to the population."""
    from fedcollab.grading.canaries import canary_spec

    out = []
    for mix, mspec in mixes:
        cspec, sharing = canary_spec(mspec, canaries)
        out.append(AuditRun(dataclasses.replace(mix, name=f"{mix.name}+canaries"), cspec,
                            mix.name, sharing))
    return out


def _spread(values: Sequence[Any]) -> dict[str, Any]:
    got = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not got:
        return {"values": list(values), "mean": None, "std": None, "min": None, "max": None}
    return {"values": got, "mean": float(sum(got) / len(got)),
            "std": float(statistics.stdev(got)) if len(got) > 1 else 0.0,
            "min": min(got), "max": max(got)}


def _attach_repeats(row: dict[str, Any], figures: Sequence[Mapping[str, Any]]) -> None:
    """The graded run's figures and its repeats' as ``row["repeats"]``: values, mean,
    sample standard deviation, min and max per figure."""
    own = {"accuracy": row["utility"].get("accuracy"),
           "membership_auc": row["attacks"]["membership"].get("auc"),
           "membership_tpr_at_1pct_fpr": row["attacks"]["membership"].get("tpr_at_1pct_fpr"),
           "empirical_epsilon": row["privacy"]["empirical_epsilon"].get("value")}
    runs = [own, *figures]
    row["repeats"] = {"runs": len(runs),
                      "note": "the same spec and seed run again: only the DP noise differs",
                      **{key: _spread([r.get(key) for r in runs]) for key in own}}


def _grade(spec: Any, planned: list[Any], skipped: dict[str, str], *, priority: str,
           budget: str, out_dir: Path, address: Optional[str], report: Progress,
           max_parallel: Optional[int] = None,
           repeats: Sequence[tuple[Any, Any, str]] = (),
           audits: Sequence[AuditRun] = ()) -> Scorecard:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fedcollab.cluster.connect import connect
    from fedcollab.cluster.reuse import worker_reuse
    from fedcollab.job.run import _embedded_cpus

    t_start = time.perf_counter()
    timer = Timer()
    custom: dict[str, float] = {}
    for _, mspec in planned:
        for group in mspec.participants:
            for key, amount in group.resources.items():
                custom[key] = max(custom.get(key, 0.0), float(amount))
    # before any run starts: every model the grader needs is built here (see above)
    ctx = TaskMeasurer(spec, BUDGETS[budget], timer)
    jobs = [(mix, one_worker(mspec)) for mix, mspec in planned]
    jobs += [(mix, one_worker(mspec)) for mix, mspec, _ in repeats]
    # the audit runs last: the graded mixes' attacks overlap them
    jobs += [(a.mix, one_worker(a.spec)) for a in audits]
    audit_of = {a.mix.name: a for a in audits}
    finished: dict[str, tuple[Any, Any, Optional[str]]] = {}  # audit runs, by base mix
    summaries: dict[str, Any] = {}  # graded runs' and repeats' summaries, by name
    repeat_of = {mix.name: base for mix, _, base in repeats}
    repeated: dict[str, list[dict[str, Any]]] = {}
    repeat_names: dict[str, list[str]] = {}
    empirical: dict[str, dict[str, Any]] = {}  # each audited mix's empirical epsilon
    measured: dict[int, tuple[Any, Any, Any, dict[str, Any], Any]] = {}
    with connect(address, resources=custom, num_cpus=_embedded_cpus(spec)) as ray, \
            worker_reuse(ray):  # a finished mix's worker starts the next mix's run
        cluster = float(ray.cluster_resources().get("CPU", 1))
        slots = parallel_slots(_free(ray), [run_request(m, cluster) for _, m in jobs])
        if max_parallel is not None:
            slots = min(slots, max_parallel)
        with MixRuns(jobs, slots=slots, out_dir=out_dir, address=address,
                     on_done=lambda mix: report("mix", mix.name)) as runs:
            # driver-side work that needs no run, while the runs train
            ctx.prepare()
            # the poisoning simulations start from the first finished run without DP
            # (near convergence); the rows share these dicts, filled in when they are done
            sims: dict[str, Any] = {"backdoor": {}, "byzantine": {}}
            started = False
            for index, mix, mspec, result, error in runs.as_finished():
                if mix.name in audit_of:
                    finished[audit_of[mix.name].base] = (mspec, result, error)
                    # measured now (its graded run usually ended first), beside the runs
                    _canary_audits(ctx, [audit_of[mix.name]], finished, summaries, empirical)
                    continue
                if result is not None:
                    summaries[mix.name] = result.summary
                if mix.name in repeat_of:
                    if result is not None:
                        repeated.setdefault(repeat_of[mix.name], []).append(
                            ctx.repeat_figures(mspec, result))
                        repeat_names.setdefault(repeat_of[mix.name], []).append(mix.name)
                    continue
                if result is None:
                    skipped[mix.name] = f"run failed: {error}"
                    continue
                if not started and mspec.privacy.dp.mode == "none":
                    _fill(sims, ctx.simulations(report, start=result.weights, origin=mix.name))
                    started = True
                row, roc = ctx.measure(mix, mspec, result, sims, report)
                measured[index] = (mix, mspec, result, row, roc)
            if not started:
                _fill(sims, ctx.simulations(report))
        timer.seconds["runs"] = runs.wall_seconds
    if not measured:
        raise GradeError("every mix failed: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    _canary_audits(ctx, audits, finished, summaries, empirical)  # any left
    for mix, _, _, row, _ in measured.values():
        row["privacy"]["empirical_epsilon"] = empirical.get(mix.name) or row["privacy"][
            "empirical_epsilon"]
    for base, figures in repeated.items():
        for name, figure in zip(repeat_names.get(base, []), figures):
            figure["empirical_epsilon"] = (empirical.get(name) or {}).get("value")
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {"accuracy": {}, "roc": {}}
    for index in sorted(measured):  # the planned order, whatever order they finished in
        mix, mspec, result, row, roc = measured[index]
        if mix.name in set(repeat_of.values()):
            _attach_repeats(row, repeated.get(mix.name, []))
        rows.append(row)
        curves["accuracy"][mix.name] = [m.get("accuracy") for m in result.metrics
                                        if m.get("accuracy") is not None]
        curves["roc"][mix.name] = roc
    return _finish(spec, rows, skipped, curves, priority=priority, budget=budget,
                   seconds=time.perf_counter() - t_start, timer=timer, non_members=ctx.non_members,
                   settings=ctx.settings())


def _canary_audits(ctx: TaskMeasurer, audits: Sequence[AuditRun],
                   finished: Mapping[str, tuple[Any, Any, Optional[str]]],
                   summaries: Mapping[str, Any], out: dict[str, dict[str, Any]]) -> None:
    """Each audited mix's empirical epsilon into ``out`` (by the graded mix's or repeat's
    name), for the audit runs not measured yet whose graded run has ended."""
    from fedcollab.grading.canaries import no_audit

    for a in audits:
        if a.base in out or a.base not in summaries:
            continue  # done, or its graded run has not ended (or failed: nothing to compare)
        cspec, result, error = finished.get(a.base, (a.spec, None, "it did not run"))
        if result is None:
            out[a.base] = no_audit(f"the audit run with canary clients failed: {error}")
            continue
        out[a.base] = ctx.canary_audit(cspec, result, graded=summaries[a.base],
                                       sharing=a.sharing)
        out[a.base]["run"] = a.mix.name


def _fill(sims: dict[str, Any], done: Mapping[str, Any]) -> None:
    for key, value in done.items():
        sims.setdefault(key, {}).update(value)


def one_worker(mspec: Any) -> Any:
    """One worker per run when the spec leaves ``workers: auto``: results do not depend
    on the worker count (every participant trains from its own seed), but start-up
    does (each worker is a process that imports TensorFlow and traces the model), and
    one-worker runs leave room for more runs side by side."""
    if mspec.resources.workers != "auto":
        return mspec
    return dataclasses.replace(mspec, resources=dataclasses.replace(mspec.resources, workers=1))


def run_request(mspec: Any, cluster_cpus: float) -> dict[str, float]:
    """What all of one run's worker actors ask Ray for together, by resource."""
    from fedcollab.cluster.placement import worker_requests
    from fedcollab.cluster.pool import plan_workers
    from fedcollab.spec.roster import roster

    plan = plan_workers(mspec, roster(mspec), cluster_cpus)
    total: dict[str, float] = {}
    for request in worker_requests(plan, cpus_per_worker=mspec.resources.cpus_per_worker,
                                   gpus_per_worker=mspec.resources.gpus_per_worker):
        for key, amount in request.wants().items():
            total[key] = total.get(key, 0.0) + amount
    return total


def parallel_slots(available: Mapping[str, float],
                   requests: Sequence[Mapping[str, float]]) -> int:
    """How many runs can hold everything they ask for at once: for every resource,
    ``floor(available / the most any run asks)``, the least of those; at least 1.

    Sizing every slot for the largest run means any runs admitted together fit,
    whichever of them they are.
    """
    need: dict[str, float] = {}
    for request in requests:
        for key, amount in request.items():
            if amount > 0:
                need[key] = max(need.get(key, 0.0), float(amount))
    slots = min((math.floor(available.get(key, 0.0) / amount + 1e-9)
                 for key, amount in need.items()), default=len(requests))
    return max(1, min(slots, max(len(requests), 1)))


def _free(ray: Any) -> dict[str, float]:
    """Resources free now (others' jobs on a shared cluster hold the rest); the whole
    cluster when Ray has not reported yet."""
    free = dict(ray.available_resources())
    return free if "CPU" in free else dict(ray.cluster_resources())


class MixRuns:
    """The mixes' runs on the shared Ray, ``slots`` at a time, started in the planned
    order, each in a thread of this process (a run's driver builds no model: its
    workers do, so runs start side by side)."""

    def __init__(self, jobs: Sequence[tuple[Any, Any]], *, slots: int, out_dir: Path,
                 address: Optional[str], on_done: Callable[[Any], None]) -> None:
        self.jobs = list(jobs)
        self.slots = max(1, slots)
        self.out_dir = out_dir
        self.address = address
        self.on_done = on_done
        self.wall_seconds = 0.0
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._futures: list[concurrent.futures.Future[Any]] = []
        self._t0 = 0.0
        self._ended = 0.0

    def __enter__(self) -> "MixRuns":
        self._t0 = time.perf_counter()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.slots, thread_name_prefix="fedcollab-grade-run")
        self._futures = [self._pool.submit(self._run, mix, mspec) for mix, mspec in self.jobs]
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        assert self._pool is not None
        if exc_type is None:
            self._pool.shutdown(wait=True)
        else:  # do not wait on runs nobody will read; Ray's shutdown ends them
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.wall_seconds = (self._ended or time.perf_counter()) - self._t0

    def as_finished(self) -> Iterator[tuple[int, Any, Any, Any, Optional[str]]]:
        """(planned index, mix, spec run, JobResult or None, error) as runs finish."""
        index = {id(f): i for i, f in enumerate(self._futures)}
        for future in concurrent.futures.as_completed(self._futures):
            i = index[id(future)]
            mix, mspec = self.jobs[i]
            result, error = future.result()  # a bug in a run raises here
            self._ended = max(self._ended, time.perf_counter())
            yield i, mix, mspec, result, error

    def _run(self, mix: Any, mspec: Any) -> tuple[Any, Optional[str]]:
        from fedcollab.job.run import RunOptions, run_job

        target = self.out_dir / "mixes" / mix.name
        try:
            result = run_job(mspec, RunOptions(
                out_dir=target, address=self.address, quiet=True, progress=False,
                release=False,
                # every round's global model: the replay's check against the run and the
                # cross-round differencing replay
                keep_checkpoints=mspec.rounds + 1))
            return result, None
        except FedcollabError as err:
            return None, str(err)
        finally:
            self.on_done(mix)


def _finish(spec: Any, rows: list[dict[str, Any]], skipped: dict[str, str], curves: Any, *,
            priority: str, budget: str, seconds: float, timer: Timer,
            non_members: int, settings: Optional[Mapping[str, Any]] = None) -> Scorecard:
    from fedcollab.grading.grades import (
        audit_excess,
        grade_mix,
        grade_parties,
        pareto_front,
        privacy_score,
        recommend,
    )

    reference = next((r["cost"] for r in rows if r["name"] == "open"), rows[0]["cost"])
    accs = [r["utility"]["accuracy"] for r in rows if r["utility"].get("accuracy") is not None]
    best = max(accs) if accs else None
    base = rows[0]["attacks"]["byzantine"].get("fedavg", {}).get("baseline")
    for r in rows:
        r["grades"] = grade_mix(r, reference_cost=reference, best_accuracy=best,
                                baseline_accuracy=base, non_members=non_members)
        for party, grades in grade_parties(r, non_members=non_members).items():
            r["parties"][party]["grades"] = grades
        for observer, (low, eps) in audit_excess(r["privacy"]).items():
            # loudly: the run leaks more than it claims
            print(f"fedcollab: warning: mix {r['name']!r}: the canary audit's empirical epsilon "
                  f"for the {observer.replace('_', ' ')} (95% lower bound {low:.3g}) exceeds "
                  f"the accountant's {eps:.3g}; privacy budget graded F", file=sys.stderr)
    points = {r["name"]: (privacy_score(r["grades"]) or 0.0, r["utility"].get("accuracy") or 0.0)
              for r in rows}
    front = pareto_front(points)
    scenario = ", ".join(f"{g.count} {g.role} participant(s) '{g.name}'"
                         for g in spec.participants) + f", {spec.task.dataset}/{spec.task.model}"
    rec = recommend(rows, front, priority, scenario=scenario)
    from fedcollab.grading.grades import frontier_points

    sweep = frontier_points(rows)
    return Scorecard(spec.name, priority, budget, tuple(rows), tuple(front), rec, dict(skipped),
                     seconds, dict(timer.seconds), curves, settings=dict(settings or {}),
                     frontier=tuple(sweep))

class _Bar:
    """Mixes and attacks as they finish (rich, on stderr); off a terminal (``enabled``
    None), a plain line per finished mix: ``fedcollab: grade: mix open run (1/6),
    41.0 s elapsed``."""

    def __init__(self, mixes: int, *, enabled: Optional[bool]) -> None:
        import sys

        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.plain = enabled is None and not self.enabled
        self.mixes = mixes
        self._progress: Any = None
        self._done = 0
        self._t0 = time.perf_counter()

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from fedcollab.job.callbacks import stderr_progress

            self._progress = stderr_progress("{task.description}", ["last"])
            self._progress.__enter__()
            self._mix = self._progress.add_task("mixes run", total=self.mixes, last="")
            from fedcollab.grading.measure import SERVER_ATTACKS

            # per mix: membership, inversion, differencing and each server attack; + 2 sims
            self._attack = self._progress.add_task(
                "attacks", total=self.mixes * (3 + len(SERVER_ATTACKS)) + 2, last="")
        return self

    def step(self, kind: str, name: str) -> None:
        if self.plain and kind == "mix":
            import sys

            self._done += 1
            print(f"fedcollab: grade: mix {name} run ({self._done}/{self.mixes}), "
                  f"{time.perf_counter() - self._t0:.1f} s elapsed", file=sys.stderr,
                  flush=True)
        if self._progress is not None:
            task = self._mix if kind == "mix" else self._attack
            self._progress.update(task, advance=1, last=name)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
