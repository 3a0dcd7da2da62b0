"""The canary audit's empirical epsilon (pure: numpy, scipy)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fedcollab.grading.audit import canary_audit, empirical_epsilon, gdp_epsilon


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(0.05, 6.0), delta=st.sampled_from([1e-3, 1e-5, 1e-7]))
def test_gdp_epsilon_is_the_root_of_the_privacy_curve(mu: float, delta: float) -> None:
    """Dong, Roth and Su's delta(eps) for mu-GDP, recomputed here: the returned epsilon
    meets delta, and a hair less would not; larger mu never gives a smaller epsilon."""
    eps = gdp_epsilon(mu, delta)

    def curve(e: float) -> float:
        return float(norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2))

    assert curve(eps) <= delta * (1 + 1e-3) + 1e-12
    if eps > 1e-3:
        assert curve(eps - 1e-3) > delta
    assert gdp_epsilon(mu * 1.2, delta) >= eps


def test_gdp_epsilon_edges() -> None:
    assert gdp_epsilon(0.0, 1e-5) == 0.0 and gdp_epsilon(-1.0, 1e-5) == 0.0
    assert gdp_epsilon(math.inf, 1e-5) == math.inf


def test_empirical_epsilon_recovers_a_known_gaussian_shift() -> None:
    rng = np.random.default_rng(0)
    got = empirical_epsilon(rng.normal(1.0, 1.0, 20000), rng.normal(0.0, 1.0, 20000),
                            delta=1e-5, rng=rng, bootstrap=50)
    assert got.mu == pytest.approx(1.0, abs=0.03)
    assert got.ci[0] <= gdp_epsilon(1.0, 1e-5) <= got.ci[1]


def test_canary_audit_against_noise_of_known_scale_and_without_noise() -> None:
    """20 rounds of 10 participants, clip 1: a canary adds 0.1 a round, 2 in all. Noise of
    std 2 per coordinate makes that mu ~ 1; without noise the canaries stand out."""
    rng = np.random.default_rng(1)
    d = 5000
    counts = [10.0] * 20
    noisy = canary_audit(rng.normal(0, 2.0, d), counts=counts, rate=1.0, clip=1.0,
                         delta=1e-5, canaries=300, rng=rng)
    assert 0.8 < noisy.mu < 1.15, noisy
    assert noisy.value <= gdp_epsilon(1.15, 1e-5)
    learnt = np.zeros(d)
    learnt[:64] = 3.0  # a model's update without noise: a few coordinates that moved
    clear = canary_audit(learnt, counts=counts, rate=1.0, clip=1.0, delta=1e-5,
                         canaries=300, rng=rng)
    # (canaries cross-talk: each also projects on the others, which bounds mu from above)
    assert clear.mu > 3 and clear.value > 3 * noisy.value
