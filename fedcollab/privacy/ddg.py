"""The distributed discrete Gaussian: DP noise added as integers inside the secure ring.

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", ICML 2021 (what TFF's ``DistributedDpSumFactory``
ships). Each of the ``m`` members of a secure group, in its own worker:

1. clips its update to L2 norm ``C`` (all arrays flattened, private ones as zeros);
2. scales by ``1 / gamma`` (``gamma``: the integer grid's step in update units) and
   rotates it with a randomized Walsh-Hadamard transform ``H D`` (``D`` random signs
   from a public per-round seed, the length padded to a power of two), so no
   coordinate carries much of the norm and the ring's range holds the sum;
3. rounds each coordinate randomly to a neighbouring integer (unbiased), again until
   the rounded vector's norm is at most the paper's bound (*conditional* randomized
   rounding, their Theorem 1 / Proposition 22 with ``beta = exp(-1/2)``): this bound,
   not ``C / gamma``, is the sensitivity the accountant uses;
4. adds discrete Gaussian noise ``N_Z(0, sigma^2)`` per coordinate, sampled exactly
   from the OS's CSPRNG (:mod:`fedcollab.privacy.discrete`), with
   ``sigma^2 = ceil((z C / gamma)^2 / m)``, so the ``m`` shares sum to at least the
   noise ``z C`` of the continuous mechanism;
5. reduces the result modulo ``M = 2**modulus_bits`` (*modular clipping*: values wrap
   instead of saturating), into the signed range ``[-M/2, M/2)``.

The server learns only the sum modulo ``M``; :func:`decode_sum` maps it back to the
signed range, undoes the rotation and the scale. Privacy: the sum of ``m`` discrete
Gaussians is close to a discrete Gaussian (:mod:`fedcollab.privacy.ddg_accounting`).
``M`` divides the secure ring's ``2**32``/``2**64``, so arithmetic in that ring
reduces to arithmetic modulo ``M``. A coordinate wraps only if the noisy sum leaves
``[-M/2, M/2)``; :func:`plan` refuses parameters where that is within 4 standard
deviations (the paper's Section 4.4 heuristic).
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from fedcollab.privacy.discrete import MAX_SIGMA2, RandomBytes, discrete_gaussian
from fedcollab.privacy.errors import PrivacyError

__all__ = ["DdgPlan", "plan", "rounded_l2_bound", "rotate", "unrotate", "conditional_round",
           "wrap", "encode", "decode_sum", "DEFAULT_BETA"]

#: The conditional rounding's failure parameter (TFF's default, ``exp(-1/2)``).
DEFAULT_BETA = math.exp(-0.5)
#: Signal norm in integer units, ``C / gamma``, when the noise allows it: large enough
#: that rounding inflates the sensitivity by well under 1% at any model size we train.
_TARGET_NORM = 4096.0
#: Largest per-member noise std in integer units (keeps the exact sampler in int64).
_MAX_SIGMA = math.sqrt(MAX_SIGMA2) / 2
#: Standard deviations of the sum that must fit in the modulus.
_K_STDDEVS = 4.0
_MAX_ROUNDING_TRIES = 1000


def rounded_l2_bound(norm: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """The L2 norm bound after conditional randomized rounding of a vector of norm at
    most ``norm`` (integer units) in ``dim`` coordinates (Kairouz et al., Theorem 1):
    ``min(norm + sqrt(d), sqrt(norm^2 + d/4 + sqrt(2 ln(1/beta)) (norm + sqrt(d)/2)))``.
    """
    if not (norm > 0 and dim >= 1 and 0 <= beta < 1):
        raise PrivacyError(f"rounded_l2_bound: got norm={norm!r}, dim={dim!r}, beta={beta!r}")
    plain = norm + math.sqrt(dim)
    if beta == 0:
        return plain
    squared = (norm * norm + 0.25 * dim
               + math.sqrt(2.0 * math.log(1.0 / beta)) * (norm + 0.5 * math.sqrt(dim)))
    return min(plain, math.sqrt(squared))


@dataclass(frozen=True)
class DdgPlan:
    """The public parameters of one round's distributed discrete Gaussian.

    Attributes:
        noise_multiplier: ``z``: the summed noise's std over ``C`` (before rounding up).
        clip_norm: ``C``.
        members: ``m``, the secure members whose noise shares add up.
        dim: Coordinates of the update (all arrays flattened).
        padded: ``dim`` rounded up to a power of two (the Hadamard transform's size).
        gamma: The integer grid's step, in update units.
        sigma2: Each member's discrete Gaussian variance, an integer.
        modulus_bits: ``M = 2**modulus_bits``.
        beta: Conditional rounding's parameter.
        l2_bound: The rounded vector's norm bound (integer units): the sensitivity.
    """

    noise_multiplier: float
    clip_norm: float
    members: int
    dim: int
    padded: int
    gamma: float
    sigma2: int
    modulus_bits: int
    beta: float
    l2_bound: float

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits

    @property
    def sum_std(self) -> float:
        """The std of the summed noise per coordinate, in update units."""
        return math.sqrt(self.members * self.sigma2) * self.gamma


def plan(*, noise_multiplier: float, clip_norm: float, members: int, dim: int,
         modulus_bits: int, beta: float = DEFAULT_BETA) -> DdgPlan:
    """The parameters every member and the server derive alike from public values.

    ``gamma`` puts the clipped norm at 4096 grid steps unless the per-member noise
    would then exceed the sampler's range, in which case the grid is coarser (the
    rounding inflation is accounted either way).

    Raises:
        PrivacyError: A value out of range, or a modulus too small for the sum
            (fewer than 4 standard deviations of headroom).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise PrivacyError(f"distributed discrete Gaussian: got noise_multiplier="
                           f"{noise_multiplier!r}, expected a number > 0")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyError(f"distributed discrete Gaussian: got clip_norm={clip_norm!r}")
    if members < 1 or dim < 1 or not 2 <= modulus_bits <= 64:
        raise PrivacyError(f"distributed discrete Gaussian: got members={members}, dim={dim}, "
                           f"modulus_bits={modulus_bits}")
    padded = 1 << max(dim - 1, 0).bit_length()
    norm = min(_TARGET_NORM, _MAX_SIGMA * math.sqrt(members) / noise_multiplier)
    gamma = clip_norm / norm
    sigma2 = max(1, math.ceil((noise_multiplier * norm) ** 2 / members))
    bound = rounded_l2_bound(norm, padded, beta)
    # the sum's coordinates: the rotated signal (norm <= m * bound, spread over
    # `padded` coordinates) plus the m noise shares
    spread = math.sqrt((members * bound) ** 2 / padded + members * (0.25 + sigma2))
    if 2 * _K_STDDEVS * spread > (1 << modulus_bits):
        raise PrivacyError(
            f"distributed discrete Gaussian: a sum of {members} members does not fit "
            f"{_K_STDDEVS:g} standard deviations into a 2**{modulus_bits} modulus; "
            "raise secure.clip or lower the noise or the group size")
    return DdgPlan(float(noise_multiplier), float(clip_norm), int(members), int(dim), padded,
                   gamma, int(sigma2), int(modulus_bits), float(beta), bound)


