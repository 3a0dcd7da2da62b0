"""The layout a secure participant masks, and its inverse on the server."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.secure.layout import secure_dim, secure_vector, split_secure_sum


@pytest.mark.parametrize("secure_clip", [0.0, 0.5])
@pytest.mark.parametrize("clip_bit", [None, True, False])
def test_secure_vector_layout_round_trips_through_split(clip_bit: bool | None,
                                                        secure_clip: float) -> None:
    shapes = [(3, 2), (2,), (4,)]
    rng = np.random.default_rng(0)
    delta = [rng.normal(size=(3, 2)), None, rng.normal(size=4)]  # middle array private
    vector = secure_vector(delta, shapes, 0.5, clip_bit=clip_bit, secure_clip=secure_clip)
    saturation = secure_clip > 0
    assert vector.shape == (secure_dim(shapes, clip_bit=clip_bit is not None,
                                       saturation=saturation),)
    parts = split_secure_sum(vector, shapes, scale=4.0, clip_bit=clip_bit is not None,
                             saturation=saturation)
    np.testing.assert_allclose(parts.arrays[0], 0.5 * delta[0] * 4.0)
    np.testing.assert_array_equal(parts.arrays[1], np.zeros(2))
    np.testing.assert_allclose(parts.arrays[2], 0.5 * delta[2] * 4.0)
    assert parts.counts == [2.0, 0.0, 2.0]
    assert parts.bits == (None if clip_bit is None else float(clip_bit))
    if saturation:  # the share of all 12 coordinates whose weighted value exceeds 0.5
        over = sum(int(np.sum(np.abs(0.5 * d) > 0.5)) for d in delta if d is not None)
        assert parts.saturated == pytest.approx(over / 12)
    else:
        assert parts.saturated is None


def test_weighted_vector_is_the_layout_of_one_array() -> None:
    from fedcollab.secure.encoding import split_weighted_sum, weighted_vector

    update = np.arange(6.0).reshape(2, 3)
    vector = weighted_vector(update, 0.25)
    np.testing.assert_array_equal(vector, secure_vector([update.ravel()], [(6,)], 0.25))
    mean, weight = split_weighted_sum(vector + weighted_vector(np.ones(6), 0.75))
    np.testing.assert_allclose(mean, 0.25 * update.ravel() + 0.75)
    assert weight == 1.0
