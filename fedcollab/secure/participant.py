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
   ``HKDF(pairwise key, salt=round id)``. For each round ``r`` the participant draws a
   fresh recovery key ``e_u^(r)``, seals the table of its round-``r`` seeds under it
   (AES-GCM, stored by the server) and Shamir-shares ``e_u^(r)``. If ``u`` drops in
   round ``r`` the server learns exactly the round-``r`` seeds; HKDF is a PRF keyed by
   the never-revealed pairwise key, so they say nothing about any other round.
3. The package for round ``r+1`` (seed table + shares of ``e_u^(r+1)``) rides with the
   masked input of round ``r`` and reaches the holders with the round-``r`` unmask
   request: no extra round trip. The self-mask seed ``b_u^(r)`` is fresh every round
   and its shares ride in the same ciphertexts, so they exist only if the input does.
4. A participant that dropped (its recovery secret was reconstructed, its package
   chain is broken) must run key setup before it takes part again; it then also gets
   fresh X25519 keys (defence in depth), and its neighbours re-share their packages
   with its new keys in the same stage.

Assumptions: an honest-but-curious server (it routes every message faithfully; a
malicious one would need the consistency round of Bonawitz et al.), fewer than ``t``
colluding participants in any neighbourhood, strictly increasing round ids (consecutive
for amortisation: a participant absent from round ``r`` re-runs key setup in ``r+1``),
and a graph not chosen adversarially.
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcollab.secure import keys as K
from fedcollab.secure._wire import share_aad_prefix, share_payloads
from fedcollab.secure.errors import (
    DecryptionError, EncodingError, MalformedMessageError, ProtocolError, ShareRevealRefusedError,
    UnknownParticipantError,
)
from fedcollab.secure.messages import (
    SERVER, Advertise, KeyShares, Kind, MaskedInput, MaskRequest, PeerKeys, RevealedShare, Roster,
    Sealed, ShareEntry, Stage, UnmaskRequest, UnmaskResponse, pack, pack_body, pack_seed_table,
    share_aad, table_aad, unpack, unpack_share_payload,
)
from fedcollab.secure.params import SecAggParams
from fedcollab.secure.prg import accumulate_masks
from fedcollab.secure.shamir import secret_from_bytes, share_values

__all__ = ["SecureParticipant"]

_log = logging.getLogger(__name__)
_U32 = struct.Struct(">I")


@dataclass
class _Peer:
    """A neighbour's public keys and what this participant derived from them."""

    c_pk: bytes
    s_pk: bytes
    cipher: AESGCM | None = field(default=None, repr=False)
    pair_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Ask:
    """What the server asked this participant to mask with in one round."""

    round_id: int
    partners: tuple[int, ...]
    threshold: int
    dim: int
    ring_bits: int


@dataclass
class _Prepared:
    """The update-independent part of one masked input (the offline phase's output)."""

    ask: _Ask
    epoch: int
    mask: np.ndarray = field(repr=False)
    digest: bytes = field(repr=False)
    tail: bytes = field(repr=False)  # the packed seed table and sealed shares
    package_keys: dict[int, bytes] = field(repr=False)


