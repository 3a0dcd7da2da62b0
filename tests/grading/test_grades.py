from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcollab.grading.grades import (
    GRADED_DIFFERENCING,
    NA,
    UNKNOWN,
    grade_backdoor,
    grade_byzantine,
    grade_confidentiality,
    grade_cost,
    grade_inversion,
    grade_lying_server,
    grade_membership,
    grade_mix,
    grade_privacy_budget,
    grade_utility,
    pareto_front,
    privacy_score,
    recommend,
)


def test_grade_confidentiality_exact_differencing_is_f() -> None:
    assert grade_confidentiality({"relative_error": 1e-9, "exact": True, "min_group_seen": 3},
                                 {"recovered": None}) == "F"


def test_grade_confidentiality_takes_every_pre_registered_differencing_row() -> None:
    """The grade reads the rows GRADED_DIFFERENCING names, each one an attack the
    grader runs: an exact recovery in any of them is F; a row not named is reported
    beside them, never graded."""
    from fedcollab.grading.measure import DIFFERENCING_ATTACKS

    assert GRADED_DIFFERENCING and set(GRADED_DIFFERENCING) <= set(DIFFERENCING_ATTACKS)
    hidden = {"relative_error": 3.0, "exact": False, "min_group_seen": 11}
    exact = {"vendor": {"target": "vendor sites", "isolated": 1, "relative_error": 1e-12,
                        "exact": True}}
    for name in GRADED_DIFFERENCING:
        assert grade_confidentiality({**hidden, name: exact}, {"recovered": None}) == "F"
    assert grade_confidentiality({**hidden, "not_pre_registered": exact},
                                 {"recovered": None}) == "A"


def test_grade_confidentiality_vendor_mixed_into_big_sum_is_a() -> None:
    assert grade_confidentiality({"relative_error": 3.0, "exact": False, "min_group_seen": 11},
                                 {"recovered": True, "server": "honest_but_curious"}) == "A"


def test_grade_confidentiality_malicious_claim_broken_by_lying_server_is_f() -> None:
    assert grade_confidentiality({"relative_error": 3.0, "exact": False, "min_group_seen": 11},
                                 {"recovered": True, "server": "malicious"}) == "F"


def test_grade_without_measurement_is_na_not_a() -> None:
    assert grade_confidentiality({"relative_error": None}, {}) == NA
    assert grade_membership({"auc": None}, non_members=100) == NA
    assert grade_inversion({"psnr_db": None}) == NA
    assert grade_backdoor(None, None) == NA
    assert grade_byzantine({"accuracy": 0.9}, None) == NA
    assert grade_utility(None, 0.9) == NA
    assert grade_cost({}, {}) == NA


def test_grade_lying_server_recovered_is_f_refused_is_a() -> None:
    assert grade_lying_server({"recovered": True}, "A") == "F"
    assert grade_lying_server({"recovered": False}, "C") == "A"
    assert grade_lying_server({"recovered": None}, "F") == "F"


@pytest.mark.parametrize("auc,tpr,expected", [(0.5, 0.01, "A"), (0.58, 0.01, "B"),
                                              (0.8, 0.01, "F"), (0.5, 0.2, "C")])
def test_grade_membership_worse_of_auc_and_low_fpr_lift(auc: float, tpr: float,
                                                        expected: str) -> None:
    m = {"auc": auc, "tpr_at_1pct_fpr": tpr, "tpr_at_0_1pct_fpr": 0.0}
    assert grade_membership(m, non_members=300) == expected


def test_grade_inversion_exact_is_f_and_mean_image_level_is_a() -> None:
    assert grade_inversion({"psnr_db": 200.0, "exact": True, "baseline_psnr_db": 13}) == "F"
    assert grade_inversion({"psnr_db": 13.5, "exact": False, "baseline_psnr_db": 13}) == "A"
    assert grade_inversion({"psnr_db": 20.0, "exact": False, "baseline_psnr_db": 13}) == "D"


def test_grade_privacy_budget_bands() -> None:
    assert grade_privacy_budget(None) == "F"
    assert grade_privacy_budget(0.9) == "A"
    assert grade_privacy_budget(30.1) == "D"


