"""Wire format: round trips, header binding (replays), malformed bytes never crash."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.secure.errors import MalformedMessageError, StaleMessageError
from fedcollab.secure.messages import (
    SERVER,
    Advertise,
    KeyShares,
    Kind,
    MaskedInput,
    MaskRequest,
    PeerKeys,
    Reveal,
    RevealedShare,
    Roster,
    Sealed,
    ShareEntry,
    UnmaskRequest,
    UnmaskResponse,
    pack,
    pack_seed_table,
    pack_share_payload,
    unpack,
    unpack_seed_table,
    unpack_share_payload,
)

KEYS = PeerKeys(7, b"c" * 32, b"s" * 32)
EXAMPLES = [
    Advertise(b"c" * 32, b"s" * 32),
    Roster(3, 10, (1, 7, 8), (KEYS, PeerKeys(8, b"d" * 32, b"t" * 32))),
    KeyShares(b"table", (Sealed(7, b"blob7"), Sealed(8, b""))),
    MaskRequest(10, 5, 3, (1, 7, 8, 9), (7, 8, 9), (KEYS,), (Sealed(9, b"x" * 40),)),
    MaskedInput(32, b"v" * 20, b"d" * 32, b"", (Sealed(7, b"b"),)),
    UnmaskRequest((Reveal(7, Kind.SELF, b"ct"), Reveal(8, Kind.RECOVERY, b""))),
    UnmaskResponse((RevealedShare(7, Kind.SELF, 12345), RevealedShare(8, Kind.RECOVERY, 0))),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message: object) -> None:
    data = pack(message, round_id=4, sender=1, recipient=SERVER)  # type: ignore[arg-type]
    assert unpack(data, type(message), round_id=4, sender=1, recipient=SERVER) == message


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_messages_truncated_bytes_raise_malformed(message: object) -> None:
    data = pack(message, round_id=4, sender=1, recipient=SERVER)  # type: ignore[arg-type]
    with pytest.raises(MalformedMessageError):
        unpack(data[:-1], type(message), round_id=4, sender=1, recipient=SERVER)


def test_messages_trailing_bytes_raise_malformed() -> None:
    data = pack(EXAMPLES[0], round_id=4, sender=1, recipient=SERVER)  # type: ignore[arg-type]
    with pytest.raises(MalformedMessageError, match="trailing"):
        unpack(data + b"x", Advertise, round_id=4, sender=1, recipient=SERVER)


@pytest.mark.parametrize("field, value", [
    ("round_id", 3), ("sender", 2), ("recipient", 5)])
def test_messages_other_context_raises_stale(field: str, value: int) -> None:
    context = {"round_id": 4, "sender": 1, "recipient": SERVER}
    data = pack(EXAMPLES[0], **context)  # type: ignore[arg-type]
    context[field] = value
    with pytest.raises(StaleMessageError, match="replayed or misrouted"):
        unpack(data, Advertise, **context)


def test_messages_other_stage_raises_stale() -> None:
    data = pack(EXAMPLES[0], round_id=4, sender=1, recipient=SERVER)  # type: ignore[arg-type]
    with pytest.raises(StaleMessageError):
        unpack(data, MaskedInput, round_id=4, sender=1, recipient=SERVER)


def test_messages_bad_magic_raises_malformed() -> None:
    data = b"XXXX" + pack(EXAMPLES[0], round_id=4, sender=1, recipient=SERVER)[4:]  # type: ignore[arg-type]
    with pytest.raises(MalformedMessageError, match="not a fedcollab"):
        unpack(data, Advertise, round_id=4, sender=1, recipient=SERVER)


def test_messages_non_bytes_raise_malformed() -> None:
    with pytest.raises(MalformedMessageError, match="expected bytes"):
        unpack("text", Advertise, round_id=4, sender=1, recipient=SERVER)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(0, 300))
def test_messages_random_bytes_only_raise_protocol_errors(data: bytes, cut: int) -> None:
    valid = pack(EXAMPLES[3], round_id=4, sender=SERVER, recipient=1)  # type: ignore[arg-type]
    for candidate in (data, valid[:22] + data, valid[:cut] + data[:5] + valid[cut + 5:]):
        try:
            unpack(candidate, MaskRequest, round_id=4, sender=SERVER, recipient=1)
        except (MalformedMessageError, StaleMessageError):
            pass


def test_share_payload_round_trip_and_unknown_kind() -> None:
    entries = (ShareEntry(Kind.SELF, 3, 99), ShareEntry(Kind.RECOVERY, 4, 7))
    data = pack_share_payload(entries)
    assert unpack_share_payload(data) == entries
    bad = data[:1] + b"\x09" + data[2:]
    with pytest.raises(MalformedMessageError, match="unknown share kind"):
        unpack_share_payload(bad)


def test_share_value_outside_field_rejected() -> None:
    data = pack_share_payload((ShareEntry(Kind.SELF, 3, 0),))
    with pytest.raises(MalformedMessageError, match="field element"):
        unpack_share_payload(data[:10] + b"\xff" * 66)


def test_unmask_response_bad_kind_or_value_rejected() -> None:
    data = pack(UnmaskResponse((RevealedShare(3, Kind.SELF, 5),)), round_id=2, sender=1,
                recipient=SERVER)
    head = len(data) - 66 - 1  # the share's kind byte, then its 66-byte value
    with pytest.raises(MalformedMessageError, match="unknown share kind 9"):
        unpack(data[:head] + b"\x09" + data[head + 1:], UnmaskResponse, round_id=2, sender=1,
               recipient=SERVER)
    with pytest.raises(MalformedMessageError, match="not a field element"):
        unpack(data[:head + 1] + b"\xff" * 66, UnmaskResponse, round_id=2, sender=1,
               recipient=SERVER)


def test_seed_table_round_trip() -> None:
    seeds = {9: b"a" * 32, 2: b"b" * 32}
    assert unpack_seed_table(pack_seed_table(seeds)) == seeds


def test_messages_repr_hides_secrets() -> None:
    share = RevealedShare(7, Kind.SELF, 987654321987654321)
    assert "987654321987654321" not in repr(share)
