"""An empirical epsilon from canary clients in the run, after Andrew et al., "One-shot
Empirical Privacy Estimation for Federated Learning" (ICLR 2024).

``k`` canary clients join the population of a run (a group of ``behaviour: canary``;
:data:`fedcollab.worker.outgoing.PROBES`): sampled like everyone, each sends its own
fixed random unit direction ``c_i`` at the clip norm every round it is sampled, through
the real participant path (clipping, DP noise, the secure sum, the aggregation rule).
As many more directions are drawn and never sent (held out). After the run:

* the **release reader** (final model only): the statistic is the cosine between each
  direction and the model's total change ``w_T - w_0``;
* the **outputs reader** (every round's model): the largest cosine over rounds between
  the direction and the round's change ``w_t - w_{t-1}`` (the paper's all-iterates
  statistic).

Held-out directions give the statistic's null distribution, inserted ones the
distribution under "this canary took part". A Gaussian is fitted to each and the
empirical epsilon is the epsilon of that pair of Gaussians at the card's delta
(:func:`gaussian_pair_epsilon`; with equal spreads, Dong, Roth and Su's mu-GDP). The
spreads are pooled unless they differ significantly (:func:`empirical_epsilon` says
why). Under
a Gaussian mechanism calibrated to the clip norm it lies at or below the accountant's
epsilon (the real participants' updates and the canaries' cross-talk only add spread);
without noise the canaries stand far out and it is large. Pure numpy and scipy.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["gdp_epsilon", "gaussian_pair_epsilon", "empirical_epsilon", "canary_statistics",
           "AuditResult", "spreads_differ", "SPREAD_TEST_LEVEL"]


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with ``delta(epsilon) <= delta`` for mu-GDP:
    ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``; 0 for ``mu <= 0``."""
    from scipy.optimize import brentq
    from scipy.special import log_ndtr, ndtr  # Phi and log Phi as plain ufuncs (fast)

    if not math.isfinite(mu):
        return math.inf
    if mu <= 0:
        return 0.0

    def excess(eps: float) -> float:
        # log-space for the second term: e^eps * Phi(.) overflows for large eps
        second = math.exp(eps + float(log_ndtr(-eps / mu - mu / 2)))
        return float(ndtr(-eps / mu + mu / 2)) - second - delta

    return _smallest_root(excess, brentq, xtol=1e-6)


def _smallest_root(excess: Callable[[float], float], brentq: Callable[..., float],
                   **tolerance: float) -> float:
    """The smallest eps >= 0 with ``excess(eps) <= 0`` (inf past 1e6), by brentq to
    ``tolerance`` (its xtol/rtol)."""
    if excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        hi *= 2
        if hi > 1e6:
            return math.inf
    return float(brentq(excess, hi / 2 if hi > 1 else 0.0, hi, **tolerance))


def _log_mass(region: Sequence[tuple[float, float]], mean: float, std: float) -> float:
    """log P(X in region) for X ~ N(mean, std^2), region a union of disjoint intervals."""
    from scipy.special import log_ndtr

    logs = []
    for lo, hi in region:
        a, b = (lo - mean) / std, (hi - mean) / std
        if b <= 0:    # both ends in the lower tail: Phi(b) - Phi(a), in log space
            la, lb = float(log_ndtr(a)), float(log_ndtr(b))
        else:         # the upper tail by symmetry (precise far out)
            la, lb = float(log_ndtr(-b)), float(log_ndtr(-a))
        if lb <= la:
            continue
        logs.append(lb + math.log1p(-math.exp(la - lb)) if la > -math.inf else lb)
    if not logs:
        return -math.inf
    top = max(logs)  # log-sum-exp of a few scalars (scipy's array version costs ~100 us)
    return top + math.log(sum(math.exp(v - top) for v in logs))


