"""The vendor's participants behind its gateway: train, mask and answer secure stages
with the vendor's own installed fedcollab and model code.

The gateway (:mod:`fedcollab.silo.gateway`) parses each CoordinatorFrame, asks
:meth:`VendorHost.before` for the checks only the vendor's own copy of the job can
make (its participants, its model's architecture hash, the hash of the weights that
came in, its own sites in a roster), decides it with the policy's pure ``check``,
persists and audits, and only then calls :meth:`VendorHost.act`. Training and masking
run on the vendor's own Ray (``silo serve`` starts an embedded one, or joins the
vendor's cluster with ``--ray-address``): one worker actor per site, in the cluster's
:class:`~fedcollab.cluster.pool.WorkerPool`. The workers get the vendor's spec and its
work directory, never the gateway's key or the coordinator's address: the gateway
stays the only vendor process with network egress. Every update passes the policy's
``Egress`` check before its masked bytes are handed to the link.

A site whose worker is lost mid-round (the actor killed, its process or node gone)
answers nothing from then on in that round: the coordinator's secure aggregation
counts it as a dropout and recovers its masks from the other sites' shares when
enough survive (else the round aborts, the model unchanged). At the next RoundStart
the pool recreates it, exactly as ``fedcollab run`` heals a lost worker: it reloads
its private layers from the last round it saved on the vendor's disk and trains on
the new global model only (never twice on one: the round it was lost in is over).
A worker that cannot be placed again (no live node offers its group's resources, or
it is not ready within the heal's share of the round's deadline) is called by nothing:
its sites drop from each round at once, and every RoundStart tries it again.

What leaves is ``fedcollab.secure.messages`` wire bytes (and, at setup, each
participant's Ed25519 identity public key), never a tensor: ``StageReply`` has no
tensor field.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.silo.check import Allow, Decision, Refuse
from fedcollab.silo.errors import SiloError
from fedcollab.silo.frames import MASKED, Egress, Member, Roster
from fedcollab.silo.terms import (
    config_from_proto,
    shared_indices,
    shared_sha256,
    site_name,
    tensor_from_proto,
    weights_architecture_sha256,
)

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec
    from fedcollab.worker.messages import RoundConfig

__all__ = ["VendorHost", "heal_timeout", "vendor_pids", "site_plan"]

#: The heal at a RoundStart takes at most this share of the time left to the round's
#: deadline (the rest is the round's training and stages), no more than HEAL_MAX
#: seconds (a RoundStart without a deadline) and no less than HEAL_MIN.
HEAL_SHARE, HEAL_MAX, HEAL_MIN = 0.5, 60.0, 1.0
_BODIES = ("offer", "round_start", "roster", "unmask", "stage", "setup", "abort")
#: decide an outbound frame (the gateway's: check, persist, audit "out")
DecideOut = Callable[[Egress, bytes], Decision]


def vendor_pids(spec: JobSpec, groups: Sequence[str] = ()) -> frozenset[int]:
    """The roster indices of the named groups (default: every group whose role is
    ``vendor``): the participants a vendor's silo hosts."""
    from fedcollab.spec.roster import Role, roster

    everyone = roster(spec)
    names = set(groups)
    return frozenset(pid for g, group in enumerate(spec.participants)
                     if (group.name in names if names else group.role == Role.VENDOR)
                     for pid in everyone.group_range(g))


def site_plan(spec: JobSpec, pids: frozenset[int], *, per_site: bool = False
              ) -> list[tuple[dict[str, float], list[int]]]:
    """The vendor's workers: one per hosted group, its sites together and the group's
    custom resources on it (as ``fedcollab run`` packs participants), or with
    ``per_site`` one per site: losing a worker then loses that site alone, which the
    secure sum recovers as a dropout, at the cost of a Ray call per site per stage
    (docs/cross-silo.md has both measured)."""
    from fedcollab.spec.roster import roster

    everyone = roster(spec)
    plan: list[tuple[dict[str, float], list[int]]] = []
    for g, group in enumerate(spec.participants):
        resources = {str(k): float(v) for k, v in group.resources.items()}
        sites = [pid for pid in everyone.group_range(g) if pid in pids]
        if per_site:
            plan.extend((dict(resources), [pid]) for pid in sites)
        elif sites:
            plan.append((resources, sites))
    return plan


