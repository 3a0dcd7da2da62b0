"""A server that lies, scripted, against the real participant code (issue 11).

Each test drives the honest :class:`SecureServer` for the stages the attack leaves
alone, then plays the attacker: it writes its own requests from what a server
holds (sealed share bundles, packages, public keys, signatures) and sends them to
unmodified :class:`SecureParticipant` objects. The assertion is always about what
the attacker walks away with: never ``t`` self-mask shares of the victim together
with ``t`` recovery shares of every partner of the victim (what unmasking one
input needs), and a refusal that names the lie.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pytest

from fedcollab.secure import (
    SecAggParams,
    SecureParticipant,
    SecureServer,
)
from fedcollab.secure import keys as K
from fedcollab.secure.errors import (
    InconsistentViewError,
    NotAPartnerError,
    SecAggError,
    ServerDeviationError,
    SignatureError,
    TooFewAliveError,
    UnmaskRefusedError,
    UnsafeRosterError,
)
from fedcollab.secure.graph import derive_graph, threshold_for
from fedcollab.secure.messages import (
    SERVER,
    Confirmations,
    Consistency,
    Kind,
    MaskedInput,
    PeerKeys,
    Reveal,
    Roster,
    Sealed,
    UnmaskRequest,
    UnmaskResponse,
    pack,
    unpack,
)
from fedcollab.secure.prg import accumulate_masks
from fedcollab.secure.recovery import reconstruct, self_seed_check
from tests.secure._helpers import FAST_PARAMS, make_group, make_vectors, run_secure_round

VICTIM = 0
DIM = 9
MODELS = ["honest_but_curious", "malicious"]


def _to_masked_inputs(params: SecAggParams, n: int, round_id: int = 0,
                      group: tuple[dict[int, SecureParticipant], SecureServer] | None = None,
                      members: list[int] | None = None
                      ) -> tuple[dict[int, SecureParticipant], SecureServer, dict[int, bytes]]:
    """Honest key setup and masked inputs; returns what the honest server would send next."""
    participants, server = group or make_group(n, params)
    members = members if members is not None else list(participants)
    vectors = make_vectors(members, DIM, seed=round_id)
    need = server.begin_round(round_id, members, dim=DIM)
    rosters = server.receive_advertisements(
        {p: participants[p].advertise_keys(round_id) for p in need})
    inbox = server.receive_key_shares(
        {p: participants[p].share_keys(round_id, rosters[p]) for p in rosters})
    nxt = server.receive_masked_inputs(
        {p: participants[p].masked_input(round_id, vectors[p], inbox[p]) for p in inbox})
    return participants, server, nxt


def _ask(participants: Mapping[int, SecureParticipant], round_id: int,
         requests: Mapping[int, UnmaskRequest]) -> tuple[dict[tuple[int, Kind], int], dict]:
    """Send scripted unmask requests; count the shares each (peer, kind) yielded."""
    got: dict[tuple[int, Kind], int] = {}
    refusals: dict[int, ServerDeviationError] = {}
    for h, req in requests.items():
        try:
            reply = participants[h].unmask(round_id, pack(req, round_id=round_id,
                                                          sender=SERVER, recipient=h))
        except ServerDeviationError as exc:
            refusals[h] = exc
            continue
        for s in unpack(reply, UnmaskResponse, round_id=round_id, sender=h,
                        recipient=SERVER).shares:
            got[(s.peer, s.kind)] = got.get((s.peer, s.kind), 0) + 1
    return got, refusals


def _victim_opened(server: SecureServer, got: Mapping[tuple[int, Kind], int],
                   partners: tuple[int, ...]) -> bool:
    """Whether the attacker holds what unmasking the victim's input needs."""
    t = server.threshold
    return (got.get((VICTIM, Kind.SELF), 0) >= t(VICTIM)
            and all(got.get((p, Kind.RECOVERY), 0) >= t(p) for p in partners))


