"""Offers waiting for a human, and the approvals that let them in.

An offer the policy does not accept by itself (a model whose architecture hash is
not in ``approved_models``) is answered PENDING, and the gateway records it in
``state.json`` under ``pending`` with its full typed content and its
:func:`~fedcollab.silo.frames.offer_sha256`. ``fedcollab silo pending`` lists
those; ``fedcollab silo approve JOB`` binds the exact offer hash in
``approvals.json`` (atomic, 0600) and appends the approval to the audit chain. The
next time that offer arrives (the coordinator re-sends it, or offers it again
when the gateway rejoins) the check allows it; an offer that differs in any field
has another hash and waits again. An approval never overrides a refusal: the
policy's hard rules are checked before approval is asked for.

``approvals.json`` is written only here (under an exclusive lock) and only read by
the gateway, so a running gateway and an operator never write the same file.
"""
from __future__ import annotations

import datetime
import fcntl
import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fedcollab.io import atomic_write_bytes
from fedcollab.silo.errors import SiloUsageError, StateError
from fedcollab.silo.frames import Offer, offer_canonical, offer_sha256, offer_to_json
from fedcollab.silo.state import SiloState, load_state

__all__ = ["PendingOffer", "UnknownJobError", "APPROVALS_FILE", "load_approvals",
           "list_pending", "approve_offer"]

APPROVALS_FILE = "approvals.json"


class UnknownJobError(SiloUsageError):
    """`silo approve JOB` for a job with no pending offer (bad input: exit 2)."""


@dataclass(frozen=True)
class PendingOffer:
    """An offer waiting for approval, as `fedcollab silo pending` shows it."""

    job_id: str
    offer: Offer
    offer_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "offer_sha256": self.offer_sha256,
                "offer": offer_to_json(self.offer)}


def _read_approvals(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / APPROVALS_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise StateError(f"silo approvals: cannot read {path} ({err.__class__.__name__}); "
                         "restore it from a backup") from None
    entries = raw.get("approvals") if isinstance(raw, dict) and raw.get("version") == 1 \
        else None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("offer_sha256"), str) for e in entries):
        raise StateError(f"silo approvals: {path} is not an approvals file (version 1)")
    return entries


def load_approvals(state_dir: str | Path) -> frozenset[str]:
    """The offer hashes approved in `state_dir` (empty when none was ever approved)."""
    return frozenset(e["offer_sha256"] for e in _read_approvals(Path(state_dir)))


def _state(state_dir: Path) -> Any:
    if not state_dir.is_dir():
        raise UnknownJobError(f"silo: no gateway state directory {state_dir}; pass the "
                              "gateway's --state-dir")
    return load_state(state_dir / "state.json")  # none yet: nothing pending


def list_pending(state_dir: str | Path) -> list[PendingOffer]:
    """Offers waiting in `state_dir` whose exact hash is not approved yet."""
    root = Path(state_dir)
    state, approved = _state(root), load_approvals(root)
    rows = [PendingOffer(job, offer, offer_sha256(offer))
            for job, offer in sorted(state.pending.items())]
    return [row for row in rows if row.offer_sha256 not in approved]


def approve_offer(state_dir: str | Path, job_id: str, *, expect: str = "",
                  by: Optional[str] = None,
                  now: Optional[datetime.datetime] = None) -> PendingOffer:
    """Approve the offer pending for `job_id`: bind its exact hash, audit it.

    Args:
        state_dir: the gateway's ``--state-dir``.
        job_id: the job whose pending offer is approved.
        expect: if given, a prefix the pending offer's hash must start with (what the
            operator reviewed with `silo pending`; a changed offer is not approved).
        by: who approves (default: the login name), recorded in the audit entry.

    Raises:
        UnknownJobError: no offer from `job_id` is pending, or it is not the expected one.
    """
    from fedcollab.silo.audit import AuditLog
    from fedcollab.silo.check import Allow

    root = Path(state_dir)
    waiting = {row.job_id: row for row in list_pending(root)}
    row = waiting.get(job_id)
    if row is None:
        known = ", ".join(sorted(waiting)) or "none"
        raise UnknownJobError(f"silo approve: no offer from job {job_id!r} is pending in "
                              f"{root} (pending: {known})")
    if expect and not row.offer_sha256.startswith(expect.lower()):
        raise UnknownJobError(f"silo approve: the offer pending for job {job_id!r} has hash "
                              f"{row.offer_sha256[:16]}..., not {expect}...; review it again "
                              "with `fedcollab silo pending`")
    when = now or datetime.datetime.now(datetime.timezone.utc)
    who = by if by is not None else _login()
    lock = os.open(root / ".approvals.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _read_approvals(root)
        entries.append({"job_id": job_id, "offer_sha256": row.offer_sha256,
                        "model_sha256": row.offer.model_sha256,
                        "model_name": row.offer.model_name, "rounds": row.offer.rounds,
                        "time": when.isoformat(), "by": who})
        atomic_write_bytes(root / APPROVALS_FILE, json.dumps(
            {"version": 1, "approvals": entries}, indent=1, sort_keys=True).encode(),
            mode=0o600)
        with AuditLog(root / "audit.jsonl") as audit:  # frame_sha256 == the offer's hash
            audit.append(frame=offer_canonical(row.offer), decision=Allow(SiloState()),
                         direction="local", kind="approval", job_id=job_id,
                         time=when.timestamp(),
                         reason=f"approved by {who}: model {row.offer.model_name} "
                                f"({row.offer.model_sha256[:12]}), {row.offer.rounds} rounds")
    finally:
        os.close(lock)
    return row


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
