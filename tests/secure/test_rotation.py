"""Amortised keys: reuse, rotation after a dropout, fresh self-mask seeds, no past leak."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.secure import RoundAbortedError, SecAggParams
from fedcollab.secure import keys as K
from fedcollab.secure.errors import DecryptionError
from fedcollab.secure.messages import (
    SERVER,
    Advertise,
    Kind,
    MaskedInput,
    UnmaskResponse,
    table_aad,
    unpack,
    unpack_seed_table,
)
from fedcollab.secure.prg import accumulate_masks
from fedcollab.secure.shamir import PRIME, lagrange_at_zero
from tests.secure._helpers import encoded_sum, make_group, make_vectors, run_secure_round

N = 8


class _Capture:
    """Records every upstream message per (round, stage, pid)."""

    def __init__(self, round_id: int) -> None:
        self.round_id = round_id
        self.messages: dict[tuple[str, int], bytes] = {}

    def __call__(self, stage: str, pid: int, message: bytes) -> bytes:
        self.messages[(stage, pid)] = message
        return message


def test_rotation_amortised_second_round_needs_no_key_setup() -> None:
    params = SecAggParams(protocol="secaggplus", amortise_keys=True)
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 10)
    first = run_secure_round(participants, vectors, params, 0, server=server)
    second = run_secure_round(participants, vectors, params, 1, server=server)
    assert first.key_setup == tuple(range(N))
    assert second.key_setup == ()
    assert second.bytes_up["advertise"] == second.bytes_up["share_keys"] == 0
    assert not any(p.needs_keys(2) for p in participants.values())


@pytest.mark.parametrize("amortise", [True, False])
def test_rotation_one_key_pair_only_when_the_mask_key_is_never_revealed(amortise: bool) -> None:
    # amortised: the mask key is never Shamir-shared, so one X25519 pair serves the
    # channel and the masks; per-round mode shares the mask key, so it is separate
    params = SecAggParams(protocol="secaggplus", amortise_keys=amortise)
    participants, server = make_group(N, params)
    capture = _Capture(0)
    result = run_secure_round(participants, make_vectors(range(N), 10), params, 0,
                              server=server, intercept=capture)
    assert np.array_equal(result.integer_sum, encoded_sum(
        params.codec(N), make_vectors(range(N), 10), range(N)))
    for pid in range(N):
        advert = unpack(capture.messages[("advertise", pid)], Advertise, round_id=0,
                        sender=pid, recipient=SERVER)
        assert (advert.c_pk == advert.s_pk) is amortise


def test_rotation_dropped_participant_needs_and_gets_new_keys() -> None:
    params = SecAggParams(protocol="secaggplus", amortise_keys=True)
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 10)
    adverts = [_Capture(0), _Capture(2)]
    run_secure_round(participants, vectors, params, 0, server=server, intercept=adverts[0])
    run_secure_round(participants, vectors, params, 1, {"share_keys": {3}}, server=server)
    assert server.must_rotate() == {3}
    assert participants[3].needs_keys(2)
    result = run_secure_round(participants, vectors, params, 2, server=server,
                              intercept=adverts[1])
    # a re-share needs fresh keys (at most one live recovery sharing per round and
    # key pair), and a neighbour's new keys invalidate a package: everyone re-keys
    assert result.key_setup == tuple(range(N))
    old = unpack(adverts[0].messages[("advertise", 3)], Advertise, round_id=0, sender=3,
                 recipient=SERVER)
    new = unpack(adverts[1].messages[("advertise", 3)], Advertise, round_id=2, sender=3,
                 recipient=SERVER)
    assert old.c_pk != new.c_pk and old.s_pk != new.s_pk
    resharers = {pid for stage, pid in adverts[1].messages if stage == "share_keys"}
    assert resharers == set(range(N))  # everyone re-shares, each with fresh keys
    assert server.must_rotate() == set()
    assert np.array_equal(result.integer_sum, encoded_sum(server.codec, vectors, range(N)))


def test_rotation_survivor_that_missed_unmask_keeps_its_keys() -> None:
    params = SecAggParams(protocol="secaggplus", amortise_keys=True)
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 10)
    run_secure_round(participants, vectors, params, 0, {"masked_input": {5}}, server=server)
    assert server.must_rotate() == set()
    assert run_secure_round(participants, vectors, params, 1, server=server).key_setup == ()


def test_rotation_per_round_mode_fresh_keys_every_round() -> None:
    params = SecAggParams(protocol="secagg", amortise_keys=False)
    participants, server = make_group(5, params)
    vectors = make_vectors(range(5), 6)
    captures = [_Capture(r) for r in range(2)]
    for r in range(2):
        result = run_secure_round(participants, vectors, params, r, server=server,
                                  intercept=captures[r])
        assert result.key_setup == tuple(range(5))
    keys = [unpack(c.messages[("advertise", 0)], Advertise, round_id=c.round_id, sender=0,
                   recipient=SERVER).s_pk for c in captures]
    assert keys[0] != keys[1]


def test_rotation_absent_participant_rejoins_after_everyone_rekeys() -> None:
    """A new member set is a new graph: packages are re-shared, so every member draws
    fresh keys first (a re-share under old keys would be a second live sharing)."""
    params = SecAggParams(protocol="secaggplus", amortise_keys=True)
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 10)
    run_secure_round(participants, vectors, params, 0, server=server)
    present = {i: participants[i] for i in range(N) if i != 6}
    assert run_secure_round(present, vectors, params, 1, server=server).key_setup == \
        tuple(sorted(present))
    result = run_secure_round(participants, vectors, params, 2, server=server)
    assert result.key_setup == tuple(range(N))
    assert np.array_equal(result.integer_sum, encoded_sum(server.codec, vectors, range(N)))


@pytest.mark.parametrize("amortise", [True, False])
def test_rotation_self_mask_seed_fresh_every_round(amortise: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    real = K.self_seed_digest

    def record(seed: bytes, round_id: int, pid: int) -> bytes:
        seen[(pid, round_id)].add(seed)  # called by the participant and by the server
        return real(seed, round_id, pid)

    monkeypatch.setattr(K, "self_seed_digest", record)
    params = SecAggParams(protocol="secaggplus", amortise_keys=amortise)
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 4)
    for r in range(3):
        run_secure_round(participants, vectors, params, r, server=server)
    for pid in range(N):
        per_round = [seen[(pid, r)] for r in range(3)]
        assert all(len(s) == 1 for s in per_round)  # server reconstructed the very seed
        assert len(set().union(*per_round)) == 3  # and it differs every round


def _reveal_secret(capture: _Capture, round_id: int, owner: int, kind: Kind, t: int) -> int:
    shares = {}
    for (stage, pid), message in capture.messages.items():
        if stage == "unmask":
            msg = unpack(message, UnmaskResponse, round_id=round_id, sender=pid, recipient=SERVER)
            for s in msg.shares:  # at most one of each (owner, kind) per holder
                if s.peer == owner and s.kind == kind:
                    shares[pid] = s.y
    holders = sorted(shares)[:t]
    coeffs = lagrange_at_zero(tuple(h + 1 for h in holders))
    return sum(c * shares[h] for c, h in zip(coeffs, holders)) % PRIME


def test_rotation_dropout_reveals_only_that_rounds_seeds_not_past_updates() -> None:
    # The attack on naive amortisation (participant module docstring, point 1): the
    # server knows y_u and b_u of round 1, then learns u's recovery secret when u
    # drops in round 2. Here that secret opens only round 2's seeds: x_u stays hidden.
    params = SecAggParams(protocol="secagg", amortise_keys=True)
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 32)
    caps = [_Capture(r) for r in range(3)]
    run_secure_round(participants, vectors, params, 0, server=server, intercept=caps[0])
    run_secure_round(participants, vectors, params, 1, server=server, intercept=caps[1])
    run_secure_round(participants, vectors, params, 2, {"share_keys": {0}}, server=server,
                     intercept=caps[2])
    t = server.threshold(0)
    b1 = _reveal_secret(caps[1], 1, 0, Kind.SELF, t).to_bytes(32, "big")
    e2 = _reveal_secret(caps[2], 2, 0, Kind.RECOVERY, t).to_bytes(32, "big")
    inputs = [unpack(caps[r].messages[("masked_input", 0)], MaskedInput, round_id=r, sender=0,
                     recipient=SERVER) for r in (0, 1)]
    seeds2 = unpack_seed_table(K.open_sealed(AESGCM(e2), inputs[1].seed_table, table_aad(2, 0),
                                             what="round-2 table"))
    with pytest.raises(DecryptionError):  # the round-1 table stays sealed
        K.open_sealed(AESGCM(e2), inputs[0].seed_table, table_aad(1, 0), what="round-1 table")
    y1 = inputs[1].array(server.codec.dtype)
    guess = accumulate_masks(y1.copy(), [], [b1] + list(seeds2.values()))  # u=0 < every v
    assert not np.array_equal(guess, server.codec.encode(vectors[0]))
    # Control: had the server learnt round 1's pairwise seeds (as reconstructing a reused
    # X25519 key would give it), the same computation would expose x_u exactly.
    true1 = [participants[0]._round_seed(v, 1) for v in server.graph[0]]
    leaked = accumulate_masks(y1.copy(), [], [b1] + true1)
    assert np.array_equal(leaked, server.codec.encode(vectors[0]))


@settings(max_examples=15, deadline=None)
@given(protocol=st.sampled_from(["secagg", "secaggplus"]), amortise=st.booleans(),
       n=st.integers(3, 24), data=st.data())
def test_rotation_random_multi_round_churn_sums_exact_then_recovers(
        protocol: str, amortise: bool, n: int, data: st.DataObject) -> None:
    params = SecAggParams(protocol=protocol, amortise_keys=amortise, expected_dropout=0.0)
    participants, server = make_group(n, params, rng_seed=n)
    vectors = make_vectors(range(n), 6, seed=n)
    for round_id in range(4):
        absent = data.draw(st.sets(st.sampled_from(range(n)), max_size=n // 4))
        members = {i: participants[i] for i in range(n) if i not in absent}
        ids = sorted(members)
        early = data.draw(st.sets(st.sampled_from(ids), max_size=max(1, len(ids) // 4)))
        late = data.draw(st.sets(st.sampled_from(ids), max_size=max(1, len(ids) // 4))) - early
        try:
            result = run_secure_round(members, vectors, params, round_id,
                                      {"share_keys": early, "masked_input": late}, server=server)
        except RoundAbortedError:
            continue
        assert np.array_equal(result.integer_sum,
                              encoded_sum(server.codec, vectors, result.survivors))
    result = run_secure_round(participants, vectors, params, 4, server=server)
    assert result.survivors == tuple(range(n)) and result.rejected == {}
    assert np.array_equal(result.integer_sum, encoded_sum(server.codec, vectors, range(n)))


def test_rotation_rekey_after_a_host_restart_runs_key_setup_for_everyone() -> None:
    # a cross-silo gateway that rejoined lost its sites' session keys: the server makes
    # them (and, as with any fresh keys, the whole round's group) advertise again
    params = SecAggParams(protocol="secaggplus", amortise_keys=True)
    participants, server = make_group(N, params)
    vectors = make_vectors(range(N), 10)
    run_secure_round(participants, vectors, params, 0, server=server)

    server.rekey([2, 3, 99])  # 99: not in the group, ignored
    marked = server.must_rotate()
    after = run_secure_round(participants, vectors, params, 1, server=server)

    assert marked == frozenset({2, 3}) and server.must_rotate() == frozenset()
    assert after.key_setup == tuple(range(N))
    assert np.array_equal(after.integer_sum, encoded_sum(server.codec, vectors, range(N)))
