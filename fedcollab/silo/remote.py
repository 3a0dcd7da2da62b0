"""A job whose vendor runs on its own infrastructure: the coordinator's pool spans
its own workers and a vendor's silo.

:class:`SiloPool` is the job's :class:`~fedcollab.worker.messages.Pool`: the
community's participants train on the job's own workers as always; the vendor's are
reached over the silo link (:class:`~fedcollab.silo.link.SiloLink`) with typed
frames: an Offer once, then per round a RoundStart (the shared layers' global
weights, the round's settings), the Roster, one StageRequest per secure stage (the
masked input rides with "train"), the UnmaskRequest before the unmask stage, and an
Abort when the round is given up. Every answer is a Decision or a StageReply of
``fedcollab.secure.messages`` bytes. A vendor that does not answer by the round's
deadline aborts the round (the model is unchanged); the next round starts afresh.

:class:`SiloParticipants` is what ``fedcollab run --silo-listen`` hands the job
(:class:`fedcollab.job.run.RemoteParticipants`).
"""
from __future__ import annotations

import math
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fedcollab.secure.errors import RoundAbortedError
from fedcollab.silo.errors import SiloError
from fedcollab.silo.link import LinkLost, LinkTimeout, SiloLink
from fedcollab.silo.terms import (
    config_to_proto,
    secure_job_id,
    shared_indices,
    shared_sha256,
    site_name,
    tensor_to_proto,
    weights_architecture_sha256,
)
from fedcollab.silo.vendor import vendor_pids
from fedcollab.types import Weights
from fedcollab.worker.messages import (
    Attendance,
    ModelInfo,
    Pool,
    RoundConfig,
    RoundOutput,
    StageReplies,
)

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["SiloPool", "SiloParticipants"]


class SiloParticipants:
    """The vendor's participants, remote: ``fedcollab run SPEC --silo-listen ...``.

    Args:
        listen: HOST:PORT for the SiloService (port 0: a free one, printed).
        cert, key: The coordinator's party certificate and key.
        client_ca: The CA the vendor's certificate must chain to.
        party: The vendor's party name (its certificate's).
        groups: The spec's groups the vendor hosts (default: role ``vendor``).
        join_timeout: Seconds to wait for the vendor to connect and answer the offer.
        deadline: Seconds a round may wait for the vendor before it aborts.
        record: Copy every byte received on the link to this file.
    """

    def __init__(self, *, listen: str, cert: Path, key: Path, client_ca: Path,
                 party: str = "vendor", groups: Sequence[str] = (),
                 join_timeout: float = 300.0, deadline: float = 300.0,
                 record: Optional[Path] = None) -> None:
        self.listen, self.cert, self.key, self.client_ca = listen, cert, key, client_ca
        self.party, self.groups = party, tuple(groups)
        self.join_timeout, self.deadline, self.record = join_timeout, deadline, record

    def pids(self, spec: JobSpec) -> frozenset[int]:
        pids = vendor_pids(spec, self.groups)
        if not pids:
            raise SiloError(f"silo: the spec {spec.name!r} has no vendor group to host "
                            "remotely (role: vendor, or --silo-group NAME)")
        return pids

    def pool(self, local: Pool, spec: JobSpec, out_dir: Path) -> Pool:
        pids = self.pids(spec)
        job_id = silo_job_id(out_dir, spec, self.party)
        link = SiloLink(cert=self.cert, key=self.key, client_ca=self.client_ca,
                        listen=self.listen, record=self.record).start()
        # the vendor needs the port (127.0.0.1:0 picks one): always said, on stderr
        print(f"fedcollab: silo: listening on {link.address} for party {self.party!r}",
              file=sys.stderr, flush=True)
        return SiloPool(local, link, spec=spec, party=self.party, pids=pids,
                        join_timeout=self.join_timeout, deadline=self.deadline,
                        job_id=job_id)


#: In a job's output directory: the silo job id, kept for ``fedcollab run --resume``.
JOB_FILE = "silo-job.json"


