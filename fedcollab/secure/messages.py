"""The wire format of SecAgg messages: struct-packed headers and raw bytes, no pickle.

Every message starts with a 22-byte header ``magic "FCSA", version, stage, round
id (u64), sender (u32), recipient (u32)``; the server's id is :data:`SERVER`.
Parsing checks the header against what the reader expects (stage, round, sender,
recipient), so a message replayed from another round or stage, or routed to the
wrong party, is rejected as stale before its body is read. Bodies are
length-prefixed fields read with bounds checks: malformed bytes raise
:class:`MalformedMessageError`, never ``IndexError`` or ``struct.error``.

Ciphertexts inside bodies (encrypted shares, seed tables) are AES-GCM sealed with
associated data from :func:`share_aad` / :func:`table_aad`, which bind them to the
same (round, stage, sender, recipient) context end to end; a share's also binds the
pinned job id and the round's model hash (docs/threat-model.md, "What the AAD binds").
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TypeVar, Union

import numpy as np

from fedcollab.secure._wire import (
    Kind,
    PeerKeys,
    Reader,
    Reveal,
    RevealedShare,
    Sealed,
    ShareEntry,
    Stage,
    pack_blob,
    pack_ids,
    pack_keys,
    pack_revealed,
    pack_reveals,
    pack_sealed,
    pack_seed_table,
    pack_share_payload,
    read_ids,
    read_keys,
    read_revealed,
    read_reveals,
    read_sealed,
    share_aad,
    table_aad,
    unpack_seed_table,
    unpack_share_payload,
)
from fedcollab.secure.errors import MalformedMessageError, StaleMessageError

__all__ = [
    "SERVER", "Stage", "Kind", "PeerKeys", "Sealed", "Advertise", "Roster", "KeyShares",
    "MaskRequest", "MaskedInput", "Reveal", "UnmaskRequest", "RevealedShare",
    "Consistency", "Confirmations",
    "UnmaskResponse", "ShareEntry", "pack", "pack_body", "unpack", "share_aad", "table_aad",
    "pack_share_payload", "unpack_share_payload", "pack_seed_table", "unpack_seed_table",
]

SERVER = 0xFFFFFFFF
_MAGIC = b"FCSA"
_VERSION = 3
_HEADER = struct.Struct(">4sBBQII")
_KEY = 32


@dataclass(frozen=True)
class Advertise:
    """Stage ADVERTISE (participant -> server): fresh public keys, and in
    malicious-server mode the owner's Ed25519 signature over them (else empty)."""

    c_pk: bytes
    s_pk: bytes
    sig: bytes = b""

    def body(self) -> bytes:
        return self.c_pk + self.s_pk + pack_blob(self.sig)

    @classmethod
    def read(cls, r: Reader) -> Advertise:
        return cls(r.take(_KEY), r.take(_KEY), r.blob())


@dataclass(frozen=True)
class Roster:
    """Stage ROSTER (server -> participant): the round's member set and the neighbours'
    keys to share a package with. The participant derives its neighbourhood and
    threshold from ``members`` (checked against the group pinned at setup) itself;
    ``threshold`` and ``group_size`` are only compared with what it derives."""

    threshold: int
    group_size: int
    members: tuple[int, ...]
    peers: tuple[PeerKeys, ...]

    def body(self) -> bytes:
        return (struct.pack(">II", self.threshold, self.group_size) + pack_ids(self.members)
                + pack_keys(self.peers))

    @classmethod
    def read(cls, r: Reader) -> Roster:
        return cls(r.num(">I"), r.num(">I"), read_ids(r), read_keys(r))


@dataclass(frozen=True)
class KeyShares:
    """Stage SHARE_KEYS (participant -> server): a recovery package for this round."""

    seed_table: bytes = field(repr=False)
    shares: tuple[Sealed, ...]

    def body(self) -> bytes:
        return pack_blob(self.seed_table) + pack_sealed(self.shares)

    @classmethod
    def read(cls, r: Reader) -> KeyShares:
        return cls(r.blob(), read_sealed(r))


@dataclass(frozen=True)
class MaskRequest:
    """Stage MASK_REQUEST (server -> participant): what to mask with this round."""

    group_size: int
    dim: int
    threshold: int
    members: tuple[int, ...]
    partners: tuple[int, ...]
    key_updates: tuple[PeerKeys, ...]
    deliveries: tuple[Sealed, ...]

    def body(self) -> bytes:
        return (struct.pack(">III", self.group_size, self.dim, self.threshold)
                + pack_ids(self.members) + pack_ids(self.partners)
                + pack_keys(self.key_updates) + pack_sealed(self.deliveries))

    @classmethod
    def read(cls, r: Reader) -> MaskRequest:
        return cls(r.num(">I"), r.num(">I"), r.num(">I"), read_ids(r), read_ids(r),
                   read_keys(r), read_sealed(r))


