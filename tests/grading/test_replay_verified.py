"""The grader's replay checked against the run's own checkpoints: a short job on the
in-process pool (no Ray), then round 1 replayed as the server saw it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fedcollab.grading.measure import BUDGETS, TaskMeasurer, Timer
from fedcollab.grading.replay import replay_round, verify_replay
from fedcollab.job.run import RunOptions, run_job
from fedcollab.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # two short jobs and their replays: ~30 s


def _run(tmp_path: Path, name: str, overrides: list[str]) -> tuple[Any, Any, TaskMeasurer]:
    spec = load_spec(ROOT / "examples" / "community-vendor.yaml",
                     ["rounds=2", "release.sign=false", "participants.1.private_layers=[]",
                      *overrides])
    result = run_job(spec, RunOptions(out_dir=tmp_path / name, quiet=True, release=False,
                                      transport="inprocess", keep_checkpoints=spec.rounds + 1))
    return spec, result, TaskMeasurer(spec, BUDGETS["fast"], Timer())


def test_sampled_round_replays_exactly_and_everyone_does_not(tmp_path: Path) -> None:
    spec, result, ctx = _run(tmp_path, "sampled", ["fraction=0.5"])
    view, check = ctx._replay(spec, result)
    line = result.metrics[0]
    heard = {int(p) for p in line["update_sha256"]} | set(line["secure"]["survivors"])
    assert len(heard) < 11  # a sample, not everyone
    assert set(view.deltas) == heard
    assert check.verified is True and check.method == "exact", check
    assert check.relative_error < 1e-3 and check.hashes_match is True
    # the old replay's mistake: every participant trained, sampled or not
    everyone = replay_round(spec, ctx.trainer, ctx.w0, ctx.parts, [], pids=range(11),
                            config=view.config)
    wrong = verify_replay(spec, everyone, ctx.w0, ctx._checkpoint(result, 1),
                          weight_scale=ctx.scale)
    assert wrong.verified is False and wrong.relative_error > 0.05, wrong


def test_dp_round_replays_with_the_runs_noise_scale_and_too_little_fails(tmp_path: Path) -> None:
    spec, result, ctx = _run(tmp_path, "dp", ["privacy.dp.mode=distributed",
                                              "privacy.dp.noise_multiplier=1.0"])
    view, check = ctx._replay(spec, result)
    assert view.dp and check.method == "noise scale"
    assert check.verified is True, check
    # distributed noise split over all participants instead of each open one adding the
    # full z*C (the old replay: 20.7 instead of 69.4 on an open update)
    quiet = dataclasses.replace(view.config, noise_multiplier=0.3)
    low = replay_round(spec, ctx.trainer, ctx.w0, ctx.parts, [], pids=sorted(view.deltas),
                       config=quiet)
    low.config = view.config  # its second draw keeps the low noise; the ratio shows it
    wrong = verify_replay(spec, low, ctx.w0, ctx._checkpoint(result, 1), weight_scale=ctx.scale)
    assert wrong.verified is False and wrong.noise_ratio > 2, wrong


def test_cross_round_differencing_uses_the_whole_run_and_finds_vendor_sites(
        tmp_path: Path) -> None:
    """5 vendor sites sampled 3 a round: over 8 rounds (not 6) the sums isolate each vendor
    sites, and the fast budget looks at every secure round (no window)."""
    spec, result, ctx = _run(tmp_path, "cross", ["fraction=0.6", "participants.1.count=5",
                                                 "rounds=8"])
    assert BUDGETS["fast"].cross_round_window == 0
    across = ctx._across_rounds(spec, result)
    secure_rounds = [m for m in result.metrics if m.get("secure")]
    assert across["sums"] == len(secure_rounds) == 8
    vendor = across["vendor"]
    assert vendor["target"] == "vendor sites" and vendor["isolated"] >= 1, vendor
    print("cross-round vendor recovery:", vendor)
    assert vendor["cosine"] is not None and vendor["baseline_cosine"] is not None
