"""Membership figures with their intervals, and grades taken on the interval's bound
(pure: numpy, scipy, scikit-learn; no model)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from fedcollab.grading.grades import grade_membership
from fedcollab.grading.membership import attack_metrics, auc_interval, clopper_pearson

# the default spec's digits split: every training example a member, the test set the rest
MEMBERS, NON_MEMBERS = 1437, 360


def _membership(scores: np.ndarray, member: np.ndarray) -> dict[str, object]:
    return attack_metrics(scores, member).to_json()


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 3000), data=st.data())
def test_clopper_pearson_is_the_beta_quantile_interval(n: int, data: st.DataObject) -> None:
    # an independent recomputation: scipy's exact binomial test, which inverts the test by
    # root-finding instead of reading Beta quantiles
    k = data.draw(st.integers(0, n))
    low, high = clopper_pearson(k, n)
    want = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert abs(low - want.low) < 1e-6 and abs(high - want.high) < 1e-6
    assert low <= k / n <= high


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_pos=st.integers(2, 400), n_neg=st.integers(2, 400),
       shift=st.floats(0.0, 3.0), ties=st.booleans())
def test_delong_auc_matches_sklearn_and_brackets_it(seed: int, n_pos: int, n_neg: int,
                                                    shift: float, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)])
    if ties:
        scores = np.round(scores)
    member = np.arange(n_pos + n_neg) < n_pos
    auc, low, high = auc_interval(scores, member)
    assert abs(auc - roc_auc_score(member, scores)) < 1e-12
    assert 0.0 <= low <= auc <= high <= 1.0


@pytest.mark.slow  # 1000 attacks on 1797 scores: ~10 s
def test_chance_attacker_grades_a_at_least_99_percent_of_the_time() -> None:
    """Scores independent of membership, on the default data's sizes: grades taken on the
    intervals' bounds may call chance a leak at most 1% of the time."""
    rng = np.random.default_rng(2026)
    member = np.arange(MEMBERS + NON_MEMBERS) < MEMBERS
    trials = 1000
    grades = [grade_membership(_membership(rng.normal(size=len(member)), member),
                               non_members=NON_MEMBERS) for _ in range(trials)]
    a = grades.count("A")
    # the pass rate's own Clopper-Pearson lower bound must clear 99%
    assert clopper_pearson(a, trials)[0] >= 0.99 - 0.005, (a, set(grades))
    assert a / trials >= 0.99


def test_chance_interval_covers_chance() -> None:
    """The 95% intervals of a chance attacker hold AUC 0.5 and TPR = FPR about 95% of the time."""
    rng = np.random.default_rng(7)
    member = np.arange(MEMBERS + NON_MEMBERS) < MEMBERS
    hits = 0
    for _ in range(200):
        low, high = auc_interval(rng.normal(size=len(member)), member)[1:]
        hits += low <= 0.5 <= high
    assert 0.90 <= hits / 200 <= 0.99


def test_planted_leak_graded_as_a_leak_with_its_interval_above_0_1() -> None:
    """Members scored far above most non-members (an overfit model's losses): the TPR at 1%
    FPR interval lies above 0.1 and the grade is F."""
    rng = np.random.default_rng(3)
    member = np.arange(MEMBERS + NON_MEMBERS) < MEMBERS
    scores = np.where(member, rng.normal(3.0, 1.0, len(member)), rng.normal(0.0, 1.0, len(member)))
    m = _membership(scores, member)
    assert m["tpr_at_1pct_fpr_ci"][0] > 0.1  # type: ignore[index]
    assert m["n_members"] == MEMBERS and m["n_nonmembers"] == NON_MEMBERS
    assert grade_membership(m, non_members=NON_MEMBERS) == "F"


def test_grade_is_taken_on_the_bound_not_the_point() -> None:
    # the same point figures: a wide interval around them is no evidence, a narrow one is
    point = {"auc": 0.62, "tpr_at_1pct_fpr": 0.05, "tpr_at_0_1pct_fpr": 0.0}
    wide = dict(point, auc_ci=[0.45, 0.79], tpr_at_1pct_fpr_ci=[0.005, 0.2])
    narrow = dict(point, auc_ci=[0.61, 0.63], tpr_at_1pct_fpr_ci=[0.045, 0.055])
    assert grade_membership(wide, non_members=360) == "A"
    assert grade_membership(narrow, non_members=360) == "C"
    # an AUC interval entirely below chance is as much a leak as one above it
    below = dict(narrow, auc=0.38, auc_ci=[0.37, 0.39], tpr_at_1pct_fpr_ci=[0.0, 0.01])
    assert grade_membership(below, non_members=360) == "C"