# ----------------------------------------------------------------------------- rotation

def _signs(padded: int, seed: int) -> np.ndarray:
    # public randomness (the server inverts the rotation): a seeded generator is right here
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, padded])
    return rng.integers(0, 2, size=padded).astype(np.float64) * 2.0 - 1.0


def _hadamard(x: np.ndarray) -> np.ndarray:
    """The orthonormal Walsh-Hadamard transform (its own inverse) of a length-2^k vector."""
    n = x.size
    y = np.array(x, dtype=np.float64)
    h = 1
    while h < n:
        y = y.reshape(-1, 2, h)
        y = np.concatenate([y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]], axis=1)
        h *= 2
    return y.reshape(n) / math.sqrt(n)


def rotate(x: np.ndarray, seed: int) -> np.ndarray:
    """``H D x``: random signs, then the Hadamard transform (length a power of two)."""
    return _hadamard(_signs(x.size, seed) * x)


def unrotate(y: np.ndarray, seed: int) -> np.ndarray:
    """The inverse of :func:`rotate`: ``D H y``."""
    return _signs(y.size, seed) * _hadamard(y)


# ----------------------------------------------------------------------------- rounding

def conditional_round(x: np.ndarray, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Round each coordinate to ``floor`` or ``ceil`` with the probability that keeps
    it unbiased, again and again until the result's L2 norm is at most ``bound``.

    Raises:
        PrivacyError: No rounding met the bound in 1000 tries (``bound`` below the
            paper's for this vector).
    """
    floor = np.floor(x)
    frac = x - floor
    base = floor.astype(np.int64)
    for _ in range(_MAX_ROUNDING_TRIES):
        rounded = base + (rng.random(x.size) < frac)
        if float(np.dot(rounded, rounded)) <= bound * bound:  # exact: an integer < 2**53
            return rounded
    raise PrivacyError(f"conditional rounding: no rounding within norm {bound:.6g} in "
                       f"{_MAX_ROUNDING_TRIES} tries")


def wrap(values: np.ndarray, modulus_bits: int) -> np.ndarray:
    """``values`` modulo ``2**modulus_bits``, as the signed representative in
    ``[-M/2, M/2)`` (int64). Accepts any integer array (uint ring sums included)."""
    mask = np.uint64((1 << modulus_bits) - 1) if modulus_bits < 64 else np.uint64(2**64 - 1)
    low = np.asarray(values).astype(np.int64).astype(np.uint64) & mask
    half = np.uint64(1 << (modulus_bits - 1))
    signed = low.astype(np.int64)
    if modulus_bits < 64:
        signed = np.where(low >= half, signed - np.int64(1 << (modulus_bits - 1)) * 2, signed)
    return signed


# ----------------------------------------------------------------------------- encode

def encode(update: Sequence[Optional[np.ndarray]], shapes: Sequence[tuple[int, ...]],
           the_plan: DdgPlan, *, seed: int, rng: np.random.Generator,
           source: RandomBytes = secrets.token_bytes) -> np.ndarray:
    """One member's share: clip, scale, rotate, round, add ``N_Z(0, sigma2)``, wrap.

    Args:
        update: The member's arrays in model order (``None``: a private array, zeros).
        shapes: Every array's shape.
        the_plan: This round's :func:`plan`.
        seed: The round's public rotation seed.
        rng: Randomness for the rounding (unbiasedness only; OS entropy).
        source: Random bytes for the noise (the OS's CSPRNG).

    Returns:
        ``padded`` int64 values in ``[-M/2, M/2)``.

    Raises:
        PrivacyError: Shapes unlike the plan's dimension, or a non-finite update.
    """
    flat = np.concatenate([np.zeros(int(np.prod(s))) if d is None
                           else np.asarray(d, dtype=np.float64).ravel()
                           for d, s in zip(update, shapes)])
    if flat.size != the_plan.dim:
        raise PrivacyError(f"distributed discrete Gaussian: got {flat.size} coordinates, the "
                           f"plan has {the_plan.dim}")
    norm = float(np.linalg.norm(flat))
    if not math.isfinite(norm):
        raise PrivacyError("distributed discrete Gaussian: the update is not finite")
    if norm > the_plan.clip_norm:
        flat *= the_plan.clip_norm / norm
    scaled = np.zeros(the_plan.padded)
    scaled[:flat.size] = flat / the_plan.gamma
    rounded = conditional_round(rotate(scaled, seed), the_plan.l2_bound, rng)
    noised = rounded + discrete_gaussian(the_plan.sigma2, the_plan.padded, source)
    return wrap(noised, the_plan.modulus_bits)


def decode_sum(total: np.ndarray, the_plan: DdgPlan, *, seed: int) -> np.ndarray:
    """The server's side: a sum of shares (modulo any multiple of ``M``) back to the
    float64 sum of the members' updates (plus the noise), ``dim`` long."""
    signed = wrap(np.asarray(total)[:the_plan.padded], the_plan.modulus_bits)
    return unrotate(signed.astype(np.float64), seed)[:the_plan.dim] * the_plan.gamma
