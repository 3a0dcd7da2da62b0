"""The round loop: sample, train on the pool, aggregate, evaluate, record.

Reads like Flower's ``Server.fit_round`` (configure, fit, aggregate) over a pool
shaped like Ray's ``ActorPool``; what happens after a round (metrics, checkpoints,
TensorBoard, the progress bar) is a list of callbacks, as in Keras. The global
weights live here; the :class:`~fedcollab.worker.messages.Pool` trains them,
:class:`~fedcollab.aggregation.Aggregator` combines what comes back (open updates
in the clear, the secure group's sum through
:class:`~fedcollab.job.secure.SecureCoordinator`), and every round ends as one
frozen :class:`RoundRecord`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.aggregation import Aggregator, SecureSum
from fedcollab.errors import FedcollabError
from fedcollab.job.records import RoundRecord, update_sha256
from fedcollab.job.sampling import Sampler
from fedcollab.job.secure import SecurePhases
from fedcollab.privacy.server import DpServer
from fedcollab.spec.roster import ParticipantInfo
from fedcollab.types import Weights
from fedcollab.worker.messages import Pool, RoundConfig
from fedcollab.worker.outgoing import secure_dim, split_secure_sum

if TYPE_CHECKING:
    from fedcollab.job.callbacks import CallbackList
    from fedcollab.job.secure import SecureCoordinator
    from fedcollab.spec import JobSpec
    from fedcollab.worker.messages import RoundOutput, TrainCalls

__all__ = ["RoundRecord", "RoundLoop", "update_sha256"]

Evaluate = Callable[[Weights], tuple[float, float]]







def _nbytes(delta: Sequence[Optional[np.ndarray]]) -> int:
    return int(sum(a.nbytes for a in delta if a is not None))


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


def _secure_log(result: Any, phases: SecurePhases, out: RoundOutput) -> dict[str, Any]:
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


@dataclass(frozen=True)
class _Ahead:
    """A round whose training started while the round before it was evaluated and
    logged (see :meth:`RoundLoop._start_ahead`)."""

    round: int
    chosen: list[int]
    config: Optional[RoundConfig] = None  # None: nobody was sampled
    calls: Optional[TrainCalls] = None


class RoundLoop:
    """The server's side of a job: global weights in, one :class:`RoundRecord` per round.

    Args:
        spec: The job spec.
        people: The roster.
        pool: Where the participants train (:class:`~fedcollab.worker.messages.Pool`).
        aggregator: Combines open updates and the secure sum; holds the server
            optimiser's state.
        dp: The DP settings and ledger.
        evaluate: ``weights -> (loss, accuracy)`` on the held-out set; one with a
            ``submit(weights)`` method too (returning a function that waits for the
            result, as :meth:`Pool.submit_evaluate`) evaluates elsewhere while
            the loop logs the round.
        weights: The global weights to start from.
        weight_scale: The public bound secure weights are divided by.
        secure: The secure coordinator, when any group is secure.
        callbacks: Told about phases and the end of every round.
    """

    def __init__(self, spec: JobSpec, people: Sequence[ParticipantInfo], *, pool: Pool,
                 aggregator: Aggregator, dp: DpServer, evaluate: Evaluate, weights: Weights,
                 weight_scale: float, classification: bool,
                 secure: Optional[SecureCoordinator] = None,
                 callbacks: Optional[CallbackList] = None) -> None:
        from fedcollab.job.callbacks import CallbackList

        self.spec = spec
        self.people = people
        self.sampler = Sampler(spec, people, secret=dp.on)
        self.pool = pool
        self.aggregator = aggregator
        self.dp = dp
        self.evaluate = evaluate
        self.weights = list(weights)
        self.shapes = [tuple(w.shape) for w in weights]
        self.weight_scale = weight_scale
        self.classification = classification
        self.secure = secure
        self.callbacks = callbacks if callbacks is not None else CallbackList()
        self.bytes_up = 0
        self.bytes_down = 0
        self.rejected_total = 0
        # what aborts a secure round; a job without a secure group never loads the
        # protocol (cryptography and all: ~30 ms of its first round)
        self._aborts: tuple[type[Exception], ...] = ()
        if secure is not None:
            from fedcollab.secure.errors import RoundAbortedError

            self._aborts = (RoundAbortedError,)
        self._ahead: Optional[_Ahead] = None

    # ------------------------------------------------------------------ one round
    def run_round(self, r: int) -> RoundRecord:
        """Sample, train on the pool, aggregate, evaluate; tell the callbacks."""
        replaced = tuple(self.pool.heal()) if self.pool.needs_heal else ()
        t0 = time.perf_counter()
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.round != r:
            ahead = None  # driven out of order: those calls finish unread
        chosen = ahead.chosen if ahead is not None else self.sampler.sample(r)
        if not chosen:  # Poisson sampling (DP) can draw nobody: the round still counts
            record = self._nobody_sampled(r, t0, replaced)
            self.callbacks.on_round_end(record)
            return record
        config = ahead.config if ahead is not None and ahead.config is not None \
            else self.configure(chosen)
        phases = SecurePhases()
        secure_members = [p for p in chosen if self.people[p].policy.in_secure_sum]
        try:
            inbox = self._secure_prepare(r, secure_members, config, phases)
            t_train = time.perf_counter()
            out = self.pool.collect(ahead.calls) if ahead is not None and ahead.calls \
                else self.pool.train(self.weights, r, chosen, config, inbox)
            phases.add("train", time.perf_counter() - t_train)
            secure_sum, secure_log, secure_bits, survivors = self._secure_finish(
                r, secure_members, out, config, phases)
        except self._aborts as err:
            record = self._aborted(r, len(chosen), str(err), t0, phases, replaced)
            self.callbacks.on_round_end(record)
            return record
        dp = self.dp
        step = self.aggregator.step(self.weights, out.updates, secure_sum, count_once=dp.on,
                                    clip_norm=dp.clip_norm if dp.mode == "central" else None,
                                    noise=dp.central_noise(self.shapes))
        self.weights = step.weights
        evaluation = self._submit_evaluation(self.weights)
        up = sum(_nbytes(u.delta) + 16 for u in out.updates)
        down = sum(w.nbytes for w in self.weights) * len(chosen)
        if secure_log is not None:
            up += sum(secure_log["bytes_up"].values())
            down += sum(secure_log["bytes_down"].values())
        self.bytes_up += up
        self.bytes_down += down
        self.rejected_total += len(step.rejected)
        privacy = None
        rejected = {str(k): v for k, v in sorted(step.rejected.items())}
        if dp.on:
            bits = {u.pid: bool(u.clip_bit) for u in out.updates}
            privacy = dp.account([bits[p] for p in step.accepted], participants=len(chosen),
                                 secure_bits=secure_bits, secure_count=survivors,
                                 secure_sampled=len(secure_members))
            # metrics.jsonl holds only what the release may reveal: no exact norm of a
            # rejected update (and below, no hash of an un-noised one)
            rejected = {k: v.split(":")[0] for k, v in rejected.items()}
        self._ahead = self._start_ahead(r + 1)
        # hashed once the next round is under way: ~1.4 ms at N=100, off the path
        # between this round's updates and the next round's start
        hashes = {} if dp.on else {str(u.pid): update_sha256(u.delta) for u in out.updates}
        loss, acc = evaluation()
        record = RoundRecord(
            round=r, participants=len(chosen), loss=loss,
            accuracy=acc if self.classification else None,
            trained=len(out.updates) + len(out.masked),
            accepted=len(step.accepted) + survivors if step.applied else 0,
            dropped=tuple(out.dropped), rejected=rejected,
            bytes_up=up, bytes_down=down, seconds=time.perf_counter() - t0,
            train_seconds=phases.seconds["train"], update_sha256=hashes,
            skipped=step.skipped or None, secure=secure_log, privacy=privacy,
            vendor=self.pool.evaluate_personalised(self.weights,
                                                   classification=self.classification) or None,
            workers_replaced=replaced,
            placement=self.pool.where(out))
        self.callbacks.on_round_end(record)
        return record

    def _submit_evaluation(self, weights: Weights) -> Callable[[], tuple[float, float]]:
        """Start evaluating ``weights``, then the secure group's next offline phase
        (queued behind the evaluation on a shared worker, not ahead of it); the
        returned function waits for the evaluation."""
        submit = getattr(self.evaluate, "submit", None)
        if submit is not None:
            evaluation: Callable[[], tuple[float, float]] = submit(weights)
        else:
            done = self.evaluate(weights)
            evaluation = lambda: done  # noqa: E731 - the shape submit returns
        if self.secure is not None:
            self.secure.start_offline()
        return evaluation

    def _start_ahead(self, r: int) -> Optional[_Ahead]:
        """Start round ``r``'s training now, once the round before it has changed
        everything ``r`` depends on (weights, DP clip norm and ledger): the workers
        train while the driver waits for the evaluation, writes metrics and
        checkpoints. A small round loses no time between rounds that way (at N=10 the
        evaluation's round trip and the callbacks were a fifth of a round).

        Not for rounds whose training leaves state that the previous round's
        callbacks must see first (private layers: the checkpoint saves them, and
        the personalised evaluation reads them), nor for secure rounds (their
        workers spend that time precomputing the next round's masks, which its
        training waits for anyway: starting early would gain nothing and would run
        the next round's key set-up before this round is logged), nor after a
        worker failed (it is healed first).
        """
        pool = self.pool
        if (r > self.spec.rounds or self.secure is not None or pool.needs_heal
                or pool.private_pids):
            return None
        chosen = self.sampler.sample(r)
        if not chosen:  # the round's one (Poisson) draw: kept, not drawn again
            return _Ahead(r, chosen)
        config = self.configure(chosen)
        return _Ahead(r, chosen, config, pool.submit_train(self.weights, r, chosen, config, {}))

    def configure(self, chosen: Sequence[int]) -> RoundConfig:
        """What the server tells participants this round (DP settings, weights' scale).

        Distributed noise is split over the sampled secure members only (open
        participants add the full noise themselves).
        """
        dp = self.dp
        secure = sum(1 for p in chosen if self.people[p].policy.in_secure_sum)
        count_noise = dp.count_noise_std(len(chosen)) if dp.mode == "distributed" else 0.0
        return RoundConfig(dp.mode, dp.clip_norm, dp.noise_multiplier, max(secure, 1),
                           1.0 if dp.on else self.weight_scale, dp.adaptive, count_noise,
                           secure_clip=0.0 if dp.on else self.spec.secure.clip)

    # ------------------------------------------------------------------ secure parts
    def _secure_prepare(self, r: int, members: Sequence[int], config: RoundConfig,
                        phases: SecurePhases) -> Mapping[int, bytes]:
        if not members or self.secure is None:
            return {}
        dim = secure_dim(self.shapes, clip_bit=config.clip_bit,
                         saturation=config.secure_clip > 0)
        return self.secure.prepare(r, members, dim, phases, self._on_phase)

    def _on_phase(self, phase: str, round_id: int) -> None:
        self.callbacks.on_phase(phase, round_id, self.pool)

    def _secure_finish(self, r: int, members: Sequence[int], out: RoundOutput,
                       config: RoundConfig, phases: SecurePhases
                       ) -> tuple[Optional[SecureSum], Optional[dict[str, Any]],
                                  Optional[float], int]:
        if not members or self.secure is None:
            return None, None, None, 0
        result = self.secure.finish(r, out.masked, phases, last=r == self.spec.rounds)
        log = _secure_log(result, phases, out)
        parts = split_secure_sum(result.total, self.shapes, scale=config.weight_scale,
                                 clip_bit=config.clip_bit, saturation=config.secure_clip > 0)
        log["weight_sum"] = max(parts.counts)  # survivors' samples (a sum)
        survivors = len(result.survivors)
        if parts.saturated is not None:
            # measured: the survivors' mean share of coordinates the encoding clamped
            log["saturation"] = max(parts.saturated, 0.0) / max(survivors, 1)
        elif self.dp.mode == "distributed":
            # under DP no member reports it (it depends on data): the bound from public
            # parameters, P(|N(0, (zC)^2/m)| > clip - C), per coordinate
            log["saturation_bound"] = saturation_bound(
                self.spec.secure.clip, config.clip_norm,
                config.noise_multiplier * config.clip_norm / np.sqrt(config.noisy_participants))
        return SecureSum(parts.arrays, parts.counts), log, parts.bits, survivors

    def _aborted(self, r: int, participants: int, reason: str, t0: float,
                 phases: SecurePhases, replaced: tuple[int, ...]) -> RoundRecord:
        """A secure round that cannot finish: the global model stays as it was."""
        if self.spec.secure.on_abort == "fail":
            raise FedcollabError(f"round {r} aborted: {reason}")
        loss, acc = self._submit_evaluation(self.weights)()
        return RoundRecord(round=r, participants=participants, loss=loss,
                           accuracy=acc if self.classification else None, aborted=reason,
                           seconds=time.perf_counter() - t0,
                           train_seconds=phases.seconds.get("train", 0.0),
                           phase_seconds=dict(phases.seconds), workers_replaced=replaced,
                           privacy=self.dp.account_aborted() if self.dp.on else None)

    def _nobody_sampled(self, r: int, t0: float, replaced: tuple[int, ...]) -> RoundRecord:
        loss, acc = self.evaluate(self.weights)
        return RoundRecord(round=r, participants=0, loss=loss,
                           accuracy=acc if self.classification else None,
                           skipped="nobody sampled", seconds=time.perf_counter() - t0,
                           workers_replaced=replaced,
                           privacy=self.dp.account_aborted() if self.dp.on else None)

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything a resumed job needs to continue exactly: arrays and metadata."""
        arrays = {f"w{i}": np.array(w) for i, w in enumerate(self.weights)}
        if self.aggregator.state is not None:
            from fedcollab.aggregation import state_to_arrays

            arrays.update({f"server.{k}": np.array(v)
                           for k, v in state_to_arrays(self.aggregator.state).items()})
        meta = {"bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "rejected_total": self.rejected_total, **self.dp.state()}
        return arrays, meta

    def restore(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Continue from a :meth:`snapshot`."""
        self.weights = [arrays[f"w{i}"] for i in range(len(self.shapes))]
        self.bytes_up, self.bytes_down = int(meta["bytes_up"]), int(meta["bytes_down"])
        self.rejected_total = int(meta.get("rejected_total", 0))
        self.dp.restore(meta)
        server = {k[len("server."):]: v for k, v in arrays.items() if k.startswith("server.")}
        if server:
            from fedcollab.aggregation import state_from_arrays

            self.aggregator.state = state_from_arrays(server)
