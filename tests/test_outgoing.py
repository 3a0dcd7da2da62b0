"""The layout a secure participant masks, and its inverse on the server."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.outgoing import secure_dim, secure_vector, split_secure_sum


@pytest.mark.parametrize("clip_bit", [None, True, False])
def test_secure_vector_layout_round_trips_through_split(clip_bit: bool | None) -> None:
    shapes = [(3, 2), (2,), (4,)]
    rng = np.random.default_rng(0)
    delta = [rng.normal(size=(3, 2)), None, rng.normal(size=4)]  # middle array private
    vector = secure_vector(delta, shapes, 0.5, clip_bit=clip_bit)
    assert vector.shape == (secure_dim(shapes, clip_bit=clip_bit is not None),)
    arrays, counts, bits = split_secure_sum(vector, shapes, scale=4.0,
                                            clip_bit=clip_bit is not None)
    np.testing.assert_allclose(arrays[0], 0.5 * delta[0] * 4.0)
    np.testing.assert_array_equal(arrays[1], np.zeros(2))
    np.testing.assert_allclose(arrays[2], 0.5 * delta[2] * 4.0)
    assert counts == [2.0, 0.0, 2.0]
    assert bits == (None if clip_bit is None else float(clip_bit))
