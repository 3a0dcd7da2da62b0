"""The server side of SecAgg / SecAgg+: routes messages, unmasks only the sum.

What an honest server sees (participants do not rely on its honesty: see
docs/threat-model.md and :mod:`fedcollab.secure.participant`). It sees
public keys, sealed (AES-GCM) shares and seed tables it cannot open, masked vectors
(uniform in the ring), and exactly the shares it needs: for each survivor the
self-mask seed, for each dropped participant the recovery secret of *this round*.
From these it learns the sum over the survivors and nothing else about any single
input, as long as fewer than ``t`` of a participant's neighbours collude with it.

Driving a round (each arrow is one call; dicts are keyed by participant id; a
participant missing from a dict has dropped; ``{}`` is fine when nobody is asked):

    need = server.begin_round(round_id, members, dim=len(vector))
    rosters = server.receive_advertisements({p: P[p].advertise_keys(r) for p in need})
    inbox = server.receive_key_shares({p: P[p].share_keys(r, rosters[p]) for p in rosters})
    req = server.receive_masked_inputs({p: P[p].masked_input(r, x[p], inbox[p]) for p in inbox})
    # malicious-server model only (params.malicious): the consistency round
    req = server.receive_consistency({p: P[p].confirm_survivors(r, req[p]) for p in req})
    result = server.receive_unmask_responses({p: P[p].unmask(r, req[p]) for p in req})

The server here is the honest implementation; participants do not trust it. Each
checks every request against its own state and parameters (see
:mod:`fedcollab.secure.participant`) and refuses a lying one.

A rejected message (malformed, replayed, wrong length, unknown peer, sender not in
the round) is recorded in ``result.rejected`` and its sender treated as dropped; the
round continues. :class:`RoundAbortedError` (fewer than ``min_group`` inputs, or
fewer than ``t`` shares of a needed secret) means: leave the global model unchanged.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Collection, Mapping, Sequence, TypeVar

import numpy as np

from fedcollab.secure import keys as K
from fedcollab.secure._state import Package, RoundState, addressed
from fedcollab.secure._wire import pack_reveals, pack_sealed
from fedcollab.secure.encoding import FixedPointCodec
from fedcollab.secure.errors import (
    InconsistentSharesError,
    MalformedMessageError,
    NotEnoughSharesError,
    ProtocolError,
    RoundAbortedError,
    SecAggConfigError,
    TooFewSurvivorsError,
    UnknownParticipantError,
)
from fedcollab.secure.graph import derive_graph, graph_seed_for, threshold_for
from fedcollab.secure.messages import (
    SERVER,
    Advertise,
    Confirmations,
    Consistency,
    KeyShares,
    Kind,
    MaskedInput,
    MaskRequest,
    PeerKeys,
    Roster,
    Sealed,
    UnmaskRequest,
    UnmaskResponse,
    pack,
    pack_body,
    unpack,
)
from fedcollab.secure.params import SecAggParams, validate_group_size
from fedcollab.secure.prg import accumulate_masks
from fedcollab.secure.recovery import (
    mask_key_check,
    reconstruct,
    seed_table_check,
    seeds_from_mask_key,
    self_seed_check,
    signed_seeds,
)
from fedcollab.secure.result import SecureSumResult

__all__ = ["SecureServer"]

T = TypeVar("T")


class SecureServer:
    """Aggregates one secure group's masked inputs, round after round.

    Args:
        participant_ids: The whole secure group (fixes the ring width).
        params: The group's parameters (same as the participants').
        rng_seed: Seed for the public SecAgg+ graph (``graph.graph_seed_for``); ``None``
            seeds from ``os.urandom``.
        graph_seed: The graph seed pinned at setup, as bytes (overrides ``rng_seed``);
            the participants derive their partners from it, so it must be theirs.

    Raises:
        GroupTooSmallError: Fewer than ``params.min_group`` participants.
        SecAggConfigError: Duplicate ids, or no ring wide enough for the group.
    """

    def __init__(self, participant_ids: Sequence[int], params: SecAggParams, *,
                 rng_seed: int | None = None, graph_seed: bytes | None = None) -> None:
        ids = list(participant_ids)
        if len(set(ids)) != len(ids) or any(not 0 <= i < SERVER for i in ids):
            raise SecAggConfigError("participant ids must be distinct and in [0, 2**32 - 1)")
        validate_group_size(len(ids), params.min_group)
        self.params = params
        self.codec: FixedPointCodec = params.codec(len(ids))
        self._ids = frozenset(ids)
        if graph_seed is None:
            graph_seed = graph_seed_for(rng_seed) if rng_seed is not None else os.urandom(16)
        self.graph_seed = bytes(graph_seed)
        self._floor = params.floor(len(ids))
        self._graph_members: frozenset[int] = frozenset()
        self._graph: dict[int, tuple[int, ...]] = {}
        self._t: dict[int, int] = {}
        self._keys: dict[int, PeerKeys] = {}
        self._known: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        self._packages: dict[int, Package] = {}
        self._must_rotate: set[int] = set()
        self._key_round: dict[int, int] = {}  # when each member last advertised keys
        self._last_round = -1
        self._round: RoundState | None = None
        self._probe = K.generate_private_key()  # only to test advertised keys

    @property
    def graph(self) -> Mapping[int, tuple[int, ...]]:
        """Neighbours of each member of the current graph (public)."""
        return dict(self._graph)

    def threshold(self, participant_id: int) -> int:
        """The share threshold ``t`` of a participant's neighbourhood."""
        return self._t[participant_id]

    def must_rotate(self) -> frozenset[int]:
        """Participants that must run key setup (fresh keys) before taking part again."""
        return frozenset(self._must_rotate)

    def rekey(self, participants: Collection[int]) -> None:
        """Make ``participants`` run key setup (fresh keys) before they take part again:
        their host restarted, and the session keys the server holds for them are gone
        on their side (a cross-silo gateway that rejoined)."""
        self._must_rotate |= set(participants) & self._ids

    # -- stages --------------------------------------------------------------------
    def begin_round(self, round_id: int, participants: Collection[int], *, dim: int
                    ) -> frozenset[int]:
        """Start a round; returns who must advertise fresh keys (key setup) first.

        Raises:
            ProtocolError: ``round_id`` does not increase (a replayed round).
            UnknownParticipantError: A participant outside the secure group.
            TooFewSurvivorsError: Fewer than ``min_group`` participants.
        """
        if round_id <= self._last_round:
            raise ProtocolError(f"round {round_id} does not follow round {self._last_round}; "
                                "round ids must increase")
        members = set(participants)
        if members - self._ids:
            raise UnknownParticipantError(f"round {round_id}: participant "
                                          f"{min(members - self._ids)} is not in the group")
        if dim < 1:
            raise SecAggConfigError(f"dim={dim} must be at least 1")
        self._abandon()
        self._last_round = round_id
        self._require_group(len(members), round_id, "participants at the start")
        if frozenset(members) != self._graph_members:
            self._graph = derive_graph(sorted(members), self.graph_seed,
                                       protocol=self.params.protocol,
                                       degree=self.params.neighbours,
                                       threshold=self.params.threshold,
                                       expected_dropout=self.params.expected_dropout)
            self._t = {u: threshold_for(len(vs), self.params.threshold)
                       for u, vs in self._graph.items()}
            self._graph_members = frozenset(members)
            self._packages.clear()
        amortise = self.params.amortise_keys
        window = self.params.key_rotation_rounds
        advertisers = {u for u in members
                       if not amortise or u not in self._keys or u in self._must_rotate
                       or (window is not None and round_id - self._key_round[u] >= window)}
        if advertisers or any(not self._package_current(u, round_id, members) for u in members):
            # A participant shares a round's recovery secret once per key pair, and a
            # neighbour's new keys invalidate its package: whenever anyone needs keys
            # (or a package), every member re-keys together.
            advertisers = set(members)
        self._round = RoundState(round_id, dim, members, advertisers,
                                 group=tuple(sorted(members)))
        return frozenset(advertisers)

    def receive_advertisements(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Stage ADVERTISE -> ROSTER: record fresh keys, send rosters to whoever must share."""
        rs, t0 = self._enter_stage("advertise"), time.perf_counter()
        fresh: dict[int, PeerKeys] = {}
        for pid, data in rs.accept("advertise", messages, rs.advertisers):
            try:
                msg = unpack(data, Advertise, round_id=rs.round_id, sender=pid, recipient=SERVER)
                for raw in {msg.c_pk, msg.s_pk}:  # loadable and usable (not low order)
                    K.agree(self._probe, raw)
                fresh[pid] = PeerKeys(pid, msg.c_pk, msg.s_pk, rs.round_id, msg.sig)
            except ProtocolError as exc:
                rs.reject(pid, exc)
        for pid in sorted(rs.advertisers & rs.members - fresh.keys()):
            rs.exclude(pid, "sent no key advertisement", failed=True)
        for pid, k in fresh.items():
            self._keys[pid], self._known[pid] = k, {}
            self._key_round[pid] = rs.round_id
            self._must_rotate.discard(pid)
            self._packages.pop(pid, None)
        rs.key_setup = set(fresh)
        out: dict[int, bytes] = {}
        for u in sorted(u for u in rs.members if not self._package_valid(u, rs)):
            peers = [self._keys[v] for v in self._graph[u] if v in rs.members and v in self._keys]
            if len(peers) < self._t[u]:
                rs.exclude(u, f"only {len(peers)} neighbours with keys, need "
                                     f"{self._t[u]} (threshold)")
                continue
            self._remember(u, peers)
            rs.sharers[u] = {p.pid for p in peers}
            out[u] = pack(Roster(self._t[u], len(self._ids), rs.group, tuple(peers)),
                          round_id=rs.round_id, sender=SERVER, recipient=u)
        return rs.leave("advertise", "share_keys", t0, out)

    def receive_key_shares(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Stage SHARE_KEYS -> MASK_REQUEST: keep the packages, tell everyone what to mask."""
        rs, t0 = self._enter_stage("share_keys"), time.perf_counter()
        amortise = self.params.amortise_keys
        for pid, data in rs.accept("share_keys", messages, set(rs.sharers)):
            try:
                msg = unpack(data, KeyShares, round_id=rs.round_id, sender=pid, recipient=SERVER)
                blobs = addressed(msg.shares, rs.sharers[pid], self._t[pid], pid)
                if amortise != bool(msg.seed_table):
                    raise MalformedMessageError(f"key shares of participant {pid}: seed table "
                                                f"{'missing' if amortise else 'unexpected'}")
                covered = {v: self._known[pid][v][1] for v in rs.sharers[pid]}
                rs.packages[pid] = Package(rs.round_id, covered, set(blobs), msg.seed_table,
                                           self._keys[pid].s_pk, frozenset(blobs))
                rs.key_blobs[pid] = blobs
            except ProtocolError as exc:
                rs.reject(pid, exc)
        for pid in sorted(set(rs.sharers) & rs.members - rs.packages.keys()):
            rs.exclude(pid, "sent no key shares", failed=True)
        for u in rs.members - rs.packages.keys():
            rs.packages[u] = self._packages[u]
        active = set(rs.members)
        changed = True
        while changed:
            changed = False
            for u in sorted(active):
                sealed_to = rs.packages[u].sealed_to
                partners = sum(v in active and v in sealed_to for v in self._graph[u])
                holders = len(rs.packages[u].holders & active)
                if min(partners, holders) < self._t[u]:
                    active.discard(u)
                    changed = True
                    rs.exclude(u, f"{partners} active neighbours, {holders} share holders;"
                                         f" need {self._t[u]} (threshold)")
        self._require_group(len(active), rs.round_id, "participants left to mask", rs)
        rs.active = active
        out: dict[int, bytes] = {}
        for u in sorted(active):
            sealed_to = rs.packages[u].sealed_to
            mine = tuple(v for v in self._graph[u] if v in active and v in sealed_to)
            updates = [self._keys[v] for v in self._graph[u] if v in self._keys
                       and self._known[u].get(v) != (self._keys[v].c_pk, self._keys[v].s_pk)]
            self._remember(u, updates)
            deliveries = tuple(Sealed(w, rs.key_blobs[w][u]) for w in mine
                               if w in rs.key_blobs and u in rs.key_blobs[w])
            rs.partners[u] = mine
            rs.covered_next[u] = {v: self._known[u][v][1] for v in mine}
            out[u] = pack(MaskRequest(len(self._ids), rs.dim, self._t[u], rs.group, mine,
                                      tuple(updates), deliveries),
                          round_id=rs.round_id, sender=SERVER, recipient=u)
        return rs.leave("share_keys", "masked_input", t0, out)

    def receive_masked_inputs(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Stage MASKED_INPUT -> UNMASK_REQUEST: collect inputs, ask for the right shares.

        Raises:
            RoundAbortedError: Too few inputs, or too few holders left for a secret.
        """
        rs, t0 = self._enter_stage("masked_input"), time.perf_counter()
        expected = rs.dim * self.codec.item_bytes
        for pid, data in rs.accept("masked_input", messages, rs.active):
            try:
                msg = unpack(data, MaskedInput, round_id=rs.round_id, sender=pid,
                             recipient=SERVER)
                if msg.ring_bits != self.codec.ring_bits or len(msg.vector) != expected:
                    raise MalformedMessageError(
                        f"round {rs.round_id}: masked vector of participant {pid} is "
                        f"{len(msg.vector)} bytes in a {msg.ring_bits}-bit ring, expected "
                        f"{expected} ({rs.dim} x {self.codec.ring_bits}-bit)")
                if self.params.amortise_keys and not msg.seed_table:
                    raise MalformedMessageError(f"participant {pid}: next seed table missing")
                rs.input_blobs[pid] = addressed(msg.shares, set(rs.packages[pid].sealed_to),
                                                self._t[pid], pid)
                rs.inputs[pid] = msg
            except ProtocolError as exc:
                rs.reject(pid, exc)
        alive = set(rs.inputs)
        rs.dropped = rs.active - alive
        self._require_group(len(alive), rs.round_id, "masked inputs", rs)
        for u in sorted(alive):
            self._require_shares(rs, u, "self-mask seed", len(set(rs.input_blobs[u]) & alive))
        dangling = {u for u in rs.dropped if any(v in alive for v in rs.partners[u])}
        for u in sorted(dangling):
            self._require_shares(rs, u, "recovery secret", len(rs.packages[u].holders & alive))
        rs.dangling = dangling
        if self.params.malicious:  # first every survivor signs who survived
            survivors = tuple(sorted(alive))
            out = {v: pack(Consistency(survivors), round_id=rs.round_id, sender=SERVER,
                           recipient=v) for v in survivors}
            return rs.leave("masked_input", "consistency", t0, out)
        return rs.leave("masked_input", "unmask", t0, self._unmask_requests(rs, alive, {}))

    def receive_consistency(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Stage CONSISTENCY -> UNMASK_REQUEST (malicious-server model): collect each
        survivor's confirmations of the survivor set and pass every survivor those
        its partners addressed to it.

        The server cannot check (or forge) them: each is an HMAC under a key only
        the two partners hold, checked by the recipient before it reveals anything.
        """
        rs, t0 = self._enter_stage("consistency"), time.perf_counter()
        tags: dict[int, dict[int, bytes]] = {}
        for pid, data in rs.accept("consistency", messages, set(rs.inputs)):
            try:
                msg = unpack(data, Confirmations, round_id=rs.round_id, sender=pid,
                             recipient=SERVER)
                tags[pid] = addressed(msg.tags, set(rs.partners[pid]), 0, pid)
            except ProtocolError as exc:
                rs.reject(pid, exc)
        return rs.leave("consistency", "unmask", t0, self._unmask_requests(rs, set(tags), tags))

    def _unmask_requests(self, rs: RoundState, asked: set[int],
                         tags: Mapping[int, Mapping[int, bytes]]) -> dict[int, bytes]:
        """Each of ``asked`` (survivors): which shares to reveal, with the partners'
        confirmations addressed to it."""
        alive, dangling = set(rs.inputs), rs.dangling
        blobs, packages = rs.input_blobs, rs.packages
        self_kind, recovery = Kind.SELF, Kind.RECOVERY
        out: dict[int, bytes] = {}
        for v in sorted(asked):
            # (peer, kind, blob) tuples: 1,600 a round at N=100, packed as they are
            reveals: list[tuple[int, Kind, bytes]] = []
            requested: dict[int, Kind] = {}
            for u in self._graph[v]:
                if u in alive and v in blobs[u]:
                    reveals.append((u, self_kind, blobs[u][v]))
                    requested[u] = self_kind
                elif u in dangling and v in packages[u].holders:
                    reveals.append((u, recovery, b""))
                    requested[u] = recovery
            rs.requested[v] = requested
            signed = pack_sealed([Sealed(w, tags[w][v]) for w in rs.partners[v]
                                  if w in tags and v in tags[w]])
            out[v] = pack_body(UnmaskRequest, pack_reveals(reveals) + signed,
                               round_id=rs.round_id, sender=SERVER, recipient=v)
        return out

    def receive_unmask_responses(self, messages: Mapping[int, bytes]) -> SecureSumResult:
        """Stage UNMASK: reconstruct the needed secrets, strip every mask, decode the sum.

        Raises:
            NotEnoughSharesError: Fewer than ``t`` shares of a needed secret arrived.
            RoundAbortedError: Shares that reconstruct no valid secret (tampering).
        """
        rs, t0 = self._enter_stage("unmask"), time.perf_counter()
        got: dict[tuple[int, Kind], dict[int, int]] = {}
        for pid, data in rs.accept("unmask", messages, set(rs.requested)):
            try:
                msg = unpack(data, UnmaskResponse, round_id=rs.round_id, sender=pid,
                             recipient=SERVER)
                shares = msg.shares
                if len({peer for peer, _, _ in shares}) != len(shares):
                    raise MalformedMessageError(f"participant {pid} sent two shares of one peer")
                requested = rs.requested[pid]
                for peer, kind, _ in shares:
                    if requested.get(peer) != kind:
                        raise UnknownParticipantError(
                            f"participant {pid} sent a {kind.name.lower()} share for "
                            f"participant {peer}, which was not requested from it")
                for peer, kind, y in shares:  # all checked: only now is any kept
                    got.setdefault((peer, kind), {})[pid] = y
            except ProtocolError as exc:
                rs.reject(pid, exc)
        responders = {p for p in rs.requested if p in messages and p not in rs.rejected}
        rs.base = tuple(p + 1 for p in sorted(responders))
        alive = sorted(rs.inputs)
        total = np.zeros(rs.dim, dtype=self.codec.dtype)
        for u in alive:
            np.add(total, rs.inputs[u].array(self.codec.dtype), out=total)
        plain = total.copy()
        accumulate_masks(plain, (), [self._reconstruct(
            rs, u, "self-mask seed", got.get((u, Kind.SELF), {}),
            self_seed_check(rs.inputs[u].digest, rs.round_id, u)) for u in alive])
        for u in sorted(rs.dropped):
            survivors = [v for v in rs.partners[u] if v in rs.inputs]
            if survivors:
                seeds = self._pair_seeds(rs, u, got.get((u, Kind.RECOVERY), {}), survivors)
                accumulate_masks(plain, *signed_seeds(u, seeds, survivors))
        self._commit(rs, responders)
        rs.seconds["unmask"] += time.perf_counter() - t0
        rs.stage = "done"
        return SecureSumResult(
            round_id=rs.round_id, total=self.codec.decode_sum(plain), integer_sum=plain,
            survivors=tuple(alive), dropped=tuple(sorted(rs.dropped)),
            unresponsive=tuple(sorted(set(alive) - responders)), rejected=dict(rs.rejected),
            excluded=dict(rs.excluded), key_setup=tuple(sorted(rs.key_setup)),
            bytes_up=dict(rs.bytes_up), bytes_down=dict(rs.bytes_down),
            seconds=dict(rs.seconds))

    # -- helpers -------------------------------------------------------------------
    def _enter_stage(self, stage: str) -> RoundState:
        rs = self._round
        if rs is None or rs.stage != stage:
            expected = "begin_round" if rs is None else rs.stage
            raise ProtocolError(f"server expected stage {expected!r}, got {stage!r}; call the "
                                "stages in order (an aborted round needs a new begin_round)")
        return rs

    def _remember(self, u: int, peers: Sequence[PeerKeys]) -> None:
        known = self._known[u]
        for p in peers:
            known[p.pid] = (p.c_pk, p.s_pk)

    def _package_current(self, u: int, round_id: int, members: set[int]) -> bool:
        """Whether ``u`` holds a package for ``round_id`` over this graph (amortised)."""
        p = self._packages.get(u)
        return (p is not None and p.for_round == round_id and u in self._keys
                and len(p.holders & members) >= self._t[u])

    def _package_valid(self, u: int, rs: RoundState) -> bool:
        p = self._packages.get(u)
        if not self.params.amortise_keys or p is None or p.for_round != rs.round_id \
                or p.owner_s_pk != self._keys[u].s_pk:
            return False
        for v in self._graph[u]:
            if v in rs.members and v in self._keys and p.covered.get(v) != self._keys[v].s_pk:
                return False
        return len(p.holders & rs.members) >= self._t[u]

    def _abort(self, rs: RoundState, exc: RoundAbortedError) -> RoundAbortedError:
        rs.stage = "aborted"
        self._must_rotate |= rs.dropped | (rs.failed & self._ids)
        return exc

    def _require_group(self, count: int, round_id: int, what: str, rs: RoundState | None = None
                       ) -> None:
        if count < self._floor:
            exc = TooFewSurvivorsError(
                f"round {round_id}: only {count} {what}, min_group is {self.params.min_group}"
                f" (the round floor, min_round_fraction={self.params.min_round_fraction} of "
                f"the group, is {self._floor}): a sum of few updates is no secret, and "
                "participants refuse a smaller round; round aborted, leave the global model "
                "unchanged", round_id=round_id)
            raise exc if rs is None else self._abort(rs, exc)

    def _require_shares(self, rs: RoundState, u: int, what: str, count: int) -> None:
        if count < self._t[u]:
            raise self._abort(rs, NotEnoughSharesError(
                f"round {rs.round_id}: got {count} shares of participant {u}'s {what}, need "
                f"{self._t[u]} (threshold); too many participants dropped", round_id=rs.round_id))

    def _reconstruct(self, rs: RoundState, owner: int, what: str, shares: Mapping[int, int],
                     check: Callable[[int], T | None]) -> T:
        self._require_shares(rs, owner, what, len(shares))
        value = reconstruct(shares, self._t[owner], check, owner=owner, base=rs.base)
        if value is None:
            raise self._abort(rs, InconsistentSharesError(
                f"round {rs.round_id}: the {len(shares)} shares of participant {owner}'s {what} "
                "reconstruct no valid secret (a share was tampered with); round aborted",
                round_id=rs.round_id))
        return value

    def _pair_seeds(self, rs: RoundState, u: int, shares: Mapping[int, int],
                    survivors: Sequence[int]) -> dict[int, bytes]:
        r = rs.round_id
        if not self.params.amortise_keys:
            key = self._reconstruct(rs, u, "mask key", shares, mask_key_check(self._keys[u].s_pk))
            return seeds_from_mask_key(key, u, {v: self._keys[v].s_pk for v in survivors}, r)
        check = seed_table_check(rs.packages[u].table, r, u)
        seeds = self._reconstruct(rs, u, "recovery key", shares, check)
        missing = [v for v in survivors if v not in seeds]
        if missing:
            raise self._abort(rs, RoundAbortedError(
                f"round {r}: participant {u}'s seed table lacks partner {missing[0]}; its "
                "masks cannot be removed; round aborted", round_id=r))
        return seeds

    def _commit(self, rs: RoundState, responders: set[int]) -> None:
        self._must_rotate |= rs.dropped | (rs.failed & self._ids)
        for u in rs.dropped:
            self._packages.pop(u, None)
        if not self.params.amortise_keys:
            self._packages.clear()
            return
        for u, msg in rs.inputs.items():
            holders = set(rs.input_blobs[u]) & responders
            self._packages[u] = Package(rs.round_id + 1, rs.covered_next[u], holders,
                                        msg.seed_table, self._keys[u].s_pk,
                                        frozenset(rs.input_blobs[u]))

    def _abandon(self) -> None:
        rs = self._round
        if rs is not None and rs.stage not in ("done", "aborted"):
            self._abort(rs, RoundAbortedError("abandoned", round_id=rs.round_id))
