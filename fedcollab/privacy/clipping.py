"""Clip a participant's update to a global L2 norm (the sensitivity of DP-FedAvg).

McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018: each participant's whole update (all layers together) is scaled
down to norm at most ``C`` so that adding or removing one participant moves the sum
by at most ``C``: this bound is what the Gaussian noise is calibrated to.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fedcollab.arrays import global_norm
from fedcollab.privacy.errors import PrivacyError
from fedcollab.types import Weights

__all__ = ["clip_update"]


def _float_dtype(array: np.ndarray) -> np.dtype:
    dtype = np.asarray(array).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def clip_update(update: Sequence[np.ndarray], clip_norm: float) -> tuple[Weights, float]:
    """Scale ``update`` so its global L2 norm is at most ``clip_norm``.

    Updates already within the bound come back unchanged (as copies). After the
    cast back to the input dtype the norm is re-measured and nudged down if rounding
    pushed it above ``clip_norm``, so the bound holds exactly, in the output dtype.

    Args:
        update: One participant's update (one array per shared weight).
        clip_norm: The bound ``C`` (> 0).

    Returns:
        ``(clipped, original_norm)``: new arrays in the input float dtype, and the
        norm before clipping (needed by adaptive clipping).

    Raises:
        PrivacyError: ``clip_norm`` not a positive finite number, or the update has a
            non-finite norm (NaN/inf values: validate updates first).
    """
    if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyError(f"clip_update: got clip_norm={clip_norm!r}, expected a number > 0")
    norm = global_norm(update)
    if not math.isfinite(norm):
        raise PrivacyError("clip_update: the update has a non-finite L2 norm (NaN or inf "
                           "values); validate updates before clipping")
    dtypes = [_float_dtype(a) for a in update]
    if norm <= clip_norm:
        return [np.array(a, dtype=d, copy=True) for a, d in zip(update, dtypes)], norm
    originals = [np.asarray(a, dtype=np.float64) for a in update]
    scale = clip_norm / norm
    for _ in range(64):
        clipped = [(a * scale).astype(d) for a, d in zip(originals, dtypes)]
        now = global_norm(clipped)
        if now <= clip_norm:
            return clipped, norm
        tiny = max(float(np.finfo(d).eps) for d in dtypes)
        scale *= (clip_norm / now) * (1.0 - 4.0 * tiny)
    raise PrivacyError("clip_update: could not bring the norm within clip_norm after "
                       "rounding; this is a bug")  # pragma: no cover
