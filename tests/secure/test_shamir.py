"""Shamir secret sharing over GF(2^521 - 1): properties, known answers, negatives."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.secure.errors import NotEnoughSharesError, ShareVerificationError
from fedcollab.secure.shamir import (
    PRIME,
    Share,
    _evaluate,
    combine,
    lagrange_at_zero,
    lagrange_at_zero_without,
    secret_from_bytes,
    secret_to_bytes,
    split,
)

SECRETS = st.integers(0, (1 << 256) - 1)


@settings(max_examples=50, deadline=None)
@given(secret=SECRETS, t=st.integers(1, 8), extra=st.integers(0, 5), seed=st.integers(0, 2**32))
def test_shamir_any_t_shares_reconstruct(secret: int, t: int, extra: int, seed: int) -> None:
    shares = split(secret, threshold=t, n=t + extra, rng=random.Random(seed))
    subset = random.Random(seed).sample(shares, t)
    assert combine(subset) == secret


@settings(max_examples=30, deadline=None)
@given(secret=SECRETS, t=st.integers(2, 8), seed=st.integers(0, 2**32))
def test_shamir_fewer_than_t_shares_raise_need_t(secret: int, t: int, seed: int) -> None:
    shares = split(secret, threshold=t, n=t + 2, rng=random.Random(seed))
    with pytest.raises(NotEnoughSharesError, match=f"got {t - 1} shares, need {t}"):
        combine(shares[: t - 1])


@settings(max_examples=30, deadline=None)
@given(secret=SECRETS, other=SECRETS, t=st.integers(2, 6), seed=st.integers(0, 2**32))
def test_shamir_t_minus_one_shares_fit_every_secret(secret: int, other: int, t: int,
                                                     seed: int) -> None:
    # Perfect secrecy: t-1 shares plus the point (0, other) lie on one degree t-1
    # polynomial, so the t-1 shares alone cannot rule out any secret.
    shares = split(secret, threshold=t, n=t + 2, rng=random.Random(seed))[: t - 1]
    # Pick the point at x = p-2 so that the polynomial through it and the t-1 shares
    # has f(0) = other: such a polynomial always exists.
    coeffs = lagrange_at_zero(tuple(s.x for s in shares) + (PRIME - 2,))
    known = sum(c * s.y for c, s in zip(coeffs, shares))
    y_last = (other - known) * pow(coeffs[-1], -1, PRIME) % PRIME
    assert combine(shares + [Share(x=PRIME - 2, y=y_last, threshold=t)]) == other


def test_shamir_known_answer_small_polynomial() -> None:
    # f(x) = 42 + 7x + 3x^2  ->  f(1) = 52, f(2) = 68, f(3) = 90, f(4) = 118.
    shares = [Share(x, y, 3) for x, y in [(1, 52), (2, 68), (3, 90)]]
    assert combine(shares) == 42
    assert combine([Share(4, 118, 3), Share(2, 68, 3), Share(3, 90, 3)]) == 42


def test_shamir_known_answer_wraps_modulo_prime() -> None:
    # f(x) = s + (p - 1) x = s - x (mod p), with a 256-bit secret.
    s = (1 << 256) - 1
    shares = [Share(1, s - 1, 2), Share(2, s - 2, 2)]
    assert combine(shares) == s
    assert combine([Share(5, (s - 5) % PRIME, 2), Share(1, s - 1, 2)]) == s


def test_shamir_seeded_split_is_reproducible() -> None:
    a = split(123, threshold=3, n=5, rng=random.Random(7))
    b = split(123, threshold=3, n=5, rng=random.Random(7))
    assert [s.y for s in a] == [s.y for s in b]
    assert [s.x for s in a] == [1, 2, 3, 4, 5]


def test_shamir_tampered_extra_share_raises() -> None:
    shares = split(99, threshold=3, n=5, rng=random.Random(1))
    bad = Share(shares[4].x, (shares[4].y + 1) % PRIME, 3)
    with pytest.raises(ShareVerificationError, match="inconsistent"):
        combine(shares[:4] + [bad])


def test_shamir_duplicate_x_raises() -> None:
    shares = split(5, threshold=2, n=3, rng=random.Random(0))
    with pytest.raises(ShareVerificationError, match="same x"):
        combine([shares[0], shares[0]])


def test_shamir_mixed_thresholds_raise() -> None:
    a = split(5, threshold=2, n=3, rng=random.Random(0))
    b = split(5, threshold=3, n=3, rng=random.Random(0))
    with pytest.raises(ShareVerificationError, match="different thresholds"):
        combine([a[0], b[1]])


@pytest.mark.parametrize("kwargs", [
    {"threshold": 0, "n": 3}, {"threshold": 4, "n": 3}, {"threshold": 2, "xs": [1, 1]},
    {"threshold": 2, "xs": [0, 1]}, {"threshold": 2}, {"threshold": 2, "n": 2, "xs": [1, 2]},
])
def test_shamir_split_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        split(5, **kwargs)


def test_shamir_secret_out_of_field_raises() -> None:
    with pytest.raises(ValueError, match="field element"):
        split(PRIME, threshold=2, n=3)


@settings(max_examples=30, deadline=None)
@given(xs=st.lists(st.integers(1, 1000), min_size=3, max_size=12, unique=True),
       pick=st.integers(0, 11))
def test_lagrange_without_matches_direct(xs: list[int], pick: int) -> None:
    base = tuple(sorted(xs))
    drop = base[pick % len(base)]
    assert lagrange_at_zero_without(base, drop) == lagrange_at_zero(
        tuple(x for x in base if x != drop))


def test_shamir_share_repr_hides_value() -> None:
    share = Share(3, 123456789123456789, 2)
    assert "123456789123456789" not in repr(share)


def test_shamir_secret_bytes_round_trip_and_overflow() -> None:
    raw = bytes(range(32))
    assert secret_to_bytes(secret_from_bytes(raw), 32) == raw
    with pytest.raises(ShareVerificationError, match="does not fit"):
        secret_to_bytes(1 << 256, 32)


@pytest.mark.parametrize("t", [2, 31, 32, 33, 70])
def test_shamir_lazy_and_stepwise_horner_evaluations_both_reconstruct(t: int) -> None:
    # small growth (t * bits(x) <= 512) reduces once at the end, larger every 8 steps
    secret = random.Random(t).getrandbits(256)
    rng = random.Random(7)
    shares = split(secret, threshold=t, n=t + 3, rng=rng)
    assert combine(shares) == secret
    assert combine(shares[3:], verify=False) == secret
    # Horner's rule (lazy or every-8-steps reduction) gives the points of the textbook sum
    coeffs = [secret] + [random.Random(9).getrandbits(500) for _ in range(t - 1)]
    for x in (1, 5, 77, 2**31 + 11, 2**32 - 1):
        textbook = sum(a * pow(x, j, PRIME) for j, a in enumerate(coeffs)) % PRIME
        assert _evaluate(coeffs, x) == textbook
