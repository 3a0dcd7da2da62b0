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
worker: it precomputes the next round's masks and sealed shares while the server
unmasks, aggregates and evaluates, so the next masked input only encodes and adds.
The server does not wait for it; the worker runs it before the next round's work.

Malicious-server model (``secure.server: malicious``, the default): at setup,
before any round, the pool's setup channel
(:meth:`~fedcollab.worker.messages.Pool.setup_identities`) asks every worker for its
secure participants' Ed25519 identity public keys (each drawn inside the worker when it
creates the participant) and hands the assembled registry to every participant.
That is the setup channel, separate from the per-round server messages, that the
participants trust (docs/threat-model.md says what that assumes here). A worker
the pool replaced gets fresh identities; they are re-provisioned before the next
round. Each round then has one extra stage, ``consistency``, between the masked
inputs and the unmask requests. A participant that refuses the server's requests
as a lie (:class:`~fedcollab.secure.errors.ServerDeviationError`) makes
:meth:`SecureCoordinator.finish` raise
:class:`~fedcollab.secure.errors.UnmaskRefusedError`: the round is aborted with
the reason, the global model unchanged.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from fedcollab.worker.messages import Pool

if TYPE_CHECKING:
    from fedcollab.secure.result import SecureSumResult
    from fedcollab.secure.stages import Stage
    from fedcollab.spec import JobSpec

__all__ = ["SecureCoordinator", "SecurePhases"]


@dataclass
class SecurePhases:
    """Wall seconds per stage as the driver saw them (the pool's calls included)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


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
        self.offline = spec.secure.amortise_keys and spec.fraction >= 1
        self._before = before_training(self.params)
        self._after = after_training(self.params)
        if self.params.malicious:
            pool.setup_identities()

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

    def prepare(self, round_id: int, members: Sequence[int], dim: int, phases: SecurePhases,
                on_phase: Optional[Callable[[str, int], None]] = None) -> Mapping[int, bytes]:
        """Key setup as needed; returns each member's mask request (its inbox).

        Raises:
            fedcollab.secure.errors.RoundAbortedError: too few members can take part.
        """
        self.start_offline()  # a caller that did not start it: before this round trains
        if self.params.malicious:
            self.pool.setup_identities()  # the workers the pool replaced since
        need = self.server.begin_round(round_id, members, dim=dim)
        requests: Mapping[int, bytes] = {p: b"" for p in sorted(need)}
        for stage in self._before:
            requests = self._stage(stage, round_id, requests, phases)
        if on_phase is not None:
            on_phase("after_share_keys", round_id)
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

    def start_offline(self) -> None:
        """Queue the next round's offline phase (mask precomputation) on the workers
        the unmask stage called. The round loop calls this once it has asked a worker
        to evaluate the new global weights: queued before, that evaluation would wait
        behind a worker's precomputation instead of running beside it. Each worker
        still runs it before its next training call.
        """
        self.pool.secure_prepare()