def silo_job_id(out_dir: Path, spec: JobSpec, party: str) -> str:
    """The job id the vendor knows this job by: fresh for a new job, the one in
    ``out_dir``/``silo-job.json`` for a resumed one (written, durably, before the
    offer leaves).

    A resumed job keeps its id so that the vendor's persisted state for it holds: its
    round ids only increase and it contributes once per global model. Under a new
    id the vendor would see a new job and could be asked to contribute again to the
    global model it contributed to just before the coordinator crashed; the
    difference of two sums over one model is a participant's update (finding 7,
    docs/threat-model.md).

    Raises:
        SiloError: The file is unreadable or names another party.
    """
    import json

    from fedcollab.io import atomic_write_json

    path = Path(out_dir) / JOB_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            job_id, named = str(saved["job_id"]), str(saved["party"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SiloError(f"silo: {path} is unreadable ({type(err).__name__}); it holds "
                            "the job id the vendor knows this job by") from None
        if named != party:
            raise SiloError(f"silo: {path} names party {named!r}, not {party!r}: this "
                            "job ran with another vendor")
        return job_id
    job_id = f"{spec.name}-{secrets.token_hex(6)}"
    atomic_write_json(path, {"job_id": job_id, "party": party})
    return job_id


class SiloPool:
    """The job's pool: ``local`` hosts the other participants, ``party``'s silo
    hosts ``pids`` (secure ones: only masked inputs come back).

    The job id is fresh per job and kept when the job resumes (:func:`silo_job_id`;
    the vendor refuses a round id it has seen for a job, and a second contribution to
    one of its global models); the secure group's job id is derived from it, so every
    signed key advert of the job is bound to the job the vendor accepted.

    A vendor whose gateway dialled again (it restarted, or its link was lost) is
    taken back at the next round that samples its participants: the offer and the
    group's setup again (the vendor's state accepts the same terms again), then its
    sites run key setup afresh. A round it declines (its state refuses the round's
    start: it saw that round id, or contributed to that global model, before a
    restart) goes on without it: its participants count as dropped.
    """

    def __init__(self, local: Pool, link: SiloLink, *, spec: JobSpec, party: str,
                 pids: frozenset[int], join_timeout: float, deadline: float,
                 job_id: Optional[str] = None) -> None:
        self.local, self.link, self.spec, self.party = local, link, spec, party
        self.pids = pids
        self.join_timeout, self.deadline = join_timeout, deadline
        self.job_id = job_id or f"{spec.name}-{secrets.token_hex(6)}"
        self.remote_index = 0         # after the local workers (set once they are ready)
        self.placement: list[dict[str, Any]] = []
        self.private_pids: list[int] = sorted(set(local.private_pids) | {
            p for p in pids if _private_group(spec, p)})
        self._offered = False
        self._info: Optional[ModelInfo] = None
        self._shared: list[int] = []
        self._round = 0
        self._active = False          # the vendor takes part in the current round
        self._deadline = 0.0          # the current round's, time.monotonic()
        self._model = ""              # the current round's inbound-weights hash
        self._roster: list[int] = []  # the round's secure members
        self._survived: set[int] = set()
        self._revealed = False
        self._bytes: dict[str, dict[str, int]] = {}
        self._joins = 0               # the link's Join count the offer was made on
        self._absent = ""             # why the vendor sits the current round out
        # the secure group's setup as pinned (members, graph seed, registry): sent
        # again to a vendor that rejoins
        self._pinned: Optional[tuple[list[int], bytes, dict[int, bytes]]] = None

    # ------------------------------------------------------------------ set-up
    @property
    def replaced(self) -> int:
        return self.local.replaced

    @replaced.setter
    def replaced(self, value: int) -> None:
        self.local.replaced = value

    @property
    def needs_heal(self) -> bool:
        return self.local.needs_heal

    def heal(self) -> list[int]:
        return self.local.heal()

    def wait_ready(self) -> None:
        """The local workers, then the vendor: its Join, and its answer to the offer.

        Raises:
            SiloError: The vendor did not connect, refused the offer, or its model
                waits for approval.
        """
        self.local.wait_ready()
        if self._offered:
            return
        self.placement = list(self.local.placement)
        self.remote_index = len(self.placement)
        joined = self.link.wait_join(self.party, self.join_timeout)
        self._joins = self.link.joins(self.party)
        self._info = info = self.local.model_info()
        self._shared = shared_indices(self.spec, self.pids, info.private_arrays,
                                      len(info.weights))
        reply = self._ask("offer", time.monotonic() + self.join_timeout, offer=self._offer(info))
        verdict, reason = _verdict(reply)
        if verdict != "allow":
            what = ("waits for the vendor's approval" if verdict == "pending"
                    else "was refused by the vendor")
            raise SiloError(f"silo: the offer of job {self.job_id} {what}: {reason}")
        self.placement.append({"worker": self.remote_index, "node_id": f"silo:{self.party}",
                               "device": "remote", "party": self.party,
                               "participants": sorted(self.pids),
                               "policy_sha256": joined.policy_sha256,
                               "fedcollab_version": joined.fedcollab_version})
        self._offered = True

    def _offer(self, info: ModelInfo) -> Any:
        from fedcollab._proto.fedcollab.v1 import silo_pb2
        from fedcollab.secure.params import SecAggParams
        from fedcollab.spec.roster import roster

        spec = self.spec
        params = SecAggParams.from_spec(spec)
        members = len(roster(spec).pids_where(in_secure_sum=True))
        dp = spec.privacy.dp
        dp_on = dp.mode != "none"
        return silo_pb2.Offer(
            job_id=self.job_id, model_name=spec.task.model,
            model_sha256=weights_architecture_sha256(spec.task.model, info.layers,
                                                     info.weights),
            layers=[silo_pb2.LayerManifestEntry(name=info.layers[i],
                                                shape=list(info.weights[i].shape),
                                                dtype=str(info.weights[i].dtype))
                    for i in range(len(info.weights))],
            rounds=spec.rounds,
            secagg=silo_pb2.SecAggParams(
                protocol=params.protocol, threshold=params.threshold,
                min_group=params.min_group, max_group=max(members, 1),
                ring_bits=params.codec(max(members, 1)).ring_bits,
                scale_bits=params.scale_bits, clip=params.clip),
            dp=silo_pb2.DpParams(mode=dp.mode,
                                 noise_multiplier=(dp.noise_multiplier or 0.0) if dp_on else 0.0,
                                 clip_norm=dp.clip_norm if dp_on else math.inf, delta=dp.delta),
            participants=sorted(self.pids))

    def setup_identities(self) -> None:
        """Pin one secure group in the local workers and the vendor's participants:
        the identity registry of both (each party's keys from the party that hosts
        them), one graph seed, and the job id derived from the silo job's."""
        local: Any = self.local  # a Hosting: the job's own workers
        members, graph_seed, malicious = local.secure_terms
        if not members or local.pinned:
            local.setup_identities()  # workers a heal replaced get the pinned setup
            return
        try:
            self._setup(local, members, graph_seed, malicious)
        except RoundAbortedError as err:  # before any round: the job cannot start
            raise SiloError(f"silo: the secure group's setup with {self.party!r}: "
                            f"{err}") from None

    def _setup(self, local: Any, members: list[int], graph_seed: bytes,
               malicious: bool) -> None:
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        remote = [p for p in members if p in self.pids]
        deadline = time.monotonic() + self.deadline
        registry: dict[int, bytes] = {}
        if malicious:
            registry.update(local.collect_identities())
            if remote:
                reply = self._ask("identities", deadline, stage=silo_pb2.StageRequest(
                    job_id=self.job_id, stage="identities", participants=remote))
                self._require(reply, "stage_reply", "identities")
                registry.update({int(m.participant): bytes(m.payload)
                                 for m in reply.stage_reply.replies
                                 if int(m.participant) in remote and len(m.payload) == 32})
        job = secure_job_id(self.job_id)
        if remote:
            reply = self._ask("setup", deadline, setup=silo_pb2.GroupSetup(
                job_id=self.job_id, members=members, graph_seed=graph_seed,
                secure_job_id=job, registry=registry))
            verdict, reason = _verdict(reply)
            if verdict != "allow":
                raise SiloError(f"silo: the vendor refused the secure group's setup: {reason}")
            self._pinned = (members, graph_seed, registry)
        local.pin_setup(job_id=job, registry=registry)

    def _rejoin(self) -> frozenset[int]:
        """Wait (up to the round's deadline) for the vendor's stream; if its gateway
        joined again since the offer, make the offer and the group's setup again on
        the new stream. Returns the participants whose session keys are gone (all of
        the vendor's, after a rejoin; none otherwise).

        Raises:
            RoundAbortedError: The vendor is not connected by the deadline, or it
                refuses the offer, the setup, or comes back with other identities.
        """
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        try:
            joined = self.link.wait_join(self.party, max(self._deadline - time.monotonic(), 0))
        except LinkLost:
            raise self._abort("round_start", f"the link to {self.party!r} is down and it "
                              f"did not rejoin by the round's deadline ({self.deadline:g} s)"
                              ) from None
        joins = self.link.joins(self.party)
        if joins == self._joins:
            return frozenset()
        assert self._info is not None  # wait_ready ran
        self._require(self._ask("offer", self._deadline, offer=self._offer(self._info)),
                      "decision", "offer")
        if self._pinned is not None:
            members, graph_seed, registry = self._pinned
            remote = [p for p in members if p in self.pids]
            if any(p in registry for p in remote):  # malicious model: identities pinned
                reply = self._ask("identities", self._deadline, stage=silo_pb2.StageRequest(
                    job_id=self.job_id, stage="identities", participants=remote))
                self._require(reply, "stage_reply", "identities")
                keys = {int(m.participant): bytes(m.payload) for m in reply.stage_reply.replies}
                if any(keys.get(p) != registry[p] for p in remote if p in registry):
                    raise self._abort("identities", f"{self.party!r} rejoined with other "
                                      "identity keys than the group pinned; its sites cannot "
                                      "take part in this job again")
            self._require(self._ask("setup", self._deadline, setup=silo_pb2.GroupSetup(
                job_id=self.job_id, members=members, graph_seed=graph_seed,
                secure_job_id=secure_job_id(self.job_id), registry=registry)),
                "decision", "setup")
        self.placement[self.remote_index] = {
            **self.placement[self.remote_index], "policy_sha256": joined.policy_sha256,
            "fedcollab_version": joined.fedcollab_version}
        self._joins = joins
        print(f"fedcollab: silo: {self.party!r} rejoined the job (round {self._round})",
              file=sys.stderr, flush=True)
        return frozenset(self.pids)

    # ------------------------------------------------------------------ the model
    def model_info(self) -> ModelInfo:
        return self.local.model_info()

    def submit_evaluate(self, weights: Weights) -> Callable[[], tuple[float, float]]:
        return self.local.submit_evaluate(weights)

    def evaluate(self, weights: Weights) -> tuple[float, float]:
        return self.local.evaluate(weights)

    def export_model(self, weights: Weights) -> Any:
        return self.local.export_model(weights)

    def evaluate_personalised(self, weights: Weights, *,
                              classification: bool = True) -> dict[str, float]:
        """The local participants' only: the vendor's private layers and its test
        figures stay with the vendor."""
        return self.local.evaluate_personalised(weights, classification=classification)

    def save_private(self, round_id: int) -> Callable[[], None]:
        return self.local.save_private(round_id)

    def commit(self, round_id: int) -> None:
        self.local.commit(round_id)

    # ------------------------------------------------------------------ rounds
    def begin_round(self, round_id: int, weights: Weights, chosen: Sequence[int],
                    config: RoundConfig) -> Optional[Attendance]:
        """Send the vendor the round's start (its shared layers' weights, the round's
        settings, its sampled participants) and the roster (a vendor that rejoined
        first gets the offer and the group's setup again). Either refused, the vendor
        sits the round out (an allowed start is then aborted on its side); a vendor
        not connected by the round's deadline aborts the round."""
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        self.local.begin_round(round_id, weights, chosen, config)
        self._round, self._bytes, self._absent = round_id, {}, ""
        self._survived, self._revealed = set(), False
        remote = sorted(p for p in chosen if p in self.pids)
        self._active = bool(remote)
        self._roster = [p for p in chosen if self._secure(p)]
        if not remote:
            return None
        self._deadline = time.monotonic() + self.deadline
        fresh = self._rejoin()
        assert self._info is not None  # wait_ready ran
        layers = self._info.layers
        arrays = [(layers[i], weights[i]) for i in self._shared]
        self._model = shared_sha256(arrays)
        start = self._send("round_start", round_start=silo_pb2.RoundStart(
            job_id=self.job_id, round_id=round_id, global_model_sha256=self._model,
            weights=[tensor_to_proto(name, a) for name, a in arrays],
            deadline_unix=time.time() + self.deadline, config=config_to_proto(config),
            participants=remote))
        members = [silo_pb2.Identity(party=site_name(self.party, p)) if p in self.pids
                   else silo_pb2.Identity(party=f"participant/{p}", simulated=True)
                   for p in self._roster]
        # sent behind the start without waiting for its answer (the gateway decides
        # frames in order, and refuses a roster for a round it did not start)
        listed = self._send("roster", roster=silo_pb2.Roster(
            job_id=self.job_id, round_id=round_id, members=members))
        started = self._wait("round_start", start)
        verdict, reason = _verdict(self._wait("roster", listed))
        if _verdict(started)[0] != "allow":
            verdict, reason = _verdict(started)
        elif verdict != "allow":
            self._give_up(f"the roster was refused: {reason}")  # the vendor's round ends
        if verdict == "allow":
            return Attendance(fresh_keys=fresh)
        self._active, self._absent = False, f"the vendor declined round {round_id}: {reason}"
        print(f"fedcollab: silo: round {round_id} goes on without {self.party!r}: {reason}",
              file=sys.stderr, flush=True)
        self._roster = [p for p in self._roster if p not in self.pids]
        return Attendance(absent={p: f"silo: {self._absent}" for p in remote}, fresh_keys=fresh)

    def submit_train(self, weights: Weights, round_id: int, chosen: Sequence[int],
                     config: RoundConfig, inbox: Mapping[int, bytes]) -> None:
        """Nothing ahead: a round with remote participants starts with its RoundStart."""

    def train(self, weights: Weights, round_id: int, chosen: Sequence[int],
              config: RoundConfig, inbox: Mapping[int, bytes]) -> RoundOutput:
        """The vendor trains and masks (its request is sent first), the local workers
        train meanwhile; their outputs together."""
        remote = [p for p in chosen if p in self.pids]
        seq = None
        if remote and self._active:
            seq = self._send("train", stage=self._stage_request(
                "train", {p: inbox[p] for p in remote if p in inbox}))
        mine = [p for p in chosen if p not in self.pids]
        out = self.local.train(weights, round_id, mine,
                               config, {p: m for p, m in inbox.items() if p not in self.pids})
        if seq is not None:
            reply = self._wait("train", seq)
            self._require(reply, "stage_reply", "train")
            got = reply.stage_reply
            for m in got.replies:
                if int(m.participant) in remote:
                    out.masked[int(m.participant)] = bytes(m.payload)
            out.failed.update({int(p): str(why) for p, why in got.failed.items()
                               if int(p) in remote})
            out.seconds.update({int(p): float(s) for p, s in got.seconds.items()
                                if int(p) in remote})
            out.worker_of.update({int(p): self.remote_index for p in got.seconds
                                  if int(p) in remote})
            out.precomputed += int(got.precomputed)
        self._survived = set(out.masked) & set(self._roster)
        return out

    def secure_stage(self, stage: str, round_id: int, messages: Mapping[int, bytes], *,
                     prepare_next: bool = False) -> StageReplies:
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        remote = {p: m for p, m in messages.items() if p in self.pids}
        seq = asked = None
        if remote and self._active:
            if stage == "unmask" and not self._revealed:
                names = {p: site_name(self.party, p) if p in self.pids else f"participant/{p}"
                         for p in self._roster}
                survivors = sorted(self._survived)
                # the stage follows without waiting: the gateway refuses an unmask stage
                # unless this request passed its checks first
                asked = self._send("unmask_request", unmask=silo_pb2.UnmaskRequest(
                    job_id=self.job_id, round_id=round_id,
                    survivors=[names[p] for p in survivors],
                    dropped=[names[p] for p in self._roster if p not in self._survived]))
                self._revealed = True
            request = self._stage_request(stage, remote)
            request.prepare_next = prepare_next
            seq = self._send(stage, stage=request)
            if asked is not None:
                self._require(self._wait("unmask_request", asked), "decision", "unmask")
        mine = {p: m for p, m in messages.items() if p not in self.pids}
        out = (self.local.secure_stage(stage, round_id, mine, prepare_next=prepare_next)
               if mine else StageReplies())
        if seq is not None:
            reply = self._wait(stage, seq)
            self._require(reply, "stage_reply", stage)
            for m in reply.stage_reply.replies:
                if int(m.participant) in remote:
                    out.replies[int(m.participant)] = bytes(m.payload)
            for p, why in reply.stage_reply.refused.items():
                if int(p) in remote:
                    out.refused[int(p)] = f"{stage}: participant refused: {why}"
        return out

    def secure_prepare(self) -> None:
        """The local workers' offline phase (the vendor's runs after its unmask reply)."""
        self.local.secure_prepare()

    def where(self, out: RoundOutput) -> dict[str, Any]:
        used = sorted(set(out.worker_of.values()))
        joined = self.placement[self.remote_index] if self._offered else {}
        return {"workers": {str(w): {k: self.placement[w].get(k) for k in ("node_id", "device")}
                            for w in used},
                "participants": {str(p): [w, round(out.seconds[p], 5)]
                                 for p, w in sorted(out.worker_of.items())},
                "silo": {self.party: {"policy_sha256": joined.get("policy_sha256"),
                                      "fedcollab_version": joined.get("fedcollab_version"),
                                      "bytes": {k: dict(v) for k, v in self._bytes.items()},
                                      **({"absent": self._absent} if self._absent else {})}}}

    def shutdown(self) -> None:
        try:
            self.local.shutdown()
        finally:
            self.link.stop()

    # ------------------------------------------------------------------ the link
    def _secure(self, pid: int) -> bool:
        from fedcollab.spec.roster import roster

        return bool(roster(self.spec)[pid].policy.in_secure_sum)

    def _stage_request(self, stage: str, messages: Mapping[int, bytes]) -> Any:
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        return silo_pb2.StageRequest(
            job_id=self.job_id, round_id=self._round, stage=stage,
            messages=[silo_pb2.SecAggMessage(job_id=self.job_id, round_id=self._round,
                                             global_model_sha256=self._model,
                                             participant=p, payload=m)
                      for p, m in sorted(messages.items())])

    def _send(self, what: str, **body: Any) -> int:
        try:
            seq = self.link.send(self.party, **body)
        except LinkLost as err:
            raise self._abort(what, str(err)) from None
        count = self._bytes.setdefault(what, {"up": 0, "down": 0})
        count["down"] += next(iter(body.values())).ByteSize()
        return seq

    def _wait(self, what: str, seq: int) -> Any:
        try:
            reply = self.link.wait(self.party, seq, self._deadline)
        except LinkTimeout:
            self._give_up()
            raise self._abort(what, f"{self.party!r} did not answer by the round's deadline "
                              f"({self.deadline:g} s)") from None
        except LinkLost as err:
            raise self._abort(what, str(err)) from None
        count = self._bytes.setdefault(what, {"up": 0, "down": 0})
        count["up"] += reply.ByteSize()
        return reply

    def _ask(self, what: str, deadline: float, **body: Any) -> Any:
        self._deadline = deadline
        return self._wait(what, self._send(what, **body))

    def _require(self, reply: Any, kind: str, what: str) -> None:
        got = reply.WhichOneof("body")
        if got == kind and (kind != "decision" or _verdict(reply)[0] == "allow"):
            return
        verdict, reason = _verdict(reply) if got == "decision" else ("refuse", f"a {got}")
        raise self._abort(what, f"the vendor answered {verdict}: {reason}")

    def _give_up(self, reason: str = "no answer by the round's deadline") -> None:
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        try:
            self.link.send(self.party, abort=silo_pb2.Abort(
                job_id=self.job_id, round_id=self._round, reason=reason))
        except LinkLost:
            pass

    def _abort(self, what: str, reason: str) -> Exception:
        reason = reason.removeprefix("silo: ")
        if not self._offered:
            return SiloError(f"silo: {what}: {reason}")
        return RoundAbortedError(f"round {self._round}: silo {what}: {reason}",
                                 round_id=self._round)


def _verdict(reply: Any) -> tuple[str, str]:
    from fedcollab._proto.fedcollab.v1 import silo_pb2

    if reply.WhichOneof("body") != "decision":
        return "refuse", f"a {reply.WhichOneof('body')} where a decision was due"
    names = {silo_pb2.Decision.ALLOW: "allow", silo_pb2.Decision.REFUSE: "refuse",
             silo_pb2.Decision.PENDING: "pending"}
    return names.get(reply.decision.verdict, "refuse"), reply.decision.reason


def _private_group(spec: JobSpec, pid: int) -> bool:
    from fedcollab.spec.roster import roster

    return bool(roster(spec)[pid].private_layers)