def _signatures(participants: Mapping[int, SecureParticipant], round_id: int,
                shown: Mapping[int, tuple[int, ...]], refused: set[int] | None = None
                ) -> dict[int, tuple[tuple[int, ...], dict[int, bytes]]]:
    """Scripted consistency round: show each participant a survivor set, keep its
    confirmations per partner (``refused`` collects who would not confirm)."""
    out = {}
    for pid, survivors in shown.items():
        msg = pack(Consistency(survivors), round_id=round_id, sender=SERVER, recipient=pid)
        try:
            reply = participants[pid].confirm_survivors(round_id, msg)
        except ServerDeviationError:
            if refused is not None:
                refused.add(pid)
            continue
        tags = unpack(reply, Confirmations, round_id=round_id, sender=pid,
                      recipient=SERVER).tags
        out[pid] = (survivors, dict(tags))
    return out


# -- attack 1: "every partner of the victim dropped" ------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("protocol, n", [("secagg", 6), ("secaggplus", 14)])
@pytest.mark.parametrize("amortise", [True, False])
def test_attack1_claiming_all_partners_dropped_is_refused(model: str, protocol: str, n: int,
                                                          amortise: bool) -> None:
    params = SecAggParams(protocol=protocol, server=model, amortise_keys=amortise,
                          neighbours=8, **FAST_PARAMS)
    participants, server, _ = _to_masked_inputs(params, n)
    rs = server._round  # the attacker is the server: it holds everything routed so far
    assert rs is not None
    partners = rs.partners[VICTIM]
    alive = set(rs.inputs)
    sigs: dict[int, tuple[tuple[int, ...], dict[int, bytes]]] = {}
    if params.malicious:  # the honest survivor set: every participant signs it
        sigs = _signatures(participants, 0, {p: tuple(sorted(alive)) for p in alive})
    requests = {}
    for h in sorted(alive):
        reveals = []
        for u in server.graph[h]:
            if u == VICTIM and h in rs.input_blobs[VICTIM]:
                reveals.append(Reveal(u, Kind.SELF, rs.input_blobs[VICTIM][h]))  # "survived"
            elif u in partners and h in rs.packages[u].holders:
                reveals.append(Reveal(u, Kind.RECOVERY, b""))  # "dropped"
        signed = tuple(Sealed(w, sigs[w][1][h]) for w in rs.partners[h]
                       if w in sigs and h in sigs[w][1])
        requests[h] = UnmaskRequest(tuple(reveals), signed)
    got, refusals = _ask(participants, 0, requests)
    assert not _victim_opened(server, got, partners)
    assert refusals and all(isinstance(e, (TooFewAliveError, InconsistentViewError))
                            for e in refusals.values())


@pytest.mark.parametrize("protocol, n", [("secagg", 6), ("secaggplus", 14)])
def test_attack1_two_stories_are_refused_by_the_consistency_round(protocol: str, n: int) -> None:
    # The malicious-mode refinement: show the victim's partners a survivor set with
    # the victim in it, and everyone else one without the partners; ask for SELF of
    # the victim where the story says "alive", RECOVERY of each partner elsewhere.
    params = SecAggParams(protocol=protocol, server="malicious", neighbours=8, **FAST_PARAMS)
    participants, server, _ = _to_masked_inputs(params, n)
    rs = server._round
    assert rs is not None
    partners = set(rs.partners[VICTIM])
    alive = set(rs.inputs)
    story_alive = tuple(sorted(alive))
    story_dropped = tuple(sorted(alive - partners))
    shown = {p: story_alive if p in partners else story_dropped for p in alive}
    would_not_sign: set[int] = set()
    sigs = _signatures(participants, 0, shown, would_not_sign)
    requests = {}
    for h in sorted(sigs):
        story = set(shown[h])
        reveals = []
        for u in server.graph[h]:
            if u in story and u in rs.input_blobs and h in rs.input_blobs[u]:
                reveals.append(Reveal(u, Kind.SELF, rs.input_blobs[u][h]))
            elif u in partners and h in rs.packages[u].holders:
                reveals.append(Reveal(u, Kind.RECOVERY, b""))
        signed = tuple(Sealed(w, sigs[w][1][h]) for w in rs.partners[h]
                       if w in sigs and h in sigs[w][1])
        requests[h] = UnmaskRequest(tuple(reveals), signed)
    got, refusals = _ask(participants, 0, requests)
    assert not _victim_opened(server, got, tuple(partners))
    assert refusals or would_not_sign


