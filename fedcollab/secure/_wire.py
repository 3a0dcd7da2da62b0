"""Low-level wire pieces: bounds-checked reader, small records, share/seed payloads.

Records that occur thousands of times per round (one per share or per neighbour)
are ``NamedTuple`` rather than frozen dataclasses: equally immutable and typed,
several times cheaper to build, which matters on the server's hot path. Their
``repr`` hides secret-bearing fields.
"""
from __future__ import annotations

import struct
from enum import IntEnum
from typing import Callable, Iterable, NamedTuple, Sequence

from fedcollab.secure.errors import MalformedMessageError
from fedcollab.secure.shamir import PRIME, SHARE_BYTES

__all__ = [
    "Stage", "Kind", "PeerKeys", "Sealed", "Reveal", "RevealedShare", "ShareEntry", "Reader",
    "pack_blob", "pack_keys", "read_keys", "pack_sealed", "read_sealed", "pack_ids",
    "read_ids", "pack_reveals", "read_reveals", "pack_revealed", "read_revealed", "aad_context",
    "share_aad", "share_aad_prefix", "share_aad_for_recipient", "table_aad",
    "pack_share_payload", "share_payloads",
    "unpack_share_payload", "pack_seed_table", "unpack_seed_table",
]

KEY_BYTES = 32
MAX_COUNT = 1 << 20
_U8, _U32, _U64 = struct.Struct(">B"), struct.Struct(">I"), struct.Struct(">Q")
_STRUCTS = {">B": _U8, ">I": _U32, ">Q": _U64}
_PEER = struct.Struct(f">I{KEY_BYTES}s{KEY_BYTES}sQI")  # pid, keys, since, sig length
_ITEM = struct.Struct(">II")  # peer, blob length
_REVEAL = struct.Struct(">IBI")  # peer, kind, blob length
_REVEALED = struct.Struct(f">IB{SHARE_BYTES}s")
_ENTRY = struct.Struct(f">BQ{SHARE_BYTES}s")
_ENTRY_HEAD = struct.Struct(">BQ")
_SEED = struct.Struct(">I32s")
_AAD = struct.Struct(">BQI")  # stage, round, sender (then job, model, recipient)
_U16 = struct.Struct(">H")


class Stage(IntEnum):
    """Message stages, in protocol order."""

    ADVERTISE = 1
    ROSTER = 2
    SHARE_KEYS = 3
    MASK_REQUEST = 4
    MASKED_INPUT = 5
    UNMASK_REQUEST = 6
    UNMASK_RESPONSE = 7
    CONSISTENCY = 8  # malicious-server mode: the survivor set, to be signed
    CONFIRMATIONS = 9  # each survivor's MACs of that set, one per partner


class Kind(IntEnum):
    """Which secret a share belongs to."""

    SELF = 1  # the round's self-mask seed b_u (revealed when u's input arrived)
    RECOVERY = 2  # what unlocks u's pairwise masks this round (revealed when u dropped)


_KINDS = {int(k): k for k in Kind}


class PeerKeys(NamedTuple):
    """A participant's two public keys, the round it advertised them in and, in
    malicious-server mode, its Ed25519 signature over all that (empty otherwise)."""

    pid: int
    c_pk: bytes
    s_pk: bytes
    since: int = 0
    sig: bytes = b""


class Sealed(NamedTuple):
    """An AES-GCM blob addressed to (or received from) ``peer``."""

    peer: int
    blob: bytes

    def __repr__(self) -> str:
        return f"Sealed(peer={self.peer}, {len(self.blob)} bytes)"


class Reveal(NamedTuple):
    """One share the server asks for: the sealed bundle for SELF, empty for RECOVERY."""

    peer: int
    kind: Kind
    blob: bytes

    def __repr__(self) -> str:
        return f"Reveal(peer={self.peer}, kind={self.kind.name}, {len(self.blob)} bytes)"


class RevealedShare(NamedTuple):
    """A share revealed to the server: ``y`` at the revealer's x coordinate."""

    peer: int
    kind: Kind
    y: int

    def __repr__(self) -> str:
        return f"RevealedShare(peer={self.peer}, kind={self.kind.name})"


class ShareEntry(NamedTuple):
    """One share inside a sealed payload: its kind and the round it is for."""

    kind: Kind
    for_round: int
    y: int

    def __repr__(self) -> str:
        return f"ShareEntry(kind={self.kind.name}, for_round={self.for_round})"


