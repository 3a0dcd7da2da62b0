"""The privacy-utility frontier sweep (``--budget standard``): its mixes, its points and
their Pareto marks, and the report's table and plot (pure; no run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.grading.grades import frontier_points
from fedcollab.grading.measure import BUDGETS
from fedcollab.grading.mixes import FRONTIER_EPSILONS, frontier_mixes, frontier_point, mix_spec
from fedcollab.job.preflight import preflight
from fedcollab.spec import read_spec_data

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_is_both_dp_mixes_at_every_target_epsilon_and_each_spec_validates() -> None:
    data = read_spec_data(ROOT / "examples" / "community-vendor.yaml")
    mixes = frontier_mixes(data)
    assert len(mixes) == 2 * len(FRONTIER_EPSILONS)
    for mix in mixes:
        spec, why = mix_spec(data, mix)
        assert spec is not None, why
        preflight(spec)  # the run's own checks (e.g. room for the noise) accept it
        base, eps = frontier_point(mix.name)  # type: ignore[misc]
        assert spec.privacy.dp.mode == "distributed" and spec.privacy.dp.target_epsilon == eps
        secure = [g.sharing == "secure" for g in spec.participants]
        assert all(secure) if base == "secure-all-dp" else secure == [False, True]
    assert not BUDGETS["fast"].frontier and BUDGETS["standard"].frontier
    assert frontier_point("secure-vendor") is None


def _row(name: str, eps: float, community: float, vendor: float) -> dict[str, Any]:
    return {"name": name, "privacy": {"epsilon": eps, "noise_multiplier": 1.0},
            "utility": {"accuracy": (community + vendor) / 2},
            "attacks": {"membership": {"tpr_at_1pct_fpr": 0.01, "auc": 0.5,
                                       "tpr_at_1pct_fpr_ci": [0.0, 0.02]}},
            "parties": {"community": {"utility": {"accuracy": community}},
                        "vendor": {"utility": {"accuracy": vendor}}}}


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ka = (-a["epsilon"], a["accuracy"]["community"], a["accuracy"]["vendor"])
    kb = (-b["epsilon"], b["accuracy"]["community"], b["accuracy"]["vendor"])
    return all(x >= y for x, y in zip(ka, kb)) and ka != kb


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1.0, 3.0, 8.0, 30.0]), st.floats(0, 1),
                          st.floats(0, 1)), min_size=1, max_size=8))
def test_pareto_marks_exactly_the_points_nothing_beats(points: list[Any]) -> None:
    rows = [_row(f"secure-all-dp@eps={e:g}", e, c, v) for e, c, v in points]
    marked = frontier_points(rows)
    for p in marked:  # an independent recomputation of dominance
        assert p["pareto"] == (not any(_dominates(q, p) for q in marked if q is not p))
    assert any(p["pareto"] for p in marked)


def test_report_shows_the_frontier_table_and_plot(tmp_path: Path) -> None:
    import dataclasses

    from fedcollab.grading.report import write_scorecard
    from tests.grading.test_report import _card

    rows = [_row(f"secure-all-dp@eps={e:g}", e, 0.5 + e / 100, 0.6 + e / 100)
            for e in FRONTIER_EPSILONS]
    card = dataclasses.replace(_card(), frontier=tuple(frontier_points(rows)))
    paths = write_scorecard(card, tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "## Privacy-utility frontier" in md and "secure-all-dp@eps=30" in md
    assert 'id="frontier"' in html and html.count('src="data:image/png;base64,') == 4
