"""Exact sampling of the discrete Gaussian from a cryptographic source.

Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy",
NeurIPS 2020, Algorithms 1-3: ``N_Z(0, sigma^2)`` (``P[x] ∝ exp(-x^2 / 2 sigma^2)``
on the integers) by rejection from a discrete Laplace, itself built from
Bernoulli(``exp(-gamma)``) trials. Every step uses only integer arithmetic on
rational parameters (``sigma^2 = a / b``): no floating point touches a
probability, so the output distribution is exactly the discrete Gaussian, not an
approximation of it (floating-point samplers leak through their rounding; Mironov,
"On Significance of the Least Significant Bits for Differential Privacy", CCS 2012).

The randomness is uniform integers from the operating system's CSPRNG
(:func:`secrets.token_bytes`, i.e. ``getrandom``/``os.urandom``), turned into a
uniform value below a bound by rejection (no modulo bias). Never numpy's generator:
a participant's noise must be unpredictable to whoever knows the job's seed.

Vectorised with numpy over ``int64``/``uint64``: every candidate runs the same
rejection loop in lock-step; a candidate that is rejected is simply drawn again.
Parameters are bounded (``sigma^2 <= 2**30``) so that no intermediate overflows.
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from fractions import Fraction
from typing import Union

import numpy as np

from fedcollab.privacy.errors import PrivacyError

__all__ = ["RandomBytes", "uniform_below", "bernoulli_exp", "discrete_laplace",
           "discrete_gaussian", "discrete_gaussian_pmf", "MAX_SIGMA2"]

#: ``n -> n`` uniformly random bytes; :func:`secrets.token_bytes` unless a test says otherwise.
RandomBytes = Callable[[int], bytes]

#: Largest variance the sampler takes: keeps ``2 a b t^2`` (its largest denominator)
#: below ``2**62``.
MAX_SIGMA2 = 2 ** 30

_Int = Union[int, np.ndarray]


def _words(count: int, source: RandomBytes) -> np.ndarray:
    return np.frombuffer(source(8 * count), dtype=np.uint64).copy()


def uniform_below(bound: _Int, count: int, source: RandomBytes = secrets.token_bytes
                  ) -> np.ndarray:
    """``count`` independent uniform integers in ``[0, bound)`` (``bound`` per element
    or one for all, ``1 <= bound < 2**63``), as ``int64``.

    A 64-bit word ``r`` is kept only if ``r >= 2**64 mod bound``; the kept words are
    uniform over a whole number of copies of ``[0, bound)``, so ``r mod bound`` is
    exactly uniform. Rejected words are drawn again.
    """
    if np.ndim(bound) == 0:  # one bound for all: no per-element arrays to build
        b0 = int(bound)
        if b0 < 1:
            raise PrivacyError("uniform_below: bound must be at least 1")
        floor0 = np.uint64((1 << 64) % b0)
        r = _words(count, source)
        if not floor0 or bool((r >= floor0).all()):
            return (r % np.uint64(b0)).astype(np.int64)
    b = np.broadcast_to(np.asarray(bound, dtype=np.int64), (count,)).astype(np.uint64)
    if count and (int(b.min()) < 1):
        raise PrivacyError("uniform_below: bound must be at least 1")
    floor = (~b + np.uint64(1)) % b          # 2**64 mod bound, in uint64 arithmetic
    out = np.empty(count, dtype=np.uint64)
    todo = np.arange(count)
    while todo.size:
        r = _words(todo.size, source)
        ok = r >= floor[todo]
        out[todo[ok]] = r[ok] % b[todo[ok]]
        todo = todo[~ok]
    return out.astype(np.int64)


def _bernoulli(num: np.ndarray, den: np.ndarray, source: RandomBytes) -> np.ndarray:
    """Bernoulli(``num / den``) per element, exactly (``0 <= num <= den < 2**63``)."""
    return uniform_below(den, num.size, source) < num


def _bernoulli_exp_unit(num: np.ndarray, den: np.ndarray, source: RandomBytes) -> np.ndarray:
    """Bernoulli(``exp(-num/den)``) for ``0 <= num/den <= 1`` (CKS Algorithm 1, first
    case): count ``K`` while Bernoulli(``gamma / K``) succeeds; ``K`` odd is the result."""
    k = np.ones(num.size, dtype=np.int64)
    going = np.ones(num.size, dtype=bool)
    while going.any():
        idx = np.flatnonzero(going)
        # Bernoulli(gamma / K) as Bernoulli(gamma) and Bernoulli(1 / K): no product to overflow
        hit = _bernoulli(num[idx], den[idx], source) & (uniform_below(k[idx], idx.size, source)
                                                        == 0)
        k[idx[hit]] += 1
        going[idx[~hit]] = False
    return (k % 2) == 1


def bernoulli_exp(num: _Int, den: _Int, count: int,
                  source: RandomBytes = secrets.token_bytes) -> np.ndarray:
    """Exactly Bernoulli(``exp(-num/den)``) for integers ``num >= 0``, ``den >= 1``.

    CKS Algorithm 1: for ``gamma > 1``, ``floor(gamma)`` independent Bernoulli(``e^-1``)
    trials must all succeed, then one Bernoulli(``exp(-(gamma - floor(gamma)))``).
    ``num`` may be a numpy object array of Python ints (no overflow); ``den < 2**62``.
    """
    exact = np.asarray(num).dtype == object
    n = np.broadcast_to(np.asarray(num, dtype=object if exact else np.int64), (count,))
    d64 = np.broadcast_to(np.asarray(den, dtype=np.int64), (count,))
    if count and (n.min() < 0 or d64.min() < 1 or d64.max() >= 2 ** 62):
        raise PrivacyError("bernoulli_exp: need num >= 0 and 1 <= den < 2**62")
    d = d64.astype(object) if exact else d64
    whole = (n // d).astype(np.int64)
    rest = (n % d).astype(np.int64)
    alive = np.ones(count, dtype=bool)
    ones = np.ones(count, dtype=np.int64)
    left = whole.copy()
    while True:  # every one of `whole` Bernoulli(e^-1) trials must succeed
        idx = np.flatnonzero(alive & (left > 0))
        if not idx.size:
            break
        alive[idx] = _bernoulli_exp_unit(ones[idx], ones[idx], source)
        left[idx] -= 1
    idx = np.flatnonzero(alive)
    alive[idx] = _bernoulli_exp_unit(rest[idx], d64[idx], source)
    return alive


def _geometric_exp1(count: int, source: RandomBytes) -> np.ndarray:
    """How many Bernoulli(``e^-1``) trials succeed before the first failure."""
    v = np.zeros(count, dtype=np.int64)
    going = np.ones(count, dtype=bool)
    ones = np.ones(count, dtype=np.int64)
    while going.any():
        idx = np.flatnonzero(going)
        hit = _bernoulli_exp_unit(ones[idx], ones[idx], source)
        v[idx[hit]] += 1
        going[idx[~hit]] = False
    return v


def discrete_laplace(t: int, count: int, source: RandomBytes = secrets.token_bytes
                     ) -> np.ndarray:
    """``count`` draws with ``P[y] ∝ exp(-|y| / t)`` on the integers (CKS Algorithm 2,
    integer scale ``t >= 1``), as ``int64``."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise PrivacyError(f"discrete_laplace: got t={t!r}, expected an integer >= 1")
    out = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:
        n = todo.size
        u = uniform_below(t, n, source)
        keep = bernoulli_exp(u, t, n, source)      # U accepted with prob exp(-U/t)
        x = u + t * _geometric_exp1(n, source)     # X ~ Geometric(1 - exp(-1/t))
        sign = uniform_below(2, n, source)
        keep &= ~((sign == 1) & (x == 0))          # -0 would count zero twice
        out[todo[keep]] = np.where(sign[keep] == 1, -x[keep], x[keep])
        todo = todo[~keep]
    return out


