"""The offline phase: masks and shares precomputed between rounds, used at most once."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.secure import SecAggParams, SecureParticipant
from fedcollab.secure.messages import SERVER, MaskedInput, unpack
from tests.secure._helpers import (
    FAST_PARAMS,
    encoded_sum,
    make_group,
    make_vectors,
    run_secure_round,
)


@pytest.fixture
def prepare_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the participant id of every (online or offline) preparation."""
    calls: list[int] = []
    original = SecureParticipant._prepare

    def spy(self: SecureParticipant, ask):  # type: ignore[no-untyped-def]
        calls.append(self.participant_id)
        return original(self, ask)

    monkeypatch.setattr(SecureParticipant, "_prepare", spy)
    return calls


def _offline(participants: dict[int, SecureParticipant]) -> int:
    return sum(p.prepare_next_round() for p in participants.values())


@pytest.mark.parametrize("protocol", ["secagg", "secaggplus"])
def test_offline_prepared_rounds_sum_exactly_and_are_used(protocol: str,
                                                         prepare_calls: list[int]) -> None:
    params = SecAggParams(protocol=protocol, neighbours=6, **FAST_PARAMS)
    participants, server = make_group(12, params)
    codec = params.codec(12)
    for round_id in range(4):
        vectors = make_vectors(range(12), 33, seed=round_id)
        result = run_secure_round(participants, vectors, params, round_id, server=server)
        assert np.array_equal(result.integer_sum, encoded_sum(codec, vectors, range(12)))
        assert _offline(participants) == 12
    # one online preparation per participant in round 0, then only offline ones, each used
    assert len(prepare_calls) == 12 + 12 * 4
    assert all(p._ready is not None for p in participants.values())


def test_offline_preparation_is_discarded_when_the_round_changes(prepare_calls: list[int]
                                                                 ) -> None:
    params = SecAggParams(protocol="secaggplus", neighbours=6, **FAST_PARAMS)
    participants, server = make_group(12, params)
    codec = params.codec(12)
    vectors = make_vectors(range(12), 33)
    run_secure_round(participants, vectors, params, 0, server=server)
    _offline(participants)
    # a drop before masked input: its neighbours were asked to mask with it, as
    # prepared, and the server strips the dangling masks
    dropped = {5}
    neighbours = set(server.graph[5])
    del prepare_calls[:]
    result = run_secure_round(participants, vectors, params, 1, {"share_keys": dropped},
                              server=server)
    assert prepare_calls == []
    alive = sorted(set(range(12)) - dropped)
    assert np.array_equal(result.integer_sum, encoded_sum(codec, vectors, alive))
    _offline(participants)
    del prepare_calls[:]
    # round 2: it rejoins with fresh keys, and with it every member (a re-share
    # needs fresh keys), so every prepared mask is stale; sums stay exact
    result = run_secure_round(participants, vectors, params, 2, server=server)
    assert np.array_equal(result.integer_sum, encoded_sum(codec, vectors, range(12)))
    assert set(result.key_setup) == set(range(12))
    assert sorted(prepare_calls) == list(range(12))
    assert neighbours
    _offline(participants)
    del prepare_calls[:]
    # round 3 without participant 0: a new graph, new partner sets; nothing prepared
    # for the old ones may be used
    rest = {i: p for i, p in participants.items() if i != 0}
    result = run_secure_round(rest, vectors, params, 3, server=server)
    assert np.array_equal(result.integer_sum, encoded_sum(codec, vectors, sorted(rest)))
    assert sorted(prepare_calls) == sorted(rest)


def test_offline_self_mask_seed_is_fresh_and_never_reused() -> None:
    params = SecAggParams(protocol="secaggplus", neighbours=4, **FAST_PARAMS)
    participants, server = make_group(6, params)
    vectors = make_vectors(range(6), 9)
    seen: dict[int, list[bytes]] = {i: [] for i in range(6)}

    def record(stage: str, pid: int, message: bytes) -> bytes:
        if stage == "masked_input":
            msg = unpack(message, MaskedInput, round_id=round_id, sender=pid, recipient=SERVER)
            seen[pid].append(msg.vector)
        return message

    for round_id in range(3):
        run_secure_round(participants, vectors, params, round_id, server=server, intercept=record)
        _offline(participants)
        _offline(participants)  # preparing twice replaces, it does not stack
    for vectors_sent in seen.values():
        assert len(set(vectors_sent)) == len(vectors_sent)  # same input, new masks
    # a prepared mask is consumed by the masked input that uses it
    participants[0].prepare_next_round()
    assert participants[0]._ready is not None
    run_secure_round(participants, vectors, params, 3, server=server)
    assert participants[0]._ready is None


def test_offline_nothing_to_prepare_without_amortised_keys_or_before_a_round() -> None:
    params = SecAggParams(protocol="secaggplus", neighbours=4, amortise_keys=False,
                          **FAST_PARAMS)
    participants, server = make_group(6, params)
    assert not participants[0].prepare_next_round()  # no keys, no round yet
    run_secure_round(participants, make_vectors(range(6), 9), params, 0, server=server)
    assert _offline(participants) == 0  # fresh keys every round: nothing to precompute
