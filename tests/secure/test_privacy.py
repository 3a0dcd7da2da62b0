"""What the server sees: uniform masked vectors, and honest refusal of double reveals."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.secure import SecAggParams, ShareRevealRefusedError
from fedcollab.secure.messages import (
    SERVER,
    Kind,
    MaskedInput,
    Reveal,
    UnmaskRequest,
    pack,
    unpack,
)
from tests.secure._helpers import (
    CHI2_255_P1E6,
    chi_square_two_samples,
    chi_square_uniform_bytes,
    make_group,
    run_secure_round,
    through_consistency,
)

DIM = 4000


def _masked_view(vector_value: float, protocol: str, round_id: int = 0) -> bytes:
    """The masked vector bytes the server receives from participant 0."""
    params = SecAggParams(protocol=protocol)
    participants, server = make_group(6, params)
    vectors = {i: np.full(DIM, vector_value) for i in range(6)}
    seen: dict[int, bytes] = {}

    def spy(stage: str, pid: int, message: bytes) -> bytes:
        if stage == "masked_input" and pid == 0:
            msg = unpack(message, MaskedInput, round_id=round_id, sender=0, recipient=SERVER)
            seen[pid] = msg.vector
        return message

    run_secure_round(participants, vectors, params, round_id, server=server, intercept=spy)
    return seen[0]


@pytest.mark.parametrize("protocol", ["secagg", "secaggplus"])
def test_privacy_masked_vector_bytes_pass_chi_square_uniformity(protocol: str) -> None:
    view = _masked_view(0.0, protocol)  # the most regular input possible
    assert chi_square_uniform_bytes(view) < CHI2_255_P1E6


def test_privacy_chi_square_test_detects_unmasked_encoding() -> None:
    # Control: the same statistic flags a plain encoding, so the test above has power.
    params = SecAggParams()
    plain = params.codec(6).encode(np.linspace(-1, 1, DIM)).tobytes()
    assert chi_square_uniform_bytes(plain) > CHI2_255_P1E6


def test_privacy_different_inputs_give_identically_distributed_views() -> None:
    low, high = _masked_view(-4.0, "secaggplus"), _masked_view(4.0, "secaggplus")
    assert chi_square_uniform_bytes(low) < CHI2_255_P1E6
    assert chi_square_uniform_bytes(high) < CHI2_255_P1E6
    assert chi_square_two_samples(low, high) < CHI2_255_P1E6


def _stage_to_unmask(params: SecAggParams) -> tuple[dict, dict[int, bytes]]:
    """Drive a round to the unmask stage; return participants and unmask requests."""
    participants, server = make_group(5, params)
    need = server.begin_round(0, participants, dim=3)
    rosters = server.receive_advertisements({p: participants[p].advertise_keys(0) for p in need})
    inbox = server.receive_key_shares(
        {p: participants[p].share_keys(0, rosters[p]) for p in rosters})
    vectors = {p: np.zeros(3) for p in participants}
    requests = server.receive_masked_inputs(
        {p: participants[p].masked_input(0, vectors[p], inbox[p]) for p in inbox})
    return participants, through_consistency(server, participants, 0, requests)


def _self_reveal(request: bytes, holder: int) -> Reveal:
    msg = unpack(request, UnmaskRequest, round_id=0, sender=SERVER, recipient=holder)
    return msg.reveals[0]


def _signatures(request: bytes, holder: int) -> tuple:
    return unpack(request, UnmaskRequest, round_id=0, sender=SERVER,
                  recipient=holder).signatures


def test_privacy_participant_refuses_both_kinds_in_one_request() -> None:
    participants, requests = _stage_to_unmask(SecAggParams(protocol="secagg"))
    first = _self_reveal(requests[1], 1)
    greedy = UnmaskRequest((first, Reveal(first.peer, Kind.RECOVERY, b"")),
                           _signatures(requests[1], 1))
    with pytest.raises(ShareRevealRefusedError, match="reveals only one"):
        participants[1].unmask(0, pack(greedy, round_id=0, sender=SERVER, recipient=1))


def test_privacy_participant_refuses_other_kind_in_later_request() -> None:
    participants, requests = _stage_to_unmask(SecAggParams(protocol="secagg"))
    first = _self_reveal(requests[1], 1)
    participants[1].unmask(0, requests[1])
    later = UnmaskRequest((Reveal(first.peer, Kind.RECOVERY, b""),), _signatures(requests[1], 1))
    with pytest.raises(ShareRevealRefusedError, match=f"participant {first.peer}"):
        participants[1].unmask(0, pack(later, round_id=0, sender=SERVER, recipient=1))


def test_privacy_refusal_message_contains_no_share_bytes() -> None:
    participants, requests = _stage_to_unmask(SecAggParams(protocol="secagg"))
    first = _self_reveal(requests[2], 2)
    greedy = UnmaskRequest((first, Reveal(first.peer, Kind.RECOVERY, b"")),
                           _signatures(requests[2], 2))
    with pytest.raises(ShareRevealRefusedError) as info:
        participants[2].unmask(0, pack(greedy, round_id=0, sender=SERVER, recipient=2))
    assert first.blob.hex()[:16] not in str(info.value)
