"""Fixed-point encoding: ring choice, overflow rejection, documented quantisation bound."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.secure.encoding import FixedPointCodec, split_weighted_sum, weighted_vector
from fedcollab.secure.errors import EncodingError, SecAggConfigError


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 600), dim=st.integers(1, 64), clip=st.sampled_from([0.5, 1.0, 4.0, 100.0]),
       scale_bits=st.integers(4, 30), seed=st.integers(0, 2**32))
def test_codec_sum_of_encodings_within_documented_bound(n: int, dim: int, clip: float,
                                                        scale_bits: int, seed: int) -> None:
    try:
        codec = FixedPointCodec.for_group(n, clip=clip, scale_bits=scale_bits)
    except SecAggConfigError:
        return  # the configuration overflows even 64 bits: rejected, nothing to check
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-1.5 * clip, 1.5 * clip, size=(n, dim))  # some clipped
    ring = np.zeros(dim, dtype=codec.dtype)
    for x in xs:
        ring += codec.encode(x)
    decoded = codec.decode_sum(ring)
    exact = np.clip(xs, -clip, clip).sum(axis=0)
    bound = codec.quantisation_bound(n) + np.abs(exact) * 2.0 ** -52 + 1e-300
    assert np.all(np.abs(decoded - exact) <= bound)


def test_codec_small_group_uses_32_bit_ring() -> None:
    codec = FixedPointCodec.for_group(100, clip=4.0, scale_bits=20)
    assert codec.ring_bits == 32 and codec.dtype == np.uint32


def test_codec_large_group_widens_to_64_bit_ring() -> None:
    codec = FixedPointCodec.for_group(1000, clip=4.0, scale_bits=20)
    assert codec.ring_bits == 64 and codec.item_bytes == 8


def test_codec_overflowing_configuration_rejected() -> None:
    with pytest.raises(SecAggConfigError, match="overflows even a 64-bit ring"):
        FixedPointCodec.for_group(2**20, clip=1e6, scale_bits=30)


def test_codec_forced_narrow_ring_rejected() -> None:
    with pytest.raises(SecAggConfigError, match="cannot hold a sum of 1000"):
        FixedPointCodec(clip=4.0, scale_bits=20, group_size=1000, ring_bits=32)


@pytest.mark.parametrize("kwargs, match", [
    ({"clip": 0.0, "scale_bits": 10, "group_size": 3}, "clip"),
    ({"clip": float("inf"), "scale_bits": 10, "group_size": 3}, "clip"),
    ({"clip": 1.0, "scale_bits": 60, "group_size": 3}, "scale_bits"),
    ({"clip": 1.0, "scale_bits": 10, "group_size": 0}, "group_size"),
])
def test_codec_bad_parameters_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(SecAggConfigError, match=match):
        FixedPointCodec(**kwargs)


def test_codec_encode_negative_values_wrap_as_twos_complement() -> None:
    codec = FixedPointCodec.for_group(3, clip=4.0, scale_bits=2)
    assert codec.encode(np.array([-1.0, 0.25, 4.0, -9.0])).tolist() == [
        2**32 - 4, 1, 16, 2**32 - 16]


def test_codec_rounds_to_nearest_step() -> None:
    codec = FixedPointCodec.for_group(3, clip=4.0, scale_bits=3)
    decoded = codec.decode_sum(codec.encode(np.array([0.06, 0.07, -0.07])))
    assert decoded.tolist() == [0.0, 0.125, -0.125]


def test_codec_non_finite_values_rejected_without_values_in_message() -> None:
    codec = FixedPointCodec.for_group(3, clip=4.0, scale_bits=10)
    with pytest.raises(EncodingError, match="2 non-finite values") as info:
        codec.encode(np.array([1.2345678, np.nan, np.inf]))
    assert "1.23" not in str(info.value)


def test_codec_two_dimensional_input_rejected() -> None:
    codec = FixedPointCodec.for_group(3, clip=4.0, scale_bits=10)
    with pytest.raises(EncodingError, match="1-D"):
        codec.encode(np.zeros((2, 2)))


def test_weighted_vector_appends_weight_and_scales_update() -> None:
    out = weighted_vector(np.array([[1.0, -2.0]]), 0.5)
    assert out.tolist() == [0.5, -1.0, 0.5]


def test_weighted_vector_non_positive_weight_rejected() -> None:
    with pytest.raises(EncodingError, match="weight"):
        weighted_vector(np.ones(3), 0.0)


def test_split_weighted_sum_divides_by_total_weight() -> None:
    total = (weighted_vector(np.array([1.0, 2.0]), 0.25)
             + weighted_vector(np.array([3.0, 0.0]), 0.75))
    mean, weight = split_weighted_sum(total)
    assert weight == 1.0
    assert np.allclose(mean, [2.5, 0.5])


def test_split_weighted_sum_zero_weight_rejected() -> None:
    with pytest.raises(EncodingError, match="summed weight"):
        split_weighted_sum(np.array([1.0, 0.0]))
