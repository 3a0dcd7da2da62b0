"""Tests for fedcollab.aggregation.fedprox (Li et al. 2020)."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.aggregation import AggregationError, proximal_gradient, proximal_term


def test_proximal_gradient_known_values() -> None:
    grad = proximal_gradient([np.array([1.0, 3.0])], [np.array([0.5, 4.0])], 0.1)
    np.testing.assert_allclose(grad[0], [0.05, -0.1])


def test_proximal_term_known_value() -> None:
    term = proximal_term([np.array([1.0, 3.0])], [np.array([0.0, 7.0])], 0.5)
    assert term == pytest.approx(0.25 * (1.0 + 16.0))


def test_proximal_gradient_matches_finite_difference_of_term() -> None:
    rng = np.random.default_rng(0)
    w, g = [rng.normal(size=4)], [rng.normal(size=4)]
    grad = proximal_gradient(w, g, 0.3)[0]
    eps = 1e-6
    for i in range(4):
        bumped = [w[0].copy()]
        bumped[0][i] += eps
        numeric = (proximal_term(bumped, g, 0.3) - proximal_term(w, g, 0.3)) / eps
        assert numeric == pytest.approx(grad[i], abs=1e-5)


def test_proximal_gradient_keeps_float32() -> None:
    grad = proximal_gradient([np.ones(2, np.float32)], [np.zeros(2, np.float32)], 0.01)
    assert grad[0].dtype == np.float32


def test_proximal_gradient_negative_mu_raises() -> None:
    with pytest.raises(AggregationError, match="mu=-1"):
        proximal_gradient([np.ones(2)], [np.ones(2)], -1)


def test_proximal_gradient_shape_mismatch_raises() -> None:
    with pytest.raises(AggregationError, match="shape"):
        proximal_gradient([np.ones(2)], [np.ones(3)], 0.1)