@dataclass
class _Round:
    job_id: str
    round_id: int
    model_sha256: str
    weights: list[np.ndarray]
    config: RoundConfig
    participants: tuple[int, ...]
    masked: frozenset[int] = frozenset()   # the sites whose masked input left this round


class VendorHost:
    """The vendor's participants, hosted on the vendor's own Ray for its gateway.

    Args:
        spec: The vendor's own copy of the job (its data, model and training).
        party: The vendor's party name (its certificate's).
        work_dir: Where its participants keep identity keys and private layers.
        groups: Which groups it hosts (default: those with role ``vendor``).
        own_ca: The fingerprint of the trusted CA the vendor's own certificate chains
            to ("" if none): the vendor's own sites count as trusted identities
            for ``min_group`` exactly when the vendor's own identity does.
        ray: The connected ``ray`` module: a worker actor per hosted group, or per
            site with ``worker_per_site`` (:func:`site_plan`). ``None``: every site in
            one worker in this process (the gateway's unit tests; ``silo serve
            --transport inprocess``).
        worker_per_site: One Ray worker per site (``silo serve --worker-per-site``).

    Raises:
        fedcollab.spec.SpecError: The spec's model does not build or fit the data.
        fedcollab.cluster.placement.ClusterError: The vendor's Ray cannot host a
            site's worker (a custom resource no node offers).
    """

    def __init__(self, spec: JobSpec, *, party: str, work_dir: Path,
                 groups: Sequence[str] = (), own_ca: str = "", ray: Any = None,
                 worker_per_site: bool = False) -> None:
        self.spec, self.party, self.own_ca = spec, party, own_ca
        self.pids = vendor_pids(spec, groups)
        if not self.pids:
            raise SiloError(f"silo: the spec {spec.name!r} has no vendor group to host "
                            "(role: vendor, or --group NAME)")
        self.pool: Any
        if ray is None:
            from fedcollab.worker.inprocess import InProcessPool

            self.pool = InProcessPool(spec, Path(work_dir), hosted=[sorted(self.pids)])
        else:
            from fedcollab.cluster.pool import WorkerPool
            from fedcollab.spec.roster import roster

            self.pool = WorkerPool(ray, spec, roster(spec), Path(work_dir),
                                   plan=site_plan(spec, self.pids, per_site=worker_per_site))
        #: sites lost and not recreated (their worker cannot be placed again): they sit
        #: out each round until a RoundStart's heal places them; said on stderr when it changes
        self.lost: list[int] = []
        #: the round whose private saves are under way, and what waits for them
        self._saving: Optional[tuple[int, Callable[[], None]]] = None
        info = self.pool.model_info()
        self.initial = [np.array(w) for w in info.weights]
        self.layers = info.layers
        #: model indices that come in each round and whose update leaves (masked)
        self.shared = shared_indices(spec, self.pids, info.private_arrays, len(self.initial))
        self.model_sha256 = weights_architecture_sha256(spec.task.model, self.layers,
                                                        self.initial)
        self._round: Optional[_Round] = None
        #: The last RoundStart whose weights passed _check_weights, and those arrays.
        self._inbound: tuple[Any, list[np.ndarray]] = (None, [])

    # ------------------------------------------------------------------ before the check
    def before(self, message: Any, inbound: Any) -> Any:
        """The vendor's own checks of a parsed frame, before the policy's: a
        :class:`~fedcollab.silo.check.Refuse`, or the inbound frame to decide (a
        roster with the vendor's own sites marked as the vendor's identity)."""
        kind = inbound.kind
        body: Any = getattr(message, kind, None) if kind in _BODIES else None
        if kind == "offer":
            offered = frozenset(int(p) for p in body.participants)
            if offered != self.pids:
                return Refuse("offer", f"the offer's participants ({len(offered)}) are not the "
                              f"{len(self.pids)} this vendor's spec hosts")
            if body.model_sha256 != self.model_sha256:
                return Refuse("offer", f"model_sha256 {body.model_sha256[:12]} is not the "
                              f"vendor's own {body.model_name} ({self.model_sha256[:12]}): "
                              "the vendor trains its own model code, never the coordinator's")
        elif kind == "round_start":
            return self._check_weights(body) or inbound
        elif kind == "roster":
            rnd = self._round
            sampled = set(rnd.participants) if rnd is not None else set()
            named = {int(m.party.rsplit("/", 1)[1]) for m in body.members
                     if m.party.rsplit("/", 1)[0] == self.party
                     and m.party.rsplit("/", 1)[-1].isdigit()}
            idle = sorted(named - sampled)
            if idle:  # its own idle sites would count toward min_group without taking part
                return Refuse("min_group", f"the roster names the vendor's site {idle[0]}, "
                              "which this round did not sample")
            return replace(inbound, frame=self._own_sites(inbound.frame))
        elif kind == "unmask":
            rnd = self._round
            own = {site_name(self.party, p) for p in self.pids}
            claimed = {s for s in body.survivors if s in own}
            if rnd is None or not claimed <= {site_name(self.party, p) for p in rnd.masked}:
                return Refuse("unmask", "the unmask request names a vendor site as a survivor "
                              "whose masked input never left")
        elif kind == "stage":
            outside = sorted(set(inbound.frame.participants) - self.pids)
            if outside:
                return Refuse("sequence", f"stage {body.stage} for participant {outside[0]}, "
                              "which this vendor does not host")
        return inbound

    def _check_weights(self, body: Any) -> Optional[Refuse]:
        if len(body.weights) != len(self.shared):
            return Refuse("share_only", f"{len(body.weights)} inbound weights; the vendor "
                          f"takes exactly its {len(self.shared)} shared arrays")
        arrays = []
        for i, tensor in zip(self.shared, body.weights):
            if tensor.layer != self.layers[i]:
                return Refuse("share_only", f"inbound weights for layer {tensor.layer!r} where "
                              f"the vendor's model has {self.layers[i]!r}")
            try:
                arrays.append((tensor.layer, tensor_from_proto(tensor, self.initial[i].shape)))
            except ValueError as err:
                return Refuse("malformed", str(err))
        if shared_sha256(arrays) != body.global_model_sha256:
            return Refuse("replay", "global_model_sha256 is not the hash of the weights that "
                          "came in")
        if not set(int(p) for p in body.participants) <= self.pids:
            return Refuse("sequence", "the round names participants this vendor does not host")
        self._inbound = (body, [a for _, a in arrays])  # decoded once: _start takes them
        return None

    def _own_sites(self, roster_frame: Roster) -> Roster:
        """The vendor's own sites (``party/pid`` for a pid it hosts) carry the vendor's
        own identity: trusted exactly when its certificate chains to a trusted CA.
        Anyone else's entry stays as its certificate says."""
        own = {site_name(self.party, p) for p in self.pids}
        return replace(roster_frame, members=tuple(
            Member(m.party, self.own_ca) if m.party in own else m
            for m in roster_frame.members))

    # ------------------------------------------------------------------ after an Allow
    def act(self, message: Any, inbound: Any, decide_out: DecideOut
            ) -> tuple[Optional[dict[str, Any]], Optional[Callable[[], None]]]:
        """Do what an allowed frame asks; returns the reply's body (``None``: the
        gateway's Decision) and what to run once the reply is on its way."""
        kind = inbound.kind
        body: Any = getattr(message, kind, None) if kind in _BODIES else None
        if kind == "round_start":
            self._start(body)
        elif kind == "setup":
            return self._setup(body), None
        elif kind == "stage":
            return self._stage(message.seq, body, decide_out)
        return None, None

    def _start(self, body: Any) -> None:
        self._saved()
        if self.pool.needs_heal:  # a site lost in an earlier round: recreated for this one
            self._heal(heal_timeout(float(body.deadline_unix), time.time()))
        weights = [np.array(w) for w in self.initial]  # private layers: the sites' own
        checked, arrays = self._inbound
        if checked is not body:  # not the RoundStart _check_weights passed: decode it
            arrays = [tensor_from_proto(t, self.initial[i].shape)
                      for i, t in zip(self.shared, body.weights)]
        self._inbound = (None, [])
        for i, array in zip(self.shared, arrays):
            weights[i] = array
        self._round = _Round(body.job_id, int(body.round_id), body.global_model_sha256,
                             weights, config_from_proto(body.config),
                             tuple(sorted(int(p) for p in body.participants)))

    def _heal(self, timeout: float) -> None:
        """Recreate the sites' workers lost since the last round (the pool's heal: the
        new worker reloads its sites' private layers from the vendor's disk) and pin
        the group's setup in them again, all within ``timeout`` seconds. A worker that
        cannot be placed again stays unplaced: nothing calls it, so its sites are
        dropouts at once (the secure sum goes on without them) instead of holding the
        round to its deadline; the next RoundStart tries it again."""
        import sys

        self.pool.heal(timeout=timeout, strict=False)
        self.pool.setup_identities()  # a worker lost here: tried again next round
        unplaced = self.pool.unplaced
        lost = sorted(p for w in unplaced for p in self.pool.hosted[w])
        if lost != self.lost:
            back = sorted(set(self.lost) - set(lost))
            if lost:
                print(f"fedcollab: silo: vendor site(s) {lost} stay out: "
                      f"{unplaced[min(unplaced)]}", file=sys.stderr, flush=True)
            if back:
                print(f"fedcollab: silo: vendor site(s) {back} placed again", file=sys.stderr,
                      flush=True)
        self.lost = lost

    def _setup(self, body: Any) -> Optional[dict[str, Any]]:
        from fedcollab.errors import FedcollabError
        from fedcollab.worker.hosting import WorkerLost

        try:
            self.pool.pin_setup(job_id=bytes(body.secure_job_id),
                                registry={int(k): bytes(v) for k, v in body.registry.items()},
                                members=[int(m) for m in body.members],
                                graph_seed=bytes(body.graph_seed))
        except WorkerLost:
            return _decision(body.job_id, 0, "setup", "a vendor site's worker did not answer "
                             "the group's setup")
        except FedcollabError as err:
            return _decision(body.job_id, 0, "setup", f"{type(err).__name__}: {err}")
        return None

    def close(self) -> None:
        """End the sites' workers (the gateway is done), their last saves first."""
        try:
            self._saved()
        finally:
            self.pool.shutdown()

    def _stage(self, seq: int, body: Any, decide_out: DecideOut
               ) -> tuple[Optional[dict[str, Any]], Optional[Callable[[], None]]]:
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        reply = silo_pb2.StageReply(job_id=body.job_id, round_id=body.round_id,
                                    stage=body.stage, answers_seq=seq)
        after: Optional[Callable[[], None]] = None
        if body.stage == "identities":
            from fedcollab.worker.hosting import WorkerLost

            asked = {int(p) for p in body.participants}
            try:
                keys = self.pool.collect_identities()
            except WorkerLost:  # a site lost before setup: none registered, the job says so
                keys = {}
            _add(reply, body, {p: k for p, k in keys.items() if p in asked})
            return {"stage_reply": reply}, None
        rnd = self._round
        if rnd is None or rnd.round_id != body.round_id or rnd.job_id != body.job_id:
            return _decision(body.job_id, body.round_id, "sequence",
                             "a stage for a round the vendor did not start"), None
        messages = {int(m.participant): bytes(m.payload) for m in body.messages}
        if body.stage == "train":
            self._train(rnd, messages, reply, decide_out)
            # the sites' private layers stay here, saved in the vendor's own state
            # directory once the reply is on its way (the coordinator does not wait)
            after = lambda: self._save_private(rnd.round_id)  # noqa: E731
        else:
            # a site whose worker was lost answers nothing: a dropout for the server
            got = self.pool.secure_stage(body.stage, rnd.round_id, messages,
                                         prepare_next=bool(body.prepare_next))
            _add(reply, body, got.replies)
            said = f"{body.stage}: participant refused: "
            for pid, why in got.refused.items():
                reply.refused[pid] = why[len(said):] if why.startswith(said) else why
            if body.stage == "unmask" and body.prepare_next:
                after = self.pool.secure_prepare  # once the reply left
        return {"stage_reply": reply}, after

    def _save_private(self, round_id: int) -> None:
        """Save the sites' private layers after ``round_id`` (on the vendor's disk),
        keeping the round before too: a site lost before it saved this round heals
        from the last one it did save. Each worker saves before its next call (calls
        to an actor run in order); the gateway waits for the saves only at the next
        RoundStart (or at the end), not between the round's stages."""
        self._saved()
        self._saving = (round_id, self.pool.save_private(round_id))

    def _saved(self) -> None:
        """Wait for the last round's private saves; that round is then committed (a
        recreated worker reloads it)."""
        pending, self._saving = self._saving, None
        if pending is not None:
            pending[1]()
            self.pool.commit(pending[0])

    def _train(self, rnd: _Round, inbox: Mapping[int, bytes], reply: Any,
               decide_out: DecideOut) -> None:
        """Train the sampled sites, mask, and let the update out only if the policy's
        Egress check allows it (once per round: one contribution per global model)."""
        pids = sorted(p for p in rnd.participants if p in inbox)
        # a site whose worker is lost drops (out.dropped): nothing is said for it
        out = self.pool.train(rnd.weights, rnd.round_id, pids, rnd.config, inbox)
        reply.precomputed = out.precomputed
        for pid, seconds in out.seconds.items():
            reply.seconds[pid] = seconds
        for pid, why in out.failed.items():
            reply.failed[pid] = why
        for update in out.updates:  # an open update never leaves a vendor
            reply.failed[update.pid] = "egress: the vendor's participant is not secure: refused"
        if not out.masked:
            return
        config = rnd.config
        # the noise the sites themselves add (central DP: the server's, which the vendor
        # cannot see, so none of its own) and the clip they apply (none without DP)
        own_noise = config.dp_on and config.dp_mode != "central"
        egress = Egress(job_id=rnd.job_id, round_id=rnd.round_id,
                        global_model_sha256=rnd.model_sha256, encoding=MASKED,
                        layers=tuple(dict.fromkeys(self.layers[i] for i in self.shared)),
                        noise_multiplier=config.noise_multiplier if own_noise else 0.0,
                        clip_norm=config.clip_norm if config.dp_on else math.inf,
                        max_abs=max(out.max_abs.values(), default=0.0))
        data = b"".join(out.masked[p] for p in sorted(out.masked))
        decision = decide_out(egress, data)
        if not isinstance(decision, Allow):
            why = f"refused by the vendor's policy ({getattr(decision, 'rule', '')}): " \
                  f"{getattr(decision, 'reason', '')}"
            for pid in out.masked:
                reply.failed[pid] = why
            return
        _add(reply, reply, dict(out.masked))
        rnd.masked = frozenset(out.masked)