class SecureParticipant:
    """One logical secure participant; lives in a worker and is driven stage by stage.

    Every method takes the server's bytes and returns bytes; bad server bytes raise a
    :class:`~fedcollab.secure.errors.ProtocolError` (the caller treats the participant
    as dropped for the round). No method blocks or does I/O.

    Args:
        participant_id: The participant's id in the job's roster (0 <= id < 2**32-1).
        params: The group's parameters (same object as the server's).
    """

    def __init__(self, participant_id: int, params: SecAggParams) -> None:
        if not 0 <= participant_id < SERVER:
            raise ValueError(f"participant_id={participant_id} must be in [0, 2**32 - 1)")
        self.participant_id = participant_id
        self.params = params
        self._c: X25519PrivateKey | None = None
        self._s: X25519PrivateKey | None = None
        self._peers: dict[int, _Peer] = {}
        self._package_round: int | None = None
        self._package_keys: dict[int, bytes] = {}
        self._seeds: dict[int, dict[int, bytes]] = {}
        self._held: dict[int, dict[int, int]] = {}  # round -> peer -> its recovery share
        self._package_epoch = -1  # key epoch when the package keys were snapshotted
        self._revealed: dict[int, dict[int, Kind]] = {}
        self._last_masked_round = -1
        self._epoch = 0  # bumped whenever any key (own or a peer's) changes
        self._last_ask: _Ask | None = None
        self._ready: _Prepared | None = None
        #: Whether the last masked input used masks from :meth:`prepare_next_round`.
        self.last_input_precomputed = False

    # -- key setup -----------------------------------------------------------------
    def needs_keys(self, round_id: int) -> bool:
        """Whether this participant must run key setup before masking in ``round_id``."""
        return (self._c is None or not self.params.amortise_keys
                or self._package_round != round_id)

    def advertise_keys(self, round_id: int) -> bytes:
        """Stage ADVERTISE: draw fresh X25519 key pairs and publish their public halves."""
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
        body = Advertise(K.public_bytes(self._c), K.public_bytes(self._s))
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
        """
        msg = unpack(roster, Roster, round_id=round_id, sender=SERVER,
                     recipient=self.participant_id)
        _, s_key = self._require_keys()
        self._update_peers(msg.peers)
        holders = tuple(sorted(p.pid for p in msg.peers))
        self._check_threshold(msg.threshold, holders)
        if self.params.amortise_keys:
            secret, table = self._seal_seed_table(round_id)
        else:
            secret, table = K.private_bytes(s_key), b""
            self._seeds[round_id] = {v: self._round_seed(v, round_id) for v in self._peers}
        shares = self._seal_shares(Stage.SHARE_KEYS, round_id, holders, msg.threshold, [
            (Kind.RECOVERY, round_id, secret_from_bytes(secret))])
        self._package_round = round_id
        self._package_keys = {v: p.s_pk for v, p in self._peers.items()}
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
        self._update_peers(msg.key_updates)
        partners = tuple(sorted(msg.partners))
        self._check_threshold(msg.threshold, partners)
        if self._epoch != self._package_epoch:  # some key changed since the package
            for v in partners:
                if self._peers[v].s_pk != self._package_keys.get(v):
                    raise ProtocolError(f"round {round_id}: partner {v} has keys newer than "
                                        "this participant's recovery package; run key setup "
                                        "first")
        self._receive_deliveries(round_id, msg.deliveries)
        x = np.asarray(vector, dtype=np.float64)
        if x.ndim != 1 or x.size != msg.dim:
            raise EncodingError(f"round {round_id}: vector has shape {x.shape}, the round "
                                f"expects ({msg.dim},) (update + weight coordinate)")
        codec = self.params.codec(msg.group_size)
        ask = _Ask(round_id, partners, msg.threshold, msg.dim, codec.ring_bits)
        masked = codec.encode(x)
        prep, self._ready = self._ready, None
        self.last_input_precomputed = (prep is not None and prep.ask == ask
                                       and prep.epoch == self._epoch)
        if not self.last_input_precomputed:
            prep = self._prepare(ask)  # nothing usable was prepared offline
        np.add(masked, prep.mask, out=masked)
        if self.params.amortise_keys:
            self._package_round = round_id + 1
            self._package_keys, self._package_epoch = prep.package_keys, prep.epoch
        else:
            self._package_round = None
        self._last_ask = ask
        self._last_masked_round = round_id
        self._revealed = {round_id: {}}
        self._seeds = {r: s for r, s in self._seeds.items() if r > round_id}
        for old in [r for r in self._held if r < round_id]:
            del self._held[old]
        body = MaskedInput.head(codec.ring_bits, masked.tobytes(), prep.digest) + prep.tail
        return pack_body(MaskedInput, body, round_id=round_id, sender=self.participant_id,
                         recipient=SERVER)

    # -- offline phase ---------------------------------------------------------------
    def prepare_next_round(self) -> bool:
        """Offline phase: precompute the next round's masks and sealed shares now.

        Everything in a masked input except the encoded update itself depends only on
        seeds this participant already holds: the self mask ``PRG(b_u)`` (``b_u``
        drawn now, used once), the pairwise masks from the next round's seed table,
        the sealed shares and the following recovery package. Computing them while
        the server unmasks and evaluates takes them off the round's critical path.
        :meth:`masked_input` uses the result only if the server then asks for
        exactly the same round, partners, threshold and shape under the same peer
        keys, and otherwise discards it (``b_u`` was never sent) and computes afresh.

        Returns:
            Whether something was prepared (amortised keys, after a masked input).
        """
        last = self._last_ask
        if (not self.params.amortise_keys or last is None or self._c is None
                or self._package_round != last.round_id + 1):
            self._ready = None
            return False
        self._ready = self._prepare(_Ask(last.round_id + 1, last.partners, last.threshold,
                                         last.dim, last.ring_bits))
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
            e, table = self._seal_seed_table(r + 1)
            entries.append((Kind.RECOVERY, r + 1, secret_from_bytes(e)))
        shares = self._seal_shares(Stage.MASKED_INPUT, r, ask.partners, ask.threshold, entries)
        return _Prepared(ask, self._epoch, mask, K.self_seed_digest(b, r, me),
                         MaskedInput.tail(table, shares),
                         {v: p.s_pk for v, p in self._peers.items()})

    # -- unmasking -----------------------------------------------------------------
    def unmask(self, round_id: int, request: bytes) -> bytes:
        """Stage UNMASK: reveal the requested shares, never both kinds for one peer.

        ``SELF`` requests carry the peer's sealed share bundle (the peer's input
        arrived); ``RECOVERY`` requests refer to a share held from an earlier delivery
        (the peer dropped). Shares that fail authentication or are not held are left
        out of the response.

        Raises:
            ShareRevealRefusedError: Asked for both kinds of one peer's shares (in this
                or an earlier request of the round); nothing is revealed.
            ProtocolError: Bad request, a peer that is not a neighbour, or a round this
                participant sent no input for.
        """
        msg = unpack(request, UnmaskRequest, round_id=round_id, sender=SERVER,
                     recipient=self.participant_id)
        if round_id not in self._revealed:
            raise ProtocolError(f"round {round_id}: participant {self.participant_id} sent no "
                                "masked input this round, so it reveals nothing")
        revealed = self._revealed[round_id]
        asked: dict[int, Kind] = {}
        peers = self._peers
        for peer, kind, _ in msg.reveals:
            if peer not in peers:
                raise UnknownParticipantError(f"round {round_id}: unmask request names "
                                              f"participant {peer}, not a neighbour")
            if asked.setdefault(peer, kind) != kind or revealed.get(peer, kind) != kind:
                raise ShareRevealRefusedError(
                    f"round {round_id}: asked for both the self-mask and the recovery share "
                    f"of participant {peer}; an honest participant reveals only one")
        revealed.update(asked)
        out = []
        for peer, kind, blob in msg.reveals:
            y = self._reveal(round_id, peer, kind, blob)
            if y is not None:
                out.append(RevealedShare(peer, kind, y))
        body = UnmaskResponse(tuple(out))
        return pack(body, round_id=round_id, sender=self.participant_id, recipient=SERVER)

    def _reveal(self, round_id: int, peer: int, kind: Kind, blob: bytes) -> int | None:
        if kind == Kind.RECOVERY:
            return self._held.get(round_id, {}).get(peer)
        try:
            entries = self._open(Stage.MASKED_INPUT, round_id, peer, blob)
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

    def _check_threshold(self, t: int, holders: tuple[int, ...]) -> None:
        if self.participant_id in holders or len(set(holders)) != len(holders):
            raise MalformedMessageError("neighbour list repeats a participant or names itself")
        unknown = [v for v in holders if v not in self._peers]
        if unknown:
            raise UnknownParticipantError(f"{len(unknown)} neighbour(s) without known keys, "
                                          f"e.g. participant {unknown[0]}")
        if not 2 <= t <= len(holders) or 2 * t <= len(holders):
            raise ProtocolError(f"threshold {t} is unsafe or unreachable with {len(holders)} "
                                "share holders (need 2 <= t <= holders < 2t)")

    def _update_peers(self, peers: tuple[PeerKeys, ...]) -> None:
        for p in peers:
            if p.pid == self.participant_id or p.pid >= SERVER:
                raise MalformedMessageError(f"key list names participant {p.pid}")
            old = self._peers.get(p.pid)
            if old is None or (old.c_pk, old.s_pk) != (p.c_pk, p.s_pk):
                self._peers[p.pid] = _Peer(p.c_pk, p.s_pk)
                self._epoch += 1

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
        shared_c = K.agree(c_key, peer.c_pk)
        shared_s = shared_c if s_key is c_key and peer.s_pk == peer.c_pk \
            else K.agree(s_key, peer.s_pk)
        peer.cipher = K.channel_cipher(shared_c, self.participant_id, v)
        peer.pair_key = K.pairwise_key(shared_s, self.participant_id, v)

    def _seal_seed_table(self, for_round: int) -> tuple[bytes, bytes]:
        seeds = {v: self._round_seed(v, for_round) for v in self._peers}
        self._seeds[for_round] = seeds
        e = os.urandom(32)
        table = K.seal(AESGCM(e), pack_seed_table(seeds), table_aad(for_round, self.participant_id))
        return e, table

    def _seal_shares(self, stage: Stage, round_id: int, holders: tuple[int, ...], threshold: int,
                     entries: list[tuple[Kind, int, int]]) -> tuple[Sealed, ...]:
        xs = [v + 1 for v in holders]
        columns = [share_values(secret, threshold=threshold, xs=xs) for _, _, secret in entries]
        payloads = share_payloads([(kind, rnd) for kind, rnd, _ in entries], columns)
        prefix = share_aad_prefix(stage, round_id, self.participant_id)
        blobs = K.seal_many([(self._cipher(v), payload, prefix + _U32.pack(v))
                             for v, payload in zip(holders, payloads)])
        return tuple(map(Sealed, holders, blobs))

    def _open(self, stage: Stage, round_id: int, sender: int, blob: bytes
              ) -> tuple[ShareEntry, ...]:
        aad = share_aad(stage, round_id, sender, self.participant_id)
        plain = K.open_sealed(self._cipher(sender), blob, aad,
                              what=f"round {round_id}: share from participant {sender}")
        return unpack_share_payload(plain)

    def _receive_deliveries(self, round_id: int, deliveries: tuple[Sealed, ...]) -> None:
        for d in deliveries:
            if d.peer not in self._peers:
                _log.warning("participant %d: delivery from unknown %d skipped",
                             self.participant_id, d.peer)
                continue
            try:
                entries = self._open(Stage.SHARE_KEYS, round_id, d.peer, d.blob)
            except (DecryptionError, MalformedMessageError) as exc:
                _log.warning("participant %d: delivery from %d skipped: %s",
                             self.participant_id, d.peer, exc)
                continue
            for e in entries:
                if e.kind == Kind.RECOVERY and e.for_round == round_id:
                    self._held.setdefault(round_id, {})[d.peer] = e.y
