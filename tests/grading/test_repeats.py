"""DP mixes are run several times so their figures carry the noise's spread (#29)."""
from __future__ import annotations

import pytest

from fedcollab.grading.mixes import builtin_mixes, mix_spec
from fedcollab.grading.runner import _attach_repeats, _spread, dp_repeats
from fedcollab.spec import read_spec_data


def _planned() -> list[tuple[object, object]]:
    data = read_spec_data("examples/community-vendor.yaml")
    out = []
    for mix in builtin_mixes(data):
        mspec, _ = mix_spec(data, mix)
        if mspec is not None:
            out.append((mix, mspec))
    return out


def test_dp_repeats_only_for_dp_mixes_named_after_their_base() -> None:
    planned = _planned()
    extra = dp_repeats(planned, 3)
    assert [(m.name, base) for m, _, base in extra] == [
        ("secure-vendor-dp~2", "secure-vendor-dp"), ("secure-vendor-dp~3", "secure-vendor-dp")]
    base = dict((m.name, s) for m, s in planned)["secure-vendor-dp"]
    assert all(s is base for _, s, _ in extra)  # the same spec: only the noise differs
    assert dp_repeats(planned, 1) == []


def test_spread_is_the_sample_standard_deviation_and_skips_missing() -> None:
    got = _spread([0.5, 0.7, None, float("nan"), 0.6])
    assert got["values"] == [0.5, 0.7, 0.6]
    assert got["mean"] == pytest.approx(0.6) and got["std"] == pytest.approx(0.1)
    assert (got["min"], got["max"]) == (0.5, 0.7)
    assert _spread([None])["mean"] is None


def test_attach_repeats_counts_the_graded_run_first() -> None:
    row = {"utility": {"accuracy": 0.8},
           "attacks": {"membership": {"auc": 0.51, "tpr_at_1pct_fpr": 0.01}},
           "privacy": {"empirical_epsilon": {"value": 0.3}}}
    _attach_repeats(row, [{"accuracy": 0.6, "membership_auc": 0.49,
                           "membership_tpr_at_1pct_fpr": 0.02, "empirical_epsilon": 0.1}])
    rep = row["repeats"]
    assert rep["runs"] == 2 and rep["accuracy"]["values"] == [0.8, 0.6]
    assert rep["empirical_epsilon"]["max"] == 0.3
