"""`fedcollab grade`: run the task under each policy mix, attack each, write the scorecard.

All runs share one Ray session (:func:`fedcollab.cluster.connect` yields an
initialised Ray and :func:`fedcollab.orchestrator.run_job` reuses it). They run one
after the other: jobs started side by side on a small cluster compete for the same
CPUs, and each waits for all its worker actors, so two half-placed jobs could wait
on each other for ever. The attacks are the pure
functions of this package, run in the driver on what each run produced (final
weights, per-round metrics) and on a replay of what the server saw.
"""
from __future__ import annotations

import dataclasses
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from fedcollab.errors import FedcollabError
from fedcollab.grading.measure import BUDGETS, Budget, Progress, TaskMeasurer, Timer
from fedcollab.grading.report import Scorecard, write_scorecard

__all__ = ["grade", "Budget", "BUDGETS", "GradeError"]


class GradeError(FedcollabError):
    """Grading cannot proceed (bad option, no mix can run)."""

    exit_code = 2



def grade(spec_or_path: Union[str, Path, Any], *, mixes: str = "all",
          priority: str = "balanced", budget: str = "fast", out: Optional[Union[str, Path]] = None,
          address: Optional[str] = None, progress: Optional[bool] = None,
          on_progress: Optional[Progress] = None) -> Scorecard:
    """Grade a task under each policy mix and write scorecard.{json,md,html} to `out`.

    Args:
        spec_or_path: a JobSpec or a spec file.
        mixes: "all" or comma-separated mix names (built-in or the spec's grading.mixes).
        priority: privacy | utility | cost | balanced (what the recommendation weighs most).
        budget: fast | full (shadow models, attack rounds, gradient matching).
        out: output directory (default runs/<name>-grade-<UTC timestamp>/).
        address: Ray cluster address (None: an embedded local Ray).
        progress: a rich progress bar on stderr (None: when stderr is a terminal).

    Raises:
        FedcollabError: a bad spec or option (one line), an unreachable cluster.
    """
    from fedcollab.grading.grades import PRIORITIES
    from fedcollab.spec import JobSpec, read_spec_data, spec_to_dict

    if priority not in PRIORITIES:
        raise GradeError(f"--priority: got {priority!r}, expected one of {', '.join(PRIORITIES)}")
    if budget not in BUDGETS:
        raise GradeError(f"--budget: got {budget!r}, expected one of {', '.join(BUDGETS)}")
    if isinstance(spec_or_path, JobSpec):
        spec, data = spec_or_path, spec_to_dict(spec_or_path)
    else:
        from fedcollab.spec import load_spec

        spec = load_spec(spec_or_path)  # validates; resolves a data file's path
        data = read_spec_data(spec_or_path)
        if spec.task.dataset == "file":
            data.setdefault("task", {})["path"] = spec.task.path
    from fedcollab.grading.mixes import mix_spec, select_mixes

    chosen = select_mixes(data, spec, mixes)
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
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(out) if out is not None else Path("runs") / f"{spec.name}-grade-{stamp}"
    out_dir = out_dir.resolve()
    with _Bar(len(planned), enabled=progress) as bar:
        def report(kind: str, name: str) -> None:
            bar.step(kind, name)
            if on_progress is not None:
                on_progress(kind, name)

        card = _grade(spec, planned, skipped, priority=priority, budget=budget,
                      out_dir=out_dir, address=address, report=report)
    card = dataclasses.replace(card, out_dir=str(out_dir))
    write_scorecard(card, out_dir)
    return card