def heal_timeout(deadline_unix: float, now: float) -> float:
    """Seconds a RoundStart's heal may take: :data:`HEAL_SHARE` of the time left to the
    round's ``deadline_unix`` (``now``: ``time.time()``), so that the heal and the
    round's work both fit before the coordinator gives up on the vendor; between
    :data:`HEAL_MIN` and :data:`HEAL_MAX` (no deadline: 0 or not finite)."""
    if not math.isfinite(deadline_unix) or deadline_unix <= 0:
        return HEAL_MAX
    return min(HEAL_MAX, max(HEAL_MIN, (deadline_unix - now) * HEAL_SHARE))


def _add(reply: Any, where: Any, payloads: Mapping[int, bytes]) -> None:
    from fedcollab._proto.fedcollab.v1 import silo_pb2

    for pid in sorted(payloads):
        reply.replies.append(silo_pb2.SecAggMessage(job_id=where.job_id, round_id=where.round_id,
                                                    participant=pid, payload=payloads[pid]))


def _decision(job_id: str, round_id: int, rule: str, reason: str) -> dict[str, Any]:
    from fedcollab._proto.fedcollab.v1 import silo_pb2

    return {"decision": silo_pb2.Decision(job_id=job_id, round_id=round_id,
                                          verdict=silo_pb2.Decision.REFUSE,
                                          reason=f"{rule}: {reason}")}
