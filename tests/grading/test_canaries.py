"""Canary clients in the run: the audit run's spec, and the empirical epsilon of real
runs on a real local Ray (the canaries go through the worker's real outgoing path)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab.grading.canaries import CANARY_GROUP, canary_spec
from fedcollab.grading.mixes import mix_spec, select_mixes
from fedcollab.spec import load_spec, read_spec_data

SPEC = "examples/community-vendor.yaml"


def _mix(name: str, *overrides: str) -> Any:
    spec = load_spec(SPEC, list(overrides))
    data = read_spec_data(SPEC)
    for item in overrides:
        key, _, value = item.partition("=")
        data[key] = int(value)
    mix = select_mixes(data, spec, name)[0]
    mspec, why = mix_spec(data, mix)
    assert mspec is not None, why
    return mspec


def test_canary_spec_adds_one_dataless_group_last_and_keeps_the_rest() -> None:
    mspec = _mix("secure-vendor")
    cspec, sharing = canary_spec(mspec, 40)
    assert cspec.participants[:-1] == mspec.participants
    group = cspec.participants[-1]
    assert (group.name, group.count, group.behaviour, group.data_fraction) == \
        (CANARY_GROUP, 40, "canary", None)
    assert sharing == "open"  # no DP: the release is the same sum either way
    assert (cspec.seed, cspec.rounds, cspec.fraction) == (mspec.seed, mspec.rounds,
                                                           mspec.fraction)


def test_canary_spec_joins_the_secure_sum_where_dp_noise_is_split_over_it() -> None:
    """Under distributed DP each secure member adds z C / sqrt(m): canaries inside the
    sum leave its noise as it was; open ones would each add the full z C."""
    cspec, sharing = canary_spec(_mix("secure-vendor-dp"), 10)
    assert sharing == "secure" and cspec.participants[-1].sharing == "secure"
    _, sharing = canary_spec(_mix("open"), 10)
    assert sharing == "open"


def _audit(mspec: Any, tmp_path: Path, name: str, canaries: int = 60) -> dict[str, Any]:
    from fedcollab.data import load_dataset
    from fedcollab.grading.canaries import audit_run
    from fedcollab.grading.runner import one_worker
    from fedcollab.job.run import RunOptions, run_job
    from fedcollab.worker.models import build_model

    data = load_dataset(mspec.task, seed=mspec.seed)
    w0 = [np.asarray(w) for w in build_model(
        mspec.task.model, input_shape=data.input_shape, num_classes=data.num_classes,
        seed=mspec.seed).get_weights()]
    graded = run_job(one_worker(mspec), RunOptions(out_dir=tmp_path / name, quiet=True,
                                                   progress=False, release=False))
    cspec, sharing = canary_spec(mspec, canaries)
    result = run_job(one_worker(cspec), RunOptions(
        out_dir=tmp_path / f"{name}+canaries", quiet=True, progress=False, release=False,
        keep_checkpoints=cspec.rounds + 1))
    # the real participants are the graded run's: canaries only add to the population
    assert result.summary["participants"]["total"] == \
        graded.summary["participants"]["total"] + canaries
    accountant = graded.summary["privacy"].get("epsilon_by_observer") or {}
    return audit_run(cspec, result, initial=w0, delta=1e-5, accountant=accountant,
                     sharing=sharing, seed=mspec.seed)


@pytest.mark.ray
@pytest.mark.slow
def test_in_run_audit_is_below_the_accountant_under_dp_and_positive_without(
        ray_local: Any, tmp_path: Path) -> None:
    """The default job cut to 6 rounds: secure-vendor-dp's canaries in the secure sum
    (clipped, noised, masked by the worker) give an empirical epsilon below the
    accountant's for both audited observers; the open mix's, without DP, is > 0."""
    dp = _audit(_mix("secure-vendor-dp", "rounds=6"), tmp_path, "dp")
    assert dp["sharing"] == "secure" and dp["rounds"] == 6 and dp["canaries"] == 60
    for observer, row in dp["by_observer"].items():
        assert row["accountant"] is not None, observer
        assert 0 <= row["value"] <= row["accountant"], (observer, row)
        assert row["ci"][0] <= row["accountant"], (observer, row)
    clear = _audit(_mix("open", "rounds=6"), tmp_path, "open")
    assert clear["sharing"] == "open" and clear["by_observer"]["release_reader"]["accountant"] \
        is None
    assert clear["value"] > 1.0 and clear["ci"][0] > 0
    assert clear["value"] > dp["value"]
    assert clear["seconds"] >= clear["analysis_seconds"] > 0


def test_a_failed_audit_run_leaves_a_note_and_a_failed_graded_run_no_row() -> None:
    from fedcollab.grading.mixes import Mix
    from fedcollab.grading.runner import AuditRun, _canary_audits

    mspec = _mix("open")
    cspec, sharing = canary_spec(mspec, 10)
    audit = AuditRun(Mix("open+canaries", (), "audit"), cspec, "open", sharing)
    out: dict[str, Any] = {}
    # the graded run has not ended (or failed): nothing to put the audit beside yet
    _canary_audits(None, [audit], {"open": (cspec, None, "boom")}, {}, out)  # type: ignore[arg-type]
    assert out == {}
    _canary_audits(None, [audit], {"open": (cspec, None, "boom")},  # type: ignore[arg-type]
                   {"open": {"privacy": {}}}, out)
    assert out["open"]["value"] is None and "failed: boom" in out["open"]["note"]