def _grade(spec: Any, planned: list[Any], skipped: dict[str, str], *, priority: str,
           budget: str, out_dir: Path, address: Optional[str],
           report: Progress) -> Scorecard:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fedcollab.cluster import connect
    from fedcollab.orchestrator import _embedded_cpus

    t_start = time.perf_counter()
    timer = Timer()
    custom: dict[str, float] = {}
    for _, mspec in planned:
        for group in mspec.participants:
            for key, amount in group.resources.items():
                custom[key] = max(custom.get(key, 0.0), float(amount))
    ctx = TaskMeasurer(spec, BUDGETS[budget], timer)
    results = []
    with connect(address, resources=custom, num_cpus=_embedded_cpus(spec)):
        from fedcollab.orchestrator import RunOptions, run_job

        for mix, mspec in planned:
            t0 = time.perf_counter()
            if mspec.resources.workers == "auto":
                # One worker per run: results do not depend on the worker count (every
                # participant trains from its own seed), but start-up does: each worker
                # is a process that imports TensorFlow and traces the model.
                mspec = dataclasses.replace(mspec, resources=dataclasses.replace(
                    mspec.resources, workers=1))
            try:
                result = run_job(mspec, RunOptions(out_dir=out_dir / "mixes" / mix.name,
                                                   address=address, quiet=True, progress=False,
                                                   release=False))
            except FedcollabError as err:
                skipped[mix.name] = f"run failed: {err}"
                timer.add("runs", t0)
                report("mix", mix.name)
                continue
            timer.add("runs", t0)
            results.append((mix, mspec, result))
            report("mix", mix.name)
    if not results:
        raise GradeError("every mix failed: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {"accuracy": {}, "roc": {}}
    sims = ctx.simulations(report)
    for mix, mspec, result in results:
        row, roc = ctx.measure(mix, mspec, result, sims, report)
        rows.append(row)
        curves["accuracy"][mix.name] = [m.get("accuracy") for m in result.metrics
                                        if m.get("accuracy") is not None]
        curves["roc"][mix.name] = roc
    return _finish(spec, rows, skipped, curves, priority=priority, budget=budget,
                   seconds=time.perf_counter() - t_start, timer=timer, non_members=ctx.non_members)


def _finish(spec: Any, rows: list[dict[str, Any]], skipped: dict[str, str], curves: Any, *,
            priority: str, budget: str, seconds: float, timer: Timer,
            non_members: int) -> Scorecard:
    from fedcollab.grading.grades import grade_mix, pareto_front, privacy_score, recommend

    reference = next((r["cost"] for r in rows if r["name"] == "open"), rows[0]["cost"])
    accs = [r["utility"]["accuracy"] for r in rows if r["utility"].get("accuracy") is not None]
    best = max(accs) if accs else None
    base = rows[0]["attacks"]["byzantine"].get("fedavg", {}).get("baseline")
    for r in rows:
        r["grades"] = grade_mix(r, reference_cost=reference, best_accuracy=best,
                                baseline_accuracy=base, non_members=non_members)
    points = {r["name"]: (privacy_score(r["grades"]) or 0.0, r["utility"].get("accuracy") or 0.0)
              for r in rows}
    front = pareto_front(points)
    scenario = ", ".join(f"{g.count} {g.role} participant(s) '{g.name}'"
                         for g in spec.participants) + f", {spec.task.dataset}/{spec.task.model}"
    rec = recommend(rows, front, priority, scenario=scenario)
    return Scorecard(spec.name, priority, budget, tuple(rows), tuple(front), rec, dict(skipped),
                     seconds, dict(timer.seconds), curves)

class _Bar:
    """Mixes and attacks as they finish (rich, on stderr)."""

    def __init__(self, mixes: int, *, enabled: Optional[bool]) -> None:
        import sys

        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.mixes = mixes
        self._progress: Any = None

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(TextColumn("[bold]{task.description}"),
                                      MofNCompleteColumn(), BarColumn(),
                                      TextColumn("{task.fields[last]}"), TimeElapsedColumn(),
                                      console=Console(stderr=True))
            self._progress.__enter__()
            self._mix = self._progress.add_task("mixes run", total=self.mixes, last="")
            self._attack = self._progress.add_task("attacks", total=self.mixes * 3 + 2, last="")
        return self

    def step(self, kind: str, name: str) -> None:
        if self._progress is not None:
            task = self._mix if kind == "mix" else self._attack
            self._progress.update(task, advance=1, last=name)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
