"""Issue 27's findings, each replayed by a scripted server against the real participant
code: participants derive the group, their partners, the threshold and the ring, and
refuse a request that names anything else.

Each test drives the honest :class:`SecureServer` up to the stage the attack changes,
then forges that stage's message from what a server holds and sends it to unmodified
:class:`SecureParticipant` objects. Before the fix each of these requests was accepted
(findings 1-4 and 8 of issue 27); now each ends in a named refusal.
"""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.secure import SecAggParams, SecureParticipant
from fedcollab.secure import identity as ID
from fedcollab.secure import keys as K
from fedcollab.secure.driver import provision_identities
from fedcollab.secure.errors import (
    GroupMismatchError,
    MalformedMessageError,
    ParameterMismatchError,
    PartnerMismatchError,
    RegistryPinnedError,
    ReshareRefusedError,
    SignatureError,
    ThresholdMismatchError,
    UnsafeRosterError,
)
from fedcollab.secure.graph import derive_graph, threshold_for
from fedcollab.secure.messages import (
    SERVER,
    KeyShares,
    MaskedInput,
    MaskRequest,
    Roster,
    pack,
    unpack,
)
from tests.secure._helpers import FAST_PARAMS, make_group, make_vectors, run_secure_round

VICTIM = 0
DIM = 5
MODES = [(protocol, amortise, model) for protocol in ("secagg", "secaggplus")
         for amortise in (True, False) for model in ("honest_but_curious", "malicious")]


def _params(protocol: str, amortise: bool, model: str, **kw: object) -> SecAggParams:
    return SecAggParams(protocol=protocol, amortise_keys=amortise, server=model,
                        **FAST_PARAMS, **kw)  # type: ignore[arg-type]


def _key_setup(params: SecAggParams, n: int, round_id: int = 0):  # type: ignore[no-untyped-def]
    """Honest advertise and rosters; returns (participants, server, rosters)."""
    participants, server = make_group(n, params)
    need = server.begin_round(round_id, list(participants), dim=DIM)
    rosters = server.receive_advertisements(
        {p: participants[p].advertise_keys(round_id) for p in need})
    return participants, server, rosters


def _roster(data: bytes, pid: int, round_id: int = 0) -> Roster:
    return unpack(data, Roster, round_id=round_id, sender=SERVER, recipient=pid)


def _send_roster(p: SecureParticipant, forged: Roster, round_id: int = 0) -> bytes:
    return p.share_keys(round_id, pack(forged, round_id=round_id, sender=SERVER,
                                       recipient=p.participant_id))


# -- finding 1: a shrunk partner list at key setup -----------------------------------------
@pytest.mark.parametrize("protocol, amortise, model", MODES)
def test_finding1_shrunk_partner_list_after_a_full_roster_is_refused(
        protocol: str, amortise: bool, model: str) -> None:
    """Recovery shared to every holder at t, then a mask request naming two partners at
    threshold 2: the self mask would reach t at two colluders. Refused; and an honest
    masked input seals the self-mask shares to exactly the recovery holders."""
    n = 10
    params = _params(protocol, amortise, model)
    participants, server, rosters = _key_setup(params, n)
    shares = {p: participants[p].share_keys(0, rosters[p]) for p in rosters}
    inbox = server.receive_key_shares(shares)
    msg = unpack(inbox[VICTIM], MaskRequest, round_id=0, sender=SERVER, recipient=VICTIM)
    two = msg.partners[:2]
    for threshold in (2, msg.threshold):
        forged = MaskRequest(msg.group_size, msg.dim, threshold, msg.members, two,
                             msg.key_updates, msg.deliveries)
        with pytest.raises(UnsafeRosterError):  # ThresholdMismatch, or below t
            participants[VICTIM].masked_input(0, np.zeros(DIM), pack(
                forged, round_id=0, sender=SERVER, recipient=VICTIM))
    # control: the honest request; its SELF shares go to the recovery holders, one t
    out = participants[VICTIM].masked_input(0, np.zeros(DIM), inbox[VICTIM])
    masked = unpack(out, MaskedInput, round_id=0, sender=VICTIM, recipient=SERVER)
    keyed = unpack(shares[VICTIM], KeyShares, round_id=0, sender=VICTIM, recipient=SERVER)
    assert {s.peer for s in masked.shares} == {s.peer for s in keyed.shares}


