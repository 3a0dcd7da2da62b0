"""Bad input is rejected with a reason; the round completes with the others' exact sum."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from fedcollab.secure import (
    InconsistentSharesError,
    MalformedMessageError,
    ProtocolError,
    SecAggParams,
    StaleMessageError,
    UnknownParticipantError,
)
from fedcollab.secure.messages import (
    SERVER,
    Kind,
    MaskedInput,
    MaskRequest,
    RevealedShare,
    Sealed,
    UnmaskResponse,
    pack,
    unpack,
)
from fedcollab.secure.shamir import PRIME
from tests.secure._helpers import (
    encoded_sum,
    make_group,
    make_vectors,
    run_secure_round,
    through_consistency,
)

N = 8
Tamper = Callable[[bytes], bytes]


def _round_with(tamper: dict[tuple[str, int], Tamper], *, protocol: str = "secagg",
                drop: dict | None = None, warm: bool = False):
    params = SecAggParams(protocol=protocol)
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 12, seed=9)
    round_id = 0
    if warm:
        run_secure_round(participants, vectors, params, 0, server=server)
        round_id = 1

    def intercept(stage: str, pid: int, message: bytes) -> bytes:
        fn = tamper.get((stage, pid))
        return fn(message) if fn else message

    result = run_secure_round(participants, vectors, params, round_id, drop, server=server,
                              intercept=intercept)
    return result, server, vectors


def _masked(round_id: int, pid: int, edit: Callable[[MaskedInput], MaskedInput]) -> Tamper:
    def tamper(message: bytes) -> bytes:
        msg = unpack(message, MaskedInput, round_id=round_id, sender=pid, recipient=SERVER)
        return pack(edit(msg), round_id=round_id, sender=pid, recipient=SERVER)
    return tamper


def _assert_exact(result, server, vectors) -> None:
    assert np.array_equal(result.integer_sum,
                          encoded_sum(server.codec, vectors, result.survivors))


@pytest.mark.parametrize("stage", ["advertise", "share_keys", "masked_input"])
def test_bad_input_malformed_bytes_rejected_sender_dropped(stage: str) -> None:
    result, server, vectors = _round_with({(stage, 2): lambda m: b"\x00garbage"})
    assert "MalformedMessageError" in result.rejected[2]
    assert 2 not in result.survivors
    _assert_exact(result, server, vectors)


def test_bad_input_malformed_unmask_response_input_still_counts() -> None:
    result, server, vectors = _round_with({("unmask", 2): lambda m: m[:-3]})
    assert "MalformedMessageError" in result.rejected[2]
    assert 2 in result.survivors and result.unresponsive == (2,)
    _assert_exact(result, server, vectors)


def test_bad_input_replayed_previous_round_message_rejected() -> None:
    params = SecAggParams(protocol="secaggplus")
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 12, seed=9)
    old: dict[int, bytes] = {}

    def keep(stage: str, pid: int, message: bytes) -> bytes:
        if stage == "masked_input":
            old[pid] = message
        return message

    run_secure_round(participants, vectors, params, 0, server=server, intercept=keep)
    result = run_secure_round(
        participants, vectors, params, 1, server=server,
        intercept=lambda s, p, m: old[p] if (s, p) == ("masked_input", 4) else m)
    assert "StaleMessageError" in result.rejected[4] and "round 0" in result.rejected[4]
    assert result.dropped == (4,)
    _assert_exact(result, server, vectors)


def test_bad_input_message_from_other_stage_rejected() -> None:
    stash: dict[str, bytes] = {}

    def swap(stage: str) -> Tamper:
        def tamper(message: bytes) -> bytes:
            stash.setdefault(stage, message)
            return stash["advertise"] if stage == "masked_input" else message
        return tamper

    result, server, vectors = _round_with({("advertise", 1): swap("advertise"),
                                           ("masked_input", 1): swap("masked_input")})
    assert "StaleMessageError" in result.rejected[1]
    _assert_exact(result, server, vectors)


def test_bad_input_message_of_another_sender_rejected() -> None:
    stash: dict[int, bytes] = {}

    def keep(message: bytes) -> bytes:
        stash[0] = message
        return message

    result, server, vectors = _round_with({("masked_input", 0): keep,
                                           ("masked_input", 1): lambda m: stash[0]})
    assert "StaleMessageError" in result.rejected[1]
    assert "sender participant 0" in result.rejected[1]
    assert 0 in result.survivors and 1 in result.dropped
    _assert_exact(result, server, vectors)


def test_bad_input_wrong_length_masked_vector_rejected() -> None:
    shorten = _masked(0, 3, lambda m: MaskedInput(m.ring_bits, m.vector[:-4], m.digest,
                                                   m.seed_table, m.shares))
    result, server, vectors = _round_with({("masked_input", 3): shorten})
    assert "44 bytes" in result.rejected[3] and "expected 48" in result.rejected[3]
    assert result.dropped == (3,)
    _assert_exact(result, server, vectors)


def test_bad_input_share_for_unknown_participant_rejected() -> None:
    def forge(message: bytes) -> bytes:
        msg = unpack(message, UnmaskResponse, round_id=0, sender=5, recipient=SERVER)
        extra = RevealedShare(77, Kind.SELF, 1)
        return pack(UnmaskResponse(msg.shares + (extra,)), round_id=0, sender=5, recipient=SERVER)

    result, server, vectors = _round_with({("unmask", 5): forge})
    assert "UnknownParticipantError" in result.rejected[5]
    assert "participant 77" in result.rejected[5]
    assert result.unresponsive == (5,)
    _assert_exact(result, server, vectors)


def test_bad_input_two_shares_of_one_peer_rejected_and_none_kept() -> None:
    """A response naming one peer twice is rejected whole: none of its shares count
    (the round still unmasks from the other holders)."""
    def forge(message: bytes) -> bytes:
        msg = unpack(message, UnmaskResponse, round_id=0, sender=5, recipient=SERVER)
        return pack(UnmaskResponse(msg.shares + msg.shares[:1]), round_id=0, sender=5,
                    recipient=SERVER)

    result, server, vectors = _round_with({("unmask", 5): forge})
    assert "two shares of one peer" in result.rejected[5]
    assert result.unresponsive == (5,)
    _assert_exact(result, server, vectors)


def test_bad_input_share_addressed_outside_neighbourhood_rejected() -> None:
    stray = _masked(0, 6, lambda m: MaskedInput(m.ring_bits, m.vector, m.digest, m.seed_table,
                                                m.shares + (Sealed(99, b"x" * 40),)))
    result, server, vectors = _round_with({("masked_input", 6): stray})
    assert "UnknownParticipantError" in result.rejected[6]
    _assert_exact(result, server, vectors)


def test_bad_input_sender_not_in_round_rejected_round_completes() -> None:
    params = SecAggParams(protocol="secagg")
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 5)
    members = [0, 1, 2, 3, 4]
    need = server.begin_round(0, members, dim=5)
    rosters = server.receive_advertisements({p: participants[p].advertise_keys(0) for p in need})
    inbox = server.receive_key_shares(
        {p: participants[p].share_keys(0, rosters[p]) for p in rosters})
    sent = {p: participants[p].masked_input(0, vectors[p], inbox[p]) for p in inbox}
    sent[6] = sent[0]  # a participant of the group, but not of this round
    requests = through_consistency(server, participants, 0, server.receive_masked_inputs(sent))
    result = server.receive_unmask_responses(
        {p: participants[p].unmask(0, requests[p]) for p in requests})
    assert "not in round 0" in result.rejected[6]
    assert result.survivors == tuple(members)
    _assert_exact(result, server, vectors)


def test_bad_input_tampered_sealed_share_skipped_by_holder() -> None:
    def flip(m: MaskedInput) -> MaskedInput:
        first = m.shares[0]
        blob = first.blob[:-1] + bytes([first.blob[-1] ^ 1])
        return MaskedInput(m.ring_bits, m.vector, m.digest, m.seed_table,
                           (Sealed(first.peer, blob),) + m.shares[1:])

    result, server, vectors = _round_with({("masked_input", 0): _masked(0, 0, flip)})
    assert result.rejected == {} and 0 in result.survivors
    _assert_exact(result, server, vectors)


def test_bad_input_lying_share_tolerated_when_extra_shares_exist() -> None:
    def lie(message: bytes) -> bytes:
        msg = unpack(message, UnmaskResponse, round_id=0, sender=1, recipient=SERVER)
        bad = tuple(RevealedShare(s.peer, s.kind, (s.y + 1) % PRIME) for s in msg.shares)
        return pack(UnmaskResponse(bad), round_id=0, sender=1, recipient=SERVER)

    result, server, vectors = _round_with({("unmask", 1): lie})
    _assert_exact(result, server, vectors)


def test_bad_input_lying_share_without_spare_shares_aborts() -> None:
    def lie(message: bytes) -> bytes:
        msg = unpack(message, UnmaskResponse, round_id=0, sender=1, recipient=SERVER)
        bad = tuple(RevealedShare(s.peer, s.kind, (s.y + 1) % PRIME) for s in msg.shares)
        return pack(UnmaskResponse(bad), round_id=0, sender=1, recipient=SERVER)

    # secagg with N=8: t = ceil(0.67 * 7) = 5; two late dropouts leave exactly 5 holders
    # for most secrets, one of which lies.
    with pytest.raises(InconsistentSharesError, match="tampered"):
        _round_with({("unmask", 1): lie}, drop={"masked_input": {6, 7}})


def test_bad_input_participant_rejects_tampered_server_message() -> None:
    params = SecAggParams(protocol="secagg")
    participants, server = make_group(4, params)
    need = server.begin_round(0, participants, dim=2)
    rosters = server.receive_advertisements({p: participants[p].advertise_keys(0) for p in need})
    inbox = server.receive_key_shares(
        {p: participants[p].share_keys(0, rosters[p]) for p in rosters})
    with pytest.raises(MalformedMessageError):
        participants[0].masked_input(0, np.zeros(2), inbox[0][:-2])
    with pytest.raises(StaleMessageError):
        participants[0].masked_input(0, np.zeros(2), inbox[1])


def test_bad_input_participant_rejects_unknown_partner() -> None:
    params = SecAggParams(protocol="secagg")
    participants, server = make_group(4, params)
    need = server.begin_round(0, participants, dim=2)
    rosters = server.receive_advertisements({p: participants[p].advertise_keys(0) for p in need})
    inbox = server.receive_key_shares(
        {p: participants[p].share_keys(0, rosters[p]) for p in rosters})
    msg = unpack(inbox[0], MaskRequest, round_id=0, sender=SERVER, recipient=0)
    forged = MaskRequest(msg.group_size, msg.dim, msg.threshold, msg.members,
                         msg.partners + (42,),
                         msg.key_updates, msg.deliveries)
    with pytest.raises(UnknownParticipantError):
        participants[0].masked_input(0, np.zeros(2), pack(forged, round_id=0, sender=SERVER,
                                                          recipient=0))


def test_bad_input_participant_refusal_recorded_by_driver() -> None:
    params = SecAggParams(protocol="secagg")
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 12)
    vectors[3] = np.full(12, np.nan)
    result = run_secure_round(participants, vectors, params, 0, server=server)
    assert "non-finite" in result.rejected[3] and result.dropped == (3,)
    _assert_exact(result, server, vectors)


def test_bad_input_stages_out_of_order_raise() -> None:
    params = SecAggParams(protocol="secagg")
    participants, server = make_group(4, params)
    with pytest.raises(ProtocolError, match="begin_round"):
        server.receive_masked_inputs({})
    server.begin_round(5, participants, dim=2)
    with pytest.raises(ProtocolError, match="expected stage 'advertise'"):
        server.receive_masked_inputs({})


def test_bad_input_non_increasing_round_id_raises() -> None:
    params = SecAggParams(protocol="secagg")
    participants, server = make_group(4, params)
    server.begin_round(5, participants, dim=2)
    with pytest.raises(ProtocolError, match="round ids must increase"):
        server.begin_round(5, participants, dim=2)


def test_bad_input_unknown_round_member_raises() -> None:
    params = SecAggParams(protocol="secagg")
    participants, server = make_group(4, params)
    with pytest.raises(UnknownParticipantError, match="participant 9"):
        server.begin_round(0, [0, 1, 2, 9], dim=2)
