"""The canary audit's empirical epsilon (pure: numpy, scipy)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fedcollab.grading.audit import (
    canary_statistics,
    empirical_epsilon,
    gaussian_pair_epsilon,
    gdp_epsilon,
)
from fedcollab.privacy.accounting import epsilon as accountant_epsilon


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


def _hockey_stick_by_quadrature(p: tuple[float, float], q: tuple[float, float],
                                eps: float) -> float:
    x = np.linspace(-30, 30, 120_001)
    gap = np.exp(norm.logpdf(x, *p)) - np.exp(eps + norm.logpdf(x, *q))
    return float(np.trapezoid(np.maximum(gap, 0.0), x))


@settings(max_examples=10, deadline=None)
@given(m1=st.floats(-3, 3), s1=st.floats(0.3, 3), s0=st.floats(0.3, 3))
def test_gaussian_pair_epsilon_meets_delta_by_quadrature(m1: float, s1: float,
                                                         s0: float) -> None:
    """Unequal spreads: at the returned epsilon neither direction's hockey-stick divergence
    (integrated numerically, not through the closed form) exceeds delta, and a little
    below it one does."""
    delta = 1e-3
    p, q = (m1, s1), (0.0, s0)
    eps = gaussian_pair_epsilon(p, q, delta)
    assert math.isfinite(eps)
    worst = max(_hockey_stick_by_quadrature(p, q, eps), _hockey_stick_by_quadrature(q, p, eps))
    assert worst <= delta + 1e-5
    if eps > 0.05:
        below = eps - 0.05
        assert max(_hockey_stick_by_quadrature(p, q, below),
                   _hockey_stick_by_quadrature(q, p, below)) > delta


def test_gaussian_pair_epsilon_with_equal_spreads_is_gaussian_dp() -> None:
    for mu in (0.3, 1.0, 4.5):
        assert gaussian_pair_epsilon((mu, 1.0), (0.0, 1.0), 1e-5) == pytest.approx(
            gdp_epsilon(mu, 1e-5))
    assert gaussian_pair_epsilon((0.0, 1.0), (0.0, 1.0), 1e-5) == 0.0
    # a wider spread alone is distinguishable: the two tails differ
    assert gaussian_pair_epsilon((0.0, 1.5), (0.0, 1.0), 1e-5) > 0


def test_empirical_epsilon_recovers_a_known_gaussian_shift() -> None:
    rng = np.random.default_rng(0)
    got = empirical_epsilon(rng.normal(1.0, 1.0, 20000), rng.normal(0.0, 1.0, 20000),
                            delta=1e-5, rng=rng, bootstrap=50)
    assert got.spread == "common"  # equal spreads: pooled, mu-GDP
    assert got.mu == pytest.approx(1.0, abs=0.03)
    assert got.value == pytest.approx(gdp_epsilon(1.0, 1e-5), rel=0.05)
    assert got.ci[0] <= gdp_epsilon(1.0, 1e-5) <= got.ci[1]
    with pytest.raises(ValueError, match="at least 2"):
        empirical_epsilon(np.ones(1), np.ones(5), delta=1e-5, rng=rng)


def test_empirical_epsilon_fits_two_spreads_when_they_differ() -> None:
    """Canaries sampled in some rounds only are a mixture: a wider inserted spread is
    itself distinguishable, and the F-test lets each Gaussian keep its own."""
    rng = np.random.default_rng(1)
    got = empirical_epsilon(rng.normal(0.0, 1.6, 100), rng.normal(0.0, 1.0, 1000),
                            delta=1e-5, rng=rng, bootstrap=50)
    assert got.spread == "two" and got.spread_p < 0.05
    assert got.value > 1.0 and got.to_json()["fit"]["spread"] == "two"


def test_empirical_epsilon_of_no_signal_stays_near_zero_with_100_canaries() -> None:
    """100 inserted and 1000 held-out draws of the same Gaussian: two fitted spreads
    would read their ~7% sampling difference as epsilon ~1.7 at delta 1e-5; pooled they
    read about what the mean's sampling error allows."""
    rng = np.random.default_rng(2)
    values = [empirical_epsilon(rng.normal(0, 1, 100), rng.normal(0, 1, 1000), delta=1e-5,
                                rng=rng, bootstrap=0).value for _ in range(40)]
    assert float(np.median(values)) < 0.5, values


def _dp_fedavg(rng: np.random.Generator, *, d: int, rounds: int, canaries: int,
               real: int, z: float, clip: float = 1.0) -> tuple[list[np.ndarray], np.ndarray]:
    """DP-FedAvg with every participant sampled: each round the mean of ``real`` clipped
    updates (all near one shared direction, as a model's learning is) and ``canaries``
    canary clients at the clip norm, with Gaussian noise of std ``z C`` on the sum."""
    dirs = rng.standard_normal((canaries, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    shared = rng.standard_normal(d)
    shared /= np.linalg.norm(shared)
    w = rng.standard_normal(d) * 0.1
    models = [w.copy()]
    n = real + canaries
    for _ in range(rounds):
        honest = clip * (shared + 0.3 * rng.standard_normal((real, d)) / math.sqrt(d))
        honest /= np.maximum(np.linalg.norm(honest, axis=1, keepdims=True) / clip, 1.0)
        total = honest.sum(axis=0) + clip * dirs.sum(axis=0) + rng.normal(0, z * clip, d)
        w = w + total / n
        models.append(w.copy())
    return models, dirs


def test_canary_statistics_under_dp_stay_below_the_accountant_and_without_noise_do_not() -> None:
    """The in-run audit end to end on a simulated Gaussian mechanism: 20 rounds, z = 1,
    100 canaries and 1000 held out in d = 5000. The release's epsilon is at most the
    accountant's (RDP over 20 unsampled rounds) and near mu = sqrt(20); without noise
    the canaries stand out further."""
    rng = np.random.default_rng(3)
    d, rounds, k = 5000, 20, 100
    held = rng.standard_normal((1000, d))
    held /= np.linalg.norm(held, axis=1, keepdims=True)
    accountant = accountant_epsilon(noise_multiplier=1.0, sampling_rate=1.0, rounds=rounds,
                                    delta=1e-5)
    models, dirs = _dp_fedavg(rng, d=d, rounds=rounds, canaries=k, real=11, z=1.0)
    ins = canary_statistics(lambda i: dirs[i], k, models)
    outs = canary_statistics(lambda i: held[i], len(held), models)
    release = empirical_epsilon(ins[0], outs[0], delta=1e-5, rng=rng, bootstrap=100)
    assert 0 < release.value <= accountant, (release, accountant)
    assert 3.0 < release.mu < 6.0, release  # sqrt(20) = 4.5, less the real updates' spread
    every_round = empirical_epsilon(ins[1], outs[1], delta=1e-5, rng=rng, bootstrap=100)
    assert every_round.value <= accountant
    clear, dirs = _dp_fedavg(rng, d=d, rounds=rounds, canaries=k, real=11, z=0.0)
    ins = canary_statistics(lambda i: dirs[i], k, clear)
    outs = canary_statistics(lambda i: held[i], len(held), clear)
    unnoised = empirical_epsilon(ins[0], outs[0], delta=1e-5, rng=rng, bootstrap=100)
    # without noise only the cosine's own spread (1/sqrt(d) for held-out directions, and
    # the other canaries' cross-talk) bounds it
    assert unnoised.value > 10 and unnoised.mu > release.mu + 1


def test_canary_statistics_needs_a_round() -> None:
    with pytest.raises(ValueError, match="at least one round"):
        canary_statistics(lambda i: np.ones(3), 1, [np.zeros(3)])
