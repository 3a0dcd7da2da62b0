"""X25519 key agreement, HKDF-SHA256 key derivation and AES-GCM, from ``cryptography``.

The only primitives SecAgg uses besides Shamir and the PRG; never a home-made cipher.

Each participant holds two X25519 key pairs (Bonawitz et al. 2017): ``c`` for the
encrypted share channel to each neighbour, ``s`` for pairwise masks. With amortised
keys ``s`` is never revealed (a per-round recovery key is shared instead; see
``participant``), so one pair serves as both and a single agreement per neighbour
feeds both derivations below, kept apart by their HKDF ``info`` labels. Per-round
mode Shamir-shares the private ``s``, so there it is a second, separate pair.
Derived keys:

* channel key ``(u, v)``: ``HKDF(DH(c_u, c_v), info=CHANNEL || min || max || c_min ||
  c_max)``, an AES-256-GCM key; every ciphertext carries associated data binding it to
  (round, stage, sender, recipient), so a replay into another context fails the tag.
* pairwise key ``(u, v)``: ``HKDF(DH(s_u, s_v), info=PAIRWISE || min || max || s_min || s_max)``
  (every derivation binds the public keys it came from: the KDF transcript);
* per-round mask seed: ``HKDF-Expand(pairwise key, info=SEED || round || min || max)``.
  HKDF-Expand is a PRF keyed by the pairwise key, so seeds of different rounds are
  independent to anyone who does not hold that key.
* confirmation key ``(u, v)`` (malicious-server mode): ``HKDF(DH(c_u, c_v),
  info=CONFIRM || min || max || c_min || c_max)``, an HMAC-SHA256 key for the
  consistency round.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from fedcollab.secure.errors import DecryptionError, MalformedMessageError

__all__ = [
    "PUBLIC_KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "generate_private_key", "public_bytes",
    "private_bytes", "private_from_bytes", "agree", "channel_cipher", "pairwise_key",
    "round_seed", "seal", "seal_many", "open_sealed", "self_seed_digest", "confirm_key",
    "survivors_digest", "confirm_tag", "transcript",
]

PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_CHANNEL = b"fedcollab/secagg/v1/channel"
_PAIRWISE = b"fedcollab/secagg/v1/pairwise"
_SEED = b"fedcollab/secagg/v1/mask-seed"
_DIGEST = b"fedcollab/secagg/v1/self-seed-digest"
_CONFIRM = b"fedcollab/secagg/v2/confirm"
_SURVIVORS = b"fedcollab/secagg/v2/survivors"


def generate_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key (from the OS CSPRNG, inside ``cryptography``)."""
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key of ``key``."""
    return key.public_key().public_bytes_raw()


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw private key (only to Shamir-share it in per-round SecAgg)."""
    return key.private_bytes_raw()


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte X25519 private key."""
    return X25519PrivateKey.from_private_bytes(raw)


def _pair(a: int, b: int) -> bytes:
    return struct.pack(">II", min(a, b), max(a, b))


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret with a peer's 32-byte public key.

    Raises:
        MalformedMessageError: Not a usable public key (wrong length, low order).
    """
    if len(peer_public) != PUBLIC_KEY_BYTES:
        raise MalformedMessageError(
            f"public key is {len(peer_public)} bytes, expected {PUBLIC_KEY_BYTES}")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero output: a low-order point
        raise MalformedMessageError(f"unusable X25519 public key ({exc})") from None


_SHA256 = hashes.SHA256()  # stateless algorithm descriptor, shared


def _hkdf(ikm: bytes, *, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=_SHA256, length=32, salt=salt, info=info).derive(ikm)


def transcript(a: int, b: int, pk_a: bytes, pk_b: bytes) -> bytes:
    """The pair and both public keys, lower id first: every key derived from a DH
    output binds the public keys it came from (the KDF transcript), so a shared
    secret reached from other keys (a substituted or low-order key) derives nothing
    the honest pair derives."""
    return _pair(a, b) + (pk_a + pk_b if a < b else pk_b + pk_a)


def channel_cipher(shared: bytes, a: int, b: int, bound: bytes = b"") -> AESGCM:
    """The AES-256-GCM cipher of the share channel between participants ``a`` and ``b``
    (``bound``: :func:`transcript` of their channel keys)."""
    return AESGCM(_hkdf(shared, salt=None, info=_CHANNEL + _pair(a, b) + bound))