def test_grade_backdoor_and_byzantine_bands() -> None:
    clean = {"success_rate": 0.02, "main_accuracy": 0.9}
    assert grade_backdoor({"success_rate": 0.99, "main_accuracy": 0.5}, clean) == "F"
    assert grade_backdoor({"success_rate": 0.03, "main_accuracy": 0.9}, clean) == "A"
    assert grade_byzantine({"accuracy": 0.52}, 0.6) == "C"
    assert grade_byzantine({"accuracy": 0.45}, 0.6) == "D"


def test_grade_cost_against_open_reference() -> None:
    ref = {"seconds_per_round": 0.1, "bytes_up_per_participant_round": 1000}
    assert grade_cost(ref, ref) == "A"
    # seconds (noisy on a shared machine) do not move the grade; bytes do
    assert grade_cost({"seconds_per_round": 0.25, "bytes_up_per_participant_round": 1100},
                      ref) == "A"
    assert grade_cost({"seconds_per_round": 0.1, "bytes_up_per_participant_round": 2500},
                      ref) == "C"


def test_pareto_front_drops_dominated_mixes() -> None:
    front = pareto_front({"a": (1.0, 0.9), "b": (3.0, 0.7), "c": (0.5, 0.8), "d": (3.0, 0.9)})
    assert front == ["d"]
    assert set(pareto_front({"a": (1.0, 0.9), "b": (3.0, 0.7)})) == {"a", "b"}


def _mix(name: str, acc: float, eps: Any, exact: bool) -> dict[str, Any]:
    mix = {"name": name, "defence": "fedavg", "utility": {"accuracy": acc, "per_group": {
        "community": {"mean": acc, "min": acc - 0.05}}},
           "attacks": {"membership": {"auc": 0.52, "tpr_at_1pct_fpr": 0.01,
                                      "tpr_at_0_1pct_fpr": 0.0},
                       "inversion": {"psnr_db": 14.0, "exact": False, "baseline_psnr_db": 13.5,
                                     "relative_error": 0.4, "target": "secure sum"},
                       "differencing": {"relative_error": 0.0 if exact else 2.0,
                                        "exact": exact, "min_group_seen": 3 if exact else 11},
                       "lying_server": {"recovered": False},
                       "backdoor": {"clean": {"success_rate": 0.02, "main_accuracy": 0.9},
                                    "fedavg": {"success_rate": 0.9, "main_accuracy": 0.6}},
                       "byzantine": {"fedavg": {"accuracy": 0.2, "baseline": 0.6}}},
           "privacy": {"epsilon": eps}, "cost": {"seconds_per_round": 0.1,
                                                 "bytes_up_per_participant_round": 100},
           "replay_verified": True}
    mix["grades"] = grade_mix(mix, reference_cost=mix["cost"], best_accuracy=0.93,
                              baseline_accuracy=0.6, non_members=300)
    return mix


def test_recommend_privacy_priority_picks_private_mix_and_quotes_figures() -> None:
    mixes = [_mix("open", 0.93, None, True), _mix("dp", 0.80, 0.9, False)]
    rec = recommend(mixes, ["open", "dp"], "privacy", scenario="test")
    assert rec["mix"] == "dp"
    assert "0.800" in rec["text"] and "0.90" in rec["text"] and "privacy priority" in rec["text"]
    assert recommend(mixes, ["open", "dp"], "utility", scenario="test")["mix"] == "open"


