"""The participant side of SecAgg / SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020).

A participant adds to its encoded update a fresh **self mask** ``PRG(b_u)`` and one
**pairwise mask** ``+-PRG(seed_uv)`` per graph neighbour ``v`` (``+`` if ``u < v``);
pairwise masks cancel in the sum. Shamir shares (threshold ``t`` of its
neighbourhood) of ``b_u`` and of a **recovery secret** (which unlocks its pairwise
masks) go, AES-GCM encrypted, to its neighbours through the server. If ``u``'s
input arrives, holders reveal ``b_u``; if not, they reveal the recovery secret, so
the server can strip the masks ``u`` left dangling in its neighbours' inputs. An
honest holder reveals **at most one kind** per peer per round (double masking):
a server claiming ``u`` dropped after receiving ``y_u`` still lacks ``b_u``.

Per-round keys (``amortise_keys=False``, the classic 4 stages): fresh X25519 keys
each round; the recovery secret is the round's mask private key ``s_u``.

Amortised keys (default), and why they are safe:

1. The naive version is *not*: reuse ``s_u`` across rounds and share it once. When
   ``u`` drops in round ``r'``, the server legitimately reconstructs ``s_u``, hence
   every pairwise seed of every round; for each earlier round ``r`` where ``u``'s
   input arrived it also legitimately reconstructed ``b_u^(r)``, so it can compute
   ``x_u^(r) = y_u^(r) - PRG(b_u^(r)) -+ PRG(seed_uv^(r))``. Rotating ``u``'s keys
   after the dropout protects only future rounds, not the past.
2. Here ``s_u`` is never shared. Pairwise seeds are
   ``HKDF-Expand(pairwise key, info=round || pair)``. For each round ``r`` the
   participant draws a fresh recovery key ``e_u^(r)``, seals the table of its
   round-``r`` seeds under it (AES-GCM, stored by the server) and Shamir-shares
   ``e_u^(r)``. If ``u`` drops in round ``r`` the server learns exactly the
   round-``r`` seeds; HKDF is a PRF keyed by the never-revealed pairwise key, so they
   say nothing about any other round.
3. The package for round ``r+1`` (seed table + shares of ``e_u^(r+1)``) rides with the
   masked input of round ``r`` and reaches the holders with the round-``r`` unmask
   request: no extra round trip. The self-mask seed ``b_u^(r)`` is fresh every round
   and its shares ride in the same ciphertexts, so they exist only if the input does.
4. A participant that dropped (its recovery secret was reconstructed, its package
   chain is broken) must run key setup before it takes part again, with fresh X25519
   keys. Its neighbours must re-share their packages with its new keys, and a
   participant shares a round's recovery secret at most once per key pair (two live
   sharings of one round, old holders' RECOVERY shares with new holders' SELF shares,
   would open its input): so every member advertises fresh keys in that stage.

Both secrets of a round (the self-mask seed ``b_u^(r)`` and the recovery secret) are
shared over one holder set (the neighbours of its key setup) with one threshold
``t > holders/2`` (Bonawitz et al.'s double masking needs exactly that); the round's
partners are a subset of those holders. The member set, partners, ``t`` and ring are
derived by the participant, never taken from the server (see :class:`SecureParticipant`).

5. Forward secrecy: every participant advertises fresh X25519 keys at least every
   ``key_rotation_rounds`` rounds and drops the old ones, so a key that leaks later
   opens at most that many past rounds of its owner.

The server is not trusted to follow the protocol: every request is checked against
the participant's own state and parameters (see :class:`SecureParticipant`), and in
the malicious-server model key adverts are signed (Ed25519, identity registry from
setup) and a consistency round over the round's member set, graph seed and survivor
set precedes unmasking. Assumptions: fewer colluding
participants in a neighbourhood than docs/threat-model.md states, strictly
increasing round ids (consecutive for amortisation: a participant absent from round
``r`` re-runs key setup in ``r+1``), and a trusted identity registry.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcollab.secure import identity as ID
from fedcollab.secure import keys as K
from fedcollab.secure._wire import share_aad_for_recipient, share_aad_prefix, share_payloads
from fedcollab.secure.errors import (
    DecryptionError,
    EncodingError,
    GroupMismatchError,
    InconsistentViewError,
    MalformedMessageError,
    ModelMismatchError,
    NotAPartnerError,
    ParameterMismatchError,
    PartnerMismatchError,
    ProtocolError,
    RegistryPinnedError,
    ReshareRefusedError,
    SecAggConfigError,
    ShareRevealRefusedError,
    SignatureError,
    ThresholdMismatchError,
    TooFewAliveError,
    UnsafeRosterError,
)
from fedcollab.secure.graph import derive_graph, threshold_for
from fedcollab.secure.identity import GroupSetup
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
    RevealedShare,
    Roster,
    Sealed,
    ShareEntry,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    pack,
    pack_body,
    pack_seed_table,
    table_aad,
    unpack,
    unpack_share_payload,
)
from fedcollab.secure.params import SecAggParams
from fedcollab.secure.prg import accumulate_masks
from fedcollab.secure.shamir import secret_from_bytes, share_values

__all__ = ["SecureParticipant"]

_log = logging.getLogger(__name__)
_U32 = struct.Struct(">I")
#: Rounds a participant keeps the views it confirmed (the job checkpoints every round,
#: so a resume re-runs at most the last few; docs/threat-model.md states the residue).
VIEW_ROUNDS = 8


@dataclass
class _Peer:
    """A neighbour's public keys and what this participant derived from them."""

    c_pk: bytes
    s_pk: bytes
    cipher: AESGCM | None = field(default=None, repr=False)
    pair_key: bytes | None = field(default=None, repr=False)
    confirm_key: bytes | None = field(default=None, repr=False)


#: (the pinned setup, the member set as named with the group size, the set checked)
_MembersOk = tuple[object, tuple[tuple[int, ...], int], tuple[int, ...]]


@lru_cache(maxsize=16)
def _survivors_digest(round_id: int, survivors: tuple[int, ...], members: tuple[int, ...],
                      graph_seed: bytes) -> bytes:
    """:func:`~fedcollab.secure.keys.survivors_digest`, memoised: the participants a worker
    hosts confirm the same view in a round, so it is hashed once there, not by each."""
    return K.survivors_digest(round_id, survivors, members=members, graph_seed=graph_seed)


