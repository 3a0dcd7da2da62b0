"""Driving SecAgg / SecAgg+ across Ray workers (plumbing only; the protocol is
in :mod:`fedcollab.secure`).

The orchestrator is the server. Every protocol message is ``bytes`` and passes
through it, as over a network, so byte counts per stage are real. A stage costs one
call per worker that hosts a participant with something to say; with amortised keys
a steady round is just the masked input (riding with training) and the unmask call.
A worker that dies mid-round simply sends nothing: the server treats its
participants as dropped and recovers their masks from their neighbours' shares.

When every member takes part in every round (``fraction: 1``) and keys are
amortised, each unmask call is followed by an offline-phase call to the same
worker: it precomputes the next round's masks and sealed shares while the server
unmasks, aggregates and evaluates, so the next masked input only encodes and adds.
The server does not wait for it; the worker runs it before the next round's work.

Malicious-server model (``secure.server: malicious``, the default): at setup,
before any round, :func:`provision_identities` asks every worker for its secure
participants' Ed25519 identity public keys (each drawn inside the worker when it
creates the participant) and hands the assembled registry to every participant.
That is the setup channel, separate from the per-round server messages, that the
participants trust (docs/threat-model.md says what that assumes here). A worker
that Ray restarted gets fresh identities; they are re-provisioned before the next
round. Each round then has one extra stage, ``consistency``, between the masked
inputs and the unmask requests. A participant that refuses the server's requests
as a lie (:class:`~fedcollab.secure.errors.ServerDeviationError`) makes
:meth:`SecureCoordinator.finish` raise
:class:`~fedcollab.secure.errors.UnmaskRefusedError`: the round is aborted with
the reason, the global model unchanged.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from fedcollab.roster import ParticipantInfo

__all__ = ["SecureCoordinator", "SecurePhases", "secagg_params",
           "provision_identities"]


def secagg_params(spec: Any) -> Any:
    """The SecAgg parameters of a job (same on the server and every participant),
    including the server model and the key-rotation window."""
    from fedcollab.secure.params import SecAggParams

    sec = spec.secure
    return SecAggParams(protocol=sec.protocol, threshold=sec.threshold,
                        min_group=sec.min_group, neighbours=sec.neighbours,
                        expected_dropout=sec.expected_dropout, clip=sec.clip,
                        amortise_keys=sec.amortise_keys, server=sec.server,
                        key_rotation_rounds=sec.key_rotation_rounds)


#: Alias of :func:`secagg_params` (kept for callers written before the refactor).


def provision_identities(workers: Sequence[Any], hosted: Sequence[Sequence[int]], ray: Any,
                         indices: Optional[Sequence[int]] = None,
                         known: Optional[dict[int, bytes]] = None) -> dict[int, bytes]:
    """Setup channel: collect identity public keys, hand the registry to every worker.

    Args:
        workers, hosted: The pool's actors and the participant ids each hosts.
        ray: The ``ray`` module.
        indices: Workers whose identities to (re)collect; ``None``: all.
        known: The registry so far (updated in place and returned).

    Raises:
        ray.exceptions.RayError: A worker failed during setup.
    """
    registry = known if known is not None else {}
    asked = range(len(workers)) if indices is None else indices
    calls = [workers[w].secure_stage.remote("identity", -1, {p: b"" for p in hosted[w]})
             for w in asked]
    for reply in ray.get(calls):
        registry.update({pid: key for pid, key in reply.items() if isinstance(key, bytes)})
    ray.get([w.secure_stage.remote("registry", -1, {}, registry=registry) for w in workers])
    return registry


@dataclass
class SecurePhases:
    """Wall seconds per stage as the orchestrator saw them (Ray calls included)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