def test_attack1_refusal_aborts_the_round_with_the_reason() -> None:
    # Driven end to end: a lie in one unmask request makes the driver abort.
    params = SecAggParams(protocol="secagg", server="honest_but_curious", **FAST_PARAMS)
    participants, server = make_group(6, params)
    vectors = make_vectors(range(6), DIM)

    def drop_partners(request: bytes, holder: int) -> bytes:
        msg = unpack(request, UnmaskRequest, round_id=0, sender=SERVER, recipient=holder)
        reveals = tuple(r if r.peer == VICTIM else Reveal(r.peer, Kind.RECOVERY, b"")
                        for r in msg.reveals)
        return pack(UnmaskRequest(reveals, msg.signatures), round_id=0, sender=SERVER,
                    recipient=holder)

    original = server.receive_masked_inputs

    def lying(messages: Mapping[int, bytes]) -> dict[int, bytes]:
        return {h: drop_partners(r, h) for h, r in original(messages).items()}

    server.receive_masked_inputs = lying  # type: ignore[method-assign]
    with pytest.raises(UnmaskRefusedError, match="TooFewAliveError"):
        run_secure_round(participants, vectors, params, 0, server=server)


def test_attack1_requests_naming_a_non_partner_are_refused() -> None:
    params = SecAggParams(protocol="secaggplus", server="honest_but_curious", neighbours=4,
                          **FAST_PARAMS)
    participants, server, requests = _to_masked_inputs(params, 12)
    rs = server._round
    assert rs is not None
    h = 1
    stranger = next(u for u in range(12) if u != h and u not in rs.partners[h])
    msg = unpack(requests[h], UnmaskRequest, round_id=0, sender=SERVER, recipient=h)
    forged = UnmaskRequest(msg.reveals + (Reveal(stranger, Kind.RECOVERY, b""),))
    with pytest.raises(NotAPartnerError):
        participants[h].unmask(0, pack(forged, round_id=0, sender=SERVER, recipient=h))
    participants[h].unmask(0, requests[h])  # control: the honest request is answered


# -- attack 2: a stale recovery key after the graph is rebuilt --------------------------
@pytest.mark.parametrize("model", MODELS)
def test_attack2_stale_recovery_key_of_old_neighbours_is_refused(model: str) -> None:
    params = SecAggParams(protocol="secaggplus", server=model, neighbours=4, **FAST_PARAMS)
    n = 14
    group = make_group(n, params)
    participants, server = group
    # round 0 with everyone: the victim's round-1 recovery key e1 is shared with G0
    vectors = make_vectors(range(n), DIM)
    run_secure_round(participants, vectors, params, 0, server=server)
    old = set(server.graph[VICTIM])
    # round 1 without one participant (fraction < 1): the graph is rebuilt and the victim
    # re-shares a new recovery key for round 1 with its new neighbours (fresh keys first)
    absent = next(a for a in range(1, n) if set(derive_graph(
        [p for p in range(n) if p != a], server.graph_seed, protocol="secaggplus",
        degree=4)[VICTIM]) - old - {a})
    members = [p for p in range(n) if p != absent]
    _, _, _ = _to_masked_inputs(params, n, 1, group, members)
    rs = server._round
    assert rs is not None
    new = set(rs.partners[VICTIM])
    stale = sorted((old - new) & set(rs.inputs))
    assert stale, "the rebuilt graph must change the victim's neighbourhood for this test"
    # the victim's new partners would be asked for SELF ("it survived"); its old
    # neighbours for the stale e1 RECOVERY shares ("it dropped"): one kind each
    stale_requests = {h: UnmaskRequest((Reveal(VICTIM, Kind.RECOVERY, b""),)) for h in stale}
    got_stale, refusals = _ask(participants, 1, stale_requests)
    assert got_stale.get((VICTIM, Kind.RECOVERY), 0) == 0
    assert set(refusals) == set(stale)
    assert all(isinstance(e, NotAPartnerError) for e in refusals.values())
    # and the stale shares are gone, not merely withheld
    assert all(VICTIM not in participants[h]._held.get(1, {}) for h in stale)