def _loss_region(p: tuple[float, float], q: tuple[float, float],
                 eps: float) -> list[tuple[float, float]]:
    """``{x : log p(x) - log q(x) > eps}`` for Gaussians ``p``, ``q`` as (mean, std): the
    log ratio is a quadratic ``a x^2 + b x + c``, so the set is an interval or two."""
    (m1, s1), (m0, s0) = p, q
    a = 1 / (2 * s0 ** 2) - 1 / (2 * s1 ** 2)
    b = m1 / s1 ** 2 - m0 / s0 ** 2
    c = m0 ** 2 / (2 * s0 ** 2) - m1 ** 2 / (2 * s1 ** 2) + math.log(s0 / s1) - eps
    inf = math.inf
    if a == 0.0:
        if b == 0.0:
            return [(-inf, inf)] if c > 0 else []
        root = -c / b
        return [(root, inf)] if b > 0 else [(-inf, root)]
    disc = b * b - 4 * a * c
    if disc <= 0:
        return [(-inf, inf)] if a > 0 else []
    half = -0.5 * (b + math.copysign(math.sqrt(disc), b))  # stable roots
    r1, r2 = sorted((half / a, c / half if half != 0 else 0.0))
    return [(-inf, r1), (r2, inf)] if a > 0 else [(r1, r2)]


def _hockey_stick(p: tuple[float, float], q: tuple[float, float], eps: float) -> float:
    """``sup_S P(S) - e^eps Q(S)`` for Gaussians ``p``, ``q`` (the region is where the
    privacy loss exceeds eps)."""
    region = _loss_region(p, q, eps)
    if not region:
        return 0.0
    lp, lq = _log_mass(region, *p), _log_mass(region, *q)
    return math.exp(lp) - math.exp(min(eps + lq, 700.0))


def gaussian_pair_epsilon(inside: tuple[float, float], outside: tuple[float, float],
                          delta: float) -> float:
    """The smallest epsilon at which ``N(inside)`` and ``N(outside)`` (each a (mean,
    std) pair) are (epsilon, delta)-indistinguishable, both ways. With equal stds it is
    :func:`gdp_epsilon` of ``|mean difference| / std``; 0 for identical Gaussians."""
    from scipy.optimize import brentq

    (m1, s1), (m0, s0) = inside, outside
    if not all(math.isfinite(v) for v in (m1, s1, m0, s0)):
        return math.inf
    if s1 <= 0 or s0 <= 0:
        return 0.0 if (m1 == m0 and s1 == s0) else math.inf
    if s1 == s0:
        return gdp_epsilon(abs(m1 - m0) / s0, delta)

    def excess(eps: float) -> float:
        return max(_hockey_stick(inside, outside, eps),
                   _hockey_stick(outside, inside, eps)) - delta

    return _smallest_root(excess, brentq, xtol=1e-4, rtol=1e-5)


@dataclass(frozen=True)
class AuditResult:
    value: float                       # the empirical epsilon (point estimate)
    ci: tuple[float, float]            # bootstrap interval over the canaries
    mu: float                          # the shift in held-out stds (mu-GDP reading)
    canaries: int                      # inserted
    held_out: int                      # drawn, never sent
    inside: tuple[float, float]        # fitted (mean, std) of the inserted statistics
    outside: tuple[float, float]       # ... and of the held-out ones
    spread: str = "two"                # "common" (pooled) or "two" (one per Gaussian)
    spread_p: float = 0.0              # the F-test's p-value for equal spreads

    def to_json(self) -> dict[str, object]:
        fin = (lambda v: float(v) if math.isfinite(v) else None)  # noqa: E731 - strict JSON
        return {"value": fin(self.value), "ci": [fin(self.ci[0]), fin(self.ci[1])],
                "mu": fin(self.mu), "canaries": self.canaries, "held_out": self.held_out,
                "fit": {"inserted": [fin(v) for v in self.inside],
                        "held_out": [fin(v) for v in self.outside],
                        "spread": self.spread, "spread_p": fin(self.spread_p)}}


#: Below this p-value (two-sided F-test) the inserted and held-out spreads are taken to
#: differ and each Gaussian gets its own; otherwise both get the pooled spread.
SPREAD_TEST_LEVEL = 0.05


