"""The aggregation seam: open updates, private arrays and secure sums in one step."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcollab.aggregation import Aggregator, OpenUpdate, SecureSum, compose
from fedcollab.types import Update

FAST = settings(deadline=None, max_examples=60)
SHAPES = [(2,), (1, 2)]


def _update(a: list[float], b: list[list[float]], n: int) -> OpenUpdate:
    return OpenUpdate([np.array(a), np.array(b)], n)


def test_compose_open_updates_is_the_hand_computed_weighted_mean() -> None:
    updates = [_update([1.0, 2.0], [[0.0, 4.0]], 1), _update([3.0, 6.0], [[8.0, 0.0]], 3)]

    deltas, weights = compose(SHAPES, updates)

    np.testing.assert_allclose(deltas[0], [(1 * 1 + 3 * 3) / 4, (1 * 2 + 3 * 6) / 4])
    np.testing.assert_allclose(deltas[1], [[(0 + 3 * 8) / 4, (1 * 4 + 0) / 4]])
    assert weights == [4.0, 4.0]


def test_compose_private_array_is_averaged_over_sharers_only() -> None:
    vendor = OpenUpdate([np.array([100.0, 100.0]), None], 10)  # keeps array 1 private
    updates = [_update([1.0, 1.0], [[2.0, 2.0]], 1), _update([3.0, 3.0], [[6.0, 6.0]], 1), vendor]

    deltas, weights = compose(SHAPES, updates)

    np.testing.assert_allclose(deltas[1], [[4.0, 4.0]])          # (2 + 6) / 2, vendor absent
    np.testing.assert_allclose(deltas[0], [(1 + 3 + 1000) / 12] * 2)
    assert weights == [12.0, 2.0]


def test_compose_secure_sum_with_open_updates_is_the_mean_over_everyone() -> None:
    # Arrange: two open and two secure participants; the server sees only the secure sum.
    open_ = [_update([1.0, 0.0], [[1.0, 1.0]], 2), _update([0.0, 1.0], [[2.0, 0.0]], 6)]
    secure_parts = [_update([4.0, 4.0], [[0.0, 3.0]], 4), _update([-2.0, 8.0], [[1.0, 1.0]], 8)]
    secure = SecureSum(
        weighted_delta=[sum(u.num_samples * np.asarray(u.delta[j]) for u in secure_parts)
                        for j in range(2)],
        counts=[12.0, 12.0])

    # Act
    deltas, weights = compose(SHAPES, open_, secure)

    # Assert
    everyone = open_ + secure_parts
    total = sum(u.num_samples for u in everyone)
    for j in range(2):
        expected = sum(u.num_samples * np.asarray(u.delta[j]) for u in everyone) / total
        np.testing.assert_allclose(deltas[j], expected)
    assert weights == [20.0, 20.0]


def test_compose_secure_sum_alone_is_its_weighted_mean() -> None:
    secure = SecureSum(weighted_delta=[np.array([6.0, 3.0]), np.array([[0.0, 9.0]])],
                       counts=[3.0, 3.0])

    deltas, weights = compose(SHAPES, [], secure)

    np.testing.assert_allclose(deltas[0], [2.0, 1.0])
    np.testing.assert_allclose(deltas[1], [[0.0, 3.0]])
    assert weights == [3.0, 3.0]


def test_compose_secure_group_not_sharing_an_array_leaves_it_to_open_updates() -> None:
    secure = SecureSum(weighted_delta=[np.array([6.0, 6.0]), np.zeros((1, 2))],
                       counts=[3.0, 0.0])  # the secure group keeps array 1 private

    deltas, weights = compose(SHAPES, [_update([0.0, 0.0], [[5.0, 7.0]], 1)], secure)

    np.testing.assert_allclose(deltas[0], [1.5, 1.5])
    np.testing.assert_allclose(deltas[1], [[5.0, 7.0]])
    assert weights == [4.0, 1.0]


def test_compose_nobody_shares_an_array_gives_zero_delta_and_weight_zero() -> None:
    updates = [OpenUpdate([np.array([1.0, 2.0]), None], 5)]

    deltas, weights = compose(SHAPES, updates)

    np.testing.assert_array_equal(deltas[1], np.zeros((1, 2)))
    assert deltas[1].shape == (1, 2)
    assert weights[1] == 0.0


def test_compose_no_updates_at_all_gives_zero_deltas() -> None:
    deltas, weights = compose(SHAPES, [])

    assert [d.shape for d in deltas] == SHAPES
    assert all(not d.any() for d in deltas)
    assert weights == [0.0, 0.0]


def test_compose_median_rule_ignores_an_outlier() -> None:
    updates = [OpenUpdate([np.array([v])], 1) for v in (1.0, 2.0, 3.0, 1000.0, 2.5)]

    deltas, _ = compose([(1,)], updates, rule="median")

    assert deltas[0][0] == pytest.approx(2.5)


def test_compose_noise_is_added_to_the_weighted_sum_before_dividing() -> None:
    updates = [_update([1.0, 1.0], [[0.0, 0.0]], 2), _update([3.0, 3.0], [[0.0, 0.0]], 2)]
    noise = [np.array([4.0, -4.0]), np.array([[8.0, 0.0]])]

    deltas, _ = compose(SHAPES, updates, noise=noise)

    np.testing.assert_allclose(deltas[0], [(2 + 6 + 4) / 4, (2 + 6 - 4) / 4])
    np.testing.assert_allclose(deltas[1], [[2.0, 0.0]])


def test_compose_noise_is_not_added_to_an_array_nobody_shares() -> None:
    updates = [OpenUpdate([np.array([1.0, 1.0]), None], 2)]

    deltas, weights = compose(SHAPES, updates, noise=[np.zeros(2), np.ones((1, 2))])

    np.testing.assert_array_equal(deltas[1], np.zeros((1, 2)))
    assert weights[1] == 0.0


FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def _open_updates(draw: st.DrawFn) -> list[OpenUpdate]:
    n = draw(st.integers(1, 6))
    result = []
    for _ in range(n):
        delta = [draw(st.one_of(st.none(), hnp.arrays(np.float64, shape, elements=FINITE)))
                 for shape in SHAPES]
        result.append(OpenUpdate(delta, draw(st.integers(1, 100))))
    return result


@FAST
@given(updates=_open_updates(), data=st.data())
def test_compose_fedavg_is_invariant_to_update_order(updates: list[OpenUpdate],
                                                     data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(updates))

    first, first_w = compose(SHAPES, updates)
    second, second_w = compose(SHAPES, shuffled)

    assert first_w == second_w
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@FAST
@given(updates=_open_updates())
def test_compose_fedavg_equal_updates_give_that_update(updates: list[OpenUpdate]) -> None:
    same = [OpenUpdate(updates[0].delta, u.num_samples) for u in updates]

    deltas, _ = compose(SHAPES, same)

    for j, d in enumerate(deltas):
        expected = updates[0].delta[j]
        if expected is None:
            assert not d.any()
        else:
            np.testing.assert_allclose(d, expected, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- whole updates

def _two_layer(a: float, b: float) -> OpenUpdate:
    return OpenUpdate([np.array([a, a]), np.array([[b, b]])], 1)


def test_compose_krum_picks_one_participant_for_every_array() -> None:
    # Five honest updates near (1, 1); an attacker that sits exactly on the honest
    # centre of layer 0 (so a per-layer Krum would choose it there) but is far away
    # in layer 1. Over the whole update it ranks last and is never chosen.
    honest = [_two_layer(1.0 + 0.01 * i, 1.0 + 0.01 * i) for i in range(5)]
    attacker = _two_layer(1.02, 50.0)
    deltas, _ = compose(SHAPES, honest + [attacker], rule="krum", options={"f": 1})
    chosen = deltas[0][0]
    assert any(np.isclose(chosen, 1.0 + 0.01 * i) for i in range(5))
    index = [i for i in range(5) if np.isclose(chosen, 1.0 + 0.01 * i)][0]
    np.testing.assert_allclose(deltas[1], [[1.0 + 0.01 * index] * 2])  # same participant
    assert deltas[1][0][0] < 2.0


def test_compose_norm_bounded_bounds_the_whole_update_not_each_array() -> None:
    updates = [OpenUpdate([np.array([3.0, 0.0]), np.array([[4.0, 0.0]])], 1)]  # norm 5
    deltas, _ = compose(SHAPES, updates, rule="norm_bounded", options={"bound": 1.0})
    total = np.sqrt(sum(float(np.sum(d ** 2)) for d in deltas))
    assert total == pytest.approx(1.0)


def test_compose_robust_rule_with_private_array_groups_arrays_by_sharers() -> None:
    community = [_two_layer(1.0, 2.0) for _ in range(3)]
    vendor = OpenUpdate([np.array([1.0, 1.0]), None], 1)   # keeps array 1 private
    deltas, weights = compose(SHAPES, community + [vendor], rule="median")
    np.testing.assert_allclose(deltas[0], [1.0, 1.0])
    np.testing.assert_allclose(deltas[1], [[2.0, 2.0]])
    assert weights == [4.0, 3.0]


def test_compose_bulyan_ignores_an_outlier() -> None:
    updates = [_two_layer(1.0 + 0.01 * i, 1.0) for i in range(6)] + [_two_layer(100.0, 100.0)]
    deltas, _ = compose(SHAPES, updates, rule="bulyan", options={"f": 1})
    assert float(np.max(np.abs(deltas[0]))) < 1.1 and float(np.max(deltas[1])) < 1.1


def _update_of(pid: int, value: float, n: int = 10) -> Update:
    return Update(pid, [np.full(2, value, np.float32), np.full((1, 2), value, np.float32)], n, 0.0)


def test_aggregator_too_few_updates_for_the_rule_skips_the_round() -> None:
    agg = Aggregator(SHAPES, rule="krum", options={"f": 1})
    weights = [np.zeros(2, np.float32), np.zeros((1, 2), np.float32)]
    step = agg.step(weights, [_update_of(0, 1.0), _update_of(1, 1.0)])
    assert not step.applied and "need more than" in step.skipped
    assert all(np.array_equal(a, b) for a, b in zip(step.weights, weights))


def test_aggregator_rejects_bad_updates_and_steps_with_the_rest() -> None:
    agg = Aggregator(SHAPES, max_samples=100)
    weights = [np.zeros(2, np.float32), np.zeros((1, 2), np.float32)]
    bad_count = Update(2, _update_of(2, 1.0).delta, 10**9, 0.0)
    nan = _update_of(3, float("nan"))
    step = agg.step(weights, [_update_of(0, 1.0), _update_of(1, 3.0), bad_count, nan])
    assert step.applied and step.accepted == (0, 1)
    assert step.rejected[2].startswith("samples:") and step.rejected[3].startswith("non_finite")
    np.testing.assert_allclose(step.weights[0], [2.0, 2.0])
    assert step.weights[0].dtype == np.float32


def test_aggregator_server_learning_rate_scales_the_plain_step() -> None:
    agg = Aggregator(SHAPES, server_learning_rate=0.5)
    weights = [np.zeros(2, np.float32), np.zeros((1, 2), np.float32)]
    step = agg.step(weights, [_update_of(0, 2.0)])
    np.testing.assert_allclose(step.weights[0], [1.0, 1.0])


def test_aggregator_unknown_rule_raises() -> None:
    from fedcollab.aggregation import UnknownRuleError

    with pytest.raises(UnknownRuleError, match="expected one of"):
        Aggregator(SHAPES, rule="geomedian")


def test_aggregator_open_update_missing_an_array_is_rejected_whole() -> None:
    """Finding: an open participant that sent None for an array split Krum into one
    selection per group of arrays, so it could win array 0 while losing array 1."""
    honest = [_update_of(p, 0.1 * p) for p in range(4)]
    sneaky = Update(9, [np.full(2, 0.15, np.float32), None], 10, 0.0)
    agg = Aggregator(SHAPES, rule="krum", options={"f": 1}, max_samples=100)
    weights = [np.zeros(2, np.float32), np.zeros((1, 2), np.float32)]
    step = agg.step(weights, [*honest, sneaky])
    assert step.rejected[9].startswith("missing:") and 9 not in step.accepted
    # Krum picks one participant for every array: the same value in both arrays
    assert float(step.weights[0][0]) == pytest.approx(float(step.weights[1][0, 0]))


def test_aggregator_open_vendor_may_leave_out_its_private_arrays_only() -> None:
    vendor = Update(5, [np.full(2, 1.0, np.float32), None], 10, 0.0)
    agg = Aggregator(SHAPES, max_samples=100, private={5: [1]})
    weights = [np.zeros(2, np.float32), np.zeros((1, 2), np.float32)]
    step = agg.step(weights, [_update_of(0, 3.0), vendor])
    assert step.accepted == (0, 5) and not step.rejected
    np.testing.assert_allclose(step.weights[0], [2.0, 2.0])
    np.testing.assert_allclose(step.weights[1], [[3.0, 3.0]])