@pytest.mark.parametrize("protocol, amortise, model", MODES)
def test_finding1_roster_with_two_holders_at_threshold_two_is_refused(
        protocol: str, amortise: bool, model: str) -> None:
    params = _params(protocol, amortise, model)
    participants, _, rosters = _key_setup(params, 10)
    msg = _roster(rosters[VICTIM], VICTIM)
    with pytest.raises(ThresholdMismatchError, match="derives"):
        _send_roster(participants[VICTIM], Roster(2, msg.group_size, msg.members, msg.peers[:2]))
    with pytest.raises(UnsafeRosterError, match="below the threshold"):
        _send_roster(participants[VICTIM], Roster(msg.threshold, msg.group_size, msg.members,
                                                  msg.peers[:2]))
    _send_roster(participants[VICTIM], msg)  # control


# -- finding 2: two live recovery sharings for one round -----------------------------------
@pytest.mark.parametrize("protocol, amortise, model", MODES)
def test_finding2_second_roster_in_one_round_is_refused(protocol: str, amortise: bool,
                                                        model: str) -> None:
    params = _params(protocol, amortise, model)
    participants, _, rosters = _key_setup(params, 10)
    participants[VICTIM].share_keys(0, rosters[VICTIM])
    with pytest.raises(ReshareRefusedError, match="fresh keys"):
        participants[VICTIM].share_keys(0, rosters[VICTIM])


@pytest.mark.parametrize("model", ["honest_but_curious", "malicious"])
def test_finding2_reshare_of_a_package_already_sent_is_refused(model: str) -> None:
    """Round 0 sends round 1's recovery package with the masked input; a roster for
    round 1 sent to the victim alone (a second sharing of round 1) is refused."""
    n = 10
    params = _params("secaggplus", True, model)
    participants, server = make_group(n, params)
    vectors = make_vectors(range(n), DIM)
    run_secure_round(participants, vectors, params, 0, server=server)
    rs = server._round
    assert rs is not None
    peers = tuple(server._keys[v] for v in rs.partners[VICTIM])
    forged = Roster(server.threshold(VICTIM), n, tuple(range(n)), peers)
    with pytest.raises(ReshareRefusedError):
        _send_roster(participants[VICTIM], forged, round_id=1)
    # fresh keys (through advertise) reset it: the honest server re-keys everyone
    result = run_secure_round(participants, vectors, params, 1, {"share_keys": {3}},
                              server=server)
    assert 3 in result.dropped
    result = run_secure_round(participants, vectors, params, 2, server=server)
    assert result.key_setup == tuple(range(n))


# -- finding 3: an incomplete graph, a shrunk round ----------------------------------------
@pytest.mark.parametrize("model", ["honest_but_curious", "malicious"])
def test_finding3_round_of_the_victim_and_two_colluders_is_refused(model: str) -> None:
    n = 30
    params = _params("secagg", True, model)
    participants, _, rosters = _key_setup(params, n)
    msg = _roster(rosters[VICTIM], VICTIM)
    colluders = tuple(p for p in msg.peers if p.pid in (1, 2))
    with pytest.raises(GroupMismatchError, match="floor"):
        _send_roster(participants[VICTIM], Roster(2, n, (VICTIM, 1, 2), colluders))
    # every member named, but only the two colluders as the neighbourhood
    with pytest.raises(UnsafeRosterError):
        _send_roster(participants[VICTIM], Roster(msg.threshold, n, msg.members, colluders))
    # a stranger to the pinned group, or a member set without the victim
    with pytest.raises(GroupMismatchError, match="not in the group"):
        _send_roster(participants[VICTIM], Roster(msg.threshold, n, msg.members + (99,),
                                                  msg.peers))
    with pytest.raises(GroupMismatchError, match="leaves out"):
        _send_roster(participants[VICTIM], Roster(msg.threshold, n, msg.members[1:],
                                                  msg.peers))
    with pytest.raises(ParameterMismatchError, match="ring"):
        _send_roster(participants[VICTIM], Roster(msg.threshold, 10**6, msg.members, msg.peers))