# -- attack 3: substituted keys, a lowered threshold or roster ---------------------------
def test_attack3_substituted_public_keys_are_refused_in_malicious_mode() -> None:
    params = SecAggParams(protocol="secagg", server="malicious", **FAST_PARAMS)
    participants, server = make_group(5, params)
    need = server.begin_round(0, list(participants), dim=DIM)
    rosters = server.receive_advertisements(
        {p: participants[p].advertise_keys(0) for p in need})
    mine = K.generate_private_key()  # the server's own key pair, to open every share
    evil = K.public_bytes(mine)
    for h in (1, 2):
        msg = unpack(rosters[h], Roster, round_id=0, sender=SERVER, recipient=h)
        peers = tuple(PeerKeys(p.pid, evil, evil, p.since, p.sig) if p.pid == VICTIM else p
                      for p in msg.peers)
        forged = pack(Roster(msg.threshold, msg.group_size, msg.members, peers), round_id=0,
                      sender=SERVER, recipient=h)
        with pytest.raises(SignatureError, match=f"participant {VICTIM}"):
            participants[h].share_keys(0, forged)
        participants[h].share_keys(0, rosters[h])  # control: the real roster is accepted


def test_attack3_substituted_keys_pass_unnoticed_without_signatures() -> None:
    # What the malicious mode is for: the honest-but-curious participant cannot tell.
    params = SecAggParams(protocol="secagg", server="honest_but_curious", **FAST_PARAMS)
    participants, server = make_group(5, params)
    need = server.begin_round(0, list(participants), dim=DIM)
    rosters = server.receive_advertisements(
        {p: participants[p].advertise_keys(0) for p in need})
    evil = K.public_bytes(K.generate_private_key())
    msg = unpack(rosters[1], Roster, round_id=0, sender=SERVER, recipient=1)
    peers = tuple(PeerKeys(p.pid, evil, evil, p.since) if p.pid == VICTIM else p
                  for p in msg.peers)
    participants[1].share_keys(0, pack(Roster(msg.threshold, msg.group_size, msg.members, peers),
                                       round_id=0, sender=SERVER, recipient=1))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("change", ["threshold", "roster"])
def test_attack3_threshold_or_roster_below_own_parameters_is_refused(model: str,
                                                                     change: str) -> None:
    params = SecAggParams(protocol="secagg", server=model, **FAST_PARAMS)
    participants, server = make_group(7, params)
    need = server.begin_round(0, list(participants), dim=DIM)
    rosters = server.receive_advertisements(
        {p: participants[p].advertise_keys(0) for p in need})
    msg = unpack(rosters[1], Roster, round_id=0, sender=SERVER, recipient=1)
    if change == "threshold":  # 6 holders: t must be >= 5 (0.67); claim 4 (> 6/2 still)
        forged = Roster(threshold_for(6, 0.67) - 1, msg.group_size, msg.members, msg.peers)
    else:  # only one neighbour: a "sum" of two
        forged = Roster(2, msg.group_size, msg.members, msg.peers[:1])
    with pytest.raises(UnsafeRosterError):
        participants[1].share_keys(0, pack(forged, round_id=0, sender=SERVER, recipient=1))


