"""Run one secure-aggregation round in process (tests, benchmarks, single-host runs).

The orchestrator does the same across processes: each stage, the participants it
hosts produce bytes keyed by participant id, the server consumes them and returns
bytes keyed by destination (see :mod:`fedcollab.secure.server` for the call order).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Collection, Mapping

import numpy as np

from fedcollab.secure.errors import SecAggError, ServerDeviationError, UnmaskRefusedError
from fedcollab.secure.params import SecAggParams
from fedcollab.secure.participant import SecureParticipant
from fedcollab.secure.result import STAGES, SecureSumResult
from fedcollab.secure.server import SecureServer
from fedcollab.secure.stages import STAGES as _TABLE
from fedcollab.secure.stages import Stage, after_training, before_training, participant_reply

__all__ = ["LocalRound", "run_secure_round", "raise_if_refused", "provision_identities"]

#: Keys of ``drop_after``: a participant listed under a key completes that stage
#: (``"begin"``: nothing) and then sends nothing more this round.
_DROP_POINTS: tuple[str, ...] = ("begin",) + STAGES

#: Stages whose requests a participant refuses as a server's lie (a
#: ``ServerDeviationError`` there aborts the round instead of dropping the participant).
_REFUSABLE = frozenset(s.name for s in _TABLE if s.when in ("malicious", "always"))


class LocalRound:
    """Routes secure rounds between participants and a server in this process: the
    stage table (:data:`fedcollab.secure.stages.STAGES`) with every message passed as
    bytes, as over a network; benchmarks and the grader's replays use it.

    Args:
        participants: The group's participants.
        params: The group's parameters.
        server: A server that persists across rounds (amortised keys); ``None``
            builds a fresh one over ``participants``.
        rng_seed: Graph seed for a fresh server whose participants pinned none (a fresh
            server otherwise uses the graph seed they pinned at setup: it is public).
    """

    def __init__(self, participants: Mapping[int, SecureParticipant], params: SecAggParams, *,
                 server: SecureServer | None = None, rng_seed: int | None = None) -> None:
        self.participants = participants
        self.params = params
        if server is None:
            pinned = next((p.setup for p in participants.values() if p.setup is not None), None)
            server = SecureServer(sorted(participants), params, rng_seed=rng_seed,
                                  graph_seed=None if pinned is None else pinned.graph_seed)
        self.server = server

    def _deliver(self, stage: str, pid: int, message: bytes) -> bytes | None:
        """What reaches the server of ``pid``'s message (``None``: nothing). A
        subclass may alter or drop messages in transit (a test's lossy network)."""
        return message

    def run(self, round_id: int, vectors: Mapping[int, np.ndarray],
            drop_after: Mapping[str, Collection[int]] | None = None) -> SecureSumResult:
        """One round of every participant, simulating dropouts.

        Args:
            round_id: Strictly increasing round id (consecutive ones amortise keys).
            vectors: Each participant's float64 vector (weighted update + weight coord).
            drop_after: Stage name (or ``"begin"``) -> participants that drop after
                completing it.

        Returns:
            The server's result, with participant refusals added to ``rejected`` and
            the participants' summed compute seconds in ``participant_seconds``.

        Raises:
            RoundAbortedError: Too few survivors or shares; leave the model unchanged.
            UnmaskRefusedError: Participants refused the server's consistency or unmask
                requests (a :class:`ServerDeviationError`: the server lied).
        """
        drops = {k: set(v) for k, v in (drop_after or {}).items()}
        unknown = drops.keys() - set(_DROP_POINTS)
        if unknown:
            raise ValueError(f"drop_after keys {sorted(unknown)}; expected some of "
                             f"{_DROP_POINTS}")
        participants, server = self.participants, self.server
        dim = len(next(iter(vectors.values())))
        gone = set(drops.get("begin", ()))
        refused: dict[int, str] = {}
        deviations: dict[int, str] = {}
        seconds = dict.fromkeys(STAGES, 0.0)

        def collect(stage: str, pids: Collection[int], call: Callable[[int], bytes]
                    ) -> dict[int, bytes]:
            out: dict[int, bytes] = {}
            for pid in sorted(pids):
                if pid in gone:
                    continue
                t0 = time.perf_counter()
                try:
                    message: bytes | None = call(pid)
                except SecAggError as exc:
                    refused[pid] = f"{stage}: participant refused: {type(exc).__name__}: {exc}"
                    if isinstance(exc, ServerDeviationError) and stage in _REFUSABLE:
                        deviations[pid] = refused[pid]
                    continue
                finally:
                    seconds[stage] += time.perf_counter() - t0
                if message is not None:
                    message = self._deliver(stage, pid, message)
                if message is not None:
                    out[pid] = message
            gone.update(drops.get(stage, ()))
            return out

        def ask(stage: Stage, requests: Mapping[int, bytes]) -> dict[int, bytes]:
            return collect(stage.name, requests, lambda p: participant_reply(
                participants[p], stage, round_id, requests[p]))

        need = server.begin_round(round_id, participants.keys(), dim=dim)
        inbox: Mapping[int, bytes] = {p: b"" for p in need}
        for stage in before_training(self.params):
            inbox = getattr(server, stage.server)(ask(stage, inbox))
        requests = server.receive_masked_inputs(collect(
            "masked_input", inbox,
            lambda p: participants[p].masked_input(round_id, vectors[p], inbox[p])))
        *middle, last = after_training(self.params)
        for stage in middle:
            requests = getattr(server, stage.server)(ask(stage, requests))
        responses = ask(last, requests)
        raise_if_refused(round_id, deviations)
        result = getattr(server, last.server)(responses)
        return dataclasses.replace(result, rejected={**refused, **result.rejected},
                                   participant_seconds=seconds)


def run_secure_round(
    participants: Mapping[int, SecureParticipant],
    vectors: Mapping[int, np.ndarray],
    params: SecAggParams,
    round_id: int,
    drop_after: Mapping[str, Collection[int]] | None = None,
    *,
    server: SecureServer | None = None,
    rng_seed: int | None = None,
) -> SecureSumResult:
    """One round between ``participants`` and a server (:meth:`LocalRound.run`)."""
    return LocalRound(participants, params, server=server, rng_seed=rng_seed).run(
        round_id, vectors, drop_after)


def raise_if_refused(round_id: int, deviations: Mapping[int, str]) -> None:
    """Abort the round if any participant refused a request as a server deviation.

    Args:
        round_id: The round.
        deviations: Participant id -> the refusal (a ``ServerDeviationError``'s text).

    Raises:
        UnmaskRefusedError: ``deviations`` is not empty; the message names the first.
    """
    if deviations:
        pid = min(deviations)
        raise UnmaskRefusedError(
            f"round {round_id}: {len(deviations)} participant(s) refused the server's "
            f"requests as inconsistent with their own state, e.g. participant {pid}: "
            f"{deviations[pid]}; round aborted, the global model stays unchanged",
            round_id=round_id)


def provision_identities(participants: Mapping[int, SecureParticipant], *,
                         graph_seed: bytes = b"", job_id: bytes = b"",
                         rng_seed: int | None = None) -> dict[int, bytes]:
    """Setup (not a server message): pin the group in every participant: its members,
    the graph seed (``graph_seed``, or ``graph.graph_seed_for(rng_seed)``), the job id
    and, in the malicious-server model, the identity registry it builds.

    Returns the registry (``{}`` in honest-but-curious mode, where only the members,
    seed and job id are pinned). In-process stand-in for the PKI of a real
    deployment: it never passes through a :class:`SecureServer`.
    """
    from fedcollab.secure.graph import graph_seed_for
    from fedcollab.secure.identity import GroupSetup

    registry = {pid: p.identity_public() for pid, p in participants.items()
                if p.params.malicious}
    seed = graph_seed_for(rng_seed) if rng_seed is not None else graph_seed
    setup = GroupSetup.of(participants, graph_seed=seed, job_id=job_id, registry=registry)
    for p in participants.values():
        p.install_setup(setup)
    return registry
