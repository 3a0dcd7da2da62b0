"""A scripted lying server against the real participant code, and the transcript it got.

:class:`Lab` holds real :class:`SecureParticipant` objects (provisioned through the
genuine setup channel, :func:`provision_identities`) and plays the server itself: it
writes every request from the message classes, the way :class:`SecureServer` does,
and a :class:`Lie` (drawn from a grammar by the fuzzer, or written by a regression
test) bends any of them: the partner list, member set or threshold a participant is
told, the survivor set it signs, which shares it is asked for, a second roster (a
re-share), withheld or replayed deliveries, a re-installed registry with sybils,
another round config, a resumed round with the same inputs. Participants that refuse
are recorded (the error class) and the server carries on with the rest: a lying
server does not stop at a refusal.

Everything the server received is recorded, and the ground truth the oracle needs
(which secret each share belongs to, which seeds each masked vector used) is read
by wrapping five of the participant's own helpers for the duration of a round (they
still run unchanged): ``share_values`` (each Shamir polynomial's shares),
``_share_payloads`` (which secret and kind each sharing carries), ``_seal_payloads``
(the sealed blobs that carry them: sealed in the masked input, once the round's model
hash is known, so a prepared sharing may never be sent), ``_seal_seed_table``
(the seeds a recovery key unlocks) and ``accumulate_masks`` (the seeds in each
masked vector). :meth:`Lab.transcript` turns the record into an
:class:`~fedcollab.secure.exposure.Transcript` for the oracle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

import fedcollab.secure.participant as participant_module
from fedcollab.secure import SecAggParams, SecureParticipant
from fedcollab.secure import graph as graph_module
from fedcollab.secure.driver import provision_identities
from fedcollab.secure.errors import SecAggError
from fedcollab.secure.exposure import Masked, Sharing, Transcript
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
    unpack,
)
from fedcollab.secure.recovery import seeds_from_mask_key

DIM = 3


def make(cls: type, **fields: Any) -> Any:
    """A message of ``cls`` from the fields it has (so the script follows the wire
    format as it changes: a field the class lacks is left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in names})


def supports(cls: type, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(cls)}


# -- the grammar ---------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What the server tells one participant in one round (``None``: the honest value)."""

    members: tuple[int, ...] | None = None  # the round's member set it is told
    roster: tuple[int, ...] | None = None  # the holders named in its roster
    roster_t: int | None = None
    partners: tuple[int, ...] | None = None  # the partners named in its mask request
    request_t: int | None = None
    survivors: tuple[int, ...] | None = None  # the survivor set it is asked to sign
    dim: int | None = None  # a changed round config
    group_size: int | None = None


@dataclass(frozen=True)
class Lie:
    """A server strategy for one round (every field optional: the empty Lie is honest).

    Attributes:
        views: Per participant, what it is told instead of the honest values.
        ask_recovery: (holder, owner): ask the holder for the owner's RECOVERY share
            whatever the survivor set says (the owner "dropped").
        ask_self: (holder, owner): ask for the owner's SELF share (owner "alive").
        reshare: Participants sent a second roster (``views2``) after their first
            sharing: a re-share in the same round.
        views2: The second roster's view of each re-sharer.
        fresh_keys_for_reshare: The re-sharers advertise again first (the honest
            way to re-share).
        withhold: (holder, owner): the owner's package share is not delivered.
        replay: Participants sent, instead of this round's mask request, the bytes of
            their previous one re-headed to this round.
        replay_adverts: Key updates carry every peer's first (oldest) advert instead
            of its current one.
        replay_deliveries: Participants whose mask request carries the first sealed
            key shares the server ever got from each partner (an earlier round's).
        second_unmask: (holder, owner, kind): after its unmask response, the holder
            gets a second request for that share.
        sybils: Identities the server adds by re-installing the registry; they take
            part as the server's own participants (colluders).
        sybil_partners: Participants whose views name the sybils as partners.
        drop: Stage -> participants that drop after it (honest dropouts).
    """

    views: Mapping[int, View] = field(default_factory=dict)
    ask_recovery: frozenset[tuple[int, int]] = frozenset()
    ask_self: frozenset[tuple[int, int]] = frozenset()
    reshare: frozenset[int] = frozenset()
    views2: Mapping[int, View] = field(default_factory=dict)
    fresh_keys_for_reshare: bool = False
    withhold: frozenset[tuple[int, int]] = frozenset()
    replay: frozenset[int] = frozenset()
    replay_adverts: bool = False
    replay_deliveries: frozenset[int] = frozenset()
    second_unmask: frozenset[tuple[int, int, Kind]] = frozenset()
    sybils: int = 0
    sybil_partners: frozenset[int] = frozenset()
    drop: Mapping[str, frozenset[int]] = field(default_factory=dict)

    def view(self, pid: int) -> View:
        return self.views.get(pid, View())


