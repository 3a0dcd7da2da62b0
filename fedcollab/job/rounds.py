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

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.aggregation import Aggregator
from fedcollab.aggregation.aggregator import AggregateStep
from fedcollab.errors import FedcollabError
from fedcollab.job.records import RoundRecord, update_sha256
from fedcollab.job.sampling import Sampler
from fedcollab.job.secure import SecureOutcome, SecureRound
from fedcollab.privacy.server import DpServer
from fedcollab.spec.roster import ParticipantInfo
from fedcollab.types import Weights
from fedcollab.worker.messages import Attendance, Pool, RoundConfig

if TYPE_CHECKING:
    from fedcollab.job.callbacks import CallbackList
    from fedcollab.job.secure import SecureCoordinator
    from fedcollab.spec import JobSpec
    from fedcollab.worker.messages import RoundOutput

__all__ = ["RoundRecord", "RoundLoop", "update_sha256"]

Evaluate = Callable[[Weights], tuple[float, float]]


@dataclass(frozen=True)
class _Ahead:
    """A round whose training started while the round before it was evaluated and
    logged (see :meth:`RoundLoop._start_ahead`)."""

    round: int
    chosen: list[int]
    config: Optional[RoundConfig] = None  # None: nobody was sampled


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
        callbacks: Told about the end of every round.
    """

    def __init__(self, spec: JobSpec, people: Sequence[ParticipantInfo], *, pool: Pool,
                 aggregator: Aggregator, dp: DpServer, evaluate: Evaluate, weights: Weights,
                 weight_scale: float, classification: bool,
                 secure: Optional[SecureCoordinator] = None,
                 callbacks: Optional[CallbackList] = None,
                 journal: Optional[Callable[[dict[str, Any]], None]] = None) -> None:
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
        # protocol (cryptography and all), whose import would slow its first round
        self._aborts: tuple[type[Exception], ...] = ()
        if secure is not None:
            from fedcollab.secure.errors import RoundAbortedError

            self._aborts = (RoundAbortedError,)
        self._ahead: Optional[_Ahead] = None
        # under DP, each round's sample and multiplier are written here before it trains,
        # so a resumed job accounts the rounds a crash made it run twice
        self.journal = journal

    # ------------------------------------------------------------------ one round
    def run_round(self, r: int) -> RoundRecord:
        """Sample, train on the pool, aggregate, evaluate; tell the callbacks."""
        replaced = tuple(self.pool.heal()) if self.pool.needs_heal else ()
        t0 = time.perf_counter()
        chosen, config = self._sample(r)
        refused = self._over_budget(chosen)
        if refused is not None:  # nothing of this round reaches the server
            return self._end(self._budget_stop(r, len(chosen), refused, t0, replaced))
        if config is None:  # Poisson sampling (DP) can draw nobody: the round still counts
            return self._end(self._nobody_sampled(r, t0, replaced))
        if self._ahead_started != r:
            self._write_journal(r, chosen)
        secure = SecureRound(self.secure, r, self._secure_members(chosen), config, self.shapes)
        out: Optional[RoundOutput] = None
        try:
            # a remote silo's round starts here; it can abort the round like a stage,
            # or sit it out (its participants then count as dropped)
            absent = self._attendance(self.pool.begin_round(r, self.weights, chosen, config))
            taking_part = [p for p in chosen if p not in absent]
            if absent:
                secure = SecureRound(self.secure, r, self._secure_members(taking_part),
                                     config, self.shapes)
            out = self._train(r, taking_part, config, secure)
            out.dropped.extend(sorted(absent))
            secured = secure.finish(out)
        except self._aborts as err:
            return self._end(self._aborted(r, chosen, str(err), t0, secure, replaced, out))
        step = self._aggregate(out, secured)
        evaluation = self._submit_evaluation(self.weights)
        privacy = self._account(chosen, out, step, secured)
        self._ahead = self._start_ahead(r + 1)
        record = RoundRecord.of(
            r, chosen=chosen, out=out, step=step, secure_log=secured.log,
            survivors=0 if step.secure_rejected else secured.survivors,
            weights=self.weights, evaluation=evaluation,
            classification=self.classification, private=self.dp.on,
            privacy=privacy, t0=t0,
            train_seconds=secure.phases.seconds["train"], replaced=replaced,
            vendor=self._vendor_evaluation(), placement=self._placement(out))
        self.bytes_up += record.bytes_up
        self.bytes_down += record.bytes_down
        self.rejected_total += len(step.rejected)
        return self._end(record)

    def _attendance(self, attendance: Optional[Attendance]) -> frozenset[int]:
        """Who sits the round out (a remote party that declined it); participants
        whose host restarted run key setup again before they take part."""
        if attendance is None:
            return frozenset()
        if attendance.fresh_keys and self.secure is not None:
            self.secure.rekey(sorted(attendance.fresh_keys))
        return frozenset(attendance.absent)

    def _vendor_evaluation(self) -> dict[str, float]:
        """The private-layer participants' test figures; none under DP, where their
        private layers are trained without noise and no accountant covers them."""
        if self.dp.on:
            return {}
        return self.pool.evaluate_personalised(self.weights, classification=self.classification)

    def _placement(self, out: RoundOutput) -> dict[str, Any]:
        """Where the round trained; under DP without the seconds per participant (they
        name who was sampled and their timing depends on their data)."""
        placement = dict(self.pool.where(out))
        if self.dp.on:
            placement.pop("participants", None)
        return placement

    def _end(self, record: RoundRecord) -> RoundRecord:
        self.callbacks.on_round_end(record)
        return record

    def _sample(self, r: int) -> tuple[list[int], Optional[RoundConfig]]:
        """The round's participants and settings (``None``: nobody was sampled), as
        drawn when its training started ahead (:meth:`_start_ahead`) or now."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead.round != r:  # driven out of order: drawn again
            self._ahead_started = None
            chosen = self.sampler.sample(r)
            return chosen, self.configure(chosen, r) if chosen else None
        return ahead.chosen, ahead.config

    _ahead_started: Optional[int] = None

    def _write_journal(self, r: int, chosen: Sequence[int]) -> None:
        if self.journal is None or not self.dp.on:
            return
        z = self.dp.noise_multiplier
        sigma_b = self.dp.count_noise_std(len(chosen))
        if sigma_b > 0:
            z = (z ** -2 + sigma_b ** -2) ** -0.5
        self.journal({"round": r, "sampled": [int(p) for p in chosen], "multiplier": z})

    def _over_budget(self, chosen: Sequence[int]) -> Optional[str]:
        """Why running a round with ``chosen`` would spend past ``target_epsilon`` for
        some observer (None: it would not); the loop then stops (:attr:`stopped`)."""
        if not self.dp.on or self.spec.privacy.dp.target_epsilon is None:
            return None
        return self.dp.admits(chosen, secure_sampled=len(self._secure_members(chosen)))

    @property
    def stopped(self) -> Optional[str]:
        """Why the job must run no more rounds (the privacy budget), or None."""
        return self.dp.stopped

    def _budget_stop(self, r: int, participants: int, reason: str, t0: float,
                     replaced: tuple[int, ...]) -> RoundRecord:
        """The round the budget refused: not trained, nothing spent; the job stops."""
        self.dp.stopped = reason
        loss, acc = self.evaluate(self.weights)
        privacy = {"epsilon": self.dp.epsilon, "delta": self.spec.privacy.dp.delta,
                   "noise_multiplier": self.dp.noise_multiplier,
                   "sampling_rate": self.dp.sampling_rate, "clip_norm": self.dp.clip_norm,
                   "budget_stop": reason}
        return RoundRecord(round=r, participants=0, loss=loss,
                           accuracy=acc if self.classification else None, skipped=reason,
                           seconds=time.perf_counter() - t0, workers_replaced=replaced,
                           privacy=privacy)

    def _secure_members(self, chosen: Sequence[int]) -> list[int]:
        return [p for p in chosen if self.people[p].policy.in_secure_sum]

    def _train(self, r: int, chosen: Sequence[int], config: RoundConfig,
               secure: SecureRound) -> RoundOutput:
        """Key setup as needed, then the participants' training (secure members mask;
        the pool collects a round it started ahead)."""
        inbox = secure.prepare()
        t_train = time.perf_counter()
        out = self.pool.train(self.weights, r, chosen, config, inbox)
        secure.phases.add("train", time.perf_counter() - t_train)
        return out

    def _aggregate(self, out: RoundOutput, secured: SecureOutcome) -> AggregateStep:
        """The open updates and the secure sum into new global weights."""
        dp = self.dp
        step = self.aggregator.step(self.weights, out.updates, secured.sum, count_once=dp.on,
                                    clip_norm=dp.clip_norm if dp.mode == "central" else None,
                                    noise=dp.central_noise(self.shapes))
        if step.secure_rejected and secured.log is not None:
            secured.log["sum_rejected"] = step.secure_rejected  # left out of this round
        self.weights = step.weights
        return step

    def _account(self, chosen: Sequence[int], out: RoundOutput, step: AggregateStep,
                 secured: SecureOutcome) -> Optional[dict[str, Any]]:
        """The round's DP spending (``None`` without DP)."""
        if not self.dp.on:
            return None
        bits = {u.pid: float(u.clip_bit or 0.0) for u in out.updates}
        return self.dp.account([bits[p] for p in step.accepted], participants=len(chosen),
                               secure_bits=secured.bits, secure_count=secured.survivors,
                               secure_sampled=secured.sampled, sampled=chosen)

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
        checkpoints. A small round loses no time between rounds that way (in a small
        round the evaluation's round trip and the callbacks are a large share of it).

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
        config = self.configure(chosen, r)
        if self._over_budget(chosen) is not None:  # not started: run_round stops before it
            return _Ahead(r, chosen, config)
        self._write_journal(r, chosen)
        self._ahead_started = r
        pool.submit_train(self.weights, r, chosen, config, {})
        return _Ahead(r, chosen, config)

    def configure(self, chosen: Sequence[int], r: int = 0) -> RoundConfig:
        """What the server tells participants this round (DP settings, weights' scale).

        Distributed noise is split over the sampled secure members only (open
        participants add the full noise themselves). The distributed discrete
        Gaussian also gets the round's public rotation seed and its ring's modulus.
        """
        dp = self.dp
        secure = sum(1 for p in chosen if self.people[p].policy.in_secure_sum)
        # distributed and local DP do not trust the server: the bits are noised where
        # they are made (central: the server adds the count's noise itself)
        count_noise = (dp.count_noise_std(len(chosen)) if dp.mode in ("distributed", "local")
                       else 0.0)
        bound = self.aggregator.secure_bound
        ddg: dict[str, int] = {}
        if dp.mode == "distributed_discrete_gaussian":
            from fedcollab.job.secure import ddg_ring

            bits, embed = ddg_ring(self.spec)
            ddg = {"ddg_seed": (self.spec.seed * 1_000_003 + r) % 2 ** 63, "ddg_bits": bits,
                   "ddg_embed_bits": embed}
        return RoundConfig(dp.mode, dp.clip_norm, dp.noise_multiplier, max(secure, 1),
                           1.0 if dp.on else self.weight_scale, dp.adaptive, count_noise,
                           secure_clip=0.0 if dp.on else self.spec.secure.clip,
                           secure_norm_bound=0.0 if bound is None else bound, **ddg)

    def _aborted(self, r: int, chosen: Sequence[int], reason: str, t0: float,
                 secure: SecureRound, replaced: tuple[int, ...],
                 out: Optional[RoundOutput] = None) -> RoundRecord:
        """A secure round that cannot finish: the global model stays as it was.

        Updates refused before the secure sum (a secure member's that could not be
        masked, an open one that fails validation) are recorded as ``rejected`` and
        named before the abort: they are its first cause (non-finite updates of a
        diverged training leave no masked inputs).
        """
        phases = secure.phases
        rejected: dict[str, str] = {}
        if out is not None:
            refused = {**out.failed, **self.aggregator.validate(out.updates)[1]}
            rejected = {str(k): v for k, v in sorted(refused.items())}
            if self.dp.on:  # as RoundRecord.of: under DP a reason names its kind only
                rejected = {k: v.split(":")[0] for k, v in rejected.items()}
        if rejected:
            kinds: dict[str, int] = {}
            for why in rejected.values():
                kinds[why.split(":")[0]] = kinds.get(why.split(":")[0], 0) + 1
            first = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
            cause = ("updates were non-finite (NaN or inf: the training diverged)"
                     if "non_finite" in kinds else "updates were refused")
            reason = f"{cause}; {len(rejected)} refused ({first}), so {reason}"
        if self.spec.secure.on_abort == "fail":
            raise FedcollabError(f"round {r} aborted: {reason}")
        loss, acc = self._submit_evaluation(self.weights)()
        privacy = (self.dp.account_aborted(chosen, participants=len(chosen)) if self.dp.on
                   else None)
        return RoundRecord(round=r, participants=len(chosen), loss=loss,
                           accuracy=acc if self.classification else None, aborted=reason,
                           rejected=rejected, seconds=time.perf_counter() - t0,
                           train_seconds=phases.seconds.get("train", 0.0),
                           phase_seconds=dict(phases.seconds), workers_replaced=replaced,
                           privacy=privacy)

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
        arrays.update({f"dp.{k}": np.array(v) for k, v in self.dp.state_arrays().items()})
        meta = {"bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "rejected_total": self.rejected_total, **self.dp.state()}
        return arrays, meta

    def restore(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Continue from a :meth:`snapshot`."""
        self.weights = [arrays[f"w{i}"] for i in range(len(self.shapes))]
        self.bytes_up, self.bytes_down = int(meta["bytes_up"]), int(meta["bytes_down"])
        self.rejected_total = int(meta.get("rejected_total", 0))
        self.dp.restore(meta, {k[len("dp."):]: v for k, v in arrays.items()
                               if k.startswith("dp.")})
        server = {k[len("server."):]: v for k, v in arrays.items() if k.startswith("server.")}
        if server:
            from fedcollab.aggregation import state_from_arrays

            self.aggregator.state = state_from_arrays(server)
