"""Ed25519 identity keys and the key adverts they sign (malicious-server mode).

Bonawitz et al. 2017 (active adversary) and Bell et al. 2020 (malicious variant)
stop a lying server with signatures from a PKI the server does not control:
every participant signs its key advert ``(pid, round advertised, c_pk, s_pk)``,
so a server that substitutes its own X25519 keys (to open the shares or derive
the pairwise masks) is caught by every neighbour that verifies the advert.

The consistency round then needs no further signatures: each survivor confirms
the survivor set it saw to each partner with an HMAC under the key the two
derived from those *authenticated* X25519 keys (:func:`fedcollab.secure.keys.
confirm_tag`). Only the two of them hold that key, so to the partner that checks
it a tag proves exactly what Bonawitz et al.'s signature proves (that partner is
the only party that ever checks it; transferability is not needed), at a
hundredth of the cost of an Ed25519 verification.

The identity registry (participant id -> Ed25519 public key) is provisioned at
setup, not by the aggregating server's per-round messages: see
``docs/threat-model.md`` for who builds it in the Ray deployment and what that
trust assumption means. Ed25519 signing and verification come from
``cryptography``; nothing here is home-made.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Collection, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = ["SIGNATURE_BYTES", "IDENTITY_BYTES", "GroupSetup", "generate_identity",
           "identity_public", "sign_advert", "verify_advert", "load_registry"]

SIGNATURE_BYTES = 64
IDENTITY_BYTES = 32
_ADVERT = b"fedcollab/secagg/v3/advert"


def generate_identity() -> Ed25519PrivateKey:
    """A fresh Ed25519 identity key (OS CSPRNG, inside ``cryptography``)."""
    return Ed25519PrivateKey.generate()


def identity_public(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte raw public half of an identity key (what the registry holds)."""
    return key.public_key().public_bytes_raw()


@dataclass(frozen=True)
class GroupSetup:
    """What a participant pins at setup, once, from the setup channel (never from a
    per-round server message): the group's members, the public seed of the SecAgg+
    graph, the job it belongs to and (malicious-server mode) every member's Ed25519
    identity key. Every later install must be exactly the same.

    Attributes:
        members: The secure group's participant ids (the registry's keys when there
            is one).
        graph_seed: Public randomness fixed at setup; each participant derives its
            partners as ``graph.derive_graph(round members, graph_seed)``.
        job_id: The job's id; every key advert is signed over it.
        registry: Participant id -> raw Ed25519 public key (empty: honest-but-curious).
    """

    members: frozenset[int]
    graph_seed: bytes = b""
    job_id: bytes = b""
    registry: Mapping[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, members: Collection[int], *, graph_seed: bytes = b"", job_id: bytes = b"",
           registry: Mapping[int, bytes] | None = None) -> GroupSetup:
        """A setup over ``members`` (checked against ``registry``'s ids when given).

        Raises:
            ValueError: A registry whose ids are not exactly ``members``.
        """
        group = frozenset(int(p) for p in members)
        keys = {int(p): bytes(k) for p, k in (registry or {}).items()}
        if keys and set(keys) != group:
            raise ValueError(f"identity registry names {len(keys)} participant(s), the group "
                             f"has {len(group)}: every member needs exactly one entry")
        return cls(group, bytes(graph_seed), bytes(job_id), keys)

    def digest(self) -> bytes:
        """SHA-256 of everything pinned (members, seed, job id, registry entries)."""
        h = hashlib.sha256(b"fedcollab/secagg/v3/setup")
        for part in (self.graph_seed, self.job_id):
            h.update(struct.pack(">I", len(part)) + part)
        for pid in sorted(self.members):
            h.update(struct.pack(">I", pid) + bytes(self.registry.get(pid, b"")))
        return h.digest()


def load_registry(registry: Mapping[int, bytes]) -> dict[int, Ed25519PublicKey]:
    """Parse a registry ``{pid: 32-byte Ed25519 public key}``.

    Raises:
        ValueError: An entry that is not a valid Ed25519 public key.
    """
    out = {}
    for pid, raw in registry.items():
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != IDENTITY_BYTES:
            raise ValueError(f"identity registry: entry of participant {pid} is not a "
                             f"{IDENTITY_BYTES}-byte Ed25519 public key")
        out[int(pid)] = Ed25519PublicKey.from_public_bytes(bytes(raw))
    return out


def _advert(pid: int, since: int, c_pk: bytes, s_pk: bytes, job_id: bytes) -> bytes:
    return (_ADVERT + struct.pack(">I", len(job_id)) + job_id + struct.pack(">IQ", pid, since)
            + c_pk + s_pk)


def sign_advert(key: Ed25519PrivateKey, pid: int, since: int, c_pk: bytes, s_pk: bytes,
                job_id: bytes = b"") -> bytes:
    """Signature of participant ``pid``'s key advert of round ``since`` in job ``job_id``
    (an advert of another job does not verify in this one)."""
    return key.sign(_advert(pid, since, c_pk, s_pk, job_id))


def verify_advert(public: Ed25519PublicKey, sig: bytes, pid: int, since: int, c_pk: bytes,
                  s_pk: bytes, job_id: bytes = b"") -> bool:
    """Whether ``sig`` is ``pid``'s signature of exactly this advert of job ``job_id``."""
    return _verify(public, sig, _advert(pid, since, c_pk, s_pk, job_id))


def _verify(public: Ed25519PublicKey, sig: bytes, data: bytes) -> bool:
    if len(sig) != SIGNATURE_BYTES:
        return False
    try:
        public.verify(sig, data)
    except InvalidSignature:
        return False
    return True
