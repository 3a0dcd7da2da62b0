"""The job's side of SecAgg / SecAgg+: the server, driven over the job's
:class:`~fedcollab.worker.messages.Pool` (plumbing only; the protocol and its stage
table are in :mod:`fedcollab.secure`).

The driver is the server. Every protocol message is ``bytes`` and passes
through it, as over a network, so byte counts per stage are real. A stage costs one
call per worker that hosts a participant with something to say; with amortised keys
a steady round is just the masked input (riding with training) and the unmask call.
A worker that dies mid-round simply sends nothing: the server treats its
participants as dropped and recovers their masks from their neighbours' shares.

When every member takes part in every round (``fraction: 1``) and keys are
amortised, each unmask call is followed by an offline-phase call to the same
worker (queued right behind it on the Ray pool; the worker that evaluates the new
weights runs half before and half after the evaluation): it precomputes the next
round's masks and shares while the server unmasks, aggregates and evaluates, so the
next masked input only encodes, adds and seals the shares (their associated data
binds the round's model hash).
The server does not wait for it; the worker runs it before the next round's work.

Setup, before any round, over the pool's setup channel
(:meth:`~fedcollab.worker.messages.Pool.setup_identities`, its own worker methods, not
the round-message one): every worker pins, once, the secure group's members, the graph
seed (from the spec's ``seed``; the server uses the same), a job id and, in the
malicious-server model (``secure.server: malicious``, the default), the identity
registry: each participant's Ed25519 public key, drawn inside the worker that hosts it
(and kept on its node, so a worker the pool replaced comes back with the same one).
Participants derive their partners, threshold and ring from what they pinned and
refuse a server that names others (docs/threat-model.md says what that assumes). In
the malicious-server model each round has one extra stage, ``consistency``, between the masked
inputs and the unmask requests. A participant that refuses the server's requests
as a lie (:class:`~fedcollab.secure.errors.ServerDeviationError`) makes
:meth:`SecureCoordinator.finish` raise
:class:`~fedcollab.secure.errors.UnmaskRefusedError`: the round is aborted with
the reason, the global model unchanged.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.aggregation import SecureSum
from fedcollab.worker.messages import Pool, RoundConfig, RoundOutput

if TYPE_CHECKING:
    from fedcollab.privacy.ddg import DdgPlan
    from fedcollab.secure.result import SecureSumResult
    from fedcollab.secure.stages import Stage
    from fedcollab.spec import JobSpec

__all__ = ["SecureCoordinator", "SecureRound", "SecureOutcome", "SecurePhases",
           "saturation_bound", "ddg_ring"]


@dataclass
class SecurePhases:
    """Wall seconds per stage as the driver saw them (the pool's calls included)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


@dataclass(frozen=True)
class SecureOutcome:
    """What a round's secure group added: its decoded sum (``None``: no secure member
    took part), what metrics.jsonl records of it, the survivors' clip bits (adaptive
    clipping) and how many members were sampled and survived."""

    sum: Optional[SecureSum] = None
    log: Optional[dict[str, Any]] = None
    bits: Optional[float] = None
    survivors: int = 0
    sampled: int = 0


class SecureRound:
    """One round of the secure group, from key setup to the unmasked sum; with no
    coordinator (no secure group) or no secure member sampled, it adds nothing.

    Raises (from :meth:`prepare` and :meth:`finish`):
        fedcollab.secure.errors.RoundAbortedError: the round cannot finish.
    """

    def __init__(self, coordinator: Optional[SecureCoordinator], round_id: int,
                 members: Sequence[int], config: RoundConfig,
                 shapes: Sequence[tuple[int, ...]]) -> None:
        self.coordinator = coordinator if members else None
        self.round_id = round_id
        self.members = list(members)
        self.config = config
        self.shapes = shapes
        self.phases = SecurePhases()

    @property
    def sampled(self) -> int:
        """The secure members the round's noise was planned for: the config's ``m``
        (each member added ``1/m`` of the distributed noise), which stays the whole
        sample's when some sit the round out after the config left (a silo that
        declines a round): they count as dropped, and the noise they took with them
        as a shortfall, not as a smaller round."""
        if not self.members:
            return 0
        return max(len(self.members), int(self.config.noisy_participants))

    def prepare(self) -> Mapping[int, bytes]:
        """Key setup as needed; each member's mask request (its inbox)."""
        if self.coordinator is None:
            return {}
        from fedcollab.secure.layout import secure_dim

        config = self.config
        dim = secure_dim(self.shapes, clip_bit=config.clip_bit,
                         saturation=config.secure_clip > 0)
        if config.dp_mode == _DDG:  # the member's share (padded) and one count per array
            dim = _ddg_plan(config, self.shapes).padded + len(self.shapes)
        return self.coordinator.prepare(self.round_id, self.members, dim, self.phases)

    def finish(self, out: RoundOutput) -> SecureOutcome:
        """Unmask and decode the survivors' sum."""
        coordinator, config = self.coordinator, self.config
        if coordinator is None:
            return SecureOutcome()
        from fedcollab.secure.layout import split_secure_sum

        result = coordinator.finish(self.round_id, out.masked, self.phases,
                                    last=self.round_id == coordinator.rounds)
        log = _secure_log(result, self.phases, out)
        if config.dp_mode == _DDG:
            return self._finish_ddg(result, log)
        parts = split_secure_sum(result.total, self.shapes, scale=config.weight_scale,
                                 clip_bit=config.clip_bit, saturation=config.secure_clip > 0)
        log["weight_sum"] = max(parts.counts)  # survivors' samples (a sum)
        survivors = len(result.survivors)
        if parts.saturated is not None:
            # measured: the survivors' mean share of coordinates the encoding clamped
            log["saturation"] = max(parts.saturated, 0.0) / max(survivors, 1)
        elif config.dp_mode == "distributed":
            # under DP no member reports it (it depends on data): the bound from public
            # parameters, P(|N(0, (zC)^2/m)| > clip - C), per coordinate
            log["saturation_bound"] = saturation_bound(
                coordinator.params.clip, config.clip_norm,
                config.noise_multiplier * config.clip_norm / math.sqrt(config.noisy_participants))
        # each member's weight is at most one participant's share (weight_scale in
        # the decoded unit); the aggregator refuses a sum that exceeds that many shares
        quantum = config.weight_scale * 2.0 ** -coordinator.params.scale_bits
        total = SecureSum(parts.arrays, parts.counts, members=survivors,
                          weight_cap=config.weight_scale, quantum=quantum)
        return SecureOutcome(total, log, parts.bits, survivors, self.sampled)


    def _finish_ddg(self, result: SecureSumResult, log: dict[str, Any]) -> SecureOutcome:
        """Decode a distributed-discrete-Gaussian sum: modulo ``2**ddg_bits`` from the
        ring's integers, back to signed values, unrotated and rescaled."""
        from fedcollab.privacy.ddg import decode_sum, wrap

        config = self.config
        the_plan = _ddg_plan(config, self.shapes)
        total = np.asarray(result.integer_sum)
        flat = decode_sum(total, the_plan, seed=config.ddg_seed)
        counts = wrap(total[the_plan.padded:], config.ddg_bits).astype(np.float64)
        sizes = [int(np.prod(s)) for s in self.shapes]
        offsets = np.cumsum([0] + sizes)
        arrays = [flat[offsets[i]:offsets[i + 1]].reshape(s) for i, s in enumerate(self.shapes)]
        log["weight_sum"] = float(max(counts))
        log["ddg"] = {"sigma2": the_plan.sigma2, "gamma": the_plan.gamma,
                      "modulus_bits": the_plan.modulus_bits, "padded": the_plan.padded,
                      "l2_bound": the_plan.l2_bound}
        survivors = len(result.survivors)
        # each member counts 1 per array it shares, exactly (integers in the ring): the
        # aggregator refuses a sum whose counts more than that many members can send
        summed = SecureSum(arrays, [float(c) for c in counts], members=survivors,
                           weight_cap=1.0, quantum=0.0)
        return SecureOutcome(summed, log, None, survivors, self.sampled)


_DDG = "distributed_discrete_gaussian"


def _ddg_plan(config: RoundConfig, shapes: Sequence[tuple[int, ...]]) -> DdgPlan:
    from fedcollab.privacy.ddg import plan

    return plan(noise_multiplier=config.noise_multiplier, clip_norm=config.clip_norm,
                members=max(config.noisy_participants, 1),
                dim=sum(int(np.prod(s)) for s in shapes), modulus_bits=config.ddg_bits)


def ddg_ring(spec: JobSpec) -> tuple[int, int]:
    """``(modulus bits, fractional bits)`` of the distributed discrete Gaussian in this
    job's secure ring: the widest power-of-two modulus whose signed integers the
    fixed-point codec passes through unchanged."""
    from fedcollab.secure.params import SecAggParams
    from fedcollab.spec.roster import roster

    params = SecAggParams.from_spec(spec)
    members = len(roster(spec).pids_where(in_secure_sum=True))
    return params.codec(max(members, 1)).integer_bits, params.scale_bits


def saturation_bound(clip: float, clip_norm: float, member_std: float) -> float:
    """Upper bound on the share of coordinates a secure member's encoding saturates
    under distributed DP: a coordinate of a clipped update is at most C, so it leaves
    ``[-clip, clip]`` only if the member's noise exceeds ``clip - C``."""
    room = clip - clip_norm
    if room <= 0:
        return 1.0
    if member_std <= 0:
        return 0.0
    return math.erfc(room / (member_std * math.sqrt(2.0)))


def _secure_log(result: SecureSumResult, phases: SecurePhases,
                out: RoundOutput) -> dict[str, Any]:
    """What metrics.jsonl records of a secure round (no keys, shares or values)."""
    rejected = {str(k): v for k, v in sorted(result.rejected.items())}
    rejected.update({str(k): v for k, v in sorted(out.failed.items())})
    return {"survivors": list(result.survivors), "dropped": list(result.dropped),
            "unresponsive": list(result.unresponsive), "rejected": rejected,
            "excluded": {str(k): v for k, v in sorted(result.excluded.items())},
            "key_setup": len(result.key_setup),
            "bytes_up": dict(result.bytes_up), "bytes_down": dict(result.bytes_down),
            "server_seconds": dict(result.seconds), "phase_seconds": dict(phases.seconds),
            "precomputed": out.precomputed}


class SecureCoordinator:
    """The server's half of secure aggregation for one job's secure group.

    A round is :meth:`prepare` (key setup: the stages before training), the masked
    inputs riding with training, then :meth:`finish` (the stages after it), each
    stage as :data:`fedcollab.secure.stages.STAGES` lists it.
    """

    def __init__(self, spec: JobSpec, pool: Pool) -> None:
        from fedcollab.secure.params import SecAggParams
        from fedcollab.secure.server import SecureServer
        from fedcollab.secure.stages import after_training, before_training
        from fedcollab.spec.roster import roster

        self.members = roster(spec).pids_where(in_secure_sum=True)
        self.params = SecAggParams.from_spec(spec)
        self.server = SecureServer(self.members, self.params, rng_seed=spec.seed)
        self.pool = pool
        self.rounds = spec.rounds
        self.offline = spec.secure.amortise_keys and spec.fraction >= 1
        self._before = before_training(self.params)
        self._after = after_training(self.params)
        pool.setup_identities()  # both models: participants pin members and graph seed

    def _stage(self, stage: Stage, round_id: int, requests: Mapping[int, bytes],
               phases: SecurePhases, *, prepare_next: bool = False) -> Mapping[int, bytes]:
        """Run ``stage`` over the pool and hand the replies to the server's method;
        returns what it returns (the next stage's requests). A stage nobody is asked
        is not sent. Participants that refuse a request as a server's lie abort the
        round (:class:`~fedcollab.secure.errors.UnmaskRefusedError`)."""
        from fedcollab.secure.driver import raise_if_refused

        replies: Mapping[int, bytes] = {}
        if requests:
            t0 = time.perf_counter()
            got = self.pool.secure_stage(stage.name, round_id, requests,
                                         prepare_next=prepare_next)
            phases.add(stage.name, time.perf_counter() - t0)
            if stage.when in ("malicious", "always"):
                raise_if_refused(round_id, got.refused)
            replies = got.replies
        result: Mapping[int, bytes] = getattr(self.server, stage.server)(replies)
        return result

    def round(self, round_id: int, members: Sequence[int], config: RoundConfig,
              shapes: Sequence[tuple[int, ...]]) -> SecureRound:
        """Round ``round_id`` of the sampled ``members``."""
        return SecureRound(self, round_id, members, config, shapes)

    def prepare(self, round_id: int, members: Sequence[int], dim: int,
                phases: SecurePhases) -> Mapping[int, bytes]:
        """Key setup as needed; returns each member's mask request (its inbox).

        Raises:
            fedcollab.secure.errors.RoundAbortedError: too few members can take part.
        """
        self.start_offline()  # a caller that did not start it: before this round trains
        self.pool.setup_identities()  # the workers the pool replaced since
        need = self.server.begin_round(round_id, members, dim=dim)
        requests: Mapping[int, bytes] = {p: b"" for p in sorted(need)}
        for stage in self._before:
            requests = self._stage(stage, round_id, requests, phases)
        return requests

    def finish(self, round_id: int, masked: Mapping[int, bytes], phases: SecurePhases, *,
               last: bool = False) -> SecureSumResult:
        """Unmask the sum of the survivors' inputs (``last``: no next round to prepare).

        Raises:
            fedcollab.secure.errors.RoundAbortedError: too few survivors or shares.
        """
        requests: Any = self.server.receive_masked_inputs(masked)
        for stage in self._after:
            requests = self._stage(stage, round_id, requests, phases,
                                   prepare_next=self.offline and not last
                                   and stage is self._after[-1])
        result: SecureSumResult = requests
        return result

    def rekey(self, participants: Sequence[int]) -> None:
        """Key setup again for ``participants`` before they next take part (their host
        restarted: a remote silo that rejoined)."""
        self.server.rekey(participants)

    def start_offline(self) -> None:
        """Queue what is left of the next round's offline phase (mask precomputation)
        on the workers the unmask stage called. A pool may queue part of it right
        behind the unmask stage's calls (the Ray pool does, so that it overlaps the
        server's unmasking); the round loop calls this once it has asked a worker to
        evaluate the new global weights, so the rest, queued behind that evaluation,
        does not hold it up. Each worker runs it before its next training call.
        """
        self.pool.secure_prepare()
