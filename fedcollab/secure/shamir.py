"""Shamir t-of-n secret sharing over the Mersenne prime field GF(2^521 - 1).

Shamir, "How to Share a Secret", CACM 1979. A secret ``s`` (a 32-byte seed or key
read as an integer, so ``s < 2^256 < p``) is the constant term of a random
polynomial of degree ``t - 1``; holder ``i`` gets the point ``(x_i, f(x_i))``.
Any ``t`` points determine ``f(0) = s`` (Lagrange interpolation at zero); any
``t - 1`` points are consistent with *every* secret, so they reveal nothing
(information-theoretic, given uniform coefficients).

Security assumptions: coefficients come from ``os.urandom`` unless a test passes an
explicit ``rng`` (never do that in production); x coordinates are public, distinct
and non-zero (fedcollab uses ``participant_id + 1``). Sharing does not authenticate
shares: a holder can lie about its point. Callers that can check the secret (a
digest, a public key, an AEAD tag) should, and :func:`combine` checks any shares
beyond the first ``t`` against the interpolated polynomial.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

from fedcollab.secure.errors import NotEnoughSharesError, ShareVerificationError

__all__ = [
    "PRIME", "SHARE_BYTES", "Share", "split", "combine", "lagrange_at_zero",
    "lagrange_at_zero_without", "share_values",
    "secret_from_bytes", "secret_to_bytes",
]

#: The field modulus, the Mersenne prime 2^521 - 1.
PRIME: int = (1 << 521) - 1
#: Bytes to serialise one field element.
SHARE_BYTES: int = 66
_BITS = 521


@dataclass(frozen=True)
class Share:
    """One point ``(x, y)`` of a sharing polynomial, tagged with its threshold.

    ``y`` is secret-dependent and kept out of ``repr``.
    """

    x: int
    y: int = field(repr=False)
    threshold: int

    def __post_init__(self) -> None:
        if not 0 < self.x < PRIME:
            raise ValueError(f"share x={self.x} must be in [1, p-1]")
        if not 0 <= self.y < PRIME:
            raise ValueError("share y must be a field element in [0, p-1]")
        if self.threshold < 1:
            raise ValueError(f"share threshold={self.threshold} must be at least 1")


def secret_from_bytes(data: bytes) -> int:
    """Read a secret of at most 65 bytes (big-endian) as a field element."""
    if len(data) > SHARE_BYTES - 1:
        raise ValueError(f"secret is {len(data)} bytes; at most {SHARE_BYTES - 1} fit the field")
    return int.from_bytes(data, "big")


def secret_to_bytes(value: int, length: int) -> bytes:
    """Write a reconstructed secret back as ``length`` big-endian bytes.

    Raises:
        ShareVerificationError: The value does not fit: the shares were inconsistent.
    """
    if not 0 <= value < 1 << (8 * length):
        raise ShareVerificationError(
            f"reconstructed secret does not fit in {length} bytes; a share was tampered with")
    return value.to_bytes(length, "big")


def _random_elements(count: int, rng: random.Random | None) -> list[int]:
    """``count`` uniform field elements: 521 random bits each, rejecting ``p`` itself."""
    out: list[int] = []
    while len(out) < count:
        need = count - len(out)
        size = SHARE_BYTES * need
        raw = rng.randbytes(size) if rng is not None else os.urandom(size)
        for i in range(need):
            value = int.from_bytes(raw[i * SHARE_BYTES:(i + 1) * SHARE_BYTES], "big") & PRIME
            if value != PRIME:  # rejection keeps the distribution uniform on [0, p-1]
                out.append(value)
    return out


#: Horner's rule reduces modulo ``p`` only at the end while the polynomial's growth,
#: ``threshold * bits(x)``, stays within this many bits (SecAgg+ neighbourhoods: x is
#: a participant id + 1, t a dozen); beyond it, every 8 steps.
_LAZY_GROWTH_BITS = 512


def _evaluate(coeffs: Sequence[int], x: int) -> int:
    """``f(x) mod p`` by Horner's rule. x is small next to ``p``, so each step is a
    cheap multiplication by a small int; the Mersenne reduction runs once at the end
    when the growth is small, else every 8 steps."""
    y = 0
    if x.bit_length() * len(coeffs) <= _LAZY_GROWTH_BITS:
        for a in reversed(coeffs):
            y = y * x + a
        return y % PRIME
    for i, a in enumerate(reversed(coeffs)):
        y = y * x + a
        if i & 7 == 7:
            y = (y & PRIME) + (y >> _BITS)
    return y % PRIME


def share_values(secret: int, *, threshold: int, xs: Sequence[int],
                 rng: random.Random | None = None) -> list[int]:
    """The y values of :func:`split` without validation or wrapping (hot path): Horner's
    rule per point (:func:`_evaluate`), faster at SecAgg+'s small thresholds than sums
    against power rows (every share of the offline phase goes through here)."""
    coeffs = [secret] + _random_elements(threshold - 1, rng)
    return [_evaluate(coeffs, x) for x in xs]


def split(
    secret: int,
    *,
    threshold: int,
    n: int | None = None,
    xs: Sequence[int] | None = None,
    rng: random.Random | None = None,
) -> list[Share]:
    """Split ``secret`` into shares, any ``threshold`` of which reconstruct it.

    Args:
        secret: A field element (``0 <= secret < PRIME``).
        threshold: ``t``, the number of shares needed (at least 1).
        n: Number of shares, at ``x = 1..n``; give exactly one of ``n`` and ``xs``.
        xs: Distinct non-zero x coordinates, one share each.
        rng: Tests only: a seeded ``random.Random`` for known answers. ``None``
            (the default) draws coefficients from ``os.urandom``.

    Returns:
        One :class:`Share` per x coordinate, in the order given.

    Raises:
        ValueError: Bad secret, threshold, or x coordinates.
    """
    if (n is None) == (xs is None):
        raise ValueError("give exactly one of n= and xs=")
    points = list(range(1, n + 1)) if n is not None else list(xs or ())
    if not 0 <= secret < PRIME:
        raise ValueError("secret must be a field element in [0, p-1]")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold={threshold} must be in [1, {len(points)}] (the share count)")
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise ValueError("x coordinates must be distinct and in [1, p-1]")
    ys = share_values(secret, threshold=threshold, xs=points, rng=rng)
    return [Share(x=x, y=y, threshold=threshold) for x, y in zip(points, ys)]


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange coefficients ``l_j`` with ``f(0) = sum_j l_j f(x_j)`` (cached per x set).

    One modular inversion per set (Montgomery's batch trick).
    """
    dens: list[int] = []
    nums: list[int] = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        nums.append(num)
        dens.append(den)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    coeffs = [0] * len(xs)
    for j in range(len(xs) - 1, -1, -1):
        coeffs[j] = nums[j] * inv % PRIME * prefix[j] % PRIME
        inv = inv * dens[j] % PRIME
    return tuple(coeffs)


