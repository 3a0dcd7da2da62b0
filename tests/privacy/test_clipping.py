"""Tests for fedcollab.privacy.clipping."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcollab.aggregation import global_norm
from fedcollab.privacy import PrivacyError, clip_update

FAST = settings(deadline=None, max_examples=80)
VALUES = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@FAST
@given(a=hnp.arrays(np.float32, (3, 4), elements=VALUES),
       b=hnp.arrays(np.float32, (5,), elements=VALUES),
       clip=st.floats(1e-3, 1e3))
def test_clip_update_never_exceeds_clip_norm(a: np.ndarray, b: np.ndarray, clip: float) -> None:
    clipped, norm = clip_update([a, b], clip)
    assert global_norm(clipped) <= clip
    assert norm == pytest.approx(global_norm([a, b]))
    assert [c.dtype for c in clipped] == [np.float32, np.float32]


@FAST
@given(a=hnp.arrays(np.float64, (6,), elements=st.floats(-10, 10)), clip=st.floats(0.1, 100))
def test_clip_update_keeps_direction(a: np.ndarray, clip: float) -> None:
    (clipped,), norm = clip_update([a], clip)
    if norm > 0:
        np.testing.assert_allclose(clipped * norm / min(norm, clip), a, rtol=1e-9, atol=1e-9)


def test_clip_update_known_values_scale_to_bound() -> None:
    clipped, norm = clip_update([np.array([3.0]), np.array([[4.0]])], 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped[0], [0.6])
    np.testing.assert_allclose(clipped[1], [[0.8]])


def test_clip_update_within_bound_returns_equal_copy() -> None:
    update = [np.array([0.1, 0.2])]
    clipped, norm = clip_update(update, 1.0)
    np.testing.assert_array_equal(clipped[0], update[0])
    assert clipped[0] is not update[0]
    assert norm == pytest.approx(np.sqrt(0.05))


def test_clip_update_zero_update_unchanged() -> None:
    clipped, norm = clip_update([np.zeros(3)], 1.0)
    assert norm == 0.0 and not clipped[0].any()


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan")])
def test_clip_update_bad_clip_norm_raises(clip: float) -> None:
    with pytest.raises(PrivacyError, match="expected a number > 0"):
        clip_update([np.ones(2)], clip)


def test_clip_update_non_finite_update_raises() -> None:
    with pytest.raises(PrivacyError, match="non-finite L2 norm"):
        clip_update([np.array([1.0, np.inf])], 1.0)