class SecureCoordinator:
    """The server's half of secure aggregation for one job's secure group."""

    def __init__(self, spec: Any, people: Sequence[ParticipantInfo], pool: Any) -> None:
        from fedcollab.roster import roster
        from fedcollab.secure.server import SecureServer

        self.members = roster(spec).pids_where(sharing="secure")
        self.params = secagg_params(spec)
        self.server = SecureServer(self.members, self.params, rng_seed=spec.seed)
        self.pool = pool  # a WorkerPool: its workers can be replaced between rounds
        self.ray = pool.ray
        self.owner = pool.owner
        self.suspect = pool.suspect  # workers that fail here are healed by the pool
        secure = set(self.members)
        self.hosted = [[p for p in pids if p in secure] for pids in pool.hosted]
        self.offline = spec.secure.amortise_keys and spec.fraction >= 1
        self._offline_calls: list[Any] = []
        self._offline_next: list[tuple[int, list[int]]] = []  # (worker, pids) to start
        self._seen_suspect: set[int] = set()  # workers that failed since provisioning
        self._handles = list(pool.workers)  # the actors whose identities are registered
        self.registry: dict[int, bytes] = {}
        if self.params.malicious:
            self.registry = provision_identities(pool.workers, self.hosted, self.ray)

    def _stage(self, stage: str, round_id: int, messages: Mapping[int, bytes],
               phases: SecurePhases, *, then_prepare: bool = False,
               refused: Optional[dict[int, str]] = None) -> dict[int, bytes]:
        """Send each hosted participant its message for `stage`; collect the replies.

        ``then_prepare``: the offline phase for each called worker, started by
        :meth:`start_offline`.
        ``refused``: collects participants that refused the request as a server lie
        (the worker answers a ``str`` reason instead of bytes).
        """
        t0 = time.perf_counter()
        by_worker: dict[int, dict[int, bytes]] = {}
        for pid, message in messages.items():
            by_worker.setdefault(int(self.owner[pid]), {})[pid] = message
        calls = [(w, self.pool.workers[w].secure_stage.remote(stage, round_id, sub))
                 for w, sub in sorted(by_worker.items())]
        if then_prepare:
            self._offline_next = [(w, sorted(sub)) for w, sub in sorted(by_worker.items())]
        replies: dict[int, bytes] = {}
        for w, call in calls:
            try:
                got = self.ray.get(call)
            except self.ray.exceptions.RayError:
                self.suspect.add(w)  # the worker died: its participants dropped here
                continue
            for pid, reply in got.items():
                if isinstance(reply, bytes):
                    replies[pid] = reply
                elif refused is not None:
                    refused[pid] = f"{stage}: participant refused: {reply}"
        phases.add(stage, time.perf_counter() - t0)
        return replies

    def prepare(self, round_id: int, members: Sequence[int], dim: int, phases: SecurePhases,
                on_phase: Optional[Callable[[str, int, Sequence[Any]], None]] = None
                ) -> dict[int, bytes]:
        """Key setup as needed; returns each member's mask request (its inbox).

        Raises:
            fedcollab.secure.errors.RoundAbortedError: too few members can take part.
        """
        self.start_offline()  # a caller that did not start it: before this round trains
        self._reprovision()
        need = self.server.begin_round(round_id, members, dim=dim)
        adverts = self._stage("advertise", round_id, {p: b"" for p in sorted(need)}, phases) \
            if need else {}
        rosters = self.server.receive_advertisements(adverts)
        shares = self._stage("share_keys", round_id, rosters, phases) if rosters else {}
        inbox = self.server.receive_key_shares(shares)
        if on_phase is not None:
            on_phase("after_share_keys", round_id, self.pool.workers)
        return inbox

    def finish(self, round_id: int, masked: Mapping[int, bytes], phases: SecurePhases, *,
               last: bool = False) -> Any:
        """Unmask the sum of the survivors' inputs (``last``: no next round to prepare).

        Raises:
            fedcollab.secure.errors.RoundAbortedError: too few survivors or shares.
        """
        from fedcollab.secure.driver import raise_if_refused

        self._reap_offline()
        self._seen_suspect |= self.suspect
        refused: dict[int, str] = {}
        requests = self.server.receive_masked_inputs(masked)
        if self.params.malicious:
            signatures = self._stage("consistency", round_id, requests, phases,
                                     refused=refused) if requests else {}
            raise_if_refused(round_id, refused)
            requests = self.server.receive_consistency(signatures)
        responses = self._stage("unmask", round_id, requests, phases, refused=refused,
                                then_prepare=self.offline and not last) if requests else {}
        raise_if_refused(round_id, refused)
        return self.server.receive_unmask_responses(responses)

    def _reprovision(self) -> None:
        """Re-provision identities of workers the pool replaced or Ray restarted (their
        participants are new, with fresh identity keys)."""
        workers = self.pool.workers
        self._seen_suspect |= self.suspect
        back = set(self._seen_suspect - self.suspect)
        back |= {i for i, w in enumerate(workers)
                 if i >= len(self._handles) or w is not self._handles[i]}
        if not back or not self.params.malicious:
            self._seen_suspect -= back
            self._handles = list(workers)
            return
        try:
            provision_identities(workers, self.hosted, self.ray, sorted(back), self.registry)
            self._seen_suspect -= back
            self._handles = list(workers)
        except self.ray.exceptions.RayError:
            pass  # still down: its participants drop; retried next round

    def start_offline(self) -> None:
        """Queue the next round's offline phase (mask precomputation) on the workers
        the unmask stage called. The round loop calls this once it has asked a worker
        to evaluate the new global weights: queued before, that evaluation would wait
        behind a worker's precomputation instead of running beside it. Each worker
        still runs it before its next training call (calls to an actor run in order).
        """
        pending, self._offline_next = self._offline_next, []
        for w, pids in pending:
            if w not in self.suspect:
                self._offline_calls.append(self.pool.workers[w].secure_prepare.remote(pids))

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
