"""Pure reconstruction of the secrets the server is allowed to learn.

Each reconstruction interpolates at zero from ``t`` shares and checks the result
against public data the owner committed to: the SHA-256 digest of a self-mask
seed, the AES-GCM tag of a sealed seed table, or the advertised X25519 public key.
If the check fails, one share at a time is left out of the first ``t + 1`` (so a
single lying holder is outvoted); if nothing checks, the caller aborts the round.
"""
from __future__ import annotations

import hmac
import itertools
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcollab.secure import keys as K
from fedcollab.secure._wire import table_aad, unpack_seed_table
from fedcollab.secure.errors import MalformedMessageError
from fedcollab.secure.shamir import PRIME, lagrange_at_zero, lagrange_at_zero_without

__all__ = ["reconstruct", "self_seed_check", "seed_table_check", "mask_key_check",
           "seeds_from_mask_key", "signed_seeds"]

T = TypeVar("T")
MAX_ATTEMPTS = 32


def _coefficients(subset: tuple[int, ...], owner: int, base: tuple[int, ...]
                  ) -> tuple[int, ...]:
    xs = tuple(h + 1 for h in subset)
    head = base[:len(xs) + 1]
    if len(head) == len(xs) + 1 and owner + 1 in head and \
            xs == tuple(x for x in head if x != owner + 1):
        return lagrange_at_zero_without(head, owner + 1)  # full graph: one cached base set
    return lagrange_at_zero(xs)


def reconstruct(shares: Mapping[int, int], threshold: int, check: Callable[[int], T | None],
                *, owner: int, base: tuple[int, ...] = ()) -> T | None:
    """The checked secret behind ``shares`` (holder id -> y), or ``None`` if none checks.

    Args:
        shares: At least ``threshold`` shares, keyed by holder id (x = id + 1).
        threshold: ``t``.
        check: Maps a candidate secret to the value to return, or ``None`` if invalid.
        owner: The secret's owner (never a holder of its own shares).
        base: Sorted x coordinates of all responders: with the complete graph every
            owner's first holders are ``base`` minus the owner, so one cached set serves.
    """
    holders = sorted(shares)
    spare = tuple(h + 1 for h in holders[:threshold + 1])

    def candidates() -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        first = tuple(holders[:threshold])
        yield first, _coefficients(first, owner, base)
        if len(spare) == threshold + 1:
            for skip in reversed(spare[:threshold]):
                yield (tuple(x - 1 for x in spare if x != skip),
                       lagrange_at_zero_without(spare, skip))

    for subset, coeffs in itertools.islice(candidates(), MAX_ATTEMPTS):
        value = check(sum(c * shares[h] for c, h in zip(coeffs, subset)) % PRIME)
        if value is not None:
            return value
    return None


def _as_key(secret: int) -> bytes | None:
    return secret.to_bytes(32, "big") if secret < 1 << 256 else None


def self_seed_check(digest: bytes, round_id: int, owner: int) -> Callable[[int], bytes | None]:
    """Accept a self-mask seed whose digest matches the one sent with the input."""
    def check(secret: int) -> bytes | None:
        seed = _as_key(secret)
        if seed is None:
            return None
        ok = hmac.compare_digest(K.self_seed_digest(seed, round_id, owner), digest)
        return seed if ok else None
    return check


def seed_table_check(table: bytes, round_id: int, owner: int
                     ) -> Callable[[int], dict[int, bytes] | None]:
    """Accept a recovery key that opens the owner's sealed seed table for this round."""
    def check(secret: int) -> dict[int, bytes] | None:
        key = _as_key(secret)
        if key is None:
            return None
        try:
            plain = AESGCM(key).decrypt(table[:K.NONCE_BYTES], table[K.NONCE_BYTES:],
                                        table_aad(round_id, owner))
            return unpack_seed_table(plain)
        except (InvalidTag, MalformedMessageError):
            return None
    return check


def mask_key_check(s_pk: bytes) -> Callable[[int], bytes | None]:
    """Accept an X25519 private key whose public key is the advertised ``s_pk``."""
    def check(secret: int) -> bytes | None:
        raw = _as_key(secret)
        if raw is None:
            return None
        return raw if K.public_bytes(K.private_from_bytes(raw)) == s_pk else None
    return check


def seeds_from_mask_key(private: bytes, owner: int, partners: Mapping[int, bytes],
                        round_id: int) -> dict[int, bytes]:
    """Per-round pair seeds of ``owner`` with ``partners`` (id -> s_pk), per-round mode."""
    sk = K.private_from_bytes(private)
    mine = K.public_bytes(sk)
    return {v: K.round_seed(K.pairwise_key(K.agree(sk, pk), owner, v,
                                           K.transcript(owner, v, mine, pk)),
                            round_id, owner, v)
            for v, pk in partners.items()}


def signed_seeds(owner: int, seeds: Mapping[int, bytes], survivors: Sequence[int]
                 ) -> tuple[list[bytes], list[bytes]]:
    """Masks to add and to subtract to strip ``owner``'s dangling pairwise masks.

    A survivor ``v`` added ``+PRG(seed)`` when ``v < owner`` and ``-PRG(seed)`` when
    ``v > owner``; removing them takes the opposite signs.
    """
    return ([seeds[v] for v in survivors if v > owner],
            [seeds[v] for v in survivors if v < owner])
