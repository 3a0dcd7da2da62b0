"""Tests for fedcollab.aggregation.rules: weighted mean and the robust rules."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.aggregation import (
    AggregationError,
    NotEnoughUpdatesError,
    global_norm,
    krum,
    krum_scores,
    krum_select,
    median,
    multi_krum,
    norm_bounded_mean,
    trimmed_mean,
    weighted_mean,
)

from ._strategies import assert_weights_close, update, updates

FAST = settings(deadline=None, max_examples=60)


def _scalars(*values: float) -> list[list[np.ndarray]]:
    return [[np.array([v])] for v in values]


# --------------------------------------------------------------------------- weighted_mean

def test_weighted_mean_known_values_match_hand_computation() -> None:
    updates_ = [[np.array([1.0, 2.0]), np.array([[0.0]])],
                [np.array([3.0, 4.0]), np.array([[4.0]])]]
    result = weighted_mean(updates_, [1, 3])
    np.testing.assert_array_equal(result[0], [2.5, 3.5])
    np.testing.assert_array_equal(result[1], [[3.0]])


def test_weighted_mean_float32_inputs_return_float32() -> None:
    updates_ = [[np.full(3, 0.1, np.float32)], [np.full(3, 0.3, np.float32)]]
    result = weighted_mean(updates_, [1, 1])
    assert result[0].dtype == np.float32
    np.testing.assert_allclose(result[0], 0.2, rtol=1e-6)


def test_weighted_mean_same_inputs_bitwise_identical() -> None:
    rng = np.random.default_rng(0)
    updates_ = [[rng.normal(size=(50,)).astype(np.float32)] for _ in range(30)]
    counts = list(rng.integers(1, 100, size=30))
    first = weighted_mean(updates_, counts)
    second = weighted_mean(updates_, counts)
    assert first[0].tobytes() == second[0].tobytes()


def test_weighted_mean_does_not_modify_inputs() -> None:
    updates_ = [[np.array([1.0, 2.0])], [np.array([3.0, 4.0])]]
    weighted_mean(updates_, [1, 1])
    np.testing.assert_array_equal(updates_[0][0], [1.0, 2.0])


def test_weighted_mean_zero_count_ignores_update() -> None:
    result = weighted_mean(_scalars(1.0, 100.0), [2, 0])
    np.testing.assert_array_equal(result[0], [1.0])


def test_weighted_mean_no_updates_raises() -> None:
    with pytest.raises(NotEnoughUpdatesError, match="got 0 updates"):
        weighted_mean([], [])


def test_weighted_mean_count_length_mismatch_raises() -> None:
    with pytest.raises(AggregationError, match="2 updates but 1 counts"):
        weighted_mean(_scalars(1.0, 2.0), [1])


@pytest.mark.parametrize("counts", [[-1, 2], [float("nan"), 1], [0, 0]])
def test_weighted_mean_bad_counts_raise(counts: list[float]) -> None:
    with pytest.raises(AggregationError, match="count"):
        weighted_mean(_scalars(1.0, 2.0), counts)


def test_weighted_mean_shape_mismatch_raises_naming_update() -> None:
    updates_ = [[np.zeros((2, 3))], [np.zeros((3, 2))]]
    with pytest.raises(AggregationError, match=r"update 1 array 0 has shape \(3, 2\)"):
        weighted_mean(updates_, [1, 1])


def test_weighted_mean_array_count_mismatch_raises() -> None:
    with pytest.raises(AggregationError, match="update 1 has 2 arrays, expected 1"):
        weighted_mean([[np.zeros(2)], [np.zeros(2), np.zeros(1)]], [1, 1])


@FAST
@given(u=update())
def test_weighted_mean_of_one_update_is_itself(u: list[np.ndarray]) -> None:
    assert_weights_close(weighted_mean([u], [7]), u)


@FAST
@given(us=updates(min_size=2), data=st.data())
def test_weighted_mean_permutation_invariant(us: list, data: st.DataObject) -> None:
    counts = data.draw(st.lists(st.integers(1, 50), min_size=len(us), max_size=len(us)))
    order = data.draw(st.permutations(range(len(us))))
    permuted = weighted_mean([us[i] for i in order], [counts[i] for i in order])
    assert_weights_close(permuted, weighted_mean(us, counts), atol=1e-9)


@FAST
@given(us=updates(), data=st.data())
def test_weighted_mean_lies_between_coordinate_min_and_max(us: list,
                                                           data: st.DataObject) -> None:
    counts = data.draw(st.lists(st.integers(1, 50), min_size=len(us), max_size=len(us)))
    result = weighted_mean(us, counts)
    for layer, array in enumerate(result):
        stack = np.stack([u[layer] for u in us])
        assert np.all(array >= stack.min(axis=0) - 1e-9)
        assert np.all(array <= stack.max(axis=0) + 1e-9)


# --------------------------------------------------------------------------- median / trimmed

@FAST
@given(u=update(), n=st.integers(1, 7))
def test_median_of_identical_updates_is_that_update(u: list[np.ndarray], n: int) -> None:
    assert_weights_close(median([u] * n), u, rtol=0, atol=0)


@FAST
@given(u=update(), n=st.integers(1, 7), beta=st.floats(0, 0.49))
def test_trimmed_mean_of_identical_updates_is_that_update(u: list[np.ndarray], n: int,
                                                          beta: float) -> None:
    assert_weights_close(trimmed_mean([u] * n, beta=beta), u)


@FAST
@given(us=updates(min_size=2), data=st.data())
def test_median_and_trimmed_mean_permutation_invariant(us: list, data: st.DataObject) -> None:
    order = data.draw(st.permutations(range(len(us))))
    permuted = [us[i] for i in order]
    assert_weights_close(median(permuted), median(us), rtol=0, atol=0)
    assert_weights_close(trimmed_mean(permuted, beta=0.2), trimmed_mean(us, beta=0.2))


@FAST
@given(us=updates(), beta=st.floats(0, 0.49))
def test_trimmed_mean_matches_scipy_trim_mean(us: list, beta: float) -> None:
    result = trimmed_mean(us, beta=beta)
    for layer, array in enumerate(result):
        stack = np.stack([u[layer] for u in us])
        np.testing.assert_allclose(array, scipy.stats.trim_mean(stack, beta, axis=0),
                                   rtol=1e-9, atol=1e-9)


def test_median_known_values_even_count_averages_middle_pair() -> None:
    result = median(_scalars(1.0, 2.0, 10.0, 4.0))
    np.testing.assert_array_equal(result[0], [3.0])


def test_trimmed_mean_known_values_drop_extremes() -> None:
    result = trimmed_mean(_scalars(-100.0, 1.0, 2.0, 3.0, 100.0), beta=0.2)
    np.testing.assert_array_equal(result[0], [2.0])


@pytest.mark.parametrize("beta", [-0.1, 0.5, 1.0])
def test_trimmed_mean_beta_out_of_range_raises(beta: float) -> None:
    with pytest.raises(AggregationError, match=r"expected a fraction in \[0, 0.5\)"):
        trimmed_mean(_scalars(1.0, 2.0), beta=beta)


def test_median_no_updates_raises() -> None:
    with pytest.raises(NotEnoughUpdatesError):
        median([])


# --------------------------------------------------------------------------- krum

def test_krum_scores_known_values_match_hand_computation() -> None:
    # f=1, n=5: each score sums the n - f - 2 = 2 smallest squared distances.
    scores = krum_scores(_scalars(0.0, 1.0, 2.0, 10.0, 11.0), f=1)
    np.testing.assert_array_equal(scores, [5.0, 2.0, 5.0, 65.0, 82.0])


def test_krum_known_values_picks_most_central() -> None:
    result = krum(_scalars(0.0, 1.0, 2.0, 10.0, 11.0), f=1)
    np.testing.assert_array_equal(result[0], [1.0])


def test_krum_byzantine_far_away_picks_an_honest_update() -> None:
    rng = np.random.default_rng(0)
    honest = [[rng.normal(0.0, 0.1, size=(5, 4)), rng.normal(0.0, 0.1, size=3)]
              for _ in range(8)]
    byzantine = [[np.full((5, 4), 1e3), np.full(3, -1e3)] for _ in range(3)]
    chosen = krum(byzantine[:1] + honest + byzantine[1:], f=3)
    assert any(all(np.array_equal(c, h) for c, h in zip(chosen, u)) for u in honest)


@pytest.mark.parametrize("n,f", [(4, 1), (6, 2), (2, 0)])
def test_krum_too_few_updates_raises(n: int, f: int) -> None:
    with pytest.raises(NotEnoughUpdatesError, match=rf"need more than 2f \+ 2 = {2 * f + 2}"):
        krum(_scalars(*range(n)), f=f)


@pytest.mark.parametrize("f", [-1, 1.5, True])
def test_krum_bad_f_raises(f: object) -> None:
    with pytest.raises(AggregationError, match="expected an integer >= 0"):
        krum(_scalars(*range(10)), f=f)  # type: ignore[arg-type]


@FAST
@given(u=update(), n=st.integers(3, 8))
def test_krum_and_multi_krum_of_identical_updates_are_that_update(u: list[np.ndarray],
                                                                  n: int) -> None:
    f = (n - 3) // 2
    assert_weights_close(krum([u] * n, f=f), u, rtol=0, atol=0)
    assert_weights_close(multi_krum([u] * n, f=f), u)


def test_krum_select_ties_go_to_lower_index() -> None:
    assert krum_select(_scalars(1.0, 1.0, 1.0, 1.0), f=0, m=2) == [0, 1]


def test_multi_krum_default_m_averages_n_minus_f_honest() -> None:
    honest = _scalars(1.0, 2.0, 3.0, 4.0, 5.0)
    result = multi_krum(honest + _scalars(500.0), f=1)
    np.testing.assert_allclose(result[0], [3.0])


def test_multi_krum_m_one_equals_krum() -> None:
    us = _scalars(0.0, 1.0, 2.0, 10.0, 11.0)
    assert_weights_close(multi_krum(us, f=1, m=1), krum(us, f=1))


@pytest.mark.parametrize("m", [0, 6])
def test_multi_krum_m_out_of_range_raises(m: int) -> None:
    with pytest.raises(AggregationError, match=r"expected an integer in 1..5"):
        multi_krum(_scalars(*range(5)), f=1, m=m)


# --------------------------------------------------------------------------- norm bounded

def test_norm_bounded_mean_known_values_clip_large_update_only() -> None:
    big = [np.array([3.0, 4.0])]        # norm 5 -> scaled to norm 1: [0.6, 0.8]
    small = [np.array([0.3, 0.4])]      # norm 0.5, kept
    result = norm_bounded_mean([big, small], [1, 1], bound=1.0)
    np.testing.assert_allclose(result[0], [0.45, 0.6])


@FAST
@given(us=updates(), bound=st.floats(0.01, 100))
def test_norm_bounded_mean_result_norm_within_bound(us: list, bound: float) -> None:
    result = norm_bounded_mean(us, [1] * len(us), bound=bound)
    assert global_norm(result) <= bound * (1 + 1e-9)


@pytest.mark.parametrize("bound", [0, -1.0, float("inf")])
def test_norm_bounded_mean_bad_bound_raises(bound: float) -> None:
    with pytest.raises(AggregationError, match="expected a number > 0"):
        norm_bounded_mean(_scalars(1.0), [1], bound=bound)


def test_norm_bounded_mean_non_finite_update_raises() -> None:
    with pytest.raises(AggregationError, match="update 1 has a non-finite L2 norm"):
        norm_bounded_mean(_scalars(1.0, float("nan")), [1, 1], bound=1.0)


def test_global_norm_known_values_span_all_arrays() -> None:
    assert global_norm([np.array([3.0]), np.array([[4.0]])]) == 5.0


def test_global_norm_float32_large_values_do_not_overflow() -> None:
    assert np.isfinite(global_norm([np.full(4, 3e38, np.float32)]))
