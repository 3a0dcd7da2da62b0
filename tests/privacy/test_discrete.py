"""The exact discrete Gaussian sampler: its distribution, its variance, its exact parts."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedcollab.privacy.discrete import (
    bernoulli_exp,
    discrete_gaussian,
    discrete_gaussian_pmf,
    discrete_laplace,
    uniform_below,
)
from fedcollab.privacy.errors import PrivacyError


def _chi_square_p(draws: np.ndarray, pmf: np.ndarray, support: np.ndarray) -> float:
    """Chi-square goodness of fit, tails pooled into the end bins."""
    counts = np.array([np.count_nonzero(draws == x) for x in support], dtype=np.float64)
    counts[0] += np.count_nonzero(draws < support[0])
    counts[-1] += np.count_nonzero(draws > support[-1])
    probs = np.array(pmf, dtype=np.float64)
    tail = (1.0 - probs.sum()) / 2  # symmetric distributions: the mass beyond each end
    probs[0] += tail
    probs[-1] += tail
    expected = probs * draws.size
    return float(stats.chisquare(counts, expected).pvalue)


@pytest.mark.parametrize("sigma2", [1, Fraction(5, 2), 9])
def test_discrete_gaussian_matches_the_exact_pmf(sigma2: int | Fraction) -> None:
    draws = discrete_gaussian(sigma2, 60_000)
    span = int(4 * math.sqrt(sigma2)) + 1
    support = np.arange(-span, span + 1)
    pmf = discrete_gaussian_pmf(float(sigma2), support)
    assert _chi_square_p(draws, pmf, support) > 1e-4


def test_discrete_gaussian_variance_of_a_sum_of_m_draws_is_m_sigma2() -> None:
    # the variance of N_Z(0, s2) is within exp(-2 pi^2 s2)-ish of s2 for s2 >= 1
    sigma2, m, n = 400, 10, 20_000
    sums = discrete_gaussian(sigma2, m * n).reshape(n, m).sum(axis=1).astype(np.float64)
    var = float(np.var(sums, ddof=1))
    # chi-square CI for the variance of (nearly) Gaussian sums, 99.99%
    lo = (n - 1) * m * sigma2 / stats.chi2.ppf(1 - 5e-5, n - 1)
    hi = (n - 1) * m * sigma2 / stats.chi2.ppf(5e-5, n - 1)
    assert lo < var < hi
    assert abs(float(np.mean(sums))) < 5 * math.sqrt(m * sigma2 / n)


def test_discrete_laplace_matches_its_pmf() -> None:
    t = 3
    draws = discrete_laplace(t, 40_000)
    support = np.arange(-15, 16)
    weights = np.exp(-np.abs(support) / t)
    pmf = weights / (np.exp(-np.abs(np.arange(-400, 401)) / t).sum())
    assert _chi_square_p(draws, pmf, support) > 1e-4


@given(num=st.integers(0, 40), den=st.integers(1, 40))
@settings(max_examples=25, deadline=None)
def test_bernoulli_exp_has_rate_exp_minus_gamma(num: int, den: int) -> None:
    n = 4000
    hits = int(np.count_nonzero(bernoulli_exp(num, den, n)))
    p = math.exp(-num / den)
    assert abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


@given(bound=st.integers(1, 2 ** 62))
@settings(max_examples=50, deadline=None)
def test_uniform_below_stays_below_its_bound(bound: int) -> None:
    draws = uniform_below(bound, 64)
    assert draws.min() >= 0 and draws.max() < bound


def test_uniform_below_rejects_the_biased_words() -> None:
    # 2**64 mod 3 = 1: word 0 would make 0 twice as likely as 1 or 2, so it is dropped
    # and a fresh word drawn
    words = iter([np.uint64(0).tobytes(), np.uint64(7).tobytes()])
    out = uniform_below(3, 1, lambda n: next(words))
    assert out.tolist() == [7 % 3]


def test_discrete_gaussian_uses_the_given_byte_source_only() -> None:
    calls: list[int] = []
    rng = np.random.default_rng(0)

    def source(n: int) -> bytes:
        calls.append(n)
        return rng.bytes(n)

    draws = discrete_gaussian(4, 100, source)
    assert calls and draws.dtype == np.int64 and draws.size == 100


def test_discrete_gaussian_refuses_floats() -> None:
    with pytest.raises(PrivacyError, match="never a float"):
        discrete_gaussian(2.5, 10)  # type: ignore[arg-type]