@dataclass(frozen=True)
class MaskedInput:
    """Stage MASKED_INPUT (participant -> server): masked vector, seed digest, shares."""

    ring_bits: int
    vector: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    seed_table: bytes = field(repr=False)
    shares: tuple[Sealed, ...]

    def body(self) -> bytes:
        return (self.head(self.ring_bits, self.vector, self.digest)
                + self.tail(self.seed_table, self.shares))

    @staticmethod
    def head(ring_bits: int, vector: bytes, digest: bytes) -> bytes:
        """The body's first part: the masked vector and the self-seed digest."""
        return struct.pack(">B", ring_bits) + pack_blob(vector) + digest

    @staticmethod
    def tail(seed_table: bytes, shares: tuple[Sealed, ...]) -> bytes:
        """The body's second part, which does not depend on the update (precomputable)."""
        return pack_blob(seed_table) + pack_sealed(shares)

    @classmethod
    def read(cls, r: Reader) -> MaskedInput:
        return cls(r.num(">B"), r.blob(), r.take(32), r.blob(), read_sealed(r))

    def array(self, dtype: np.dtype) -> np.ndarray:
        """The masked vector as ring elements (read-only view)."""
        return np.frombuffer(self.vector, dtype=dtype)


@dataclass(frozen=True)
class Consistency:
    """Stage CONSISTENCY (server -> participant, malicious-server mode): the survivor
    set (who sent a masked input), which every survivor signs before revealing."""

    survivors: tuple[int, ...]

    def body(self) -> bytes:
        return pack_ids(self.survivors)

    @classmethod
    def read(cls, r: Reader) -> Consistency:
        return cls(read_ids(r))


@dataclass(frozen=True)
class Confirmations:
    """Stage CONFIRMATIONS (participant -> server, malicious-server mode): one MAC per
    partner in the survivor set, ``Sealed(partner, tag)``, confirming the set it saw
    under the key it shares with that partner (see :func:`~fedcollab.secure.keys.confirm_tag`)."""

    tags: tuple[Sealed, ...]

    def body(self) -> bytes:
        return pack_sealed(self.tags)

    @classmethod
    def read(cls, r: Reader) -> Confirmations:
        return cls(read_sealed(r))


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage UNMASK_REQUEST (server -> participant).

    ``signatures``: in malicious-server mode, the partners' confirmations of the
    survivor set addressed to this participant (``Sealed(partner, tag)``); empty
    otherwise.
    """

    reveals: tuple[Reveal, ...]
    signatures: tuple[Sealed, ...] = ()

    def body(self) -> bytes:
        return pack_reveals(self.reveals) + pack_sealed(self.signatures)

    @classmethod
    def read(cls, r: Reader) -> UnmaskRequest:
        return cls(read_reveals(r), read_sealed(r))


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage UNMASK_RESPONSE (participant -> server)."""

    shares: tuple[RevealedShare, ...]

    def body(self) -> bytes:
        return pack_revealed(self.shares)

    @classmethod
    def read(cls, r: Reader) -> UnmaskResponse:
        return cls(read_revealed(r))


_STAGE_OF: dict[type, Stage] = {
    Advertise: Stage.ADVERTISE, Roster: Stage.ROSTER, KeyShares: Stage.SHARE_KEYS,
    MaskRequest: Stage.MASK_REQUEST, MaskedInput: Stage.MASKED_INPUT,
    UnmaskRequest: Stage.UNMASK_REQUEST, UnmaskResponse: Stage.UNMASK_RESPONSE,
    Consistency: Stage.CONSISTENCY, Confirmations: Stage.CONFIRMATIONS,
}
_Msg = Union[Advertise, Roster, KeyShares, MaskRequest, MaskedInput, UnmaskRequest,
             UnmaskResponse, Consistency, Confirmations]
M = TypeVar("M", Advertise, Roster, KeyShares, MaskRequest, MaskedInput, UnmaskRequest,
            UnmaskResponse, Consistency, Confirmations)


def pack(message: _Msg, *, round_id: int, sender: int, recipient: int) -> bytes:
    """Serialise ``message`` with a header binding it to its stage, round and parties."""
    return pack_body(type(message), message.body(), round_id=round_id, sender=sender,
                     recipient=recipient)


def pack_body(cls: type, body: bytes, *, round_id: int, sender: int, recipient: int) -> bytes:
    """:func:`pack` for a ``cls`` body serialised by hand from its parts (hot paths)."""
    return _HEADER.pack(_MAGIC, _VERSION, _STAGE_OF[cls], round_id, sender, recipient) + body


def unpack(data: bytes, cls: type[M], *, round_id: int, sender: int, recipient: int) -> M:
    """Parse a ``cls`` message, checking its header binds it to exactly this context.

    Raises:
        MalformedMessageError: Not a SecAgg message, or a bad body.
        StaleMessageError: Another round, stage, sender or recipient (replay/misroute).
    """
    stage = _STAGE_OF[cls]
    what = f"{stage.name.lower()} message from {_name(sender)}"
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedMessageError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) < _HEADER.size:
        raise MalformedMessageError(f"{what}: {len(data)} bytes, shorter than the header")
    magic, version, got_stage, got_round, got_sender, got_recipient = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise MalformedMessageError(f"{what}: not a fedcollab SecAgg v{_VERSION} message")
    got = (got_stage, got_round, got_sender, got_recipient)
    if got != (stage, round_id, sender, recipient):
        raise StaleMessageError(
            f"{what}: bound to stage {got_stage}, round {got_round}, sender "
            f"{_name(got_sender)}, recipient {_name(got_recipient)}; expected stage "
            f"{int(stage)}, round {round_id}, recipient {_name(recipient)} (replayed or "
            "misrouted)")
    reader = Reader(bytes(data), _HEADER.size, what)  # bytes(): no-op for bytes
    message = cls.read(reader)
    reader.end()
    return message


def _name(pid: int) -> str:
    return "server" if pid == SERVER else f"participant {pid}"

