"""Fixed-point encoding of float vectors into the ring Z_(2^32) or Z_(2^64).

Masks are uniform in the ring, so only ring elements can be masked: every
coordinate is clipped to ``[-clip, clip]``, scaled by ``2**scale_bits``, rounded
to the nearest integer and stored in two's complement (``uint32``/``uint64``
arithmetic wraps around, which *is* addition modulo ``2**bits``).

Overflow is impossible by construction: :meth:`FixedPointCodec.for_group` picks the
narrowest ring in which the sum of ``group_size`` encodings of magnitude at most
``M = ceil(clip * 2**scale_bits)`` still fits in a signed integer
(``group_size * M <= 2**(bits-1) - 1``), and rejects the configuration with a
:class:`~fedcollab.secure.errors.SecAggConfigError` when even 64 bits do not suffice.

Quantisation error (documented bound, checked by the tests): rounding to nearest
moves each coordinate of each input by at most ``2**-(scale_bits+1)``; the decoded
sum of ``m`` inputs therefore differs from the plain sum of the *clipped* inputs by
at most ``m * 2**-(scale_bits+1)`` per coordinate, plus float64 rounding of the
decoded value (relative ``2**-52``; only visible in the 64-bit ring). Values outside
``[-clip, clip]`` saturate; that error is the caller's choice of ``clip``, not noise.

Choosing ``clip``: the encoded vector is the *weighted* update ``w_i * delta_i``
with the weight ``w_i`` appended (see :func:`weighted_vector`), so ``clip`` must
cover both ``|w_i * delta_ij|`` and ``w_i``. Pass normalised weights
(``w_i = n_i / n_max`` <= 1; the server divides by the summed weight, so the scale
cancels) and pick ``clip >= max |delta_ij|`` (e.g. the DP / norm clip bound).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedcollab.secure.errors import EncodingError, SecAggConfigError
from fedcollab.secure.layout import secure_vector, split_secure_sum

__all__ = ["FixedPointCodec", "weighted_vector", "split_weighted_sum", "RING_BITS"]

#: Ring widths we use, narrowest first.
RING_BITS: tuple[int, ...] = (32, 64)
_UNSIGNED: dict[int, np.dtype] = {32: np.dtype(np.uint32), 64: np.dtype(np.uint64)}
_SIGNED: dict[int, np.dtype] = {32: np.dtype(np.int32), 64: np.dtype(np.int64)}


@dataclass(frozen=True)
class FixedPointCodec:
    """Encode float64 vectors into a ring wide enough for ``group_size`` summands.

    Args:
        clip: Coordinates are clipped to ``[-clip, clip]`` before encoding.
        scale_bits: Fractional bits: the quantisation step is ``2**-scale_bits``.
        group_size: The largest number of encodings that will ever be summed.
        ring_bits: 32 or 64; ``None`` picks the narrowest ring that cannot overflow.

    Raises:
        SecAggConfigError: Non-positive clip or group, or no ring wide enough.
    """

    clip: float
    scale_bits: int
    group_size: int
    ring_bits: int = field(default=0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise SecAggConfigError(f"clip={self.clip!r} must be a positive finite number")
        if not 0 <= self.scale_bits <= 52:
            raise SecAggConfigError(
                f"scale_bits={self.scale_bits} must be in [0, 52] (float64 has 53 bits)")
        if self.group_size < 1:
            raise SecAggConfigError(f"group_size={self.group_size} must be at least 1")
        if self.clip * 2.0 ** self.scale_bits >= 2.0 ** 52:
            raise SecAggConfigError(
                f"clip * 2**scale_bits = {self.clip * 2.0 ** self.scale_bits:.3g} exceeds "
                "2**52; lower clip or scale_bits")
        fitting = [b for b in RING_BITS if self.group_size * self.max_encoded <= 2 ** (b - 1) - 1]
        if self.ring_bits == 0:
            if not fitting:
                raise SecAggConfigError(
                    f"a sum of {self.group_size} values clipped to +-{self.clip} at "
                    f"2**{self.scale_bits} steps overflows even a 64-bit ring; lower "
                    "clip, scale_bits or the group size")
            object.__setattr__(self, "ring_bits", fitting[0])
        elif self.ring_bits not in fitting:
            raise SecAggConfigError(
                f"ring_bits={self.ring_bits} cannot hold a sum of {self.group_size} values "
                f"clipped to +-{self.clip} at 2**{self.scale_bits} steps; use "
                f"{fitting[0] if fitting else 'a smaller clip or scale_bits'}")

    @classmethod
    def for_group(cls, group_size: int, *, clip: float, scale_bits: int) -> FixedPointCodec:
        """Build the codec with the narrowest ring that cannot overflow for ``group_size``."""
        return cls(clip=clip, scale_bits=scale_bits, group_size=group_size)

    @property
    def max_encoded(self) -> int:
        """Largest magnitude of one encoded coordinate: ``ceil(clip * 2**scale_bits)``."""
        return math.ceil(self.clip * 2.0 ** self.scale_bits)

    @property
    def integer_bits(self) -> int:
        """The largest ``b`` such that every integer ``k`` in ``[-2**(b-1), 2**(b-1))``,
        given as ``k / 2**scale_bits``, is encoded as exactly ``k`` (no clipping) and
        ``2**b`` divides the ring: mechanisms that compute modulo ``2**b`` themselves
        (the distributed discrete Gaussian) pass their integers through unchanged."""
        top = math.frexp(self.clip * 2.0 ** self.scale_bits)[1] - 1  # floor(log2)
        return min(self.ring_bits, top + 1)

    @property
    def dtype(self) -> np.dtype:
        """The unsigned numpy dtype of ring elements (``uint32`` or ``uint64``)."""
        return _UNSIGNED[self.ring_bits]

    @property
    def item_bytes(self) -> int:
        """Bytes per ring element."""
        return self.ring_bits // 8

    def encode(self, vector: np.ndarray) -> np.ndarray:
        """Clip, scale, round and wrap a 1-D float vector into ring elements.

        Raises:
            EncodingError: The vector is not 1-D or has non-finite values.
        """
        x = np.asarray(vector, dtype=np.float64)
        if x.ndim != 1:
            raise EncodingError(f"expected a 1-D vector, got shape {x.shape}; flatten it first")
        bad = x.size - int(np.count_nonzero(np.isfinite(x)))
        if bad:
            raise EncodingError(
                f"vector has {bad} non-finite values (NaN or inf); fix the update before "
                "secure aggregation")
        scaled = np.rint(np.clip(x, -self.clip, self.clip) * 2.0 ** self.scale_bits)
        return scaled.astype(np.int64).astype(self.dtype)

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """Map a ring sum (of at most ``group_size`` encodings) back to float64."""
        ring = np.asarray(total, dtype=self.dtype)
        return ring.view(_SIGNED[self.ring_bits]).astype(np.float64) / 2.0 ** self.scale_bits

    def quantisation_bound(self, count: int) -> float:
        """Per-coordinate bound on ``|decode(sum) - sum(clipped)|`` for ``count`` inputs.

        Excludes float64 rounding of the decoded value (relative ``2**-52``).
        """
        return count * 2.0 ** -(self.scale_bits + 1)


def weighted_vector(update: np.ndarray, weight: float) -> np.ndarray:
    """Build the vector a participant masks: ``weight * update`` with ``weight`` appended.

    The server learns only the sums of both parts and divides them
    (:func:`split_weighted_sum`), so individual weights stay hidden like the updates.

    Args:
        update: The participant's update, any shape (flattened in C order).
        weight: Its positive weight, e.g. ``n_i / n_max`` (see module docstring).

    Raises:
        EncodingError: A non-positive or non-finite weight.
    """
    if not (math.isfinite(weight) and weight > 0):
        raise EncodingError(f"weight={weight!r} must be a positive finite number")
    flat = np.asarray(update, dtype=np.float64).ravel()
    return secure_vector([flat], [flat.shape], weight)


def split_weighted_sum(total: np.ndarray) -> tuple[np.ndarray, float]:
    """Split a decoded secure sum into (weighted mean update, summed weight).

    Raises:
        EncodingError: The summed weight is not positive (nothing to average).
    """
    vec = np.asarray(total, dtype=np.float64)
    if vec.ndim != 1 or vec.size < 2:
        raise EncodingError(f"expected a 1-D sum with a weight coordinate, got shape {vec.shape}")
    parts = split_secure_sum(vec, [(vec.size - 1,)], scale=1.0, clip_bit=False)
    weight = parts.counts[0]
    if not weight > 0:
        raise EncodingError(
            f"summed weight is {weight:.3g}, expected > 0; were the weights appended?")
    return parts.arrays[0] / weight, weight
