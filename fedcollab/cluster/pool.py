"""WorkerPool: the Ray actors that host the job's participants.

Shaped like Ray's ``ActorPool``: the pool owns the actors, knows which participant
lives where, fans a round out as one call per worker and gathers the replies. A
worker that dies takes its participants out of the round in flight (they count as
dropped; secure rounds recover by the protocol's dropout handling); before the
next round the pool recreates it, on any node that can host it, and the new worker
reloads its participants' private layers from the last committed round.

Ray appears here and in the round's secure plumbing only; the participants' logic
is in :mod:`fedcollab.worker.worker` and :mod:`fedcollab.worker.outgoing`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcollab.cluster.reserve import Reservation, ReservationGate
from fedcollab.cluster.reuse import _kill_quietly, _Options, _park, _take_parked
from fedcollab.spec.roster import ParticipantInfo, roster
from fedcollab.types import Weights
from fedcollab.worker.hosting import (
    Hosting,
    WorkerLost,
    personalised_means,
    private_save_failed,
    stage_replies,
)
from fedcollab.worker.messages import (
    ModelInfo,
    RoundConfig,
    RoundOutput,
    StageReplies,
    TrainCalls,
    WorkerConfig,
)

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["WorkerPool", "plan_workers", "INLINE_WEIGHT_BYTES"]

#: Global weights up to this many bytes summed over a round's calls are sent inside
#: the calls rather than through the object store (Ray inlines up to 100 KiB each).
INLINE_WEIGHT_BYTES = 96 * 1024


def plan_workers(spec: JobSpec, people: Sequence[ParticipantInfo],
                 cluster_cpus: float) -> list[tuple[dict[str, float], list[int]]]:
    """Worker pools: (custom resources, participants) per worker, deterministic.

    Groups pinned with ``resources`` get their own worker(s); the rest share a
    general pool of ``resources.workers`` workers (auto: the CPUs left over).
    """
    pools: dict[tuple[tuple[str, float], ...], list[int]] = {}
    everyone = roster(spec)
    for g, group in enumerate(spec.participants):  # a group at a time, no object each
        key = tuple(sorted((str(k), float(v)) for k, v in group.resources.items()))
        pools.setdefault(key, []).extend(everyone.group_range(g))
    general = pools.pop((), [])
    plan: list[tuple[dict[str, float], list[int]]] = []
    for key, pids in sorted(pools.items()):
        plan.append((dict(key), pids))
    if general:
        per = spec.resources.cpus_per_worker or 1.0
        if spec.resources.workers == "auto":
            count = max(1, int((cluster_cpus - len(plan) * per) // per))
        else:
            count = int(spec.resources.workers)
        count = min(count, len(general))
        for chunk in np.array_split(np.asarray(general), count):
            plan.append(({}, chunk.tolist()))
    return plan


class WorkerPool(Hosting):
    """The job's worker actors; usable as soon as it is constructed (workers ready).

    Args:
        ray: The connected ``ray`` module.
        spec: The job spec.
        people: The roster.
        out_dir: The job's output directory (workers write private checkpoints there).
        resume_round: The committed round a resumed job continues from (0: fresh).
        spares: Workers started ahead of the job without one (see :func:`start_spares`):
            each general-pool worker that fits one is configured instead of started,
            which skips its TensorFlow import; spares left over are killed.
        wait: Block until every worker is ready; ``False`` returns at once (the
            workers start in the background) and :meth:`wait_ready` blocks later.
        reserve: Hold every worker's resources in Ray for the whole job, as one
            placement group (:class:`~fedcollab.cluster.reserve.Reservation`);
            :meth:`wait_ready` waits until Ray grants it: jobs sharing a cluster
            then queue in Ray instead of oversubscribing it. Spares run in the
            reservation's place (they hold no CPU of their own) and are configured
            only once it is granted; no worker is parked at the end.
        on_wait: Called with one line if the reservation has to wait for other jobs.
        exclude: Participants this pool does not host (they run in a remote silo).
        gate: Ask Ray for the reservation only while this gate is held (the job
            service's priority order; :class:`~fedcollab.cluster.reserve.ReservationGate`):
            the workers placed in it then start in :meth:`wait_ready`, once granted.
        plan: (custom resources, participants) per worker, instead of
            :func:`plan_workers`' (a vendor's silo runs one worker per site, so that
            losing one loses that site alone).

    Raises:
        fedcollab.cluster.placement.ClusterError: The spec pins groups to a resource no node has.
    """

    def __init__(self, ray: Any, spec: JobSpec, people: Sequence[ParticipantInfo],
                 out_dir: Path, *, resume_round: int = 0, spares: Sequence[Any] = (),
                 wait: bool = True, reserve: bool = False,
                 on_wait: Callable[[str], None] | None = None,
                 exclude: frozenset[int] = frozenset(),
                 gate: ReservationGate | None = None,
                 plan: Sequence[tuple[Mapping[str, float], Sequence[int]]] | None = None
                 ) -> None:
        from fedcollab.spec import spec_to_dict

        self.ray = ray
        self.spec = spec
        self.people = people
        self.out_dir = Path(out_dir)
        self.committed = resume_round
        cpus = float(ray.cluster_resources().get("CPU", 1))
        # participants hosted elsewhere (a remote silo) are left out of the plan
        planned = plan if plan is not None else plan_workers(spec, people, cpus)
        self.plan = [(dict(res), [int(p) for p in pids if p not in exclude])
                     for res, pids in planned]
        self.plan = [(res, pids) for res, pids in self.plan if pids]
        from fedcollab.cluster.placement import check_placement, reserved_nodes, worker_requests

        # A request the cluster can never satisfy fails now, in one line, instead of
        # leaving actors pending forever.
        self._requests = worker_requests(self.plan,
                                         cpus_per_worker=spec.resources.cpus_per_worker,
                                         gpus_per_worker=spec.resources.gpus_per_worker)
        nodes = ray.nodes()
        check_placement(self._requests, nodes)
        # community workers stay off the nodes kept for pinned (vendor) groups
        self._reserved = reserved_nodes(self._requests, nodes)
        self._spec_data = spec_to_dict(spec)
        self._host(spec, [pids for _, pids in self.plan])
        private = set(self.private_pids)
        self._has_private = [bool(private.intersection(pids)) for pids in self.hosted]
        # a worker per planned slot: a spare, a worker a finished job of this process
        # parked (worker_reuse), or a new one; parked workers that fit no slot are
        # killed before any new one starts, so their CPUs are free for it
        spare, parked = list(spares), _take_parked(ray)
        self.reservation: Reservation | None = None
        if reserve:
            # a parked worker holds its CPUs outside the reservation: it would be
            # counted twice (and on a full cluster the reservation would wait for it)
            for _, worker in parked:
                _kill_quietly(ray, worker)
            parked = []
            self.reservation = Reservation(ray, self._requests, avoid_nodes=self._reserved,
                                           on_wait=on_wait, gate=gate)  # asks; wait_ready waits
        fits_spare = spec.resources.gpus_per_worker == 0
        taken: list[Any] = []
        self._options: list[_Options | None] = []  # None: a spare (never parked)
        self._reused: set[int] = set()
        for index, (resources, _) in enumerate(self.plan):
            wanted = self._wanted(index)
            match = next((i for i, (options, _) in enumerate(parked) if options == wanted
                          and (resources or not self._reserved)), None)  # may sit anywhere
            if spare and fits_spare and not resources and not self._reserved:
                taken.append(spare.pop(0))
                self._options.append(None)
            elif match is not None:
                taken.append(parked.pop(match)[1])
                self._options.append(wanted)
                self._reused.add(index)
            else:
                taken.append(None)
                self._options.append(wanted)
        for _, worker in parked:
            _kill_quietly(ray, worker)
        for worker in spare:
            ray.kill(worker, no_restart=True)
        self.workers: list[Any] = []
        self._readying: list[Any] = []
        # a worker in the reservation starts once Ray grants it; a spare (outside it)
        # is configured only then (wait_ready), so a queued job computes nothing yet
        self._deferred: list[int] = []
        # behind a gate the request may be withdrawn before Ray grants it (a job of
        # higher priority waits), and the actors placed in it with it: new workers
        # start once it is granted (until then their slots hold None)
        self._unstarted: list[int] = []
        gated = gate is not None and self.reservation is not None and \
            not self.reservation.granted
        for index, worker in enumerate(taken):
            if worker is None and gated:
                self.workers.append(None)
                self._readying.append(None)
                self._unstarted.append(index)
            elif worker is None:
                self.workers.append(self._start(index))
                self._readying.append(self.workers[-1].ready.remote())
            elif self.reservation is not None and not self.reservation.granted:
                self.workers.append(worker)
                self._readying.append(None)
                self._deferred.append(index)
            else:
                self.workers.append(worker)
                self._readying.append(worker.configure.remote(self._config(index)))
        self._loaded = False  # every worker loaded the job (parkable at the end)
        self._ended = False
        self.placement: list[dict[str, Any]] = []
        self.suspect: set[int] = set()   # workers that failed a call since the last heal
        # a worker a heal started and is not ready yet (unplaced): its ready() call,
        # which the next heal waits on again before it starts another one
        self._starting: dict[int, Any] = {}
        self.replaced = 0                # workers recreated over the job
        self._offline_calls: list[Any] = []  # the offline phase's calls in flight
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every worker has loaded the job (idempotent).

        Raises:
            fedcollab.spec.SpecError: The model does not build, or does not fit the
                data or the spec (every worker finds the same mistake; the first says).
        """
        if self.reservation is not None:
            self.reservation.wait()
            for index in self._unstarted:
                self.workers[index] = self._start(index)
                self._readying[index] = self.workers[index].ready.remote()
            self._unstarted = []
            for index in self._deferred:
                self._readying[index] = self.workers[index].configure.remote(self._config(index))
            self._deferred = []
        if self._readying:
            self.placement = [self._ready(index, call) for index, call in enumerate(self._readying)]
            self._readying = []
            for reply in self.placement:
                if reply.get("error"):
                    from fedcollab.spec import SpecError

                    self.shutdown()  # no job will run on them
                    raise SpecError(reply["error"])
            self._loaded = True

    def _ready(self, index: int, call: Any) -> dict[str, Any]:
        """Worker ``index``'s :meth:`ready` reply; a parked worker that died meanwhile
        (killed, its node lost) is replaced by a new one."""
        try:
            return dict(self.ray.get(call))
        except self.ray.exceptions.RayActorError:
            if index not in self._reused:
                raise
        self._reused.discard(index)
        self.workers[index] = self._start(index)
        return dict(self.ray.get(self.workers[index].ready.remote()))

    def _wanted(self, index: int) -> _Options:
        """The actor options of worker ``index`` (what a parked worker must match)."""
        resources = self.spec.resources
        return (float(resources.cpus_per_worker), float(resources.gpus_per_worker),
                tuple(sorted((str(k), float(v)) for k, v in self.plan[index][0].items())))

    def model_info(self) -> ModelInfo:
        """The model's initial weights and facts, from a worker (see
        :meth:`~fedcollab.worker.worker.ParticipantWorker.model_info`)."""
        info: ModelInfo = self._submit("model_info")()
        return info

    def evaluate(self, weights: Weights) -> tuple[float, float]:
        """(loss, accuracy) of ``weights`` on the held-out set, on a worker."""
        return self.submit_evaluate(weights)()

    def submit_evaluate(self, weights: Weights) -> Callable[[], tuple[float, float]]:
        """Start evaluating ``weights`` on a worker; the returned function waits for it.

        The driver meanwhile logs the round (hashes, accounting), so the evaluation
        costs it only the call.
        """
        result = self._submit("evaluate", weights)

        def loss_and_accuracy() -> tuple[float, float]:
            loss, acc = result()
            return float(loss), float(acc)
        return loss_and_accuracy

    def export_model(self, weights: Weights) -> Any:
        """``model.keras`` with ``weights``, as a :class:`~fedcollab.worker.models.ModelFile`."""
        return self._submit("export_model", weights)()

    def _idle_index(self) -> int:
        """A live worker for the driver's own calls: a general one if any (a pinned
        group's nodes are its owner's), the last one (hosting the fewest). With every
        worker lost (a one-worker job whose worker died), they are recreated now,
        as the next round would.

        Raises:
            fedcollab.cluster.placement.ClusterError: The lost workers cannot be placed again.
        """
        live = self._live()
        if not live:
            self.heal()
            live = self._live()
        general = [i for i in live if not self.plan[i][0]]
        return (general or live)[-1]

    def _live(self) -> list[int]:
        """The workers to call: not lost since the last heal, and placed."""
        return [i for i in range(len(self.workers))
                if i not in self.suspect and i not in self.unplaced]

    def _submit(self, method: str, *args: Any) -> Callable[[], Any]:
        """Call ``method`` on a live worker; the returned function waits for the reply.
        A worker lost meanwhile is marked for the next :meth:`heal` and another one
        answers; a call that itself fails raises."""
        index = self._idle_index()
        call = getattr(self.workers[index], method).remote(*args)

        def result() -> Any:
            try:
                return self.ray.get(call)
            except self.ray.exceptions.RayTaskError:
                raise  # the call itself failed: not the worker's loss
            except self.ray.exceptions.RayError:
                self.suspect.add(index)
                return self._submit(method, *args)()
        return result

    def _config(self, index: int) -> WorkerConfig:
        return WorkerConfig(self._spec_data, tuple(self.plan[index][1]), str(self.out_dir), index,
                            resume_round=self.committed)

    def _start(self, index: int) -> Any:
        """A new worker for slot ``index`` (its options recorded: it can be parked)."""
        from fedcollab.cluster.actor import actor_class

        self._options[index] = self._wanted(index)
        resources, _ = self.plan[index]
        actor_cls = actor_class(self.ray)
        elsewhere: dict[str, Any] = {}
        if self.reservation is not None and self.reservation.bundle_of[index] is not None:
            elsewhere = self.reservation.strategy(index)  # its bundle keeps it off them
        elif not resources and self._reserved:  # not on a node kept for a pinned group
            elsewhere["label_selector"] = {
                "ray.io/node-id": f"!in({', '.join(self._reserved)})"}
        return actor_cls.options(
            num_cpus=self.spec.resources.cpus_per_worker,
            num_gpus=self.spec.resources.gpus_per_worker,
            resources=resources or None, max_restarts=0, max_task_retries=0, **elsewhere,
        ).remote(self._config(index))

    def __len__(self) -> int:
        return len(self.workers)

    @property
    def needs_heal(self) -> bool:
        """A worker failed a call since the last :meth:`heal`, or one is unplaced."""
        return bool(self.suspect or self.unplaced)

    # ------------------------------------------------------------------ rounds
    def _start_training(self, weights: Weights, round_id: int, chosen: Sequence[int],
                config: RoundConfig, inbox: Mapping[int, bytes]) -> TrainCalls:
        """Start one training call per worker hosting a chosen participant.

        Small weights travel inside each call (Ray inlines arguments under 100 KiB):
        one copy per worker costs less than an object-store round trip (a put by the
        driver, a fetch by every worker, the raylet in between). Larger weights go
        into the object store once and every worker reads the same reference.
        """
        by_worker = self._by_worker(chosen)  # costs what the sample costs, not the roster
        inline = sum(w.nbytes for w in weights) * len(by_worker) <= INLINE_WEIGHT_BYTES
        ref = weights if inline else self.ray.put(weights)
        calls: list[tuple[int, list[int], Any]] = []
        for index, mine in by_worker:
            if index in self.unplaced:  # no worker to call: its participants drop now
                calls.append((index, mine, None))
                continue
            sub = {p: inbox[p] for p in mine if p in inbox}
            calls.append((index, mine, self.workers[index].train_round.remote(
                ref, round_id, mine, config, sub)))
        return TrainCalls(round_id, calls)

    def _collect_training(self, pending: TrainCalls) -> RoundOutput:
        """Wait for the training calls. A worker that failed drops its chosen
        participants from the round (and is healed before the next one)."""
        total = RoundOutput([], {}, {})
        for index, mine, call in pending.calls:
            if call is None:  # an unplaced worker's
                total.dropped.extend(mine)
                continue
            try:
                total.merge(self.ray.get(call), worker=index)
            except self.ray.exceptions.RayError:
                total.dropped.extend(mine)  # the worker died: its participants drop
                self.suspect.add(index)
        return total

    def heal(self, *, timeout: float = 60.0, strict: bool = True) -> list[int]:
        """Recreate the workers that failed since the last round, and try the unplaced
        ones again; returns the indices of those recreated.

        A recreated worker reloads its participants' private layers from the last
        committed round, and its secure participants run key setup again (the next
        :meth:`setup_identities` pins the group's setup in it). The workers are
        probed, placed and waited for together, all within ``timeout``.

        Args:
            timeout: Seconds the whole heal may take (a vendor's silo passes what
                fits in the round's deadline).
            strict: A worker that cannot be placed again (no live node offers its
                group's resources, or it is not ready in time) raises, after every
                other worker is healed: ``fedcollab run`` stops the job. ``False``
                (a vendor's silo): it is left in :attr:`unplaced`; no call goes to
                it, so its participants drop at once, and each later heal tries it
                again (one not ready in time is kept and looked at again, not started
                again, and not waited for: it has had a round to get ready).

        Raises:
            fedcollab.cluster.placement.ClusterError: ``strict``, and a worker cannot
                be placed again in time.
        """
        import time

        from fedcollab.cluster.placement import ClusterError

        deadline = time.monotonic() + timeout
        failed = sorted(self.suspect)
        lost = sorted(set(self._unanswering(failed, min(5.0, timeout))) | set(self.unplaced))
        # one that answers after all (a transient failure) is provisioned again too: a
        # no-op where its setup is pinned (as the failed ones always were)
        self._unprovisioned |= set(failed) - set(lost)
        self.suspect.clear()  # each is now answering, recreated, or unplaced
        why: dict[int, str] = {}
        started: set[int] = set()
        for index in lost:
            try:
                self._check_resources(index)
            except ClusterError as err:
                why[index] = str(err)
                self.ray.kill(self.workers[index], no_restart=True)  # dead, or pending
                self._starting.pop(index, None)
                continue
            if index not in self._starting:  # one started by an earlier heal is not replaced
                self.ray.kill(self.workers[index], no_restart=True)
                self.workers[index] = self._start(index)
                self._starting[index] = self.workers[index].ready.remote()
                started.add(index)
        healed = []
        # a worker still pending since an earlier heal (its node's resources taken) is
        # not waited for again: that would hold every round start to its timeout
        for index, reply in self._placed_by(deadline if started else time.monotonic()).items():
            if reply is None:
                why[index] = (f"worker {index} could not be recreated within {timeout:.0f} s "
                              "after it failed; the cluster lacks the resources to host it")
                continue
            self.placement[index] = reply
            healed.append(index)
            self.replaced += 1
            # its participants are new ones, with fresh identity keys: provisioned again
            self._unprovisioned.add(index)
        self.unplaced = why
        if why and strict:
            raise ClusterError(why[min(why)])
        return sorted(healed)

    def _unanswering(self, indices: Sequence[int], timeout: float) -> list[int]:
        """Those of ``indices`` whose worker does not answer within ``timeout`` (one
        that does, a transient failure, stays as it is)."""
        calls = {self.workers[i].ready.remote(): i for i in indices}
        done, _ = self.ray.wait(list(calls), num_returns=len(calls), timeout=timeout) \
            if calls else ([], [])
        answered = set()
        for call in done:
            try:
                self.ray.get(call)
            except self.ray.exceptions.RayError:
                continue
            answered.add(calls[call])
        return [i for i in indices if i not in answered]

    def _placed_by(self, deadline: float) -> dict[int, dict[str, Any] | None]:
        """Wait until ``deadline`` (``time.monotonic()``) for the workers being
        started: each one's ready() reply, or None. One that failed is forgotten (the
        next heal starts another); one still pending is kept for the next heal to
        wait on: Ray places it once a node can host it."""
        import time

        if not self._starting:
            return {}
        calls = {call: index for index, call in self._starting.items()}
        done, _ = self.ray.wait(list(calls), num_returns=len(calls),
                                timeout=max(deadline - time.monotonic(), 0.0))
        replies: dict[int, dict[str, Any] | None] = {i: None for i in calls.values()}
        for call in done:
            index = calls[call]
            del self._starting[index]
            try:
                replies[index] = dict(self.ray.get(call))
            except self.ray.exceptions.RayError:
                pass
        return replies

    def _check_resources(self, index: int) -> None:
        """A lost worker's group can only move to a live node that can host it."""
        from fedcollab.cluster.placement import ClusterError, check_placement

        try:
            check_placement([self._requests[index]], self.ray.nodes())
        except ClusterError as err:
            raise ClusterError(f"worker {index} was lost and cannot be placed again: "
                               f"{err}") from None

    def evaluate_personalised(self, weights: Weights, *,
                              classification: bool = True) -> dict[str, float]:
        """Mean test loss (and accuracy) of the participants with private layers."""
        if not self.private_pids:
            return {}
        calls = [(i, w.evaluate_personalised.remote(weights)) for i, w in self._private_workers()]
        return personalised_means([r for batch in self._survivors(calls) for r in batch],
                                  classification=classification)

    def _private_workers(self) -> list[tuple[int, Any]]:
        """(index, worker) of the placed workers that host private layers."""
        return [(i, w) for i, (w, has) in enumerate(zip(self.workers, self._has_private))
                if has and i not in self.unplaced]

    def _survivors(self, calls: Sequence[tuple[int, Any]]) -> list[Any]:
        """The replies of the workers still there; a worker lost meanwhile (its node
        gone: ActorDiedError, ActorUnavailableError) is marked for :meth:`heal`, like
        a worker lost in training. A call that itself failed raises."""
        replies = []
        for index, call in calls:
            try:
                replies.append(self.ray.get(call))
            except self.ray.exceptions.RayTaskError:
                raise
            except self.ray.exceptions.RayError:
                self.suspect.add(index)
        return replies

    # ------------------------------------------------------------------ checkpoints
    def save_private(self, round_id: int) -> Callable[[], None]:
        """Ask the workers holding private layers to save them after ``round_id``.

        Called on the driver's main thread right after the round, so Ray runs each
        save before that worker's next training call (calls from one caller to one
        actor run in order): the files hold exactly round ``round_id``'s state.
        Returns a function that waits for the saves (call it before committing).
        """
        calls = [(i, w.save_private.remote(round_id, self.committed))
                 for i, w in self._private_workers()]

        def wait() -> None:
            # A worker lost before it saved heals at the next round and reloads the
            # private layers of the last round it did save.
            try:
                self._survivors(calls)
            except self.ray.exceptions.RayTaskError as err:  # the save itself failed
                raise private_save_failed(round_id, self.committed,
                                          getattr(err, "cause", None) or err) from None
        return wait

    def commit(self, round_id: int) -> None:
        """Round ``round_id`` is committed: recreated workers reload its private layers."""
        self.committed = round_id

    # ------------------------------------------------------------------ secure stages
    def _setup_calls(self, calls: Sequence[tuple[int, Mapping[str, Any]]], method: str
                     ) -> list[Any]:
        refs = [getattr(self.workers[w], method).remote(**kwargs) for w, kwargs in calls]
        try:
            return list(self.ray.get(refs))
        except self.ray.exceptions.RayError:
            raise WorkerLost(method) from None

    def secure_stage(self, stage: str, round_id: int, messages: Mapping[int, bytes], *,
                     prepare_next: bool = False) -> StageReplies:
        """One call per worker hosting a participant with a message; a worker that
        fails sends nothing (its participants drop here) and is healed next round."""
        self._reap_offline()
        by_worker = self._messages_by_worker(messages)
        calls = [(w, self.workers[w].secure_stage.remote(stage, round_id, sub))
                 for w, sub in by_worker if w not in self.unplaced]
        out = StageReplies()
        for w, call in calls:
            try:
                stage_replies(stage, out, self.ray.get(call))
            except self.ray.exceptions.RayError:
                self.suspect.add(w)
        if prepare_next:  # once every reply is in: it would slow the slower workers' stage
            self._offline_next = self._queue_offline_early(by_worker)
        return out

    def _queue_offline_early(self, by_worker: Sequence[tuple[int, Mapping[int, bytes]]]
                             ) -> list[tuple[int, list[int]]]:
        """Queue the offline phase as soon as the stage's replies are in, so that it
        overlaps the server's unmasking and the driver's logging instead of starting
        after them: it was most of the gap between a round's unmask and the next
        round's training. The worker that will evaluate the new weights
        (:meth:`_idle_index`) precomputes half its participants now and half once the
        evaluation is queued behind them (:meth:`secure_prepare`), so the evaluation
        waits for half a precomputation, not a whole one. Returns what is left for
        :meth:`secure_prepare`."""
        evaluator = self._idle_index() if self._live() else -1
        later: list[tuple[int, list[int]]] = []
        for w, sub in by_worker:
            if w in self.suspect or w in self.unplaced:
                continue
            pids = sorted(sub)
            if w == evaluator:
                pids, rest = pids[:len(pids) // 2], pids[len(pids) // 2:]
                later.append((w, rest))
            if pids:
                self._offline_calls.append(self.workers[w].secure_prepare.remote(pids))
        return later

    def secure_prepare(self) -> None:
        """Queue what is left of the next round's offline phase (mask precomputation)
        on the workers the last ``prepare_next`` stage called (the evaluating worker's
        second half: :meth:`_queue_offline_early`); each runs it before its next
        training call (calls to an actor run in order)."""
        pending, self._offline_next = self._offline_next, []
        for w, pids in pending:
            if w not in self.suspect and w not in self.unplaced:
                self._offline_calls.append(self.workers[w].secure_prepare.remote(pids))

    def _reap_offline(self) -> None:
        """Collect finished offline-phase calls (a failed one only costs speed)."""
        if not self._offline_calls:
            return
        done, self._offline_calls = self.ray.wait(
            self._offline_calls, num_returns=len(self._offline_calls), timeout=0)
        for call in done:
            try:
                self.ray.get(call)
            except self.ray.exceptions.RayError:
                pass  # the worker died; heal() restarts it and its participants re-key

    def shutdown(self) -> None:
        """End the job's workers: inside :func:`worker_reuse`, the healthy ones of a job
        that loaded are parked for the next job; the others (all, outside it) are killed."""
        if self._ended:
            return
        self._ended = True
        keep = [(options, worker) for index, (options, worker)
                in enumerate(zip(self._options, self.workers))
                if options is not None and self._loaded and index not in self.suspect
                and index not in self.unplaced]
        if not keep or self.reservation is not None or not _park(self.ray, keep):
            keep = []
        kept = {id(worker) for _, worker in keep}
        for worker in self.workers:
            if worker is not None and id(worker) not in kept:
                _kill_quietly(self.ray, worker)
        if self.reservation is not None:  # its workers are gone: the next job may start
            self.reservation.release()
