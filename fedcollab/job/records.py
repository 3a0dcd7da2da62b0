"""What a job records: one :class:`RoundRecord` per round (a ``metrics.jsonl``
line), the job's :class:`Summary` (``summary.json``) and the :class:`JobInfo`
callbacks receive when a job begins."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from fedcollab.aggregation.aggregator import AggregateStep
    from fedcollab.spec import JobSpec
    from fedcollab.types import Weights
    from fedcollab.worker.messages import RoundOutput

__all__ = ["RoundRecord", "Summary", "JobInfo", "PRIVACY_KEYS", "update_sha256"]


#: The DP figures a round's metrics line carries (flat, beside the other keys).
PRIVACY_KEYS = ("epsilon", "delta", "noise_multiplier", "accounted_multiplier",
                "sampling_rate", "clip_norm", "noise_shortfall", "epsilon_by_observer",
                "adjacency", "organisation_epsilon", "budget_stop")


@dataclass(frozen=True)
class RoundRecord:
    """One round as it goes to ``metrics.jsonl``: what happened, never a raw value.

    ``update_sha256`` holds a hash per open update (what the server saw in the
    clear); secure participants appear only through ``secure``'s counts.
    """

    round: int
    participants: int
    loss: float
    accuracy: Optional[float] = None
    trained: int = 0
    accepted: int = 0                  # open updates aggregated + secure survivors
    dropped: tuple[int, ...] = ()
    rejected: Mapping[str, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    update_sha256: Mapping[str, str] = field(default_factory=dict)
    aborted: Optional[str] = None      # a secure round that could not finish
    skipped: Optional[str] = None      # the rule could not run (too few valid updates)
    phase_seconds: Optional[Mapping[str, float]] = None
    secure: Optional[Mapping[str, Any]] = None
    privacy: Optional[Mapping[str, Any]] = None   # epsilon, delta, noise_multiplier, ...
    vendor: Optional[Mapping[str, float]] = None  # vendor_loss, vendor_accuracy
    workers_replaced: tuple[int, ...] = ()
    # where it trained: {"workers": {index: {node_id, device}}, "participants":
    # {pid: [worker, seconds]}}
    placement: Optional[Mapping[str, Any]] = None

    @classmethod
    def of(cls, r: int, *, chosen: Sequence[int], out: RoundOutput, step: AggregateStep,
           secure_log: Optional[Mapping[str, Any]], survivors: int, weights: Weights,
           evaluation: Callable[[], tuple[float, float]], classification: bool, private: bool,
           privacy: Optional[Mapping[str, Any]], t0: float, train_seconds: float,
           replaced: tuple[int, ...], vendor: Mapping[str, float],
           placement: Mapping[str, Any]) -> RoundRecord:
        """A round that aggregated: what the server received and sent (bytes), what it
        accepted, and a hash of each open update. ``private`` (DP): no hash of an
        un-noised update and no exact norm of a rejected one, as the release may
        reveal only what the accountant covers. ``evaluation`` waits for the held-out
        loss and accuracy, which a worker computes meanwhile: the hashes are taken first."""
        up = sum(_nbytes(u.delta) + 16 for u in out.updates)
        down = sum(w.nbytes for w in weights) * len(chosen)
        if secure_log is not None:
            up += sum(secure_log["bytes_up"].values())
            down += sum(secure_log["bytes_down"].values())
        rejected = {str(k): v for k, v in sorted(step.rejected.items())}
        if private:
            rejected = {k: v.split(":")[0] for k, v in rejected.items()}
        hashes = {} if private else {str(u.pid): update_sha256(u.delta) for u in out.updates}
        loss, accuracy = evaluation()
        seconds = time.perf_counter() - t0  # the round's wall time, since it started
        return cls(round=r, participants=len(chosen), loss=loss,
                   accuracy=accuracy if classification else None,
                   trained=len(out.updates) + len(out.masked),
                   accepted=len(step.accepted) + survivors if step.applied else 0,
                   dropped=tuple(out.dropped), rejected=rejected, bytes_up=up,
                   bytes_down=down, seconds=seconds, train_seconds=train_seconds,
                   update_sha256=hashes, skipped=step.skipped or None, secure=secure_log,
                   privacy=privacy, vendor=vendor or None, workers_replaced=replaced,
                   placement=placement)

    @property
    def changed_model(self) -> bool:
        return self.accepted > 0 and self.aborted is None and self.skipped is None

    def to_json(self) -> dict[str, Any]:
        """The metrics.jsonl line (flat, JSON-safe; optional parts only when present)."""
        line: dict[str, Any] = {"round": self.round, "participants": self.participants}
        if self.secure is not None:
            line["secure"] = dict(self.secure)
        line.update({"loss": self.loss, "trained": self.trained, "accepted": self.accepted,
                     "dropped": list(self.dropped), "rejected": dict(self.rejected),
                     "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                     "seconds": self.seconds, "train_seconds": self.train_seconds,
                     "update_sha256": dict(self.update_sha256)})
        for key in ("aborted", "skipped"):
            if getattr(self, key) is not None:
                line[key] = getattr(self, key)
        if self.phase_seconds is not None:
            line["phase_seconds"] = dict(self.phase_seconds)
        if self.accuracy is not None:
            line["accuracy"] = self.accuracy
        if self.privacy is not None:
            line.update(self.privacy)
        if self.vendor:
            line.update(self.vendor)
        if self.workers_replaced:
            line["workers_replaced"] = list(self.workers_replaced)
        if self.placement is not None:
            line["placement"] = dict(self.placement)
        return line

    @classmethod
    def from_json(cls, line: Mapping[str, Any]) -> RoundRecord:
        """Read a metrics.jsonl line back (for a resumed job's history)."""
        privacy = {k: line[k] for k in PRIVACY_KEYS if k in line} or None
        vendor = {k: line[k] for k in ("vendor_loss", "vendor_accuracy") if k in line} or None
        return cls(round=int(line["round"]), participants=int(line["participants"]),
                   loss=float(line["loss"]), accuracy=line.get("accuracy"),
                   trained=int(line.get("trained", 0)),
                   accepted=int(line.get("accepted", line.get("trained", 0))),
                   dropped=tuple(line.get("dropped", ())), rejected=dict(line.get("rejected", {})),
                   bytes_up=int(line.get("bytes_up", 0)),
                   bytes_down=int(line.get("bytes_down", 0)),
                   seconds=float(line.get("seconds", 0.0)),
                   train_seconds=float(line.get("train_seconds", 0.0)),
                   update_sha256=dict(line.get("update_sha256", {})),
                   aborted=line.get("aborted"), skipped=line.get("skipped"),
                   phase_seconds=line.get("phase_seconds"), secure=line.get("secure"),
                   privacy=privacy, vendor=vendor,
                   workers_replaced=tuple(line.get("workers_replaced", ())),
                   placement=line.get("placement"))


@dataclass(frozen=True)
class Summary:
    """A job's ``summary.json``: its figures once the rounds end (docs/outputs.md).

    Built once when the rounds end; the later stages of a job (the release, the
    phases' times, the wall time after Ray stops) make new instances with
    :func:`dataclasses.replace`. The fields are the file's keys, in their order.
    """

    name: str
    out_dir: str
    rounds: int
    rounds_completed: int
    wall_seconds: float
    rounds_seconds: float                # the round loop alone
    seconds_per_round: float
    participants: Mapping[str, Any]      # total, groups
    workers: Sequence[Mapping[str, Any]]  # where each worker runs and whom it hosts
    workers_replaced: int
    bytes_up: int
    bytes_down: int
    rejected_updates: int
    final_loss: Optional[float]
    seed: int
    final_accuracy: Optional[float]      # None (and not written) unless classification
    vendor_accuracy: Optional[float]     # None (and not written) without a vendor's head
    privacy: Mapping[str, Any]
    aggregation: Mapping[str, Any]
    rejected_by_reason: Mapping[str, int]
    status: str                          # "succeeded" or "failed"
    failure: Optional[str] = None        # why, when failed
    release: Optional[str] = None        # the release's directory, once written
    phases_seconds: Optional[Mapping[str, float]] = None  # once the job ran to its end

    def to_json(self) -> dict[str, Any]:
        """The summary.json dict (JSON-safe; optional keys only when present)."""
        out: dict[str, Any] = {
            "name": self.name, "out_dir": self.out_dir, "rounds": self.rounds,
            "rounds_completed": self.rounds_completed, "wall_seconds": self.wall_seconds,
            "rounds_seconds": self.rounds_seconds, "seconds_per_round": self.seconds_per_round,
            "participants": dict(self.participants), "workers": list(self.workers),
            "workers_replaced": self.workers_replaced, "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down, "rejected_updates": self.rejected_updates,
            "final_loss": self.final_loss, "seed": self.seed}
        for key in ("final_accuracy", "vendor_accuracy"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({"privacy": dict(self.privacy), "aggregation": dict(self.aggregation),
                    "rejected_by_reason": dict(self.rejected_by_reason),
                    "status": self.status})
        for key in ("failure", "release"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.phases_seconds is not None:
            out["phases_seconds"] = dict(self.phases_seconds)
        return out


def update_sha256(delta: Sequence[Optional[np.ndarray]]) -> str:
    """sha256 over an update's shared arrays, as ``metrics.jsonl`` logs it."""
    digest = hashlib.sha256()
    for array in delta:
        if array is not None:  # the array's own bytes, not a copy of them
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class JobInfo:
    """What callbacks learn when a job begins."""

    spec: JobSpec
    out_dir: Path
    start_round: int              # the first round this run will train (1 unless resumed)
    classification: bool
    history: Sequence[RoundRecord] = field(default_factory=tuple)  # committed rounds


def _nbytes(delta: Sequence[Optional[np.ndarray]]) -> int:
    return int(sum(a.nbytes for a in delta if a is not None))