def test_grade_confidentiality_cross_round_recovery_of_a_vendor_site_counts() -> None:
    big_sum = {"relative_error": 3.0, "exact": False, "min_group_seen": 11}
    exact = {"target": "vendor sites", "isolated": 1, "relative_error": 1e-9, "exact": True}
    close = {"target": "vendor sites", "isolated": 1, "relative_error": 0.05, "exact": False}
    useless = {"target": "vendor sites", "isolated": 1, "relative_error": 0.9, "exact": False}
    community = {"target": "any participant", "isolated": 1, "relative_error": 0.0,
                 "exact": True}
    assert grade_confidentiality(dict(big_sum, across_rounds={'vendor': exact}), {}) == "F"
    assert grade_confidentiality(dict(big_sum, across_rounds={'vendor': close}), {}) == "D"
    assert grade_confidentiality(dict(big_sum, across_rounds={'vendor': useless}), {}) == "A"
    assert grade_confidentiality(dict(big_sum, across_rounds={'vendor': community}), {}) == "A"
    # the default spec sampled: each vendor site isolated, relative error 0.51-0.74 but
    # cosine 0.86-0.92 to its true update; a large error is no all-clear
    pointing = dict(useless, relative_error=0.6, cosine=0.88)
    assert grade_confidentiality(dict(big_sum, across_rounds={'vendor': pointing}), {}) == "C"
    assert grade_confidentiality(dict(big_sum, across_rounds={'vendor': dict(
        pointing, cosine=0.95)}), {}) == "D"


@given(err=st.floats(0.0, 10.0), cos=st.floats(-1.0, 1.0), group=st.integers(0, 20),
       better_cos=st.floats(0.0, 1.0))
def test_confidentiality_never_improves_as_the_recovery_points_closer(
        err: float, cos: float, group: int, better_cos: float) -> None:
    """A recovery whose direction is closer to the truth never grades better."""
    from fedcollab.grading.grades import GRADES

    closer = min(1.0, max(cos, better_cos))
    a = grade_confidentiality({"relative_error": err, "cosine": cos, "exact": False,
                               "min_group_seen": group}, {})
    b = grade_confidentiality({"relative_error": err, "cosine": closer, "exact": False,
                               "min_group_seen": group}, {})
    assert GRADES.index(b) >= GRADES.index(a)


@pytest.mark.parametrize("verified", [False, None])
def test_a_replay_that_is_not_the_run_grades_unknown_never_a(verified: Any) -> None:
    mix = _mix("dp", 0.80, 0.9, False)
    assert mix["grades"]["inversion"] == "A" and mix["grades"]["confidentiality"] == "A"
    mix["replay_verified"] = verified
    grades = grade_mix(mix, reference_cost=mix["cost"], best_accuracy=0.93,
                       baseline_accuracy=0.6, non_members=300)
    assert grades["inversion"] == grades["confidentiality"] == UNKNOWN
    # without a secure group the lying server takes confidentiality's grade: unknown too
    mix["attacks"]["lying_server"] = {"recovered": None}
    grades = grade_mix(mix, reference_cost=mix["cost"], best_accuracy=0.93,
                       baseline_accuracy=0.6, non_members=300)
    assert grades["lying_server"] == UNKNOWN


AXES = ("membership", "inversion", "confidentiality", "lying_server", "privacy_budget")


@given(st.dictionaries(st.sampled_from(AXES), st.sampled_from(["A", "B", "C", "D", "F"])),
       st.sampled_from(AXES), st.sampled_from([NA, UNKNOWN]))
def test_privacy_score_never_rises_when_an_axis_goes_missing(
        grades: dict[str, str], axis: str, missing: str) -> None:
    """Whatever grade an axis had, losing it (N/A, unknown) never raises the score."""
    full = {a: grades.get(a, "F") for a in AXES}
    before = privacy_score(full)
    after = privacy_score(dict(full, **{axis: missing}))
    assert before is not None
    assert after is None or after <= before


def test_a_whole_sum_points_where_every_update_points_and_is_no_recovery() -> None:
    # secure-all: the server's only estimate of the vendor is the round's whole sum, whose
    # cosine to the vendor's update (0.91) is the round's shared direction, not a leak
    whole = {"relative_error": 3.24, "cosine": 0.907, "baseline_cosine": 0.907,
             "exact": False, "min_group_seen": 11}
    assert grade_confidentiality(whole, {}) == "A"
    isolated = dict(whole, relative_error=0.6, cosine=0.95)  # closes 46% of the angle left
    assert grade_confidentiality(isolated, {}) == "B"


