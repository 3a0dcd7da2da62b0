"""Gaussian noise for user-level DP-FedAvg, in three places it can be added.

McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR
2018: clip each participant's update to L2 norm ``C``, sum, and add Gaussian noise
of std ``z * C`` to the sum (``z`` is the noise multiplier). Who adds the noise
decides whom it protects against:

``central``
    Participants send clipped updates; the **server** adds ``N(0, (zC)^2)`` to the
    sum once (:func:`add_central_noise`). The released model is DP, but the server
    itself sees each open update (or each secure group's exact sum) before noise:
    it must be trusted.
``distributed``
    Each of the ``m`` members of a secure group adds ``N(0, (zC)^2 / m)`` to its own
    clipped update before masking (:func:`privatize_update`). The server sees only
    the masked sum, which carries noise of variance ``(zC)^2`` in total; no single
    party ever sees a noise-free aggregate. Caveats: if members drop out, the sum
    carries only ``survivors / m`` of the variance (plan ``m`` as the expected
    survivors, or over-provision); colluding members can subtract their own noise;
    the noise is continuous Gaussian rounded by the fixed-point encoding (the
    discrete Gaussian of Kairouz et al., ICML 2021, is what makes this exact).
``distributed_discrete_gaussian``
    As ``distributed``, but each member clips, rotates, rounds to integers and adds
    *discrete* Gaussian noise sampled exactly inside the secure ring
    (:mod:`fedcollab.privacy.ddg`; Kairouz, Liu, Steinke, ICML 2021), accounted with
    its own event (:mod:`fedcollab.privacy.ddg_accounting`). It is not done here:
    :func:`privatize_update` only clips for it (an open participant adds ``local``
    noise, as under ``distributed``).
``local``
    Every participant adds ``N(0, (zC)^2)`` to its own clipped update, so even the
    server sees only noised updates; the sum carries ``m`` times the variance, so
    utility is far worse.

For the sensitivity of the sum to stay ``C``, each participant's clipped update
enters it with weight 1 (not its sample count): DP-FedAvg divides the noised sum by
the (expected) number of participants instead.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, get_args

import numpy as np

from fedcollab.arrays import global_norm
from fedcollab.privacy.clipping import clip_update
from fedcollab.privacy.errors import PrivacyError
from fedcollab.types import Weights

__all__ = [
    "DpMode",
    "DP_MODES",
    "DDG_MODE",
    "gaussian_noise_like",
    "add_noise",
    "noise_std_for",
    "aggregate_noise_std",
    "privatize_update",
    "add_central_noise",
    "central_dp_mean",
]

DpMode = Literal["none", "central", "distributed", "local", "distributed_discrete_gaussian"]
#: Distributed DP with integer noise in the secure ring (:mod:`fedcollab.privacy.ddg`).
DDG_MODE = "distributed_discrete_gaussian"
DP_MODES: tuple[str, ...] = get_args(DpMode)


def _float_dtype(array: np.ndarray) -> np.dtype:
    dtype = np.asarray(array).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _check_std(std: float) -> None:
    if not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0):
        raise PrivacyError(f"noise: got std={std!r}, expected a finite number >= 0")


def gaussian_noise_like(weights: Sequence[np.ndarray], std: float,
                        rng: np.random.Generator) -> Weights:
    """Independent ``N(0, std^2)`` noise with the shapes and float dtypes of ``weights``.

    Draws one array at a time in order, so a seeded ``rng`` gives the same noise.
    With ``std == 0`` it returns zeros and draws nothing.

    Args:
        weights: Arrays whose shapes (and float dtypes) the noise takes.
        std: The standard deviation (>= 0).
        rng: The source of randomness.

    Raises:
        PrivacyError: ``std`` negative or not finite.
    """
    _check_std(std)
    if std == 0:
        return [np.zeros(np.shape(a), dtype=_float_dtype(a)) for a in weights]
    return [rng.normal(0.0, std, size=np.shape(a)).astype(_float_dtype(a)) for a in weights]


def add_noise(weights: Sequence[np.ndarray], std: float, rng: np.random.Generator) -> Weights:
    """``weights + N(0, std^2)`` per coordinate, summed in float64, cast back.

    Raises:
        PrivacyError: ``std`` negative or not finite.
    """
    _check_std(std)
    out: Weights = []
    for array in weights:
        dtype = _float_dtype(array)
        noise = rng.normal(0.0, std, size=np.shape(array)) if std > 0 else 0.0
        out.append((np.asarray(array, dtype=np.float64) + noise).astype(dtype))
    return out


def _check_common(mode: str, noise_multiplier: float, clip_norm: float, group_size: int) -> None:
    if mode not in DP_MODES:
        raise PrivacyError(f"dp mode: got {mode!r}, expected one of {', '.join(DP_MODES)}")
    if not (isinstance(noise_multiplier, (int, float)) and math.isfinite(noise_multiplier)
            and noise_multiplier >= 0):
        raise PrivacyError(f"dp: got noise_multiplier={noise_multiplier!r}, "
                           "expected a finite number >= 0")
    if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyError(f"dp: got clip_norm={clip_norm!r}, expected a number > 0")
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
            or group_size < 1:
        raise PrivacyError(f"dp: got group_size={group_size!r}, expected an integer >= 1")


def noise_std_for(mode: DpMode, noise_multiplier: float, clip_norm: float,
                  group_size: int = 1) -> float:
    """The std of the noise added by **one adder** in ``mode``.

    ``none``: 0. ``central``: ``zC``, added once by the server to the sum.
    ``distributed``: ``zC / sqrt(m)``, added by each of the ``m = group_size``
    secure participants. ``local``: ``zC``, added by each participant.

    Raises:
        PrivacyError: Unknown mode, or a value out of range.
    """
    _check_common(mode, noise_multiplier, clip_norm, group_size)
    if mode == "none":
        return 0.0
    if mode in ("distributed", DDG_MODE):
        return noise_multiplier * clip_norm / math.sqrt(group_size)
    return noise_multiplier * clip_norm


def aggregate_noise_std(mode: DpMode, noise_multiplier: float, clip_norm: float,
                        group_size: int = 1) -> float:
    """The std of the total noise on a sum over ``group_size`` participants.

    ``central`` and ``distributed`` (all members surviving): ``zC``; ``local``:
    ``zC * sqrt(m)``; ``none``: 0.

    Raises:
        PrivacyError: Unknown mode, or a value out of range.
    """
    per_adder = noise_std_for(mode, noise_multiplier, clip_norm, group_size)
    if mode in ("distributed", "local", DDG_MODE):
        return per_adder * math.sqrt(group_size)
    return per_adder


def privatize_update(update: Sequence[np.ndarray], *, mode: DpMode, noise_multiplier: float,
                     clip_norm: float, rng: np.random.Generator,
                     group_size: int = 1) -> tuple[Weights, float]:
    """What a participant does to its own update before sending (or masking) it.

    ``none``: nothing (a copy). ``central``: clip only; the server adds the noise
    (:func:`add_central_noise`). ``distributed``: clip, then add
    ``N(0, (zC)^2 / group_size)``. ``local``: clip, then add ``N(0, (zC)^2)``.

    Args:
        update: The participant's update.
        mode: The DP mode.
        noise_multiplier: ``z``.
        clip_norm: ``C``.
        rng: The participant's randomness (its own seed; never shared).
        group_size: ``m``, the number of secure participants whose noise adds up in
            the sum (``distributed`` only).

    Returns:
        ``(update to send, norm before clipping)``.

    Raises:
        PrivacyError: A value out of range or a non-finite update.
    """
    std = noise_std_for(mode, noise_multiplier, clip_norm, group_size)
    if mode == "none":
        return [np.array(a, copy=True) for a in update], global_norm(update)
    clipped, norm = clip_update(update, clip_norm)
    if mode in ("central", DDG_MODE):
        return clipped, norm
    return add_noise(clipped, std, rng), norm


def add_central_noise(clipped_sum: Sequence[np.ndarray], *, noise_multiplier: float,
                      clip_norm: float, rng: np.random.Generator) -> Weights:
    """Server side of ``central`` DP: add ``N(0, (zC)^2)`` to the sum of clipped updates.

    Raises:
        PrivacyError: A value out of range.
    """
    return add_noise(clipped_sum, noise_std_for("central", noise_multiplier, clip_norm), rng)


def central_dp_mean(updates: Sequence[Sequence[np.ndarray]], *, noise_multiplier: float,
                    clip_norm: float, rng: np.random.Generator,
                    denominator: Optional[float] = None) -> Weights:
    """DP-FedAvg over open updates with central noise: clip, sum, noise, divide.

    McMahan et al. 2018 (the fixed-denominator estimator): each update is clipped to
    ``C`` and counted once, the sum gets ``N(0, (zC)^2)``, and the result is divided
    by ``denominator`` (the expected number of participants ``qN``; default: the
    number of updates given).

    Raises:
        PrivacyError: No updates, shapes that differ, or a value out of range.
    """
    if len(updates) == 0:
        raise PrivacyError("central_dp_mean: got 0 updates, need at least 1")
    if denominator is None:
        denominator = float(len(updates))
    if not (math.isfinite(denominator) and denominator > 0):
        raise PrivacyError(f"central_dp_mean: got denominator={denominator!r}, "
                           "expected a number > 0")
    shapes = [np.shape(a) for a in updates[0]]
    total = [np.zeros(s, dtype=np.float64) for s in shapes]
    for index, update in enumerate(updates):
        if [np.shape(a) for a in update] != shapes:
            raise PrivacyError(f"central_dp_mean: update {index} has array shapes unlike "
                               "update 0's")
        clipped, _ = clip_update(update, clip_norm)
        for acc, array in zip(total, clipped):
            acc += array
    noised = add_central_noise(total, noise_multiplier=noise_multiplier, clip_norm=clip_norm,
                               rng=rng)
    return [(n / denominator).astype(_float_dtype(a)) for n, a in zip(noised, updates[0])]
