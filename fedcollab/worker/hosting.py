"""What every :class:`~fedcollab.worker.messages.Pool` does the same way, whatever
carries its calls: which worker hosts whom, how a call's participants and messages
split over the workers, how replies come back together."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.errors import CheckpointError
from fedcollab.spec.roster import roster
from fedcollab.types import Weights
from fedcollab.worker.messages import (
    Attendance,
    RoundConfig,
    RoundOutput,
    StageReplies,
    TrainCalls,
)

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["Hosting", "WorkerLost", "personalised_means", "stage_replies"]


class WorkerLost(Exception):
    """A worker did not answer a call (its transport says how it was lost)."""


def private_save_failed(round_id: int, committed: int, cause: BaseException
                        ) -> CheckpointError:
    """The one line a failed private-layer save ends a job (or a vendor's gateway)
    with: the round it was for, why, and the round a resume starts from (the round
    was not committed, so nothing already saved is lost)."""
    said = str(cause).strip().splitlines()
    return CheckpointError(
        f"saving the private layers after round {round_id} failed on a worker: "
        f"{type(cause).__name__}: {said[0] if said else 'no detail'}; the last saved round "
        f"is {committed or 'none'}, and a resume starts from it")


class Hosting:
    """A pool's map of participants to workers (:meth:`_host`, from its constructor).

    Attributes:
        hosted: Per worker, the participants it hosts.
        owner: Participant id -> the index of the worker hosting it.
        private_pids: Participants with private layers (their state lives in workers).
        placement: Per worker, where it runs (``node_id``, ``device``, ...).
        unplaced: Workers a heal could not place again (a vendor's silo: no node
            offers their group's resources, or not by the round's deadline), each
            with why: no call goes to them, so their participants drop from every
            round, stage and save at once, until a later heal places them.
    """

    hosted: list[list[int]]
    owner: np.ndarray
    private_pids: list[int]
    placement: list[dict[str, Any]]
    unplaced: dict[int, str]
    #: Secure-group members, and the workers whose identities are not yet registered.
    _secure: frozenset[int]
    _unprovisioned: set[int]
    _registry: dict[int, bytes]
    #: What the group pins at setup, besides the registry: the graph seed, the job
    #: id, whether identities are collected (malicious model), and whether pinned.
    _graph_seed: bytes
    _job_id: bytes
    _malicious: bool
    _pinned: bool
    #: Workers (and their participants) the last ``prepare_next`` stage called.
    _offline_next: list[tuple[int, list[int]]]
    #: A round's training started ahead (:meth:`submit_train`), until :meth:`train`.
    _started: Optional[TrainCalls] = None

    def _host(self, spec: JobSpec, hosted: Sequence[Sequence[int]]) -> None:
        """Host ``hosted[w]`` on worker ``w``: the maps above, no identity registered."""
        everyone = roster(spec)
        self.hosted = [list(pids) for pids in hosted]
        self.owner = np.zeros(len(everyone), np.int32)
        for w, pids in enumerate(self.hosted):
            self.owner[pids] = w
        self.private_pids = [pid for g, group in enumerate(spec.participants)
                             if group.private_layers for pid in everyone.group_range(g)]
        self._secure = frozenset(everyone.pids_where(in_secure_sum=True))
        self._unprovisioned = set(range(len(self.hosted)))
        self.unplaced = {}
        self._registry = {}
        # the protocol is loaded only by jobs that have a secure group (~30 ms in round 1)
        self._graph_seed = b""
        if self._secure:
            from fedcollab.secure.graph import graph_seed_for

            self._graph_seed = graph_seed_for(spec.seed)
        self._job_id = os.urandom(16)  # this job's id: every key advert is signed over it
        self._malicious = spec.secure.server == "malicious"
        self._pinned = False
        self._offline_next = []

    def begin_round(self, round_id: int, weights: Weights, chosen: Sequence[int],
                    config: RoundConfig) -> Optional[Attendance]:
        """Nothing: these workers get the round's weights with its training."""
        return None

    # ------------------------------------------------------------------ pipelining
    def submit_train(self, weights: Weights, round_id: int, chosen: Sequence[int],
                     config: RoundConfig, inbox: Mapping[int, bytes]) -> None:
        """Start round ``round_id``'s training now; :meth:`train` of that round
        collects it. The job starts a round while it still logs the one before."""
        self._started = self._start_training(weights, round_id, chosen, config, inbox)

    def train(self, weights: Weights, round_id: int, chosen: Sequence[int],
              config: RoundConfig, inbox: Mapping[int, bytes]) -> RoundOutput:
        """The round's training: what :meth:`submit_train` started for this round, or
        started now (a round started ahead and never asked for goes unread)."""
        started, self._started = self._started, None
        if started is None or started.round_id != round_id:
            started = self._start_training(weights, round_id, chosen, config, inbox)
        return self._collect_training(started)

    def _start_training(self, weights: Weights, round_id: int, chosen: Sequence[int],
                        config: RoundConfig, inbox: Mapping[int, bytes]) -> TrainCalls:
        """Start one training call per worker hosting a chosen participant."""
        raise NotImplementedError

    def _collect_training(self, pending: TrainCalls) -> RoundOutput:
        """Wait for the calls and merge their outputs."""
        raise NotImplementedError

    def _by_worker(self, pids: Iterable[int]) -> list[tuple[int, list[int]]]:
        """``pids`` (sorted) grouped by the worker hosting them, in worker order."""
        groups: dict[int, list[int]] = {}
        for p in sorted(pids):
            groups.setdefault(int(self.owner[p]), []).append(p)
        return sorted(groups.items())

    def _messages_by_worker(self, messages: Mapping[int, bytes]
                            ) -> list[tuple[int, dict[int, bytes]]]:
        """Each participant's message, grouped by the worker hosting it."""
        groups: dict[int, dict[int, bytes]] = {}
        for pid, message in messages.items():
            groups.setdefault(int(self.owner[pid]), {})[pid] = message
        return sorted(groups.items())

    # ------------------------------------------------------------------ setup channel
    def setup_identities(self) -> None:
        """Setup channel (its own worker methods, never the round-message one): pin the
        secure group once in every worker: its members, the graph seed, this job's id
        and (malicious model) the identity registry, each entry collected from the
        worker that hosts that participant (a worker can register only its own).

        Before the group is pinned, a worker lost here leaves it unpinned (tried again
        next round). After, a worker a heal replaced gets the same pinned setup; its
        new participants' identities are not in it, so they sit out (docs/threat-model.md).
        An unplaced worker is not asked: a heal that places it provisions it then.

        Raises:
            RegistryPinnedError: A worker pinned a different setup before.
        """
        asked = sorted(self._unprovisioned)
        if not asked or not self._secure:
            self._unprovisioned.clear()
            return
        try:
            if not self._pinned:
                self._registry = self.collect_identities() if self._malicious else {}
                asked = self._placed()
            self._pin_on([w for w in asked if w not in self.unplaced])
        except WorkerLost:
            return
        self._pinned = True
        self._unprovisioned.clear()

    @property
    def pinned(self) -> bool:
        """The secure group's setup is pinned in this pool's workers."""
        return self._pinned

    @property
    def secure_terms(self) -> tuple[list[int], bytes, bool]:
        """What a secure group's setup pins besides the job id and registry: its
        members, the graph seed, and whether identities are collected (malicious)."""
        return sorted(self._secure), self._graph_seed, self._malicious

    def collect_identities(self) -> dict[int, bytes]:
        """Setup channel: each hosted secure participant's identity public key, each
        from the worker that hosts it (a worker can register only its own).

        Raises:
            WorkerLost: A worker did not answer.
        """
        registry: dict[int, bytes] = {}
        calls = [(w, {"pids": [p for p in self.hosted[w] if p in self._secure]})
                 for w in self._placed()]
        for (w, _), reply in zip(calls, self._setup_calls(calls, "secure_identities")):
            registry.update({pid: key for pid, key in reply.items()
                             if isinstance(key, bytes) and pid in self._secure
                             and int(self.owner[pid]) == w})
        return registry

    def pin_setup(self, *, job_id: bytes, registry: Mapping[int, bytes],
                  members: Optional[Sequence[int]] = None,
                  graph_seed: Optional[bytes] = None) -> None:
        """Pin a setup another party collected (a pool spanning silos: the registry
        of every party's participants, one job id; a vendor's silo: also the group's
        members and graph seed, as the coordinator sent them) in every worker of this
        pool; workers a heal replaces (or places at last) later get the same.

        Raises:
            WorkerLost: A worker did not answer.
        """
        if members is not None:
            self._secure = frozenset(int(m) for m in members)
        if graph_seed is not None:
            self._graph_seed = bytes(graph_seed)
        self._job_id, self._registry = job_id, dict(registry)
        self._pin_on(self._placed())
        self._pinned = True
        self._unprovisioned.clear()

    def _placed(self) -> list[int]:
        """The workers that can be called: all but the unplaced ones."""
        return [w for w in range(len(self.hosted)) if w not in self.unplaced]

    def _pin_on(self, workers: Sequence[int]) -> None:
        self._setup_calls([(w, {"members": sorted(self._secure),
                                "graph_seed": self._graph_seed, "job_id": self._job_id,
                                "registry": self._registry}) for w in workers],
                          "secure_setup")

    def _setup_calls(self, calls: Sequence[tuple[int, Mapping[str, Any]]], method: str
                     ) -> list[Any]:
        """``method(**kwargs)`` on each ``(worker, kwargs)``; their replies in order.

        Raises:
            WorkerLost: A worker did not answer.
        """
        raise NotImplementedError

    def where(self, out: RoundOutput) -> dict[str, Any]:
        """Where a round trained: each worker's node and device, seconds per participant."""
        used = sorted(set(out.worker_of.values()))
        return {"workers": {str(w): {k: self.placement[w].get(k) for k in ("node_id", "device")}
                            for w in used},
                "participants": {str(p): [w, round(out.seconds[p], 5)]
                                 for p, w in sorted(out.worker_of.items())}}


def stage_replies(stage: str, into: StageReplies, got: Mapping[int, Any]) -> None:
    """Add one worker's answers to a secure stage: bytes are replies, a ``str`` is a
    participant's refusal of the request as a server's lie."""
    for pid, reply in got.items():
        if isinstance(reply, bytes):
            into.replies[pid] = reply
        else:
            into.refused[pid] = f"{stage}: participant refused: {reply}"


def personalised_means(results: Sequence[tuple[int, float, float]], *,
                       classification: bool) -> dict[str, float]:
    """Mean test loss (and accuracy) over ``(pid, loss, accuracy)`` of the participants
    with private layers; empty when there are none."""
    if not results:
        return {}
    out = {"vendor_loss": float(np.mean([r[1] for r in results]))}
    if classification:
        out["vendor_accuracy"] = float(np.mean([r[2] for r in results]))
    return out