def test_an_audit_above_the_accountant_fails_the_privacy_budget() -> None:
    mix = _mix("dp", 0.80, 0.9, False)
    assert mix["grades"]["privacy_budget"] == "A"
    mix["privacy"]["empirical_epsilon"] = {"value": 0.5, "ci": [0.2, 0.8]}
    assert grade_mix(mix, reference_cost=mix["cost"], best_accuracy=0.93,
                     baseline_accuracy=0.6, non_members=300)["privacy_budget"] == "A"
    mix["privacy"]["empirical_epsilon"] = {"value": 2.0, "ci": [1.5, 2.5]}
    assert grade_mix(mix, reference_cost=mix["cost"], best_accuracy=0.93,
                     baseline_accuracy=0.6, non_members=300)["privacy_budget"] == "F"


def test_an_audit_above_the_accountant_for_any_observer_fails_and_names_it() -> None:
    """Per observer: the release reader's audit against the release reader's epsilon,
    the outputs reader's (every round's model) against the outputs reader's."""
    from fedcollab.grading.grades import audit_excess

    mix = _mix("dp", 0.80, 0.9, False)
    mix["privacy"]["by_observer"] = {"server": 5.0, "outputs_reader": 5.0,
                                     "release_reader": 2.0}
    audit = {"value": 1.0, "ci": [0.5, 1.5], "by_observer": {
        "release_reader": {"value": 1.0, "ci": [0.5, 1.5]},
        "outputs_reader": {"value": 4.0, "ci": [3.0, 4.5]}}}
    mix["privacy"]["empirical_epsilon"] = audit
    assert audit_excess(mix["privacy"]) == {}
    audit["by_observer"]["outputs_reader"]["ci"] = [5.5, 7.0]
    assert audit_excess(mix["privacy"]) == {"outputs_reader": (5.5, 5.0)}
    assert grade_mix(mix, reference_cost=mix["cost"], best_accuracy=0.93,
                     baseline_accuracy=0.6, non_members=300)["privacy_budget"] == "F"
    mix["privacy"]["by_observer"] = {"server": None, "outputs_reader": None,
                                     "release_reader": None}
    mix["privacy"]["epsilon"] = None  # no DP: nothing claimed, nothing contradicted
    assert audit_excess(mix["privacy"]) == {}


def test_a_mix_below_half_the_best_accuracy_is_never_recommended_while_another_is_left() -> None:
    # private in every way but at chance accuracy (a frontier point at epsilon 1)
    useless = _mix("secure-all-dp@eps=1", 0.05, 0.8, False)
    useful = _mix("open", 0.93, None, True)
    for priority in ("privacy", "balanced", "utility"):
        rec = recommend([useless, useful], ["secure-all-dp@eps=1", "open"], priority,
                        scenario="test")
        assert rec["mix"] == "open", priority


def test_the_grader_says_loudly_which_observer_the_audit_contradicts(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An audit above the accountant: one stderr line per observer, privacy budget F."""
    from fedcollab.grading.measure import Timer
    from fedcollab.grading.runner import _finish
    from fedcollab.spec import load_spec
    from tests.grading.test_report import _parties

    rows = [_mix("open", 0.93, None, True), _mix("secure-vendor-dp", 0.80, 0.9, False)]
    for r in rows:
        r["parties"] = _parties(r)
    dp = rows[1]["privacy"]
    dp["by_observer"] = {"server": 0.9, "outputs_reader": 0.9, "release_reader": 0.9}
    dp["empirical_epsilon"] = {"value": 2.0, "ci": [1.5, 2.5], "by_observer": {
        "release_reader": {"value": 2.0, "ci": [1.5, 2.5]},
        "outputs_reader": {"value": 0.5, "ci": [0.2, 0.8]}}}
    card = _finish(load_spec("examples/community-vendor.yaml"), rows, {},
                   {"accuracy": {}, "roc": {}}, priority="balanced", budget="fast",
                   seconds=1.0, timer=Timer(), non_members=360)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedcollab: warning: mix 'secure-vendor-dp': the canary audit's empirical "
                   "epsilon for the release reader (95% lower bound 1.5) exceeds the "
                   "accountant's 0.9; privacy budget graded F"]
    assert card.mixes[1]["grades"]["privacy_budget"] == "F"
    assert card.mixes[0]["grades"]["privacy_budget"] == "F"  # no DP: no claim at all