# -- attack 5: the threshold edge ----------------------------------------------------------
@pytest.mark.parametrize("degree", [2, 4, 10, 16, 100])
def test_attack5_threshold_just_above_a_half_is_a_strict_majority(degree: int) -> None:
    t = threshold_for(degree, 0.5000000001)
    assert 2 * t > degree and t == max(2, degree // 2 + 1)


def test_attack5_threshold_is_exact_for_decimal_fractions() -> None:
    assert threshold_for(100, 0.67) == 67 and threshold_for(10, 0.7) == 7
    assert threshold_for(3, 1 / 3 + 0.5) == 3


def test_attack5_participant_refuses_half_threshold_even_with_an_edge_fraction() -> None:
    params = SecAggParams(protocol="secagg", threshold=0.5000000001,
                          server="honest_but_curious", **FAST_PARAMS)
    participants, server = make_group(11, params)
    need = server.begin_round(0, list(participants), dim=DIM)
    rosters = server.receive_advertisements(
        {p: participants[p].advertise_keys(0) for p in need})
    msg = unpack(rosters[1], Roster, round_id=0, sender=SERVER, recipient=1)
    assert msg.threshold == 6  # 10 holders: the honest server asks for a majority
    forged = Roster(5, msg.group_size, msg.members, msg.peers)  # d/2: both kinds reachable
    with pytest.raises(UnsafeRosterError):
        participants[1].share_keys(0, pack(forged, round_id=0, sender=SERVER, recipient=1))


# -- attack 4: forward secrecy of amortised keys ---------------------------------------------
def _opened_rounds(window: int | None, rounds: int, leak_at: int) -> set[int]:
    """Rounds whose victim input a server that kept everything reads after a key leak."""
    params = SecAggParams(protocol="secaggplus", server="honest_but_curious", neighbours=4,
                          key_rotation_rounds=window, **FAST_PARAMS)
    n = 8
    participants, server = make_group(n, params)
    codec = params.codec(n)
    kept: dict[int, dict] = {}
    for r in range(rounds):
        vectors = make_vectors(range(n), DIM, seed=r)
        seen: dict[str, object] = {"shares": {}}

        def spy(stage: str, pid: int, message: bytes, r: int = r,
                seen: dict = seen) -> bytes:
            if stage == "masked_input" and pid == VICTIM:
                seen["input"] = unpack(message, MaskedInput, round_id=r, sender=pid,
                                       recipient=SERVER)
            if stage == "unmask":
                for s in unpack(message, UnmaskResponse, round_id=r, sender=pid,
                                recipient=SERVER).shares:
                    if s.peer == VICTIM and s.kind == Kind.SELF:
                        seen["shares"][pid] = s.y  # type: ignore[index]
            return message

        run_secure_round(participants, vectors, params, r, server=server, intercept=spy)
        rs = server._round
        assert rs is not None
        kept[r] = {"input": seen["input"], "shares": seen["shares"],
                   "t": server.threshold(VICTIM), "truth": codec.encode(vectors[VICTIM]),
                   "partners": {v: server._keys[v].s_pk for v in rs.partners[VICTIM]}}
        if r == leak_at:
            break
    leaked = participants[VICTIM]._s  # the victim's long-lived X25519 key leaks now
    assert leaked is not None
    opened = set()
    for r, k in kept.items():
        msg = k["input"]
        b = reconstruct(k["shares"], k["t"], self_seed_check(msg.digest, r, VICTIM),
                        owner=VICTIM)  # the server learns b_u of every survivor, by design
        assert b is not None
        x = msg.array(codec.dtype).copy()
        mine = K.public_bytes(leaked)
        seeds = {v: K.round_seed(K.pairwise_key(K.agree(leaked, pk), VICTIM, v,
                                                K.transcript(VICTIM, v, mine, pk)), r, VICTIM, v)
                 for v, pk in k["partners"].items()}
        accumulate_masks(x, [seeds[v] for v in seeds if v < VICTIM],
                         [b] + [seeds[v] for v in seeds if v > VICTIM])
        if np.array_equal(x, k["truth"]):
            opened.add(r)
    return opened


def test_attack4_leaked_key_opens_only_the_rotation_window() -> None:
    assert _opened_rounds(4, 11, 10) == {8, 9, 10}  # keys of rounds 0, 4, 8: window 8..10


def test_attack4_without_rotation_a_leak_opens_every_round() -> None:
    # The same replay has power: with no rotation the leak opens all rounds.
    assert _opened_rounds(None, 6, 5) == set(range(6))


def test_attack4_participants_refuse_peer_keys_older_than_the_window() -> None:
    params = SecAggParams(protocol="secagg", server="malicious", key_rotation_rounds=3,
                          **FAST_PARAMS)
    participants, server = make_group(5, params)
    need = server.begin_round(5, list(participants), dim=DIM)
    rosters = server.receive_advertisements(
        {p: participants[p].advertise_keys(5) for p in need})
    # a roster replaying round-5 adverts in round 8: outside a 3-round window
    msg = unpack(rosters[1], Roster, round_id=5, sender=SERVER, recipient=1)
    with pytest.raises(UnsafeRosterError, match="window"):
        participants[1].share_keys(8, pack(msg, round_id=8, sender=SERVER, recipient=1))


def test_refusals_are_server_deviations_not_dropouts() -> None:
    for cls in (TooFewAliveError, NotAPartnerError, UnsafeRosterError, SignatureError,
                InconsistentViewError):
        assert issubclass(cls, ServerDeviationError) and issubclass(cls, SecAggError)


def test_forged_or_reflected_confirmations_are_refused() -> None:
    params = SecAggParams(protocol="secagg", server="malicious", **FAST_PARAMS)
    participants, server, _ = _to_masked_inputs(params, 5)
    rs = server._round
    assert rs is not None
    alive = tuple(sorted(rs.inputs))
    sigs = _signatures(participants, 0, {p: alive for p in alive})
    h = 1
    honest = [Sealed(w, sigs[w][1][h]) for w in rs.partners[h]]
    reveals = tuple(Reveal(u, Kind.SELF, rs.input_blobs[u][h]) for u in rs.partners[h])
    forged = [Sealed(honest[0].peer, bytes(32))] + honest[1:]
    reflected = [Sealed(honest[0].peer, sigs[h][1][honest[0].peer])] + honest[1:]
    for tags in (forged, reflected):
        with pytest.raises(SignatureError, match="confirmation"):
            participants[h].unmask(0, pack(UnmaskRequest(reveals, tuple(tags)), round_id=0,
                                           sender=SERVER, recipient=h))
    # too few confirmations: the server hides who else saw the set
    with pytest.raises(TooFewAliveError, match="confirmed"):
        participants[h].unmask(0, pack(UnmaskRequest(reveals, tuple(honest[:1])), round_id=0,
                                       sender=SERVER, recipient=h))
    # control: the honest confirmations open the request
    participants[h].unmask(0, pack(UnmaskRequest(reveals, tuple(honest)), round_id=0,
                                   sender=SERVER, recipient=h))


def test_malicious_mode_needs_the_identity_registry_before_key_setup() -> None:
    params = SecAggParams(server="malicious", **FAST_PARAMS)
    alone = SecureParticipant(3, params)
    with pytest.raises(SecAggError, match="identity registry"):
        alone.advertise_keys(0)
    other = SecureParticipant(4, params)
    with pytest.raises(SecAggError, match="not its identity key"):
        alone.install_registry({3: other.identity_public(), 4: other.identity_public()})
