"""The gateway's state between frames: what the vendor has already agreed to.

Pure values with a JSON form. The caller persists it (:func:`save_state`, an atomic
write) after every Allow and before acting on it, so round ids stay strictly
increasing and a global model is contributed to at most once across restarts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from fedcollab.io import atomic_write_bytes
from fedcollab.silo.errors import StateError
from fedcollab.silo.frames import Offer, offer_from_json, offer_sha256, offer_to_json

__all__ = ["JobState", "SiloState", "save_state", "load_state", "approve"]


@dataclass(frozen=True)
class JobState:
    offer: Optional[Offer] = None            # the accepted offer
    last_round: int = 0                      # the last round id started (ids start at 1)
    round_model: str = ""                    # that round's global-model hash
    roster: tuple[str, ...] = ()             # that round's key-sharing members
    trusted: tuple[str, ...] = ()            # those of them min_group counts
    revealed: bool = False                   # an unmask was answered this round
    contributed: frozenset[str] = frozenset()  # global-model hashes contributed to


@dataclass(frozen=True)
class SiloState:
    jobs: Mapping[str, JobState] = field(default_factory=dict)
    approved_models: frozenset[str] = frozenset()   # model hashes approved for any job
    spent: tuple[tuple[float, int], ...] = ()       # (noise multiplier, contributions)
    pending: Mapping[str, Offer] = field(default_factory=dict)  # job -> offer awaiting approval
    approved_offers: frozenset[str] = frozenset()   # offer_sha256 `fedcollab silo approve` bound

    def job(self, job_id: str) -> JobState:
        return self.jobs.get(job_id, JobState())

    def with_job(self, job_id: str, job: JobState) -> SiloState:
        return replace(self, jobs={**self.jobs, job_id: job})

    def with_pending(self, offer: Offer) -> SiloState:
        """The state with `offer` waiting for approval (replacing an older one for its job)."""
        return replace(self, pending={**self.pending, offer.job_id: offer})

    def without_pending(self, job_id: str) -> SiloState:
        if job_id not in self.pending:
            return self
        return replace(self, pending={k: v for k, v in self.pending.items() if k != job_id})

    def spend(self, noise_multiplier: float) -> SiloState:
        counts = dict(self.spent)
        counts[noise_multiplier] = counts.get(noise_multiplier, 0) + 1
        return replace(self, spent=tuple(sorted(counts.items())))

    def to_json(self) -> dict[str, Any]:
        def offer(o: Optional[Offer]) -> Optional[dict[str, Any]]:
            return None if o is None else offer_to_json(o)

        return {"version": 1,
                "jobs": {k: {"offer": offer(j.offer), "last_round": j.last_round,
                             "round_model": j.round_model, "roster": list(j.roster),
                             "trusted": list(j.trusted),
                             "revealed": j.revealed, "contributed": sorted(j.contributed)}
                         for k, j in sorted(self.jobs.items())},
                "approved_models": sorted(self.approved_models),
                "spent": [[z, n] for z, n in self.spent],
                "pending": {k: {"offer": offer_to_json(o), "offer_sha256": offer_sha256(o)}
                            for k, o in sorted(self.pending.items())},
                "approved_offers": sorted(self.approved_offers)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SiloState:
        def offer(o: Optional[Mapping[str, Any]]) -> Optional[Offer]:
            return None if o is None else offer_from_json(o)

        try:
            if raw.get("version") != 1:
                raise ValueError(f"version {raw.get('version')!r}")
            jobs = {k: JobState(offer=offer(j["offer"]), last_round=int(j["last_round"]),
                                round_model=j["round_model"], roster=tuple(j["roster"]),
                                trusted=tuple(j["trusted"]),
                                revealed=bool(j["revealed"]),
                                contributed=frozenset(j["contributed"]))
                    for k, j in raw["jobs"].items()}
            pending = {k: offer_from_json(p["offer"])
                       for k, p in raw.get("pending", {}).items()}
            return cls(jobs=jobs, approved_models=frozenset(raw["approved_models"]),
                       spent=tuple((float(z), int(n)) for z, n in raw["spent"]),
                       pending=pending,
                       approved_offers=frozenset(raw.get("approved_offers", [])))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise StateError(f"silo state: unreadable ({err.__class__.__name__}: {err}); "
                             "it is never reset silently: restore it from a backup") from None


def approve(state: SiloState, model_sha256: str) -> SiloState:
    """The state with a model hash approved for every job (as if in approved_models);
    `fedcollab silo approve JOB` binds one exact offer instead (:mod:`.approvals`)."""
    return replace(state, approved_models=state.approved_models | {model_sha256})


def save_state(path: str | Path, state: SiloState) -> None:
    """Write the state atomically (0600): a crash leaves the old or the new one."""
    atomic_write_bytes(path, json.dumps(state.to_json(), sort_keys=True).encode(), mode=0o600)


def load_state(path: str | Path) -> SiloState:
    """The persisted state; an empty one only when the file does not exist."""
    target = Path(path)
    if not target.exists():
        return SiloState()
    try:
        raw = json.loads(target.read_bytes())
    except (OSError, ValueError) as err:
        raise StateError(f"silo state: cannot read {target} ({err.__class__.__name__}); "
                         "it is never reset silently: restore it from a backup") from None
    if not isinstance(raw, dict):
        raise StateError(f"silo state: {target} is not a JSON object")
    return SiloState.from_json(raw)