def test_finding3_secaggplus_partners_off_the_seeded_graph_are_refused() -> None:
    n = 30
    params = _params("secaggplus", True, "malicious", neighbours=6)
    participants, server, rosters = _key_setup(params, n)
    msg = _roster(rosters[VICTIM], VICTIM)
    derived = derive_graph(range(n), participants[VICTIM].setup.graph_seed,  # type: ignore[union-attr]
                           protocol="secaggplus", degree=6, threshold=params.threshold,
                           expected_dropout=params.expected_dropout)[VICTIM]
    assert {p.pid for p in msg.peers} == set(derived) == set(server.graph[VICTIM])
    stranger = next(v for v in range(1, n) if v not in derived)
    peers = msg.peers[:-1] + (server._keys[stranger],)
    with pytest.raises(PartnerMismatchError, match="graph seed"):
        _send_roster(participants[VICTIM], Roster(msg.threshold, n, msg.members, peers))


# -- finding 4: the registry re-installed mid-job -------------------------------------------
@pytest.mark.parametrize("change", ["add", "drop", "replace", "seed", "job"])
def test_finding4_a_second_registry_install_is_refused(change: str) -> None:
    params = _params("secagg", True, "malicious")
    participants, _ = make_group(5, params)
    registry = {p: participants[p].identity_public() for p in participants}
    sybil = ID.identity_public(ID.generate_identity())
    setup = participants[VICTIM].setup
    assert setup is not None
    seed, job = setup.graph_seed, setup.job_id
    if change == "add":
        registry.update({5: sybil, 6: sybil})
    elif change == "drop":
        del registry[4]
    elif change == "replace":
        registry[3] = sybil
    elif change == "seed":
        seed = b"another seed"
    else:
        job = b"another job"
    with pytest.raises(RegistryPinnedError, match="pinned"):
        participants[VICTIM].install_registry(registry, graph_seed=seed, job_id=job)


def test_finding4_reinstalling_the_same_registry_is_a_no_op() -> None:
    params = _params("secagg", True, "malicious")
    participants, _ = make_group(5, params)
    registry = {p: participants[p].identity_public() for p in participants}
    participants[VICTIM].install_registry(registry)  # the pinned seed and job id


# -- finding 8: adverts bound to the job, the KDF transcript, the consistency digest -------
def test_finding8_an_advert_of_another_job_does_not_verify() -> None:
    params = _params("secagg", True, "malicious")
    participants = {i: SecureParticipant(i, params) for i in range(5)}
    provision_identities(participants, job_id=b"job A")
    victim = SecureParticipant(VICTIM, params, identity=participants[VICTIM]._identity)
    others = {i: participants[i] for i in range(1, 5)}
    provision = {VICTIM: victim, **others}
    registry = {p: q.identity_public() for p, q in provision.items()}
    from fedcollab.secure.identity import GroupSetup

    victim.install_setup(GroupSetup.of(registry, job_id=b"job B", registry=registry))
    from fedcollab.secure.server import SecureServer

    server = SecureServer(list(range(5)), params, graph_seed=b"")
    need = server.begin_round(0, list(range(5)), dim=DIM)
    rosters = server.receive_advertisements(
        {p: provision[p].advertise_keys(0) for p in need})
    with pytest.raises(SignatureError, match="not signed"):  # peers signed for job A
        victim.share_keys(0, rosters[VICTIM])


def test_finding8_kdf_transcript_binds_both_public_keys() -> None:
    a, b = K.generate_private_key(), K.generate_private_key()
    pa, pb = K.public_bytes(a), K.public_bytes(b)
    shared = K.agree(a, pb)
    assert K.transcript(1, 2, pa, pb) == K.transcript(2, 1, pb, pa)
    base = K.pairwise_key(shared, 1, 2, K.transcript(1, 2, pa, pb))
    assert base == K.pairwise_key(K.agree(b, pa), 2, 1, K.transcript(2, 1, pb, pa))
    assert base != K.pairwise_key(shared, 1, 2, K.transcript(1, 2, pa, bytes(32)))
    assert K.confirm_key(shared, 1, 2, K.transcript(1, 2, pa, pb)) != \
        K.confirm_key(shared, 1, 2, K.transcript(1, 2, pb, pa))


def test_finding8_consistency_digest_covers_members_and_seed() -> None:
    d = K.survivors_digest(3, (1, 2, 3), members=(1, 2, 3, 4), graph_seed=b"s")
    assert d == K.survivors_digest(3, (3, 2, 1), members=(4, 3, 2, 1), graph_seed=b"s")
    assert d != K.survivors_digest(3, (1, 2, 3), members=(1, 2, 3, 5), graph_seed=b"s")
    assert d != K.survivors_digest(3, (1, 2, 3), members=(1, 2, 3, 4), graph_seed=b"t")
    assert d != K.survivors_digest(3, (1, 2, 4), members=(1, 2, 3, 4), graph_seed=b"s")


