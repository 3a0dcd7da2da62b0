"""An empirical epsilon from canaries, after Andrew et al., "One-shot Empirical Privacy
Estimation for Federated Learning" (ICLR 2024).

Canary clients each send a fixed random unit direction ``c_i`` (scaled to the clip norm
``C``, the most a clipped client can send) in the rounds they are sampled; held-out
directions are drawn the same way and never sent. The final model's update is projected
on every direction: against a mechanism with Gaussian noise the projections of the
held-out directions are ~N(mu_out, s^2) and those of the canaries are shifted by what
the canaries put in. The shift in units of the spread, ``mu = (mean_in - mean_out) /
s``, is the canaries' Gaussian-DP parameter, and the epsilon that mu-GDP allows at delta
(Dong, Roth and Su 2022, Corollary 2.13) is the empirical estimate. With noise of the
accountant's scale it lies at or below the accountant's epsilon; without noise the
canaries stand far out and it is large.

Here the canaries are added to the *run's own* final update after the fact
(:func:`canary_audit`): each canary's contribution is exactly what FedAvg would have
added for a client of norm ``C`` in the rounds it was sampled, and the noise they are
measured against is the noise the run really drew. So it audits the noise the run put
into its release against the clip norm the accountant assumed, in one run and without
retraining; it does not test the clipping of real clients (which the replay's check
against the run's checkpoints covers). Pure numpy and scipy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["gdp_epsilon", "empirical_epsilon", "canary_audit", "AuditResult"]


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

    if excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        hi *= 2
        if hi > 1e6:
            return math.inf
    return float(brentq(excess, 0.0, hi, xtol=1e-6))


@dataclass(frozen=True)
class AuditResult:
    value: float                 # the empirical epsilon (point estimate)
    ci: tuple[float, float]      # bootstrap interval over the canaries (95%)
    mu: float                    # the canaries' Gaussian-DP parameter
    canaries: int                # inserted (as many held out)

    def to_json(self) -> dict[str, object]:
        fin = (lambda v: v if math.isfinite(v) else None)  # noqa: E731 - strict JSON
        return {"value": fin(self.value), "ci": [fin(self.ci[0]), fin(self.ci[1])],
                "mu": fin(self.mu), "canaries": self.canaries,
                "method": "one-run canary audit"}


def _mu(inside: np.ndarray, outside: np.ndarray) -> float:
    spread = float(np.std(outside, ddof=1))
    if spread == 0.0:
        return math.inf if float(np.mean(inside)) > float(np.mean(outside)) else 0.0
    return (float(np.mean(inside)) - float(np.mean(outside))) / spread


def empirical_epsilon(inside: np.ndarray, outside: np.ndarray, *, delta: float,
                      rng: np.random.Generator, bootstrap: int = 200,
                      confidence: float = 0.95) -> AuditResult:
    """The epsilon the canaries' shift shows (:func:`gdp_epsilon` of their mu), with a
    bootstrap interval (canaries and held-out directions resampled)."""
    a = np.asarray(inside, np.float64)
    b = np.asarray(outside, np.float64)
    mu = _mu(a, b)
    value = gdp_epsilon(mu, delta)
    draws = []
    for _ in range(bootstrap):
        draws.append(gdp_epsilon(_mu(rng.choice(a, len(a)), rng.choice(b, len(b))), delta))
    tail = (1 - confidence) / 2
    lo, hi = (float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))) \
        if draws else (value, value)
    return AuditResult(value, (lo, hi), mu, len(a))


def canary_audit(final_update: np.ndarray, *, counts: Sequence[float], rate: float,
                 clip: float, delta: float, canaries: int = 500,
                 rng: Optional[np.random.Generator] = None) -> AuditResult:
    """Canaries added to a run's final update (flat ``w_final - w_0`` over the shared
    arrays) as FedAvg would have added them, then :func:`empirical_epsilon`.

    Args:
        final_update: the run's release minus its start.
        counts: per aggregated round, the weight FedAvg divided that round's sum by (the
            participants under DP, each counted once).
        rate: the chance a canary is sampled in a round (the group's sampling rate).
        clip: a canary's norm (the clip norm: the most one client moves the sum).
        canaries: inserted directions (as many more are held out).
    """
    rng = rng if rng is not None else np.random.default_rng()
    x = np.asarray(final_update, np.float64).ravel()
    d = x.size
    dirs = rng.normal(size=(2 * canaries, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    per_round = np.asarray([clip / max(float(c), 1e-12) for c in counts])
    taken = rng.random((canaries, len(per_round))) < rate
    weight = taken @ per_round  # each canary's total coefficient over the run
    audited = x + weight @ dirs[:canaries]
    scores = dirs @ audited
    return empirical_epsilon(scores[:canaries], scores[canaries:], delta=delta, rng=rng)