def _as_fraction(sigma2: Union[int, Fraction]) -> Fraction:
    if isinstance(sigma2, bool) or not isinstance(sigma2, (int, Fraction)):
        raise PrivacyError(f"discrete_gaussian: got sigma2={sigma2!r}, expected an int or a "
                           "Fraction (exact arithmetic; never a float)")
    value = Fraction(sigma2)
    if not 0 < value <= MAX_SIGMA2:
        raise PrivacyError(f"discrete_gaussian: got sigma2={sigma2}, expected 0 < sigma2 <= "
                           f"2**30")
    return value


def discrete_gaussian(sigma2: Union[int, Fraction], count: int,
                      source: RandomBytes = secrets.token_bytes) -> np.ndarray:
    """``count`` independent draws from ``N_Z(0, sigma2)``, exactly, as ``int64``.

    CKS Algorithm 3: ``t = floor(sigma) + 1``; draw ``Y`` from the discrete Laplace of
    scale ``t`` and keep it with probability
    ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``, which with ``sigma^2 = a/b`` is
    ``exp(-(|Y| b t - a)^2 / (2 a b t^2))``: integers only.

    Args:
        sigma2: The variance parameter, an ``int`` or :class:`~fractions.Fraction`
            in ``(0, 2**30]``.
        count: How many draws.
        source: Uniform random bytes (the OS's CSPRNG by default).

    Raises:
        PrivacyError: ``sigma2`` not an exact positive number in range.
    """
    s2 = _as_fraction(sigma2)
    a, b = s2.numerator, s2.denominator
    t = math.isqrt(a // b) + 1                     # floor(sqrt(a/b)) + 1
    den = 2 * a * b * t * t
    if den >= 2 ** 62:
        raise PrivacyError("discrete_gaussian: sigma2's denominator is too large for exact "
                           "64-bit sampling; use a simpler fraction")
    out = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:
        n = todo.size
        y = discrete_laplace(t, n, source)
        gap = np.abs(y).astype(object) * (b * t) - a   # Python ints: no overflow
        keep = bernoulli_exp(gap * gap, den, n, source)
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


def discrete_gaussian_pmf(sigma2: float, support: np.ndarray) -> np.ndarray:
    """``P[X = x]`` of ``N_Z(0, sigma2)`` at ``support`` (float64; for tests and checks:
    normalised over ``|x| <= 40 sigma + 40``, where all but ~exp(-800) of the mass is)."""
    sigma = math.sqrt(sigma2)
    span = int(40 * sigma) + 40
    xs = np.arange(-span, span + 1, dtype=np.float64)
    norm = float(np.sum(np.exp(-xs * xs / (2 * sigma2))))
    x = np.asarray(support, dtype=np.float64)
    return np.exp(-x * x / (2 * sigma2)) / norm