def spreads_differ(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sided F-test's p-value for equal variances of ``a`` and ``b``."""
    from scipy.stats import f as fisher

    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    if va == 0.0 or vb == 0.0:
        return 1.0 if va == vb else 0.0
    ratio = va / vb
    one = float(fisher.cdf(ratio, len(a) - 1, len(b) - 1))
    return min(1.0, 2 * min(one, 1 - one))


def _fits(a: np.ndarray, b: np.ndarray, *, common: bool
          ) -> tuple[tuple[float, float], tuple[float, float]]:
    if common:
        pooled = math.sqrt(((len(a) - 1) * float(np.var(a, ddof=1))
                            + (len(b) - 1) * float(np.var(b, ddof=1))) / (len(a) + len(b) - 2))
        return (float(np.mean(a)), pooled), (float(np.mean(b)), pooled)
    return ((float(np.mean(a)), float(np.std(a, ddof=1))),
            (float(np.mean(b)), float(np.std(b, ddof=1))))


def empirical_epsilon(inside: np.ndarray, outside: np.ndarray, *, delta: float,
                      rng: np.random.Generator, bootstrap: int = 200,
                      confidence: float = 0.95) -> AuditResult:
    """Gaussians fitted to the inserted (``inside``) and held-out (``outside``) canaries'
    statistics, the epsilon of that pair (:func:`gaussian_pair_epsilon`), and a
    bootstrap interval (both sets resampled, the same fit each time).

    The paper fits each Gaussian its own spread. With ~100 inserted canaries their spread
    is known to about 7%, and a spread difference that size alone reads as epsilon ~1.7
    at delta 1e-5 (the privacy loss of two Gaussians of unequal spread is unbounded in
    the tails): so unless the spreads differ significantly (a two-sided F-test at
    :data:`SPREAD_TEST_LEVEL`; sampling the canaries in some rounds only does widen the
    inserted one), both get their pooled spread, which is mu-GDP.
    """
    a = np.asarray(inside, np.float64)
    b = np.asarray(outside, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"canary audit: got {len(a)} inserted and {len(b)} held-out "
                         "statistics, need at least 2 of each")
    p_value = spreads_differ(a, b)
    common = p_value >= SPREAD_TEST_LEVEL
    fit_in, fit_out = _fits(a, b, common=common)
    value = gaussian_pair_epsilon(fit_in, fit_out, delta)
    mu = (fit_in[0] - fit_out[0]) / fit_out[1] if fit_out[1] > 0 else math.inf
    draws = [gaussian_pair_epsilon(*_fits(rng.choice(a, len(a)), rng.choice(b, len(b)),
                                          common=common), delta)
             for _ in range(bootstrap)]
    tail = (1 - confidence) / 2
    lo, hi = (float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))) \
        if draws else (value, value)
    return AuditResult(value, (lo, hi), mu, len(a), len(b), fit_in, fit_out,
                       spread="common" if common else "two", spread_p=p_value)


def canary_statistics(directions: Callable[[int], np.ndarray], count: int,
                      models: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each canary's two statistics against a run's models (flat, ``models[0]`` the
    initial weights, ``models[-1]`` the release): the cosine with the total change
    ``w_T - w_0`` (what a release reader sees), and the largest cosine with any round's
    change ``w_t - w_{t-1}`` (what a reader of every round's model sees).

    Args:
        directions: canary ``i``'s flat unit direction (drawn on demand: a large model's
            directions need not all be held at once).
        count: how many canaries.
        models: the global model before round 1 and after each round.

    Returns:
        ``(final, per_round)`` arrays of ``count`` cosines each.
    """
    stack = np.asarray(models, np.float64)
    if len(stack) < 2:
        raise ValueError("canary audit: need the initial model and at least one round's")
    total = stack[-1] - stack[0]
    steps = np.diff(stack, axis=0)
    total_norm = float(np.linalg.norm(total)) or 1.0
    step_norms = np.linalg.norm(steps, axis=1)
    step_norms[step_norms == 0] = 1.0
    final, per_round = np.empty(count), np.empty(count)
    for i in range(count):
        c = np.asarray(directions(i), np.float64)
        c = c / (np.linalg.norm(c) or 1.0)
        final[i] = float(c @ total) / total_norm
        per_round[i] = float(np.max((steps @ c) / step_norms))
    return final, per_round