class Reader:
    """Bounds-checked sequential reads; every failure is a MalformedMessageError."""

    def __init__(self, data: bytes, offset: int, what: str) -> None:
        self._data = data
        self._pos = offset
        self.what = what

    def _short(self, n: int) -> MalformedMessageError:
        return MalformedMessageError(
            f"{self.what}: truncated at byte {self._pos} (needs {n} more of {len(self._data)})")

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise self._short(n)
        out = self._data[self._pos:end]
        self._pos = end
        return out

    def num(self, fmt: str) -> int:
        st = _STRUCTS[fmt]
        if self._pos + st.size > len(self._data):
            raise self._short(st.size)
        (value,) = st.unpack_from(self._data, self._pos)
        self._pos += st.size
        return int(value)

    def count(self) -> int:
        n = self.num(">I")
        if n > MAX_COUNT:
            raise MalformedMessageError(f"{self.what}: implausible count {n}")
        return n

    def blob(self) -> bytes:
        return self.take(self.num(">I"))

    def fixed(self, st: struct.Struct, n: int) -> list[tuple]:
        """``n`` records of fixed layout ``st``."""
        return list(st.iter_unpack(self.take(st.size * n))) if n else []

    def records(self, st: struct.Struct) -> list[tuple]:
        """A count, then that many records of layout ``st`` whose last field is a length
        followed by that many bytes, parsed in one tight loop.

        The hot path of the server and of every holder (one record per neighbour).
        """
        n = self.count()
        data, pos, limit = self._data, self._pos, len(self._data)
        unpack, size = st.unpack_from, st.size
        out = []
        for _ in range(n):
            if pos + size > limit:
                self._pos = pos
                raise self._short(size)
            fields = unpack(data, pos)
            pos += size
            end = pos + fields[-1]
            if end > limit:
                self._pos = pos
                raise self._short(fields[-1])
            out.append(fields[:-1] + (data[pos:end],))
            pos = end
        self._pos = pos
        return out

    def end(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessageError(
                f"{self.what}: {len(self._data) - self._pos} trailing bytes after the body")


def kind_of(value: int, what: str) -> Kind:
    kind = _KINDS.get(value)
    if kind is None:
        raise MalformedMessageError(f"{what}: unknown share kind {value}")
    return kind


def _bad_share(what: str, kind: int) -> MalformedMessageError:
    """The error for a share that failed the inlined checks of :func:`read_revealed`
    and :func:`unpack_share_payload`: an unknown kind (:func:`kind_of`'s message), else
    a value that is not a field element."""
    if kind not in _KINDS:
        return MalformedMessageError(f"{what}: unknown share kind {kind}")
    return MalformedMessageError(f"{what}: share value is not a field element")


def pack_blob(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def pack_keys(keys: Sequence[PeerKeys]) -> bytes:
    return _U32.pack(len(keys)) + b"".join(
        _PEER.pack(k.pid, k.c_pk, k.s_pk, k.since, len(k.sig)) + k.sig for k in keys)


def read_keys(r: Reader) -> tuple[PeerKeys, ...]:
    return tuple(PeerKeys(*f) for f in r.records(_PEER))


def pack_sealed(items: Sequence[Sealed]) -> bytes:
    return _U32.pack(len(items)) + b"".join(_ITEM.pack(s.peer, len(s.blob)) + s.blob
                                            for s in items)


def read_sealed(r: Reader) -> tuple[Sealed, ...]:
    return tuple(Sealed(peer, blob) for peer, blob in r.records(_ITEM))


def pack_ids(ids: Sequence[int]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *ids)


def read_ids(r: Reader) -> tuple[int, ...]:
    n = r.count()
    return tuple(struct.unpack(f">{n}I", r.take(4 * n)))


def pack_reveals(items: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Pack ``(peer, kind, blob)`` items (:class:`Reveal` or plain tuples)."""
    pack = _REVEAL.pack
    return _U32.pack(len(items)) + b"".join(
        [pack(peer, kind, len(blob)) + blob for peer, kind, blob in items])


def read_reveals(r: Reader) -> tuple[Reveal, ...]:
    return tuple(Reveal(peer, kind_of(k, r.what), blob) for peer, k, blob in r.records(_REVEAL))


def pack_revealed(items: Sequence[RevealedShare]) -> bytes:
    pack = _REVEALED.pack
    return _U32.pack(len(items)) + b"".join(
        [pack(peer, kind, y.to_bytes(SHARE_BYTES, "big")) for peer, kind, y in items])


def read_revealed(r: Reader) -> tuple[RevealedShare, ...]:
    # the server reads one per share per round (1,600 at N=100): kind_of's check
    # and the field-element check, inlined
    out = []
    for peer, k, raw in r.fixed(_REVEALED, r.count()):
        kind, y = _KINDS.get(k), int.from_bytes(raw, "big")
        if kind is None or y >= PRIME:
            raise _bad_share(r.what, k)
        out.append(RevealedShare(peer, kind, y))
    return tuple(out)


def aad_context(job_id: bytes = b"", model: bytes = b"") -> bytes:
    """The job and the round's model as a share's associated data binds them: the
    job id of the pinned group setup and the hash of the global model the round
    trains from (:func:`fedcollab.secure.model.model_sha256`), each length-prefixed.
    Empty fields are allowed (a group pinned without a job id; a key-setup stage)."""
    return _U16.pack(len(job_id)) + job_id + _U16.pack(len(model)) + model


_SHARE_AAD = b"FCSA-share"  # a share bundle's associated data begins with it


def share_aad(stage: Stage, round_id: int, sender: int, recipient: int, *,
              job_id: bytes = b"", model: bytes = b"") -> bytes:
    """Associated data binding a sealed share bundle to its context: stage, round,
    sender, job id, the round's model hash and recipient (the bytes of
    :func:`share_aad_prefix` then ``>I`` recipient). Whoever opens it computes it
    from its own knowledge; any field that differs fails the AES-GCM tag."""
    return share_aad_prefix(stage, round_id, sender, job_id=job_id,
                            model=model) + _U32.pack(recipient)


def share_aad_prefix(stage: Stage, round_id: int, sender: int, *, job_id: bytes = b"",
                     model: bytes = b"") -> bytes:
    """:func:`share_aad` without the recipient (append ``>I`` recipient to complete it)."""
    return _SHARE_AAD + _AAD.pack(stage, round_id, sender) + aad_context(job_id, model)


def share_aad_for_recipient(stage: Stage, round_id: int, recipient: int, *,
                            job_id: bytes = b"", model: bytes = b"") -> Callable[[int], bytes]:
    """``sender -> share_aad(stage, round_id, sender, recipient, ...)``: the fields every
    sender shares are packed once (a holder opens one bundle per partner a round)."""
    tail = aad_context(job_id, model) + _U32.pack(recipient)
    pack = _AAD.pack

    def aad(sender: int) -> bytes:
        return _SHARE_AAD + pack(stage, round_id, sender) + tail

    return aad


def table_aad(for_round: int, owner: int) -> bytes:
    """Associated data binding a seed table to its owner and round.

    No job id or model hash: only the server ever opens a seed table (with the
    recovery key its holders reveal when the owner dropped), and the server knows
    both; the key is fresh per table, so a table of another job or round cannot open
    under this one's key either (docs/threat-model.md, "What the AAD binds")."""
    return b"FCSA-table" + struct.pack(">QI", for_round, owner)


def _payload(count: bytes, heads: Sequence[bytes], ys: Iterable[int]) -> bytes:
    return count + b"".join(h + y.to_bytes(SHARE_BYTES, "big") for h, y in zip(heads, ys))


def pack_share_payload(entries: Sequence[ShareEntry]) -> bytes:
    """Plaintext of a sealed share bundle."""
    return _payload(_U8.pack(len(entries)),
                    [_ENTRY_HEAD.pack(e.kind, e.for_round) for e in entries],
                    [e.y for e in entries])


def share_payloads(entries: Sequence[tuple[Kind, int]], columns: Sequence[Sequence[int]]
                   ) -> list[bytes]:
    """One :func:`pack_share_payload` per holder, built column-wise (the hot path).

    ``entries[j]`` is the (kind, for_round) of secret ``j``; ``columns[j][i]`` is
    holder ``i``'s share of it.
    """
    count = _U8.pack(len(entries))
    heads = [_ENTRY_HEAD.pack(kind, for_round) for kind, for_round in entries]
    return [_payload(count, heads, ys) for ys in zip(*columns)]


def unpack_share_payload(data: bytes) -> tuple[ShareEntry, ...]:
    """Parse a decrypted share bundle."""
    if not data or len(data) != 1 + data[0] * _ENTRY.size:
        raise MalformedMessageError(f"share payload: {len(data)} bytes do not hold "
                                    f"{data[0] if data else 0} share entries")
    # every holder opens one per neighbour per round: kind_of's check and the
    # field-element check, inlined
    out = []
    for k, rnd, raw in _ENTRY.iter_unpack(memoryview(data)[1:]):
        kind, y = _KINDS.get(k), int.from_bytes(raw, "big")
        if kind is None or y >= PRIME:
            raise _bad_share("share payload", k)
        out.append(ShareEntry(kind, rnd, y))
    return tuple(out)


def pack_seed_table(seeds: dict[int, bytes]) -> bytes:
    """Plaintext of a seed table: ``(peer, 32-byte seed)`` pairs, sorted by peer."""
    return _U32.pack(len(seeds)) + b"".join(_SEED.pack(p, seeds[p]) for p in sorted(seeds))


def unpack_seed_table(data: bytes) -> dict[int, bytes]:
    """Parse a decrypted seed table."""
    r = Reader(data, 0, "seed table")
    out = dict(r.fixed(_SEED, r.count()))
    r.end()
    return out