def confirm_key(shared: bytes, a: int, b: int, bound: bytes = b"") -> bytes:
    """The HMAC-SHA256 key with which ``a`` and ``b`` confirm survivor sets to each other."""
    return _hkdf(shared, salt=None, info=_CONFIRM + _pair(a, b) + bound)


def survivors_digest(round_id: int, survivors: Sequence[int], *,
                     members: Sequence[int] = (), graph_seed: bytes = b"") -> bytes:
    """SHA-256 of a round's view: its member set, the graph seed pinned at setup and
    the survivor set (order-independent), so two participants confirm each other only
    if they saw the same members, graph and survivors."""
    ids, group = sorted(survivors), sorted(members)
    return hashlib.sha256(
        _SURVIVORS + struct.pack(f">QI{len(ids)}I", round_id, len(ids), *ids)
        + struct.pack(f">I{len(group)}I", len(group), *group)
        + struct.pack(">I", len(graph_seed)) + graph_seed).digest()


def confirm_tag(key: bytes, sender: int, recipient: int, digest: bytes) -> bytes:
    """``sender``'s HMAC-SHA256 confirmation to ``recipient`` of a survivor-set digest.

    Only the two holders of ``key`` can compute it; sender and recipient are bound,
    so a tag cannot be reflected back to the participant that made it.
    """
    return hmac.digest(key, struct.pack(">II", sender, recipient) + digest, "sha256")


def pairwise_key(shared: bytes, a: int, b: int, bound: bytes = b"") -> bytes:
    """The long-lived pairwise mask key of ``a`` and ``b`` (symmetric in a, b;
    ``bound``: :func:`transcript` of their mask keys)."""
    return _hkdf(shared, salt=None, info=_PAIRWISE + _pair(a, b) + bound)


def round_seed(pair_key: bytes, round_id: int, a: int, b: int) -> bytes:
    """The 32-byte mask seed of pair ``(a, b)`` for ``round_id``.

    ``HKDF-Expand(PRK = pairwise key, info = SEED || round || min(a,b) || max(a,b))``
    (RFC 5869 §2.3): the pairwise key is already a uniform 32-byte HKDF output, so
    it is the pseudorandom key and no second Extract is needed; round and pair sit
    in ``info``, so every (round, pair) gets an independent seed.
    """
    return HKDFExpand(algorithm=_SHA256, length=32,
                      info=_SEED + struct.pack(">Q", round_id) + _pair(a, b)).derive(pair_key)


def seal(cipher: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate; returns ``nonce || ciphertext || tag`` (random nonce)."""
    return seal_many([(cipher, plaintext, aad)])[0]


def seal_many(items: list[tuple[AESGCM, bytes, bytes]]) -> list[bytes]:
    """:func:`seal` each ``(cipher, plaintext, aad)``; one ``os.urandom`` call for all nonces."""
    nonces = os.urandom(NONCE_BYTES * len(items))
    out = []
    for i, (cipher, plaintext, aad) in enumerate(items):
        nonce = nonces[i * NONCE_BYTES:(i + 1) * NONCE_BYTES]
        out.append(nonce + cipher.encrypt(nonce, plaintext, aad))
    return out


def open_sealed(cipher: AESGCM, blob: bytes, aad: bytes, *,
                what: str | Callable[[], str]) -> bytes:
    """Decrypt a :func:`seal` output bound to ``aad``.

    ``what`` names the ciphertext in the error; a function making that name is called
    only on failure (a holder opens 16 bundles a round at N=100).

    Raises:
        DecryptionError: Tampered ciphertext, wrong key or a binding mismatch (replay).
    """
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError(f"{_name(what)}: ciphertext is {len(blob)} bytes, too short to "
                              "be sealed")
    try:
        return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionError(
            f"{_name(what)}: AES-GCM authentication failed (tampered, or replayed from "
            "another round/stage/sender)") from None


def _name(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def self_seed_digest(seed: bytes, round_id: int, participant_id: int) -> bytes:
    """A SHA-256 commitment to a self-mask seed, so the server can check its reconstruction.

    The seed is 256 uniform bits, so the digest reveals nothing usable about it.
    """
    return hashlib.sha256(_DIGEST + struct.pack(">QI", round_id, participant_id) + seed).digest()