# -- ground truth ----------------------------------------------------------------------


@dataclass
class _Made:
    """A sharing as its owner made it (ground truth, for the transcript only)."""

    sid: int
    owner: int
    kind: Kind
    for_round: int
    threshold: int
    ys: dict[int, int]
    secret: int
    payloads: frozenset[bytes] = frozenset()  # its holders' plaintexts
    blobs: frozenset[bytes] = frozenset()  # the sealed blobs that carried them


class Recorder:
    """Wraps the participant's helpers (class-wide) while active; see the module doc."""

    def __init__(self) -> None:
        self.sharings: list[_Made] = []
        self.tables: dict[int, dict[int, bytes]] = {}  # recovery key -> seeds it unlocks
        self.masks: dict[bytes, tuple[int, list[bytes], list[bytes]]] = {}  # digest -> seeds
        self._columns: list[tuple[int, list[int]]] = []
        self._acc: list[tuple[list[bytes], list[bytes]]] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        rec = self
        pm = participant_module
        cls = SecureParticipant
        orig_share, orig_acc = pm.share_values, pm.accumulate_masks
        orig_payloads, orig_sealp = cls._share_payloads, cls._seal_payloads
        orig_table, orig_prep = cls._seal_seed_table, cls._prepare

        def share_values(secret: int, *, threshold: int, xs: Sequence[int], **kw: Any) -> list[int]:
            ys = orig_share(secret, threshold=threshold, xs=xs, **kw)
            rec._columns.append((secret, list(ys)))
            return ys

        def accumulate(acc: np.ndarray, plus: Any, minus: Any = ()) -> np.ndarray:
            plus, minus = list(plus), list(minus)
            rec._acc.append((plus, minus))
            return orig_acc(acc, plus, minus)

        def share_payloads(
            self: SecureParticipant,
            holders: tuple[int, ...],
            threshold: int,
            entries: list[Any],
        ) -> Any:
            rec._columns.clear()
            out = orig_payloads(self, holders, threshold, entries)
            for (kind, for_round, secret), (sec, ys) in zip(entries, rec._columns):
                assert sec == secret
                rec.sharings.append(
                    _Made(
                        len(rec.sharings),
                        self.participant_id,
                        kind,
                        for_round,
                        threshold,
                        dict(zip(holders, ys)),
                        secret,
                        payloads=frozenset(out),
                    )
                )
            rec._columns.clear()
            return out

        def seal_payloads(
            self: SecureParticipant,
            stage: Any,
            round_id: int,
            holders: tuple[int, ...],
            payloads: list[bytes],
        ) -> Any:
            out = orig_sealp(self, stage, round_id, holders, payloads)
            sealed = frozenset(payloads)
            for i, made in enumerate(rec.sharings):  # the sharings these payloads carry
                if made.payloads & sealed:
                    rec.sharings[i] = dataclasses.replace(
                        made, blobs=made.blobs | {s.blob for s in out})
            return out

        def seal_table(
            self: SecureParticipant, for_round: int, partners: tuple[int, ...]
        ) -> tuple[bytes, bytes]:
            e, table = orig_table(self, for_round, partners)
            rec.tables[int.from_bytes(e, "big")] = dict(self._seeds[for_round])
            return e, table

        def prepare(self: SecureParticipant, ask: Any) -> Any:
            rec._acc.clear()
            out = orig_prep(self, ask)
            plus, minus = rec._acc[-1]
            rec.masks[out.digest] = (self.participant_id, plus, minus)
            rec._acc.clear()
            return out

        pm.share_values, pm.accumulate_masks = share_values, accumulate  # type: ignore[assignment]
        cls._share_payloads, cls._seal_payloads = (  # type: ignore[method-assign]
            share_payloads,
            seal_payloads,
        )
        cls._seal_seed_table, cls._prepare = seal_table, prepare  # type: ignore[method-assign]
        try:
            yield
        finally:
            pm.share_values, pm.accumulate_masks = orig_share, orig_acc  # type: ignore[assignment]
            cls._share_payloads, cls._seal_payloads = (  # type: ignore[method-assign]
                orig_payloads,
                orig_sealp,
            )
            cls._seal_seed_table, cls._prepare = orig_table, orig_prep  # type: ignore[method-assign]


