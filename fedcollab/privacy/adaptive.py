"""Adaptive clipping: learn the clip norm as a quantile of the update norms.

Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
Clipping", NeurIPS 2021. Each round, every participant reports the bit
``b_i = [||delta_i|| <= C]``; the server sums the bits with Gaussian noise of std
``sigma_b``, ``b_bar = (sum_i b_i + N(0, sigma_b^2)) / m``, and takes a geometric step
``C <- C * exp(-eta_C * (b_bar - gamma))`` towards the ``gamma``-quantile of the norms.

Privacy: the bits are a second Gaussian query. Spending the same total budget as the
plain mechanism with noise multiplier ``z`` needs the update noise multiplier
``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (:func:`update_noise_multiplier`); the
accountant then uses ``z``. The paper suggests ``sigma_b = m / 20`` for ``m``
expected participants per round (:func:`default_count_noise_std`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from fedcollab.privacy.errors import PrivacyError

__all__ = ["adaptive_clip_step", "clip_step_from_count", "update_noise_multiplier",
           "default_count_noise_std"]


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise PrivacyError(f"adaptive clipping: got {name}={value!r}, expected a number {bound}")


def adaptive_clip_step(state: float, norms: Union[Sequence[float], np.ndarray], *,
                       target_quantile: float,
                       learning_rate: float, count_noise_std: float,
                       rng: np.random.Generator,
                       expected_participants: Optional[float] = None) -> float:
    """One geometric update of the clip norm (Andrew et al. 2021, Algorithm 1).

    Args:
        state: The current clip norm ``C`` (> 0).
        norms: This round's participants' update norms before clipping.
        target_quantile: ``gamma`` in [0, 1]: the share of updates that should fit
            unclipped (0.5 = the median norm).
        learning_rate: ``eta_C`` (> 0); 0.2 is the paper's default.
        count_noise_std: ``sigma_b`` (>= 0): std of the noise on the bit count.
        rng: Randomness for the count noise (the server's).
        expected_participants: ``m``, the denominator; defaults to ``len(norms)``.

    Returns:
        The next round's clip norm.

    Raises:
        PrivacyError: No norms, or a value out of range.
    """
    _positive("state (clip norm)", state)
    _positive("learning_rate", learning_rate)
    _positive("count_noise_std", count_noise_std, allow_zero=True)
    if not (isinstance(target_quantile, (int, float)) and 0 <= target_quantile <= 1):
        raise PrivacyError(f"adaptive clipping: got target_quantile={target_quantile!r}, "
                           "expected a number in [0, 1]")
    values = np.asarray(norms, dtype=np.float64)
    if values.size == 0:
        raise PrivacyError("adaptive clipping: got 0 norms; need at least one participant")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise PrivacyError("adaptive clipping: norms must be finite and >= 0")
    m = float(values.size) if expected_participants is None else expected_participants
    _positive("expected_participants", m)
    count = float(np.count_nonzero(values <= state))
    if count_noise_std > 0:
        count += float(rng.normal(0.0, count_noise_std))
    b_bar = count / m
    return float(state * math.exp(-learning_rate * (b_bar - target_quantile)))


def clip_step_from_count(state: float, noisy_count: float, participants: int, *,
                         target_quantile: float, learning_rate: float) -> float:
    """One geometric step from an already-noised count of clip bits: ``C * exp(-eta *
    (count / m - gamma))`` (Andrew et al. 2021, Algorithm 1). The noise was added where
    the bits were: by each sender (distributed, local) or by the server (central)."""
    _positive("state (clip norm)", state)
    _positive("learning_rate", learning_rate)
    if participants < 1:
        raise PrivacyError("adaptive clipping: got 0 participants; need at least one")
    if not math.isfinite(noisy_count):
        raise PrivacyError("adaptive clipping: the noisy count is not finite")
    b_bar = noisy_count / participants
    return float(state * math.exp(-learning_rate * (b_bar - target_quantile)))


def update_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """The noise multiplier for the updates when the bit count also spends budget.

    ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, so the pair of queries is as
    private as one Gaussian query with multiplier ``z`` (Andrew et al. 2021).

    Raises:
        PrivacyError: ``count_noise_std <= z / 2`` (the count alone would spend more
            than the budget), or a value out of range.
    """
    _positive("noise_multiplier", noise_multiplier)
    _positive("count_noise_std", count_noise_std)
    if 2 * count_noise_std <= noise_multiplier:
        raise PrivacyError(
            f"adaptive clipping: count_noise_std={count_noise_std:g} must exceed "
            f"noise_multiplier / 2 = {noise_multiplier / 2:g}, or the clip-count query alone "
            "spends the whole budget; raise count_noise_std (m / 20 is typical)")
    return float((noise_multiplier ** -2 - (2 * count_noise_std) ** -2) ** -0.5)


def default_count_noise_std(expected_participants: float) -> float:
    """``m / 20``, the bit-count noise Andrew et al. (2021) recommend.

    Raises:
        PrivacyError: ``expected_participants`` not > 0.
    """
    _positive("expected_participants", expected_participants)
    return expected_participants / 20.0