@dataclass(frozen=True)
class _Ask:
    """What this participant masks with in one round: the round's member set, its
    neighbours in the graph it derives from them, its partners (the neighbours it
    masks with), the holders of both its secrets (its recovery package's holders)
    and their one threshold."""

    round_id: int
    members: tuple[int, ...]
    neighbours: tuple[int, ...]
    partners: tuple[int, ...]
    holders: tuple[int, ...]
    threshold: int
    dim: int
    ring_bits: int

    @cached_property
    def member_set(self) -> frozenset[int]:
        """``members`` as a set (the consistency round checks survivors against it)."""
        return frozenset(self.members)


@dataclass
class _Prepared:
    """The update-independent part of one masked input (the offline phase's output)."""

    ask: _Ask
    epoch: int
    mask: np.ndarray = field(repr=False)
    digest: bytes = field(repr=False)
    table: bytes = field(repr=False)  # the next round's sealed seed table
    # each holder's share payload, sealed only once the round's model is known (the
    # shares' associated data binds its hash: see :meth:`SecureParticipant.set_round_model`)
    payloads: list[bytes] = field(repr=False)
    package_keys: dict[int, bytes] = field(repr=False)


class SecureParticipant:
    """One logical secure participant; lives in a worker and is driven stage by stage.

    Every method takes the server's bytes and returns bytes; bad server bytes raise a
    :class:`~fedcollab.secure.errors.ProtocolError` (the caller treats the participant
    as dropped for the round). No method blocks or does I/O.

    The participant derives, never accepts: the group's members, the graph seed and
    the job id are pinned once at setup (:meth:`install_setup`; a later install that
    differs is refused); each round it derives its neighbourhood from the round's
    member set (a subset of the pinned group, at least ``params.floor`` of it) and
    the pinned seed, and its threshold ``t`` from its own ``threshold``; a request
    naming another neighbourhood, threshold or ring is refused. Both its secrets of
    a round (self-mask seed and recovery secret) are shared over one holder set with
    that one ``t > holders/2``, and it shares a round's recovery secret at most once
    per key pair (a re-share needs fresh keys). It reveals only for its current
    partners, never both kinds of share of one peer, only while at least ``t`` of
    its partners (itself included) are claimed alive, and only shares of a peer's
    current recovery key. A request that fails a check raises a
    :class:`~fedcollab.secure.errors.ServerDeviationError`: the server lied, and the
    caller must abort the round.

    Args:
        participant_id: The participant's id in the job's roster (0 <= id < 2**32-1).
        params: The group's parameters (same object as the server's).
        identity: Malicious-server mode: this participant's Ed25519 identity key;
            ``None`` draws a fresh one (publish :meth:`identity_public` in the
            registry). Ignored in honest-but-curious mode.
        registry: Malicious-server mode: participant id -> Ed25519 public key of
            every member, provisioned at setup (not by the aggregating server); may
            also be installed later with :meth:`install_registry`.
    """

    def __init__(self, participant_id: int, params: SecAggParams, *,
                 identity: Ed25519PrivateKey | None = None,
                 registry: Mapping[int, bytes] | None = None) -> None:
        if not 0 <= participant_id < SERVER:
            raise ValueError(f"participant_id={participant_id} must be in [0, 2**32 - 1)")
        self.participant_id = participant_id
        self.params = params
        self._identity: Ed25519PrivateKey | None = None
        if params.malicious:
            self._identity = identity if identity is not None else ID.generate_identity()
        self._registry: Mapping[int, Ed25519PublicKey] = {}
        self._setup: GroupSetup | None = None
        if registry is not None:
            self.install_registry(registry)
        self._key_round = -1  # round of the last key advert (forward-secrecy window)
        self._signed: dict[int, tuple[int, ...]] = {}  # round -> survivor set signed
        self._signed_digest: dict[int, bytes] = {}  # round -> its view digest
        self._c: X25519PrivateKey | None = None
        self._s: X25519PrivateKey | None = None
        self._own_pk = (b"", b"")  # public halves of _c and _s (the KDF transcript)
        self._peers: dict[int, _Peer] = {}
        self._package_round: int | None = None
        self._package_keys: dict[int, bytes] = {}
        self._package_threshold = 0  # the one t of the package's holders
        self._package_members: tuple[int, ...] = ()  # the member set it was shared for
        self._package_holders: tuple[int, ...] = ()  # who holds both secrets' shares
        self._package_nbrs: tuple[int, ...] = ()  # its neighbours in that member set's graph
        self._shared: set[int] = set()  # rounds whose recovery secret these keys shared
        self._seeds: dict[int, dict[int, bytes]] = {}
        self._held: dict[int, dict[int, int]] = {}  # round -> peer -> its recovery share
        self._package_epoch = -1  # key epoch when the package keys were snapshotted
        self._revealed: dict[int, dict[int, Kind]] = {}
        self._last_masked_round = -1
        self._epoch = 0  # bumped whenever any key (own or a peer's) changes
        self._last_ask: _Ask | None = None
        # (round, digest of its encoded input) -> the view it confirmed: a resumed job
        # re-runs rounds with the same inputs, and two sums over the same inputs with
        # different survivors would hand the server a difference (issue 27, finding 7)
        self._views: dict[tuple[int, bytes], tuple[int, ...]] = {}
        self._unsaved: list[tuple[int, bytes]] = []  # confirmed since take_new_views
        self._input_digest = b""
        self._round_model: tuple[int, bytes] = (-1, b"")  # (round, its model's hash)
        self._ready: _Prepared | None = None
        # the last member set _check_members accepted: the setup it was checked
        # against (the very object), the set as named, and as checked; the same
        # request every round costs one comparison (the parameters are frozen)
        self._members_ok: _MembersOk | None = None
        #: Whether the last masked input used masks from :meth:`prepare_next_round`.
        self.last_input_precomputed = False

    # -- identity (malicious-server mode) ------------------------------------------
    def identity_public(self) -> bytes:
        """The 32-byte Ed25519 public key to publish in the identity registry.

        Raises:
            SecAggConfigError: Honest-but-curious mode (no identity key).
        """
        if self._identity is None:
            raise SecAggConfigError("identity keys exist only with server: malicious")
        return ID.identity_public(self._identity)

    @property
    def setup(self) -> GroupSetup | None:
        """What this participant pinned at setup (``None``: nothing yet)."""
        return self._setup

    def install_registry(self, registry: Mapping[int, bytes], *, graph_seed: bytes | None = None,
                         job_id: bytes | None = None) -> None:
        """Pin the group from an identity registry (setup channel, never a per-round server
        message): its ids are the members. ``graph_seed``/``job_id`` default to what is
        already pinned (else empty).

        Raises:
            SecAggConfigError: An entry that is not an Ed25519 public key, or this
                participant's own entry is missing or not its key.
            RegistryPinnedError: A group was pinned already and this one differs.
        """
        pinned = self._setup
        try:
            setup = GroupSetup.of(
                registry, registry=registry,
                graph_seed=graph_seed if graph_seed is not None else
                (pinned.graph_seed if pinned else b""),
                job_id=job_id if job_id is not None else (pinned.job_id if pinned else b""))
        except ValueError as exc:
            raise SecAggConfigError(str(exc)) from None
        self.install_setup(setup)

    def install_loaded_registry(self, loaded: Mapping[int, Ed25519PublicKey]) -> None:
        """:meth:`install_registry` with the keys already parsed (kept for callers that
        hold parsed keys; :meth:`install_setup` is the setup channel's entry point).

        Raises:
            SecAggConfigError: This participant's own entry is missing or not its key.
            RegistryPinnedError: A group was pinned already and this one differs.
        """
        self.install_registry({p: k.public_bytes_raw() for p, k in loaded.items()})

    def install_setup(self, setup: GroupSetup,
                      loaded: Mapping[int, Ed25519PublicKey] | None = None) -> None:
        """Pin the group (members, graph seed, job id, identity registry): once. A
        worker hosting many participants parses the registry once and passes it as
        ``loaded`` (shared, read-only). Installing the same setup again is a no-op.

        Raises:
            SecAggConfigError: This participant is not a member, or (malicious mode)
                its own registry entry is missing or not its key, or a registry entry
                is not an Ed25519 key.
            RegistryPinnedError: A different setup was pinned before: a re-install that
                adds, drops or replaces an identity (or changes the seed or job id)
                is refused.
        """
        if self._setup is not None:
            if self._setup.members != setup.members or self._setup.digest() != setup.digest():
                raise RegistryPinnedError(
                    f"participant {self.participant_id}: a second group setup that differs "
                    f"from the one pinned ({len(setup.members)} member(s) vs "
                    f"{len(self._setup.members)}, or another identity, seed or job id); the "
                    "group is pinned once, at setup")
            return
        if self.participant_id not in setup.members:
            raise SecAggConfigError(f"group setup: participant {self.participant_id} is not "
                                    "one of its members")
        if self._identity is not None:
            if loaded is None:
                try:
                    loaded = ID.load_registry(setup.registry)
                except ValueError as exc:
                    raise SecAggConfigError(str(exc)) from None
            mine = loaded.get(self.participant_id)
            if mine is None or mine.public_bytes_raw() != self.identity_public():
                raise SecAggConfigError(f"identity registry: participant {self.participant_id}'s "
                                        "entry is missing or is not its identity key")
            if set(loaded) != set(setup.members):
                raise SecAggConfigError("identity registry: its ids are not the group's members")
            self._registry = loaded
        self._setup = setup

    def _require_setup(self) -> GroupSetup:
        if self._setup is None:
            raise ProtocolError(f"participant {self.participant_id}: no group setup installed; "
                                "the members (and, with server: malicious, the identity "
                                "registry) are provisioned at setup")
        return self._setup

    def _check_members(self, round_id: int, members: tuple[int, ...], group_size: int
                       ) -> tuple[int, ...]:
        """The round's member set as named, checked against the pinned group."""
        setup = self._require_setup()
        known = self._members_ok
        if known is not None and known[0] is setup and known[1] == (members, group_size):
            return known[2]
        group = tuple(sorted(set(members)))
        if len(group) != len(members):
            raise MalformedMessageError(f"round {round_id}: member set repeats a participant")
        if group_size != len(setup.members):
            raise ParameterMismatchError(
                f"round {round_id}: group size {group_size} named, the group pinned at setup "
                f"has {len(setup.members)} (it sets the ring)")
        strangers = [v for v in group if v not in setup.members]
        if strangers:
            raise GroupMismatchError(f"round {round_id}: member set names participant "
                                     f"{strangers[0]}, not in the group pinned at setup")
        if self.participant_id not in group:
            raise GroupMismatchError(f"round {round_id}: member set leaves out participant "
                                     f"{self.participant_id}")
        floor = self.params.floor(len(setup.members))
        if len(group) < floor:
            raise GroupMismatchError(
                f"round {round_id}: {len(group)} members, below this participant's floor "
                f"{floor} (min_group={self.params.min_group}, min_round_fraction="
                f"{self.params.min_round_fraction} of {len(setup.members)})")
        self._members_ok = (setup, (tuple(members), group_size), group)
        return group

    def _derive(self, round_id: int, members: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """This participant's neighbourhood in the round's graph and its threshold."""
        setup = self._require_setup()
        p = self.params
        graph = derive_graph(members, setup.graph_seed, protocol=p.protocol, degree=p.neighbours,
                             threshold=p.threshold, expected_dropout=p.expected_dropout)
        nbrs = graph[self.participant_id]
        if len(nbrs) < 2:
            raise UnsafeRosterError(f"round {round_id}: {len(nbrs)} neighbours derived; "
                                    "fewer than 2 share holders")
        return nbrs, threshold_for(len(nbrs), p.threshold)

    # -- the round's model ------------------------------------------------------------
    def set_round_model(self, round_id: int, model_hash: bytes) -> None:
        """The hash of the global model round ``round_id`` trains from, as this
        participant's host computed it from the weights it received
        (:func:`fedcollab.secure.model.model_sha256`), never a hash the server names.

        The shares this participant seals in the round's masked input, and those it
        opens when asked to unmask, bind it (with the pinned job id) in their AES-GCM
        associated data: members given different models cannot open each other's
        shares. Key-setup shares bind the job id only (key setup precedes the round's
        model on an in-cluster worker). Without a call, the round binds an empty hash.

        Raises:
            ModelMismatchError: Another hash was set for this round already (the
                server sent this participant's host two models in one round).
        """
        known_round, known = self._round_model
        if known_round == round_id and not hmac.compare_digest(known, model_hash):
            raise ModelMismatchError(
                f"round {round_id}: participant {self.participant_id} was given a second, "
                "different global model in the same round; an honest server sends one")
        self._round_model = (round_id, bytes(model_hash))

    def _aad_fields(self, stage: Stage, round_id: int) -> tuple[bytes, bytes]:
        """``(job id, model hash)`` a share of ``stage`` in ``round_id`` binds: the
        pinned job id, and the round's model hash from the masked input on."""
        job_id = self._setup.job_id if self._setup is not None else b""
        if stage == Stage.SHARE_KEYS:
            return job_id, b""
        r, model = self._round_model
        return job_id, model if r == round_id else b""

    # -- key setup -----------------------------------------------------------------
    def needs_keys(self, round_id: int) -> bool:
        """Whether this participant must run key setup before masking in ``round_id``."""
        return (self._c is None or not self.params.amortise_keys
                or self._package_round != round_id or self._expired(round_id))

    def _expired(self, round_id: int) -> bool:
        """Whether the amortised keys are older than the forward-secrecy window."""
        k = self.params.key_rotation_rounds
        return (self.params.amortise_keys and k is not None and self._c is not None
                and round_id - self._key_round >= k)

    def advertise_keys(self, round_id: int) -> bytes:
        """Stage ADVERTISE: draw fresh X25519 key pairs and publish their public halves.

        The previous key pairs and everything derived from them (channel ciphers,
        pairwise keys, seed tables) are dropped here: forward secrecy.

        Raises:
            ProtocolError: Malicious-server mode without an identity registry.
        """
        setup = self._require_setup()
        if self.params.malicious and not self._registry:
            raise ProtocolError(f"participant {self.participant_id}: no identity registry "
                                "installed; it is provisioned at setup (server: malicious)")
        self._c = K.generate_private_key()
        # Amortised keys: the mask key is never revealed (a per-round recovery key
        # is), so one X25519 pair serves both uses, separated by HKDF labels, and
        # key setup costs one agreement per neighbour instead of two. Per-round mode
        # Shamir-shares the mask private key, so it must be a second, separate pair.
        self._s = self._c if self.params.amortise_keys else K.generate_private_key()
        self._peers = {}
        self._epoch += 1
        self._ready = None
        self._package_round, self._package_keys = None, {}
        self._seeds = {}
        self._shared = set()  # fresh keys: a new sharing of any round is allowed
        self._key_round = round_id
        c_pk, s_pk = K.public_bytes(self._c), K.public_bytes(self._s)
        self._own_pk = (c_pk, s_pk)
        sig = b"" if self._identity is None else \
            ID.sign_advert(self._identity, self.participant_id, round_id, c_pk, s_pk,
                           setup.job_id)
        body = Advertise(c_pk, s_pk, sig)
        return pack(body, round_id=round_id, sender=self.participant_id, recipient=SERVER)

    def share_keys(self, round_id: int, roster: bytes) -> bytes:
        """Stage SHARE_KEYS: seal a recovery package for ``round_id`` to the neighbours.

        Args:
            round_id: The current round.
            roster: The server's ROSTER message (neighbours' public keys, threshold).

        Returns:
            The SHARE_KEYS message: a sealed seed table (amortised mode) and one sealed
            share of the recovery secret per neighbour.

        Raises:
            ProtocolError: Bad roster, or no keys advertised yet.
            ReshareRefusedError: This round's recovery secret was shared already under
                these keys (a re-share needs fresh keys: advertise first).
            DerivedMismatchError: A member set, neighbourhood or threshold other than
                what this participant derives (a subclass says which).
            SignatureError: A neighbour's key advert does not verify (malicious mode).
        """
        msg = unpack(roster, Roster, round_id=round_id, sender=SERVER,
                     recipient=self.participant_id)
        _, s_key = self._require_keys()
        if round_id in self._shared:
            raise ReshareRefusedError(
                f"round {round_id}: participant {self.participant_id} already shared this "
                "round's recovery secret under its current keys; a second sharing would let "
                "old and new holders' shares combine (advertise fresh keys first)")
        members = self._check_members(round_id, msg.members, msg.group_size)
        nbrs, t = self._derive(round_id, members)
        if msg.threshold != t:
            raise ThresholdMismatchError(
                f"round {round_id}: threshold {msg.threshold} named; participant "
                f"{self.participant_id} derives {t} from its {len(nbrs)} neighbours and "
                f"threshold={self.params.threshold}")
        holders = tuple(sorted(p.pid for p in msg.peers))
        self._check_holders(round_id, holders, nbrs, t)
        self._update_peers(msg.peers, round_id)
        if self.params.amortise_keys:
            secret, table = self._seal_seed_table(round_id, holders)
        else:
            secret, table = K.private_bytes(s_key), b""
            self._seeds[round_id] = {v: self._round_seed(v, round_id) for v in holders}
        shares = self._seal_shares(Stage.SHARE_KEYS, round_id, holders, t, [
            (Kind.RECOVERY, round_id, secret_from_bytes(secret))])
        self._shared.add(round_id)
        self._package_round = round_id
        self._package_keys = {v: self._peers[v].s_pk for v in holders}
        self._package_threshold = t
        self._package_members, self._package_holders = members, holders
        self._package_nbrs = nbrs
        self._package_epoch = self._epoch
        body = KeyShares(table, shares)
        return pack(body, round_id=round_id, sender=self.participant_id, recipient=SERVER)

    # -- masked input --------------------------------------------------------------
    def masked_input(self, round_id: int, vector: np.ndarray, inbox: bytes) -> bytes:
        """Stage MASKED_INPUT: encode and mask ``vector``; seal the self-seed shares.

        Args:
            round_id: The current round.
            vector: float64 1-D, already weighted, weight as the last coordinate
                (:func:`~fedcollab.secure.encoding.weighted_vector`).
            inbox: The server's MASK_REQUEST message.

        Returns:
            The MASKED_INPUT message (masked vector, seed digest, sealed shares and, in
            amortised mode, the recovery package for round ``round_id + 1``).

        Raises:
            ProtocolError: Bad request, or no valid recovery package for this round.
            EncodingError: Vector of the wrong length or with non-finite values.
        """
        msg = unpack(inbox, MaskRequest, round_id=round_id, sender=SERVER,
                     recipient=self.participant_id)
        self._require_keys()
        if round_id <= self._last_masked_round:
            raise ProtocolError(f"round {round_id}: already masked an input for round "
                                f"{self._last_masked_round}; round ids must increase")
        if self._package_round != round_id:
            raise ProtocolError(f"round {round_id}: participant {self.participant_id} has no "
                                "recovery package for this round; run key setup first")
        if self._expired(round_id):
            raise ProtocolError(f"round {round_id}: participant {self.participant_id}'s keys "
                                f"are from round {self._key_round}, older than "
                                f"key_rotation_rounds={self.params.key_rotation_rounds}; run "
                                "key setup first")
        members = self._check_members(round_id, msg.members, msg.group_size)
        if members != self._package_members:
            raise GroupMismatchError(
                f"round {round_id}: a member set other than the one participant "
                f"{self.participant_id}'s recovery package was shared for; run key setup first")
        t = self._package_threshold
        if msg.threshold != t:
            raise ThresholdMismatchError(
                f"round {round_id}: threshold {msg.threshold} named; participant "
                f"{self.participant_id}'s secrets are shared at {t}")
        partners = tuple(sorted(msg.partners))
        self._check_holders(round_id, partners, self._package_holders, t)
        self._update_peers(msg.key_updates, round_id)
        for v in partners:  # the package must cover exactly these keys
            if self._peers[v].s_pk != self._package_keys.get(v):
                raise ProtocolError(f"round {round_id}: partner {v} is not covered by this "
                                    "participant's recovery package (new partner or newer "
                                    "keys); run key setup first")
        self._receive_deliveries(round_id, msg.deliveries, partners)
        x = np.asarray(vector, dtype=np.float64)
        if x.ndim != 1 or x.size != msg.dim:
            raise EncodingError(f"round {round_id}: vector has shape {x.shape}, the round "
                                f"expects ({msg.dim},) (update + weight coordinate)")
        codec = self.params.codec(msg.group_size)
        ask = _Ask(round_id, members, self._package_nbrs, partners, self._package_holders, t,
                   msg.dim, codec.ring_bits)
        masked = codec.encode(x)
        self._input_digest = hashlib.sha256(masked.data).digest()
        ready, self._ready = self._ready, None
        self.last_input_precomputed = (ready is not None and ready.ask == ask
                                       and ready.epoch == self._epoch)
        # nothing usable was prepared offline: compute it now
        prep = ready if ready is not None and self.last_input_precomputed else self._prepare(ask)
        np.add(masked, prep.mask, out=masked)
        shares = self._seal_payloads(Stage.MASKED_INPUT, round_id, ask.holders, prep.payloads)
        if self.params.amortise_keys:  # the same holders and t: one sharing per round
            self._package_round = round_id + 1
            self._package_keys, self._package_epoch = prep.package_keys, prep.epoch
            self._shared.add(round_id + 1)
        else:
            self._package_round = None
        self._last_ask = ask
        self._last_masked_round = round_id
        self._revealed = {round_id: {}}
        self._signed, self._signed_digest = {}, {}
        self._seeds = {r: s for r, s in self._seeds.items() if r > round_id}
        for old in [r for r in self._held if r < round_id]:
            del self._held[old]
        held = self._held.get(round_id, {})  # only current partners' current keys count
        for v in [v for v in held if v not in partners]:
            del held[v]
        body = (MaskedInput.head(codec.ring_bits, masked.tobytes(), prep.digest)
                + MaskedInput.tail(prep.table, shares))
        return pack_body(MaskedInput, body, round_id=round_id, sender=self.participant_id,
                         recipient=SERVER)

    # -- offline phase ---------------------------------------------------------------
    def prepare_next_round(self) -> bool:
        """Offline phase: precompute the next round's masks and shares now.

        Everything in a masked input except the encoded update itself depends only on
        seeds this participant already holds: the self mask ``PRG(b_u)`` (``b_u``
        drawn now, used once), the pairwise masks from the next round's seed table,
        the shares and the following recovery package. Computing them while the
        server unmasks and evaluates takes them off the round's critical path. The
        shares are sealed by :meth:`masked_input`: their associated data binds the
        round's model hash (:meth:`set_round_model`), unknown until the round starts.
        :meth:`masked_input` uses the result only if the server then asks for
        exactly the same round, partners, threshold and shape under the same peer
        keys, and otherwise discards it (``b_u`` was never sent) and computes afresh.

        Returns:
            Whether something was prepared (amortised keys, after a masked input).
        """
        last = self._last_ask
        if (not self.params.amortise_keys or last is None or self._c is None
                or self._package_round != last.round_id + 1
                or self._expired(last.round_id + 1)):  # fresh keys first: nothing to reuse
            self._ready = None
            return False
        self._ready = self._prepare(_Ask(last.round_id + 1, last.members, last.neighbours,
                                         last.partners, last.holders, last.threshold, last.dim,
                                         last.ring_bits))
        return True

    def _prepare(self, ask: _Ask) -> _Prepared:
        """The update-independent part of ``ask``'s masked input (see prepare_next_round)."""
        r, me = ask.round_id, self.participant_id
        b = os.urandom(32)
        seeds = self._seeds.get(r, {})
        pair = {v: seeds[v] if v in seeds else self._round_seed(v, r) for v in ask.partners}
        mask = np.zeros(ask.dim, dtype=np.dtype(f"<u{ask.ring_bits // 8}"))
        accumulate_masks(mask, [b] + [pair[v] for v in ask.partners if me < v],
                         [pair[v] for v in ask.partners if me > v])
        entries = [(Kind.SELF, r, secret_from_bytes(b))]
        table = b""
        if self.params.amortise_keys:
            e, table = self._seal_seed_table(r + 1, ask.partners)
            entries.append((Kind.RECOVERY, r + 1, secret_from_bytes(e)))
        # both secrets to the package's holders at its one t (never a smaller set);
        # sealed by masked_input, once the round's model hash is known
        payloads = self._share_payloads(ask.holders, ask.threshold, entries)
        return _Prepared(ask, self._epoch, mask, K.self_seed_digest(b, r, me), table, payloads,
                         {v: self._peers[v].s_pk for v in ask.partners})

    # -- consistency round (malicious-server mode) -----------------------------------
    def confirm_survivors(self, round_id: int, request: bytes) -> bytes:
        """Stage CONSISTENCY: confirm the survivor set the server claims, at most one per
        round, to each partner in it (an HMAC under the key the two share).

        Raises:
            ProtocolError: Honest-but-curious mode, bad request, or no input this round.
            InconsistentViewError: A set without this participant (it did send its
                input), a second, different set this round, or a set naming a
                neighbour it did not mask with (the round would release another sum
                than the set names; the journalled view must name the sum its input
                enters, docs/threat-model.md "Resume leaves a residue").
            TooFewAliveError: Fewer than ``t`` of its partners (itself included) in it.
        """
        if self._identity is None:
            raise ProtocolError("the consistency round exists only with server: malicious")
        msg = unpack(request, Consistency, round_id=round_id, sender=SERVER,
                     recipient=self.participant_id)
        ask = self._current_ask(round_id)
        survivors = tuple(sorted(set(msg.survivors)))
        if len(survivors) != len(msg.survivors):
            raise MalformedMessageError(f"round {round_id}: survivor set repeats a participant")
        if self.participant_id not in survivors:
            raise InconsistentViewError(f"round {round_id}: the survivor set leaves out "
                                        f"participant {self.participant_id}, which sent its input")
        signed = self._signed.get(round_id)
        if signed is not None and signed != survivors:
            raise InconsistentViewError(f"round {round_id}: asked to sign a second, different "
                                        "survivor set; an honest participant signs one")
        alive = set(survivors)
        if not alive <= ask.member_set:
            raise GroupMismatchError(f"round {round_id}: survivor set names participants "
                                     "outside the round's member set")
        # The view names the one sum this input enters: every survivor among its
        # neighbours must be a partner it masked with. A server that left a neighbour
        # out of its partners and still calls that neighbour a survivor releases
        # another sum than the view says (the sum without it), and a re-run of the
        # same input that confirms the same view then hands over the difference.
        unpaired = alive.intersection(ask.neighbours).difference(ask.partners)
        if unpaired:
            raise InconsistentViewError(
                f"round {round_id}: the survivor set names participant {min(unpaired)}, a "
                f"neighbour participant {self.participant_id} did not mask with this round; "
                "the set it confirms must be the sum its input enters")
        self._require_alive(ask, sum(v in alive for v in ask.partners))
        floor = self.params.floor(len(self._require_setup().members))
        if len(survivors) < floor:
            raise UnsafeRosterError(f"round {round_id}: survivor set of {len(survivors)}, "
                                    f"below this participant's floor {floor}")
        self._remember_view(round_id, survivors)
        self._signed[round_id] = survivors
        digest = self._signed_digest[round_id] = self._view_digest(ask, survivors)
        me = self.participant_id
        tags = tuple(Sealed(v, K.confirm_tag(self._confirm_key(v), me, v, digest))
                     for v in ask.partners if v in alive)
        return pack(Confirmations(tags), round_id=round_id, sender=me, recipient=SERVER)

    def _confirm_key(self, v: int) -> bytes:
        peer = self._peers[v]
        if peer.confirm_key is None:
            self._agree(v, peer)
        assert peer.confirm_key is not None
        return peer.confirm_key

    # -- unmasking -----------------------------------------------------------------
    def unmask(self, round_id: int, request: bytes) -> bytes:
        """Stage UNMASK: reveal the requested shares, after checking the request.

        ``SELF`` requests carry the peer's sealed share bundle (the peer's input
        arrived); ``RECOVERY`` requests refer to a share held from an earlier delivery
        (the peer dropped). Shares that fail authentication or are not held are left
        out of the response. Nothing is revealed unless every check passes:

        * every named peer is a partner of this participant in this round;
        * no peer is asked for both kinds of share (in this or an earlier request);
        * at least ``t`` of its partners, itself included, are claimed alive (asked
          for ``SELF``), ``t`` as validated against its own parameters;
        * malicious mode: it confirmed a survivor set this round, at least ``t`` of
          its partners confirmed the very same set to it (HMACs under keys the
          signed adverts authenticate), and each peer's kind follows that set.

        Raises:
            ServerDeviationError: One of the checks failed (the server lied): a
                subclass says which; the round must be aborted.
            ProtocolError: Bad request, or a round this participant sent no input for.
        """
        msg = unpack(request, UnmaskRequest, round_id=round_id, sender=SERVER,
                     recipient=self.participant_id)
        if round_id not in self._revealed:
            raise ProtocolError(f"round {round_id}: participant {self.participant_id} sent no "
                                "masked input this round, so it reveals nothing")
        ask = self._current_ask(round_id)
        partners = set(ask.partners)
        revealed = self._revealed[round_id]
        asked: dict[int, Kind] = {}
        for peer, kind, _ in msg.reveals:
            if peer not in partners:
                raise NotAPartnerError(f"round {round_id}: unmask request names participant "
                                       f"{peer}, not a partner of participant "
                                       f"{self.participant_id} this round")
            if asked.setdefault(peer, kind) != kind or revealed.get(peer, kind) != kind:
                raise ShareRevealRefusedError(
                    f"round {round_id}: asked for both the self-mask and the recovery share "
                    f"of participant {peer}; an honest participant reveals only one")
        claimed = {**revealed, **asked}
        self._require_alive(ask, sum(k == Kind.SELF for k in claimed.values()))
        if self._identity is not None:
            self._check_consistency(round_id, ask, msg.signatures, asked)
        elif not revealed:  # honest-but-curious: the first request's "alive" set is the view
            self._remember_view(round_id, tuple(sorted(
                {p for p, k in claimed.items() if k == Kind.SELF} | {self.participant_id})))
        revealed.update(asked)
        out = []
        opener = self._opener(Stage.MASKED_INPUT, round_id)
        for peer, kind, blob in msg.reveals:
            y = self._reveal(round_id, peer, kind, blob, opener)
            if y is not None:
                out.append(RevealedShare(peer, kind, y))
        body = UnmaskResponse(tuple(out))
        return pack(body, round_id=round_id, sender=self.participant_id, recipient=SERVER)

    def _remember_view(self, round_id: int, view: tuple[int, ...]) -> None:
        """Keep the view confirmed for this round and input; refuse another one."""
        key = (round_id, self._input_digest)
        for old in [k for k in self._views if k[0] <= round_id - VIEW_ROUNDS]:
            del self._views[old]  # a resume re-runs the rounds after its last checkpoint
        known = self._views.get(key)
        if known is None:
            self._views[key] = view
            self._unsaved.append(key)
        elif known != view:
            raise InconsistentViewError(
                f"round {round_id}: participant {self.participant_id} already confirmed "
                "another survivor set for this round and this very input (a re-run, e.g. "
                "after a resume); two sums over the same inputs with different survivors "
                "differ by one input")

    def views(self) -> dict[str, list[int]]:
        """Every view still kept, ``"round:digest-hex" -> survivors`` (the form the worker
        journals: :meth:`take_new_views`; :meth:`restore_views` reloads it)."""
        return {f"{r}:{d.hex()}": list(v) for (r, d), v in sorted(self._views.items())}

    def take_new_views(self) -> dict[str, list[int]]:
        """The views confirmed since the last call, keyed as :meth:`views` (what the
        hosting worker journals before the replies leave; O(new views), not O(all))."""
        new, self._unsaved = self._unsaved, []
        return {f"{r}:{d.hex()}": list(self._views[(r, d)]) for r, d in new
                if (r, d) in self._views}

    def restore_views(self, views: Mapping[str, list[int]]) -> None:
        """Reload :meth:`views` persisted before a restart (a resumed job)."""
        for key, view in views.items():
            r, d = key.split(":", 1)
            self._views.setdefault((int(r), bytes.fromhex(d)), tuple(int(p) for p in view))

    def _current_ask(self, round_id: int) -> _Ask:
        ask = self._last_ask
        if ask is None or ask.round_id != round_id or round_id not in self._revealed:
            raise ProtocolError(f"round {round_id}: participant {self.participant_id} sent no "
                                "masked input this round, so it reveals nothing")
        return ask

    def _require_alive(self, ask: _Ask, alive_partners: int) -> None:
        if alive_partners + 1 < ask.threshold:
            raise TooFewAliveError(
                f"round {ask.round_id}: only {alive_partners} of participant "
                f"{self.participant_id}'s {len(ask.partners)} partners are claimed alive; "
                f"with itself that is below the threshold {ask.threshold}: revealing could "
                "expose a partner's input")

    def _check_consistency(self, round_id: int, ask: _Ask, signatures: tuple[Sealed, ...],
                           asked: Mapping[int, Kind]) -> None:
        survivors = self._signed.get(round_id)
        if survivors is None:
            raise InconsistentViewError(f"round {round_id}: unmask before the consistency "
                                        "round; nothing is revealed without a signed "
                                        "survivor set")
        partners, alive = set(ask.partners), set(survivors)
        digest = self._signed_digest[round_id]  # of the set signed above, for this ask
        me = self.participant_id
        signers: set[int] = set()
        for signer, tag in signatures:
            if signer not in partners:
                raise NotAPartnerError(f"round {round_id}: a consistency confirmation from "
                                       f"participant {signer}, not a partner this round")
            expected = K.confirm_tag(self._confirm_key(signer), signer, me, digest)
            if not hmac.compare_digest(tag, expected):
                raise SignatureError(f"round {round_id}: participant {signer}'s confirmation "
                                     "is not of the survivor set this participant confirmed")
            signers.add(signer)
        # Every partner that confirmed a set with this participant in it refuses to
        # reveal its recovery share; with t confirmations at most (holders - t) < t
        # honest holders are left who could: the server cannot have both its self
        # mask and its recovery key (Bonawitz et al.'s bound: fewer than 2t - d
        # colluding holders).
        need = ask.threshold  # one t for both secrets
        if len(signers) < need:
            raise TooFewAliveError(f"round {round_id}: {len(signers)} partners confirmed the "
                                   f"survivor set, need {need} (the threshold)")
        for peer, kind in asked.items():
            if (kind == Kind.SELF) != (peer in alive):
                raise InconsistentViewError(
                    f"round {round_id}: asked for the {kind.name.lower()} share of participant "
                    f"{peer}, which the signed survivor set says "
                    f"{'survived' if peer in alive else 'dropped'}")

    def _reveal(self, round_id: int, peer: int, kind: Kind, blob: bytes,
                opener: Callable[[int, bytes], tuple[ShareEntry, ...]]) -> int | None:
        if kind == Kind.RECOVERY:
            return self._held.get(round_id, {}).get(peer)
        try:
            entries = opener(peer, blob)
        except (DecryptionError, MalformedMessageError) as exc:
            _log.warning("participant %d: share from %d skipped: %s",
                         self.participant_id, peer, exc)
            return None
        found = None
        for kind, for_round, y in entries:
            if kind == Kind.SELF and for_round == round_id:
                found = y
            elif kind == Kind.RECOVERY and for_round == round_id + 1:
                self._held.setdefault(round_id + 1, {})[peer] = y
        return found

    # -- helpers -------------------------------------------------------------------
    def _require_keys(self) -> tuple[X25519PrivateKey, X25519PrivateKey]:
        if self._c is None or self._s is None:
            raise ProtocolError(f"participant {self.participant_id} has no keys; call "
                                "advertise_keys first")
        return self._c, self._s

    def _view_digest(self, ask: _Ask, survivors: tuple[int, ...]) -> bytes:
        """What the consistency round confirms: members, graph seed and survivors."""
        return _survivors_digest(ask.round_id, survivors, ask.members,
                                 self._require_setup().graph_seed)

    def _check_holders(self, round_id: int, named: tuple[int, ...], allowed: tuple[int, ...],
                       t: int) -> None:
        """A named neighbour list: distinct, within what this participant derived
        (``allowed``), and at least its threshold ``t`` of them."""
        if self.participant_id in named or len(set(named)) != len(named):
            raise MalformedMessageError("neighbour list repeats a participant or names itself")
        extra = sorted(set(named) - set(allowed))
        if extra:
            raise PartnerMismatchError(
                f"round {round_id}: neighbour list names participant {extra[0]}, not among the "
                f"{len(allowed)} participant {self.participant_id} derives from the round's "
                "members and the graph seed pinned at setup")
        if len(named) < t:
            raise UnsafeRosterError(
                f"round {round_id}: {len(named)} neighbours named, below the threshold {t} "
                f"participant {self.participant_id} derives: its secrets could not be "
                "recovered, and a smaller holder set is what a lying server wants")

    def _update_peers(self, peers: tuple[PeerKeys, ...], round_id: int) -> None:
        k = self.params.key_rotation_rounds if self.params.amortise_keys else None
        for p in peers:
            if p.pid == self.participant_id or p.pid >= SERVER:
                raise MalformedMessageError(f"key list names participant {p.pid}")
            if p.since > round_id or (k is not None and round_id - p.since >= k):
                raise UnsafeRosterError(
                    f"round {round_id}: participant {p.pid}'s keys are from round {p.since}, "
                    f"outside the key_rotation_rounds={k} window (or from the future)")
            old = self._peers.get(p.pid)
            if old is None or (old.c_pk, old.s_pk) != (p.c_pk, p.s_pk):
                if self._identity is not None:
                    key = self._registry.get(p.pid)
                    if key is None or not ID.verify_advert(key, p.sig, p.pid, p.since, p.c_pk,
                                                           p.s_pk, self._require_setup().job_id):
                        raise SignatureError(
                            f"round {round_id}: participant {p.pid}'s key advert is not signed "
                            "by its registered identity key (substituted keys?)")
                self._peers[p.pid] = _Peer(p.c_pk, p.s_pk)
                self._epoch += 1
                for held in self._held.values():  # shares of its superseded recovery key
                    held.pop(p.pid, None)

    def _cipher(self, v: int) -> AESGCM:
        peer = self._peers[v]
        if peer.cipher is None:
            self._agree(v, peer)
        assert peer.cipher is not None
        return peer.cipher

    def _round_seed(self, v: int, round_id: int) -> bytes:
        peer = self._peers[v]
        if peer.pair_key is None:
            self._agree(v, peer)
        assert peer.pair_key is not None
        return K.round_seed(peer.pair_key, round_id, self.participant_id, v)

    def _agree(self, v: int, peer: _Peer) -> None:
        """Derive the channel cipher and the pairwise key shared with neighbour ``v``."""
        c_key, s_key = self._require_keys()
        me = self.participant_id
        shared_c = K.agree(c_key, peer.c_pk)
        shared_s = shared_c if s_key is c_key and peer.s_pk == peer.c_pk \
            else K.agree(s_key, peer.s_pk)
        bound_c = K.transcript(me, v, self._own_pk[0], peer.c_pk)
        peer.cipher = K.channel_cipher(shared_c, me, v, bound_c)
        if self._identity is not None:  # confirmations of the consistency round
            peer.confirm_key = K.confirm_key(shared_c, me, v, bound_c)
        peer.pair_key = K.pairwise_key(shared_s, me, v,
                                       K.transcript(me, v, self._own_pk[1], peer.s_pk))

    def _seal_seed_table(self, for_round: int, partners: tuple[int, ...]) -> tuple[bytes, bytes]:
        """Seal the ``for_round`` seeds with ``partners`` (current neighbours only)."""
        seeds = {v: self._round_seed(v, for_round) for v in partners}
        self._seeds[for_round] = seeds
        e = os.urandom(32)
        table = K.seal(AESGCM(e), pack_seed_table(seeds), table_aad(for_round, self.participant_id))
        return e, table

    def _share_payloads(self, holders: tuple[int, ...], threshold: int,
                        entries: list[tuple[Kind, int, int]]) -> list[bytes]:
        """Each holder's plaintext share bundle of ``entries`` (kind, round, secret)."""
        xs = [v + 1 for v in holders]
        columns = [share_values(secret, threshold=threshold, xs=xs) for _, _, secret in entries]
        return share_payloads([(kind, rnd) for kind, rnd, _ in entries], columns)

    def _seal_payloads(self, stage: Stage, round_id: int, holders: tuple[int, ...],
                       payloads: list[bytes]) -> tuple[Sealed, ...]:
        job_id, model = self._aad_fields(stage, round_id)
        prefix = share_aad_prefix(stage, round_id, self.participant_id, job_id=job_id,
                                  model=model)
        peers, pack_recipient = self._peers, _U32.pack
        ciphers = [peers[v].cipher or self._cipher(v) for v in holders]
        blobs = K.seal_many(list(zip(ciphers, payloads,
                                     [prefix + pack_recipient(v) for v in holders])))
        return tuple(map(Sealed, holders, blobs))

    def _seal_shares(self, stage: Stage, round_id: int, holders: tuple[int, ...], threshold: int,
                     entries: list[tuple[Kind, int, int]]) -> tuple[Sealed, ...]:
        return self._seal_payloads(stage, round_id, holders,
                                   self._share_payloads(holders, threshold, entries))

    def _open(self, stage: Stage, round_id: int, sender: int, blob: bytes
              ) -> tuple[ShareEntry, ...]:
        return self._opener(stage, round_id)(sender, blob)

    def _opener(self, stage: Stage, round_id: int
                ) -> Callable[[int, bytes], tuple[ShareEntry, ...]]:
        """``(sender, blob) -> entries``: open share bundles of ``stage`` in ``round_id``
        sent to this participant, their associated data (:func:`share_aad`, with the
        job id and model hash of :meth:`_aad_fields`) packed once for all senders."""
        job_id, model = self._aad_fields(stage, round_id)
        aad = share_aad_for_recipient(stage, round_id, self.participant_id, job_id=job_id,
                                      model=model)
        peers = self._peers

        def open_(sender: int, blob: bytes) -> tuple[ShareEntry, ...]:
            cipher = peers[sender].cipher
            plain = K.open_sealed(
                cipher if cipher is not None else self._cipher(sender), blob, aad(sender),
                what=lambda: f"round {round_id}: share from participant {sender}")
            return unpack_share_payload(plain)

        return open_

    def _receive_deliveries(self, round_id: int, deliveries: tuple[Sealed, ...],
                            partners: tuple[int, ...]) -> None:
        current = set(partners)
        opener = self._opener(Stage.SHARE_KEYS, round_id)
        for d in deliveries:
            if d.peer not in current:
                _log.warning("participant %d: delivery from %d, not a partner, skipped",
                             self.participant_id, d.peer)
                continue
            try:
                entries = opener(d.peer, d.blob)
            except (DecryptionError, MalformedMessageError) as exc:
                _log.warning("participant %d: delivery from %d skipped: %s",
                             self.participant_id, d.peer, exc)
                continue
            for e in entries:
                if e.kind == Kind.RECOVERY and e.for_round == round_id:
                    self._held.setdefault(round_id, {})[d.peer] = e.y
