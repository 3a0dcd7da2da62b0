"""Neighbour graphs, thresholds and parameter validation (min_group, threshold, dropout)."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.secure import (
    MIN_GROUP,
    GroupTooSmallError,
    SecAggConfigError,
    SecAggParams,
    validate_group_size,
)
from fedcollab.secure.graph import auto_degree, build_graph, threshold_for


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 300), k=st.integers(2, 40), seed=st.integers(0, 2**32))
def test_graph_secaggplus_is_symmetric_and_regular(n: int, k: int, seed: int) -> None:
    graph = build_graph(list(range(n)), protocol="secaggplus", degree=k, rng=random.Random(seed))
    expected = n - 1 if k >= n - 1 else k - k % 2
    for u, nbrs in graph.items():
        assert u not in nbrs
        assert len(nbrs) == expected
        assert all(u in graph[v] for v in nbrs)


def test_graph_secagg_is_complete() -> None:
    graph = build_graph([5, 1, 9, 3], protocol="secagg", degree=None, rng=random.Random(0))
    assert graph == {1: (3, 5, 9), 3: (1, 5, 9), 5: (1, 3, 9), 9: (1, 3, 5)}


def test_graph_same_seed_same_graph() -> None:
    ids = list(range(50))
    a = build_graph(ids, protocol="secaggplus", degree=8, rng=random.Random(3))
    b = build_graph(ids, protocol="secaggplus", degree=8, rng=random.Random(3))
    assert a == b


def test_graph_unknown_protocol_rejected() -> None:
    with pytest.raises(SecAggConfigError, match="protocol"):
        build_graph([1, 2, 3], protocol="flower", degree=None, rng=random.Random(0))


@pytest.mark.parametrize("n", [3, 10, 50, 100, 400, 1000, 10_000])
def test_auto_degree_between_log_and_group_size(n: int) -> None:
    k = auto_degree(n, threshold=0.67, expected_dropout=0.1)
    assert min(n - 1, 2 * math.ceil(math.log2(n))) <= k <= n - 1


def test_auto_degree_grows_logarithmically() -> None:
    ks = [auto_degree(n, threshold=0.67, expected_dropout=0.1) for n in (100, 1000, 10_000)]
    assert ks[0] < ks[1] < ks[2] <= 3 * ks[0]


def test_auto_degree_without_dropout_is_two_log_n() -> None:
    assert auto_degree(100) == 14


@pytest.mark.parametrize("degree, fraction, expected", [
    (10, 0.7, 7), (2, 0.67, 2), (3, 0.67, 3), (99, 0.67, 67), (14, 0.51, 8), (4, 0.6, 3),
])
def test_threshold_for_ceil_of_fraction(degree: int, fraction: float, expected: int) -> None:
    assert threshold_for(degree, fraction) == expected


def test_min_group_constant_is_three() -> None:
    assert MIN_GROUP == 3 and SecAggParams().min_group == 3


@pytest.mark.parametrize("size", [0, 1, 2])
def test_validate_group_size_too_small_explains_why(size: int) -> None:
    with pytest.raises(GroupTooSmallError, match="a sum of one or two updates is no secret"):
        validate_group_size(size)


def test_validate_group_size_three_ok() -> None:
    validate_group_size(3)


def test_params_min_group_below_three_rejected() -> None:
    with pytest.raises(GroupTooSmallError, match="no secret"):
        SecAggParams(min_group=2)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 1.2, float("nan")])
def test_params_threshold_outside_half_to_one_rejected(threshold: float) -> None:
    with pytest.raises(SecAggConfigError, match="threshold"):
        SecAggParams(threshold=threshold)


def test_params_dropout_beyond_threshold_tolerance_rejected() -> None:
    with pytest.raises(SecAggConfigError, match="expected_dropout"):
        SecAggParams(threshold=0.8, expected_dropout=0.25)


@pytest.mark.parametrize("kwargs", [{"protocol": "secagg2"}, {"neighbours": 1},
                                    {"clip": -1.0}, {"scale_bits": 70}])
def test_params_bad_values_rejected(kwargs: dict) -> None:
    with pytest.raises(SecAggConfigError):
        SecAggParams(**kwargs)


def test_params_codec_rejects_group_that_overflows() -> None:
    params = SecAggParams(clip=1e3, scale_bits=40)
    with pytest.raises(SecAggConfigError, match="overflows"):
        params.codec(10_000)