# -- the lab -----------------------------------------------------------------------------


@dataclass
class _Received:
    session: int
    round_id: int
    owner: int
    digest: bytes
    label: Hashable
    vector: bytes = b""  # the masked vector as received (ring elements)


class Lab:
    """A group of real participants and a scripted server (see the module docstring).

    Args:
        n: Participants 0..n-1.
        params: Their parameters.
        seed: Graph seed and the participants' input vectors.
    """

    def __init__(
        self,
        n: int,
        params: SecAggParams,
        *,
        seed: int = 0,
        job_id: bytes = b"job",
        identities: Mapping[int, Any] | None = None,
    ) -> None:
        self.params = params
        self.seed = seed
        self.job_id = job_id
        self.identities = dict(identities or {})
        self.group = tuple(range(n))
        self.rec = Recorder()
        self.parts: dict[int, SecureParticipant] = {}
        self.colluders: set[int] = set()
        self._provision(self.group)
        self.keys: dict[int, PeerKeys] = {}
        self.first_keys: dict[int, PeerKeys] = {}
        self.old_key_blobs: dict[int, dict[int, bytes]] = {}
        #: adverts the server hands out instead of what a participant advertised
        self.substitute: dict[int, PeerKeys] = {}
        self.all_pks: dict[int, set[bytes]] = {}
        self.told: dict[int, dict[int, PeerKeys]] = {}
        self.last_request: dict[int, bytes] = {}
        self.refusals: list[tuple[int, int, str, str]] = []  # round, pid, stage, error class
        self.errors: list[tuple[str, type[SecAggError]]] = []
        self.received: list[_Received] = []
        self.revealed: set[tuple[int, int]] = set()  # (sharing index, holder)
        self.blobs_seen: set[bytes] = set()
        self.survivors: dict[int, frozenset[int]] = {}
        self.session = 0
        self.rounds_run: list[int] = []

    # -- setup ----------------------------------------------------------------------
    def _provision(self, ids: Sequence[int]) -> None:
        parts = {i: SecureParticipant(i, self.params, identity=self.identities.get(i)) for i in ids}
        try:
            provision_identities(
                parts,
                rng_seed=self.seed,  # type: ignore[call-arg]
                job_id=self.job_id,
            )
        except TypeError:  # the setup channel without a pinned graph seed and job id
            provision_identities(parts)
        self.parts.update(parts)

    def resume(self) -> None:
        """A resumed job: every honest participant restarts (a fresh object with the
        same identity key and whatever it persisted) and the server starts over."""
        fresh = {}
        for pid, old in self.parts.items():
            if pid in self.colluders:
                continue
            p = SecureParticipant(pid, self.params, identity=old._identity)
            if hasattr(old, "views") and hasattr(p, "restore_views"):
                p.restore_views(old.views())  # what the worker persisted (checkpoints/secure/)
            fresh[pid] = p
        registry = (
            {pid: p.identity_public() for pid, p in fresh.items()} if self.params.malicious else {}
        )
        setup = getattr(next(iter(self.parts.values())), "setup", None)
        for p in fresh.values():
            if setup is not None:
                p.install_setup(setup)
            elif registry:
                p.install_registry(registry)
        self.parts.update(fresh)
        self.keys, self.told, self.last_request = {}, {}, {}

    def reinstall_with_sybils(self, count: int) -> list[int]:
        """Attack 4: the server mints ``count`` identities and re-installs a registry
        with them in every participant (through the participant's install method)."""
        start = max(self.parts) + 1
        sybils = list(range(start, start + count))
        new = {i: SecureParticipant(i, self.params) for i in sybils}
        if self.params.malicious:
            registry = {pid: p.identity_public() for pid, p in {**self.parts, **new}.items()}
            for pid, p in {**self.parts, **new}.items():
                self._call(-1, pid, "install_registry", lambda p=p: p.install_registry(registry))
        else:  # honest-but-curious: a member list, if the participant pins one
            setup = getattr(next(iter(self.parts.values())), "setup", None)
            if setup is not None:
                grown = dataclasses.replace(setup, members=setup.members | frozenset(sybils))
                for pid, p in {**self.parts, **new}.items():
                    self._call(-1, pid, "install_setup", lambda p=p: p.install_setup(grown))
        self.parts.update(new)
        self.colluders |= set(sybils)
        return sybils

    # -- helpers ----------------------------------------------------------------------
    def _call(self, round_id: int, pid: int, stage: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except SecAggError as exc:
            self.refusals.append((round_id, pid, stage, type(exc).__name__))
            self.errors.append((stage, type(exc)))
            return None

    def refused(self, name: str, stages: Sequence[str] | None = None) -> bool:
        """Whether some participant refused with the error class ``name`` (or a
        subclass), at one of ``stages`` if given."""
        return any(
            name in {c.__name__ for c in e.__mro__} and (stages is None or st in stages)
            for st, e in self.errors
        )

    def honest_graph(self, members: Sequence[int]) -> dict[int, tuple[int, ...]]:
        p = self.params
        derive = getattr(graph_module, "derive_graph", None)
        some = next(iter(self.parts.values()))
        setup = getattr(some, "setup", None)
        if derive is not None and setup is not None:
            return dict(
                derive(
                    sorted(members),
                    setup.graph_seed,
                    protocol=p.protocol,
                    degree=p.neighbours,
                    threshold=p.threshold,
                    expected_dropout=p.expected_dropout,
                )
            )
        return graph_module.build_graph(
            sorted(members),
            protocol=p.protocol,
            degree=p.neighbours,
            rng=random.Random(self.seed),
            threshold=p.threshold,
            expected_dropout=p.expected_dropout,
        )

    def t(self, k: int) -> int:
        return graph_module.threshold_for(k, self.params.threshold) if k >= 2 else k + 1

    def vector(self, pid: int, round_id: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, pid, round_id])
        x = rng.uniform(-1, 1, DIM)
        x[-1] = 1.0
        return x

    # -- one round ----------------------------------------------------------------------
    def round(self, round_id: int, lie: Lie = Lie(), members: Sequence[int] | None = None) -> None:
        """One round of ``members`` (default: every participant) under ``lie``."""
        with self.rec.active():
            self._round(round_id, lie, tuple(sorted(members or self.parts)))
        self.session += 1
        self.rounds_run.append(round_id)

    def _round(self, r: int, lie: Lie, members: tuple[int, ...]) -> None:
        P, sess = self.parts, self.session
        gone: set[int] = set()

        def drop(stage: str) -> None:
            gone.update(lie.drop.get(stage, frozenset()))

        members = tuple(u for u in members if u not in lie.drop.get("begin", frozenset()))
        honest = self.honest_graph(members)
        graph = {
            u: tuple(v for v in honest[u] if v not in self.colluders)
            + tuple(sorted(self.colluders & set(members)))
            if u in lie.sybil_partners
            else honest[u]
            for u in members
        }
        for c in self.colluders & set(members):
            graph[c] = tuple(v for v in members if v != c)
        drop("begin")
        # ADVERTISE
        need = [u for u in members if u not in gone and P[u].needs_keys(r)]
        self._advertise(r, need)
        drop("advertise")
        # ROSTER -> SHARE_KEYS
        changed = set(need)
        sharers = [
            u
            for u in members
            if u not in gone
            and (u in changed or any(v in changed for v in graph[u]) or P[u].needs_keys(r))
        ]
        key_blobs: dict[int, dict[int, bytes]] = {}
        for u in sharers:
            blobs = self._share(r, u, lie.view(u), self._nbrs(graph, u, lie.view(u)), members)
            if blobs is not None:
                key_blobs[u] = blobs
        second: dict[int, dict[int, bytes]] = {}
        if lie.reshare:
            if lie.fresh_keys_for_reshare:
                self._advertise(r, sorted(lie.reshare & set(members) - gone))
            for u in sorted(lie.reshare & set(members) - gone):
                view2 = lie.views2.get(u, View())
                blobs = self._share(r, u, view2, self._nbrs(graph, u, view2), members)
                if blobs is not None:
                    second[u] = blobs
        for w, blobs in key_blobs.items():
            self.old_key_blobs.setdefault(w, blobs)  # the first ones, for replays
        drop("share_keys")
        # MASK_REQUEST -> MASKED_INPUT
        partners_of: dict[int, tuple[int, ...]] = {}
        input_blobs: dict[int, dict[int, bytes]] = {}
        for u in members:
            if u in gone:
                continue
            view = lie.view(u)
            partners = (
                view.partners
                if view.partners is not None
                else tuple(v for v in self._nbrs(graph, u, view) if v not in gone)
            )
            partners_of[u] = partners
            deliveries = []
            for w in partners:
                src = second.get(w) if w in second and u in second[w] else key_blobs.get(w)
                if u in lie.replay_deliveries:  # an earlier round's sealed shares
                    src = self.old_key_blobs.get(w)
                if src is not None and u in src and (u, w) not in lie.withhold:
                    deliveries.append(Sealed(w, src[u]))
            request = pack(
                make(
                    MaskRequest,
                    group_size=view.group_size or len(self._group_for(u)),
                    dim=view.dim or DIM,
                    threshold=view.request_t
                    if view.request_t is not None
                    else self.t(len(partners)),
                    members=view.members or members,
                    partners=tuple(partners),
                    key_updates=self._updates(u, partners, lie.replay_adverts),
                    deliveries=tuple(deliveries),
                ),
                round_id=r,
                sender=SERVER,
                recipient=u,
            )
            if u in lie.replay and u in self.last_request:
                request = _rehead(self.last_request[u], r)
            self.last_request[u] = request
            out = self._call(
                r,
                u,
                "masked_input",
                lambda u=u, req=request: P[u].masked_input(r, self.vector(u, r), req),
            )
            if out is None:
                continue
            msg = unpack(out, MaskedInput, round_id=r, sender=u, recipient=SERVER)
            input_blobs[u] = {s.peer: s.blob for s in msg.shares}
            self.blobs_seen.update(s.blob for s in msg.shares)
            self.received.append(_Received(sess, r, u, msg.digest, (u, r), msg.vector))
        drop("masked_input")
        alive = tuple(sorted(input_blobs))  # whose inputs arrived
        self.survivors[sess] = frozenset(input_blobs)
        # CONSISTENCY
        tags: dict[int, dict[int, bytes]] = {}
        signed: dict[int, tuple[int, ...]] = {}
        if self.params.malicious:
            for u in alive:
                if u in gone:
                    continue
                view = lie.view(u)
                survivors = view.survivors if view.survivors is not None else alive
                signed[u] = survivors
                request = pack(
                    Consistency(tuple(survivors)), round_id=r, sender=SERVER, recipient=u
                )
                out = self._call(
                    r, u, "consistency", lambda u=u, req=request: P[u].confirm_survivors(r, req)
                )
                if out is not None:
                    msg = unpack(out, Confirmations, round_id=r, sender=u, recipient=SERVER)
                    tags[u] = {s.peer: s.blob for s in msg.tags}
            drop("consistency")
        # UNMASK
        for v in alive:
            if v in gone:
                continue
            claimed = lie.view(v).survivors  # what the server claims (signed, if malicious)
            view_alive = set(claimed if claimed is not None else signed.get(v, alive))
            reveals = []
            for u in partners_of[v]:
                kind: Kind | None = None
                if (v, u) in lie.ask_recovery:
                    kind = Kind.RECOVERY
                elif (v, u) in lie.ask_self or (u in view_alive and u in input_blobs):
                    kind = Kind.SELF if u in input_blobs and v in input_blobs[u] else None
                elif u not in view_alive:
                    kind = Kind.RECOVERY
                if kind == Kind.SELF:
                    reveals.append((u, Kind.SELF, input_blobs[u][v]))
                elif kind == Kind.RECOVERY:
                    reveals.append((u, Kind.RECOVERY, b""))
            signatures = tuple(
                Sealed(w, tags[w][v]) for w in partners_of[v] if w in tags and v in tags[w]
            )
            request = pack(
                UnmaskRequest(tuple(reveals), signatures), round_id=r, sender=SERVER, recipient=v
            )
            out = self._call(r, v, "unmask", lambda v=v, req=request: P[v].unmask(r, req))
            if out is None:
                continue
            msg = unpack(out, UnmaskResponse, round_id=r, sender=v, recipient=SERVER)
            for peer, _kind, y in msg.shares:
                self._attribute(v, peer, y)
            again = [(u, k) for h, u, k in sorted(lie.second_unmask) if h == v]
            if again:  # a second request: the other kind, or shares not asked the first time
                extra = tuple(
                    (u, k, input_blobs[u][v] if k == Kind.SELF else b"")
                    for u, k in again
                    if k == Kind.RECOVERY or (u in input_blobs and v in input_blobs[u])
                )
                request = pack(
                    UnmaskRequest(extra, signatures), round_id=r, sender=SERVER, recipient=v
                )
                out = self._call(r, v, "unmask", lambda v=v, req=request: P[v].unmask(r, req))
                if out is not None:
                    msg = unpack(out, UnmaskResponse, round_id=r, sender=v, recipient=SERVER)
                    for peer, _kind, y in msg.shares:
                        self._attribute(v, peer, y)
        for c in sorted(self.colluders):  # the server's own participants hold what they got
            for made in self.rec.sharings:
                if c in made.ys:
                    self.revealed.add((made.sid, c))

    def _nbrs(self, graph: Mapping[int, tuple[int, ...]], u: int, view: View) -> tuple[int, ...]:
        """``u``'s honest neighbours, in the member set it is told if that is a lie
        (so a member-set lie comes with the partner list that set derives)."""
        if view.members is None or u not in view.members:
            return graph[u]
        try:
            return tuple(self.honest_graph(view.members)[u])
        except SecAggError:  # too few members for a graph: keep the round's
            return graph[u]

    def _group_for(self, u: int) -> frozenset[int]:
        setup = getattr(self.parts[u], "setup", None)
        return setup.members if setup is not None else frozenset(self.parts)

    def _advertise(self, r: int, pids: Sequence[int]) -> None:
        for u in pids:
            out = self._call(r, u, "advertise", lambda u=u: self.parts[u].advertise_keys(r))
            if out is None:
                continue
            msg = unpack(out, Advertise, round_id=r, sender=u, recipient=SERVER)
            self.keys[u] = self.substitute.get(u, PeerKeys(u, msg.c_pk, msg.s_pk, r, msg.sig))
            self.first_keys.setdefault(u, self.keys[u])
            self.all_pks.setdefault(u, set()).add(msg.s_pk)

    def _share(
        self, r: int, u: int, view: View, honest: tuple[int, ...], members: tuple[int, ...]
    ) -> dict[int, bytes] | None:
        holders = (
            view.roster if view.roster is not None else tuple(v for v in honest if v in self.keys)
        )
        peers = tuple(self.keys[v] for v in holders if v in self.keys)
        roster = pack(
            make(
                Roster,
                threshold=view.roster_t if view.roster_t is not None else self.t(len(holders)),
                group_size=view.group_size or len(self._group_for(u)),
                members=view.members or members,
                peers=peers,
            ),
            round_id=r,
            sender=SERVER,
            recipient=u,
        )
        out = self._call(r, u, "share_keys", lambda: self.parts[u].share_keys(r, roster))
        if out is None:
            return None
        told = self.told.setdefault(u, {})
        for p in peers:
            told[p.pid] = p
        msg = unpack(out, KeyShares, round_id=r, sender=u, recipient=SERVER)
        self.blobs_seen.update(s.blob for s in msg.shares)
        return {s.peer: s.blob for s in msg.shares}

    def _updates(self, u: int, partners: Sequence[int], replay: bool) -> tuple[PeerKeys, ...]:
        told = self.told.setdefault(u, {})
        out = []
        for v in partners:
            k = self.first_keys.get(v) if replay else self.keys.get(v)
            if k is not None and told.get(v) != k:
                out.append(k)
                told[v] = k
        return tuple(out)

    def _attribute(self, holder: int, owner: int, y: int) -> None:
        for made in self.rec.sharings:
            if made.owner == owner and made.ys.get(holder) == y:
                self.revealed.add((made.sid, holder))
                return
        raise AssertionError(f"share of {owner} revealed by {holder} matches no sharing made")

    # -- the transcript -------------------------------------------------------------------
    def transcript(self) -> Transcript:
        """Everything the server received, for :func:`~fedcollab.secure.exposure.expose`."""
        inputs = []
        for got in self.received:
            owner, plus, minus = self.rec.masks[got.digest]
            masks: dict[Hashable, int] = {}
            for s in plus:
                masks[("seed", s)] = masks.get(("seed", s), 0) + 1
            for s in minus:
                masks[("seed", s)] = masks.get(("seed", s), 0) - 1
            inputs.append(
                Masked(got.session, owner, got.label, masks, honest=owner not in self.colluders)
            )
        rounds = sorted(set(self.rounds_run))
        sharings = []
        for made in self.rec.sharings:
            if not made.blobs & self.blobs_seen:
                continue  # prepared but never sent
            sharings.append(
                Sharing(
                    made.sid,
                    made.owner,
                    made.kind.name.lower(),
                    made.for_round,
                    made.threshold,
                    frozenset(made.ys),
                    self._unlocks(made, rounds),
                )
            )
        known: set[Hashable] = set()
        for owner, plus, minus in self.rec.masks.values():
            if owner in self.colluders:
                known.update(("seed", s) for s in itertools.chain(plus, minus))
        return Transcript(
            tuple(inputs),
            tuple(sharings),
            frozenset(self.revealed),
            self.params.min_group,
            survivors=dict(self.survivors),
            colluders=frozenset(self.colluders),
            known_masks=frozenset(known),
            registered=frozenset(self.group),
        )

    def _unlocks(self, made: _Made, rounds: Sequence[int]) -> frozenset[Hashable]:
        if made.kind == Kind.SELF:
            return frozenset({("seed", made.secret.to_bytes(32, "big"))})
        if self.params.amortise_keys:
            seeds = self.rec.tables.get(made.secret, {})
            return frozenset(("seed", s) for s in seeds.values())
        holders = {h for sid, h in self.revealed if sid == made.sid} | self.colluders
        if len(holders & set(made.ys)) < made.threshold:
            return frozenset()  # never reconstructed: what it unlocks cannot matter
        raw = made.secret.to_bytes(32, "big")  # per-round keys: the mask private key
        out = set()
        for v, pks in self.all_pks.items():
            if v == made.owner:
                continue
            for pk in pks:
                for r in rounds:
                    out.update(
                        ("seed", s)
                        for s in seeds_from_mask_key(raw, made.owner, {v: pk}, r).values()
                    )
        return frozenset(out)


def _rehead(message: bytes, round_id: int) -> bytes:
    """The same body under a header for ``round_id`` (headers are not authenticated)."""
    head = bytearray(message[:22])
    head[6:14] = round_id.to_bytes(8, "big")
    return bytes(head) + message[22:]