def lagrange_at_zero_without(xs: tuple[int, ...], drop: int) -> tuple[int, ...]:
    """Coefficients for ``xs`` minus the point ``drop``, derived in O(t) from ``xs``'s.

    ``l'_j = l_j * (x_drop - x_j) / x_drop``: lets a server reuse one cached base set
    for every secret whose owner is a member of the base set (full-graph SecAgg).
    """
    base = lagrange_at_zero(xs)
    inv_drop = pow(drop, -1, PRIME)
    return tuple(c * (drop - x) % PRIME * inv_drop % PRIME
                 for c, x in zip(base, xs) if x != drop)


def _interpolate(shares: Sequence[Share], at: int) -> int:
    total = 0
    for j, sj in enumerate(shares):
        num, den = 1, 1
        for m, sm in enumerate(shares):
            if m != j:
                num = num * (at - sm.x) % PRIME
                den = den * (sj.x - sm.x) % PRIME
        total += sj.y * num * pow(den, -1, PRIME)
    return total % PRIME


def combine(shares: Sequence[Share], *, verify: bool = True) -> int:
    """Reconstruct the secret from at least ``t`` shares (interpolation at zero only).

    Args:
        shares: Shares of one secret; they carry their threshold ``t``.
        verify: Check every share beyond the first ``t`` against the polynomial the
            first ``t`` define.

    Returns:
        The secret as a field element.

    Raises:
        NotEnoughSharesError: Fewer than ``t`` shares (message says got/need).
        ShareVerificationError: Mixed thresholds, duplicate x, or inconsistent shares.
    """
    if not shares:
        raise NotEnoughSharesError("got 0 shares, need at least 1; nothing to reconstruct")
    threshold = shares[0].threshold
    if any(s.threshold != threshold for s in shares):
        raise ShareVerificationError("shares carry different thresholds; they are not one sharing")
    if len({s.x for s in shares}) != len(shares):
        raise ShareVerificationError("two shares have the same x coordinate")
    if len(shares) < threshold:
        raise NotEnoughSharesError(
            f"got {len(shares)} shares, need {threshold} (threshold); too many holders dropped")
    first = shares[:threshold]
    coeffs = lagrange_at_zero(tuple(s.x for s in first))
    secret = sum(c * s.y for c, s in zip(coeffs, first)) % PRIME
    if verify:
        for extra in shares[threshold:]:
            if _interpolate(first, extra.x) != extra.y:
                raise ShareVerificationError(
                    f"share at x={extra.x} is inconsistent with the others; one was tampered with")
    return secret