def test_threshold_is_derived_from_the_neighbourhood_not_the_request() -> None:
    params = _params("secagg", True, "malicious")
    participants, server, rosters = _key_setup(params, 8)
    msg = _roster(rosters[VICTIM], VICTIM)
    assert msg.threshold == threshold_for(7, params.threshold) == server.threshold(VICTIM)
    with pytest.raises(ThresholdMismatchError):  # higher is refused too: it is derived
        _send_roster(participants[VICTIM], Roster(msg.threshold + 1, 8, msg.members, msg.peers))


# -- finding 7: resume without a differencing gift ------------------------------------------
def _resumed(params: SecAggParams, n: int, before: dict[int, SecureParticipant]
             ) -> dict[int, SecureParticipant]:
    """Fresh participants (a restarted job: new processes, new identities) that reloaded
    the views the old ones persisted."""
    participants, _ = make_group(n, params)
    for pid, p in participants.items():
        p.restore_views(before[pid].views())
    return participants


@pytest.mark.parametrize("model", ["honest_but_curious", "malicious"])
def test_finding7_a_rerun_round_with_another_survivor_set_is_refused(model: str) -> None:
    from fedcollab.secure.errors import UnmaskRefusedError

    n = 8
    params = _params("secagg", True, model)
    participants, server = make_group(n, params)
    vectors = make_vectors(range(n), DIM)
    first = run_secure_round(participants, vectors, params, 0, server=server)
    # the same round re-run honestly (same inputs, same survivors): the same sum, bit-exact
    again = run_secure_round(_resumed(params, n, participants), vectors, params, 0)
    assert np.array_equal(again.integer_sum, first.integer_sum)
    # re-run with the victim "dropped": sum over S minus sum over S\\{v} would be x_v
    with pytest.raises(UnmaskRefusedError, match="already confirmed another survivor set"):
        run_secure_round(_resumed(params, n, participants), vectors, params, 0,
                         {"share_keys": {VICTIM}})


@pytest.mark.parametrize("model", ["honest_but_curious", "malicious"])
def test_take_new_views_hands_each_confirmed_view_over_once(model: str) -> None:
    """What the hosting worker journals each stage: the views confirmed since the last
    take, each once; views reloaded after a restart are not handed over again."""
    n = 6
    params = _params("secagg", True, model)
    participants, server = make_group(n, params)
    vectors = make_vectors(range(n), DIM)
    run_secure_round(participants, vectors, params, 0, server=server)
    for pid, p in participants.items():
        new = p.take_new_views()
        assert new == p.views() and len(new) == 1, pid
        assert p.take_new_views() == {}
    run_secure_round(participants, vectors, params, 1, server=server)
    for p in participants.values():
        new = p.take_new_views()
        assert list(new) == [k for k in p.views() if k.startswith("1:")]
    resumed = _resumed(params, n, participants)
    assert all(p.take_new_views() == {} for p in resumed.values())


def test_member_set_check_remembers_only_the_set_it_accepted() -> None:
    # the last accepted member set is remembered (the same request every round costs
    # one comparison); any other set or group size is checked afresh and refused
    n = 30
    params = _params("secagg", True, "malicious")
    participants, _, _ = _key_setup(params, n)
    victim = participants[VICTIM]
    members = tuple(range(n))
    for round_id in (1, 1, 2):
        assert victim._check_members(round_id, members, n) == members
    with pytest.raises(GroupMismatchError, match="not in the group"):
        victim._check_members(3, members + (99,), n)
    with pytest.raises(GroupMismatchError, match="leaves out"):
        victim._check_members(3, members[1:], n)
    with pytest.raises(GroupMismatchError, match="floor"):
        victim._check_members(3, (VICTIM, 1, 2), n)
    with pytest.raises(ParameterMismatchError, match="ring"):
        victim._check_members(3, members, 10**6)
    with pytest.raises(MalformedMessageError, match="repeats"):
        victim._check_members(3, members + (0,), n)
    assert victim._check_members(4, members, n) == members
