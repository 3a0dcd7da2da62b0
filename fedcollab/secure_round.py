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
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from fedcollab.roster import ParticipantInfo

__all__ = ["SecureCoordinator", "SecurePhases", "secagg_params"]


def secagg_params(spec: Any) -> Any:
    """The SecAgg parameters of a job (same on the server and every participant)."""
    from fedcollab.secure.params import SecAggParams

    sec = spec.secure
    return SecAggParams(protocol=sec.protocol, threshold=sec.threshold,
                        min_group=sec.min_group, neighbours=sec.neighbours,
                        expected_dropout=sec.expected_dropout, clip=sec.clip,
                        amortise_keys=sec.amortise_keys)


@dataclass
class SecurePhases:
    """Wall seconds per stage as the orchestrator saw them (Ray calls included)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


class SecureCoordinator:
    """The server's half of secure aggregation for one job's secure group."""

    def __init__(self, spec: Any, people: Sequence[ParticipantInfo], pool: Any) -> None:
        from fedcollab.secure.server import SecureServer

        self.members = [p.pid for p in people if p.sharing == "secure"]
        self.server = SecureServer(self.members, secagg_params(spec), rng_seed=spec.seed)
        self.pool = pool  # a WorkerPool: its workers can be replaced between rounds
        self.ray = pool.ray
        self.owner = pool.owner
        self.suspect = pool.suspect  # workers that fail here are healed by the pool
        self.offline = spec.secure.amortise_keys and spec.fraction >= 1
        self._offline_calls: list[Any] = []

    def _stage(self, stage: str, round_id: int, messages: Mapping[int, bytes],
               phases: SecurePhases, *, then_prepare: bool = False) -> dict[int, bytes]:
        """Send each hosted participant its message for `stage`; collect the replies.

        ``then_prepare``: queue the offline phase on each called worker right behind.
        """
        t0 = time.perf_counter()
        by_worker: dict[int, dict[int, bytes]] = {}
        for pid, message in messages.items():
            by_worker.setdefault(self.owner[pid], {})[pid] = message
        calls = [(w, self.pool.workers[w].secure_stage.remote(stage, round_id, sub))
                 for w, sub in sorted(by_worker.items())]
        if then_prepare:
            self._offline_calls += [self.pool.workers[w].secure_prepare.remote(sorted(sub))
                                    for w, sub in sorted(by_worker.items())]
        replies: dict[int, bytes] = {}
        for w, call in calls:
            try:
                replies.update(self.ray.get(call))
            except self.ray.exceptions.RayError:
                self.suspect.add(w)  # the worker died: its participants dropped here
        phases.add(stage, time.perf_counter() - t0)
        return replies

    def prepare(self, round_id: int, members: Sequence[int], dim: int, phases: SecurePhases,
                on_phase: Optional[Callable[[str, int, Sequence[Any]], None]] = None
                ) -> dict[int, bytes]:
        """Key setup as needed; returns each member's mask request (its inbox).

        Raises:
            fedcollab.secure.errors.RoundAbortedError: too few members can take part.
        """
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
        self._reap_offline()
        requests = self.server.receive_masked_inputs(masked)
        responses = self._stage("unmask", round_id, requests, phases,
                                then_prepare=self.offline and not last) if requests else {}
        return self.server.receive_unmask_responses(responses)

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
