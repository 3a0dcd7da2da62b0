"""`fedcollab grade` end to end on a real local Ray: two mixes of the default job, short."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab.spec import load_spec
from tests.contracts import scorecard_problems


@pytest.mark.ray
@pytest.mark.slow
def test_grade_open_and_secure_vendor_finds_differencing_leak(
        ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcollab.grading import grade
    from fedcollab.grading.inversion import INVERSION_ATTACKS
    from fedcollab.grading.measure import DIFFERENCING_ATTACKS
    from fedcollab.grading.membership import MEMBERSHIP_ATTACKS

    # one function plus one entry per axis: the grader runs what is registered
    monkeypatch.setitem(MEMBERSHIP_ATTACKS, "max_confidence",
                        lambda probs, labels, shadows: probs.max(axis=1))
    monkeypatch.setitem(INVERSION_ATTACKS, "mean_guess",
                        lambda kern, bias: np.full((1, kern.shape[0]), 0.5))
    monkeypatch.setitem(DIFFERENCING_ATTACKS, "whole_sum",
                        lambda ctx, mspec, result, view, observed:
                        {"sum_norm": None if observed is None
                         else float(np.linalg.norm(observed))})
    spec = load_spec("examples/community-vendor.yaml", ["rounds=3"])
    seen: list[tuple[str, str]] = []
    card = grade(spec, mixes="open,secure-vendor", out=tmp_path, progress=False,
                 on_progress=lambda kind, name: seen.append((kind, name)))
    data = json.loads((tmp_path / "scorecard.json").read_text())
    mixes = {m["name"]: m for m in data["mixes"]}
    assert set(mixes) == {"open", "secure-vendor"}
    vendor_secure = mixes["secure-vendor"]
    assert vendor_secure["attacks"]["differencing"]["exact"] is True
    # read off the run's float32 checkpoint, not the replay's own secure vectors
    assert vendor_secure["attacks"]["differencing"]["relative_error"] < 1e-3
    assert vendor_secure["replay_verified"] is True
    assert vendor_secure["grades"]["confidentiality"] == "F"
    # every round's sum had the same three vendor sites: subtracting across rounds
    # isolates nothing, and says so; the replay had every round's model to work from
    across = vendor_secure["attacks"]["differencing"]["across_rounds"]
    assert across["sums"] == 3 and across["isolated"] == 0 and across["exact"] is False
    assert len(list((tmp_path / "mixes" / "secure-vendor" / "checkpoints")
                    .glob("round-*.npz"))) == 3
    assert mixes["open"]["attacks"]["differencing"]["across_rounds"]["sums"] == 0
    assert mixes["open"]["replay_verified"] is True  # the replay is what the server saw
    assert set(mixes["open"]["utility"]["per_group"]) == {"community", "vendor"}
    assert 0 < mixes["open"]["utility"]["accuracy"] <= 1
    assert ("mix", "secure-vendor") in seen and ("attack", "backdoor") in seen
    assert (tmp_path / "scorecard.html").stat().st_size > 10_000
    assert card.recommendation["mix"] in card.pareto_front
    assert scorecard_problems(tmp_path / "scorecard.json") == []
    # #29: the poisoning attacks hit a finished run's final model, each rule faces
    # constrain-and-scale and Fang et al. too, and the backdoor is followed after
    assert "final checkpoint" in data["settings"]["poisoning_start"]
    fedavg = mixes["open"]["attacks"]["backdoor"]["fedavg"]
    assert set(fedavg["attacks"]) == {"model_replacement", "constrain_and_scale"}
    assert len(fedavg["success_after"]) == 3
    assert {"fang_trim", "fang_krum"} <= set(mixes["open"]["attacks"]["byzantine"]["krum"])
    # a malicious server's model beside the passive inversion: model inconsistency
    # reads one vendor site's examples exactly out of the secure sum of 3
    # the passive inversion near convergence too: the last round, replayed and verified
    late = mixes["open"]["attacks"]["inversion"]["final_round"]
    assert late["round"] == 3 and late["replay_verified"] is True and late["exact"] is True
    from fedcollab.grading.measure import SERVER_ATTACKS

    # every registered server attack runs on every mix, timed on the card
    assert set(SERVER_ATTACKS) <= set(vendor_secure["attacks"]) & set(data["per_attack_seconds"])
    inconsistent = vendor_secure["attacks"]["malicious_model"]["model_inconsistency"]
    assert inconsistent["party"] == "vendor" and inconsistent["exact_count"] >= 1
    assert vendor_secure["parties"]["vendor"]["grades"]["inversion:malicious_model"] == "F"
    observers = vendor_secure["parties"]["vendor"]["attacks"]["differencing"]["observers"]
    assert observers["server_with_one_community"]["colluders"] == 1
    # the canary audit: canary clients in a second run of each mix, > 0 without DP
    for name, mix in mixes.items():
        audit = mix["privacy"]["empirical_epsilon"]
        assert audit["run"] == f"{name}+canaries" and audit["canaries"] == 100
        assert set(audit["by_observer"]) == {"release_reader", "outputs_reader"}
        assert audit["value"] > 0 and audit["ci"][0] > 0 and audit["seconds"] > 0
        assert (tmp_path / "mixes" / f"{name}+canaries" / "summary.json").exists()
    assert "canary_audit" in data["per_attack_seconds"]
    # the registered extra attacks were run and reported; the grades stay on the graded
    membership = mixes["open"]["attacks"]["membership"]
    assert membership["attack"] == "loss_threshold" and "max_confidence" in membership
    assert 0 <= membership["max_confidence"]["auc"] <= 1
    inversion = mixes["open"]["attacks"]["inversion"]
    assert inversion["attack"] == "passive" and "mean_guess" in inversion["by_attack"]
    assert vendor_secure["attacks"]["differencing"]["whole_sum"]["sum_norm"] > 0


def test_cli_grade_unknown_mix_is_one_line_exit_2(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "fedcollab.cli", "grade",
                          "examples/community-vendor.yaml", "--mixes", "nope",
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown mix 'nope'" in out.stderr


def test_cli_grade_missing_spec_exit_2() -> None:
    out = subprocess.run([sys.executable, "-m", "fedcollab.cli", "grade", "missing.yaml"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no such file" in out.stderr


def test_cli_help_lists_grade_without_tensorflow() -> None:
    code = ("import sys, fedcollab.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules and 'ray' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "grade" in out.stdout


@pytest.mark.slow  # builds the grader's models (TensorFlow) before Ray is asked: ~10 s
def test_cli_grade_ray_start_timing_out_is_retried_then_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from fedcollab.cli import main
    from fedcollab.cluster.connect import EMBEDDED_STARTS

    starts: list[int] = []

    def init(**_: Any) -> None:
        starts.append(1)
        # what Ray's node raises under load: a bare Exception (not a RayError)
        raise Exception("The current node timed out during startup. This could happen "  # noqa: TRY002
                        "because some of the raylet failed to startup.\nline 2")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    # a module-scoped ray_local of an earlier test may still be up: connect() would reuse
    # it and never start Ray, so this test must not see it
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    code = main(["grade", "examples/community-vendor.yaml", "--mixes", "open", "--quiet",
                 "--out", str(tmp_path / "card")])  # a new directory: grade refuses a used one
    err = capsys.readouterr().err.strip()
    assert len(starts) == EMBEDDED_STARTS  # a start that times out is tried again
    # a line per retry, then the failure in one line
    lines = err.splitlines()
    assert code == 1 and len(lines) == EMBEDDED_STARTS, err
    assert all("trying again" in line for line in lines[:-1])
    assert "timed out during startup" in lines[-1] and "Traceback" not in err
