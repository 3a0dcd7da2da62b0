"""The one layout of the vector a secure participant masks, and its inverse on a sum.

Layout: ``weight * delta`` for every array (zeros where private), then one weight
coordinate per array (``weight`` if shared, 0 if private), then the adaptive-clipping
bit if asked, then the share of the member's coordinates that the fixed-point
encoding will saturate. The server learns only the sum of each part, and divides the
summed arrays by the summed weights (weighted averaging without learning any one
participant's weight). :func:`~fedcollab.secure.encoding.weighted_vector` is the
single-array case.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["secure_vector", "secure_dim", "SecureParts", "split_secure_sum"]


def secure_vector(delta: Sequence[Optional[np.ndarray]], shapes: Sequence[tuple[int, ...]],
                  weight: float, *, clip_bit: Optional[bool] = None,
                  secure_clip: float = 0.0) -> np.ndarray:
    """The float64 vector a secure participant masks.

    Layout: ``weight * delta`` for every array (zeros where private), then one
    weight coordinate per array (``weight`` if shared, 0 if private), then the
    adaptive-clipping bit if asked, then (``secure_clip > 0``) the share of this
    member's coordinates that the fixed-point encoding will saturate. The server
    learns only the sum of each part.
    """
    parts = [np.zeros(int(np.prod(s))) if d is None else weight * np.asarray(d, np.float64).ravel()
             for d, s in zip(delta, shapes)]
    counts = [0.0 if d is None else weight for d in delta]
    if clip_bit is not None:
        counts.append(1.0 if clip_bit else 0.0)
    if secure_clip > 0:
        size = sum(p.size for p in parts)
        over = sum(int(np.count_nonzero(np.abs(p) > secure_clip)) for p in parts)
        counts.append(over / max(size, 1))
    return np.concatenate(parts + [np.asarray(counts)])


def secure_dim(shapes: Sequence[tuple[int, ...]], *, clip_bit: bool,
               saturation: bool = False) -> int:
    """Length of a :func:`secure_vector` for arrays of ``shapes``."""
    return (sum(int(np.prod(s)) for s in shapes) + len(shapes) + int(clip_bit)
            + int(saturation))


@dataclass(frozen=True)
class SecureParts:
    """A secure sum split back into what :func:`secure_vector` put in."""

    arrays: list[np.ndarray]        # per-array sums of weight * delta (x scale)
    counts: list[float]             # per-array sums of weights (x scale)
    bits: Optional[float]           # the sum of clip bits (adaptive clipping)
    saturated: Optional[float]      # the sum of members' saturated shares


def split_secure_sum(total: np.ndarray, shapes: Sequence[tuple[int, ...]], *, scale: float,
                     clip_bit: bool, saturation: bool = False) -> SecureParts:
    """Invert :func:`secure_vector` on a sum."""
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0] + sizes)
    arrays = [total[offsets[i]:offsets[i + 1]].reshape(s) * scale for i, s in enumerate(shapes)]
    counts = [float(c) * scale for c in total[offsets[-1]:offsets[-1] + len(shapes)]]
    tail = offsets[-1] + len(shapes)
    bits = float(total[tail]) if clip_bit else None
    saturated = float(total[tail + int(clip_bit)]) if saturation else None
    return SecureParts(arrays, counts, bits, saturated)
