"""The gateway's evidence: a hash-chained, append-only ``audit.jsonl``.

One JSON object per line, for every frame the gateway decided on (in and out), and
for local events (``direction: "local"``: an operator's approval, a round deadline
that passed)::

    {"seq": 1, "time": 1765112400.0, "direction": "in", "kind": "Offer",
     "job_id": "job-1", "round_id": 0, "frame_sha256": "<sha256 of the frame bytes>",
     "decision": "allow" | "refuse" | "pending", "rule": "", "reason": "",
     "prev": "<previous entry's hash, 64 zeros first>", "hash": "<this entry's>"}

``hash`` is sha256 over ``prev`` and the entry's canonical JSON without ``hash``
(sorted keys, no spaces, ASCII), and each line must be exactly the canonical JSON
of its entry: changing, removing, inserting or reordering any byte breaks the
chain at that line, which :func:`verify_audit` names. The frame itself is not
logged (it may hold ciphertexts), only its hash. It shows tampering by someone
who cannot rewrite the whole tail: publish or keep the head hash elsewhere to pin it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fedcollab.silo.check import Allow, Decision, Pending, Refuse
from fedcollab.silo.errors import AuditChainError

__all__ = ["AuditLog", "AuditHead", "verify_audit", "GENESIS", "decision_fields"]

GENESIS = "0" * 64
_FIELDS = ("seq", "time", "direction", "kind", "job_id", "round_id", "frame_sha256",
           "decision", "rule", "reason", "prev", "hash")


@dataclass(frozen=True)
class AuditHead:
    entries: int
    head: str      # the last entry's hash (GENESIS for an empty log)


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(entry["prev"].encode("ascii") + _canonical(body)).hexdigest()


def decision_fields(decision: Decision) -> dict[str, str]:
    """The audit fields of a decision: verdict, rule and reason."""
    if isinstance(decision, Allow):
        return {"decision": "allow", "rule": "", "reason": ""}
    if isinstance(decision, Refuse):
        return {"decision": "refuse", "rule": decision.rule, "reason": decision.reason}
    if isinstance(decision, Pending):
        return {"decision": "pending", "rule": "approval", "reason": decision.reason}
    raise TypeError(f"not a decision: {type(decision).__name__}")


def verify_audit(path: str | Path) -> AuditHead:
    """Check the whole chain.

    Raises:
        AuditChainError: the first line that is not where the chain says it must be.
    """
    prev, seq = GENESIS, 0
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise AuditChainError(f"{path}: cannot read ({err.strerror or err})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                entry = json.loads(raw)
                ok = (isinstance(entry, dict) and raw.endswith(b"\n")
                      and tuple(sorted(entry)) == tuple(sorted(_FIELDS))
                      and _canonical(entry) + b"\n" == raw
                      and entry["prev"] == prev and entry["seq"] == seq + 1
                      and entry["hash"] == _digest(entry))
            except (ValueError, UnicodeDecodeError, TypeError, AttributeError):
                ok = False
            if not ok:
                raise AuditChainError(f"{path}: line {number}: the hash chain is broken "
                                      "(changed, removed, inserted or reordered)")
            prev, seq = entry["hash"], seq + 1
    return AuditHead(entries=seq, head=prev)


class AuditLog:
    """Appends decisions to ``audit.jsonl`` (0600, O_APPEND, fsync per entry).

    Opening an existing log verifies it first and continues its chain; a broken
    log is never appended to. Several writers may share one log (the gateway and
    `fedcollab silo approve`): each append holds an exclusive ``flock`` and, when
    the file grew since this writer's last entry, re-verifies it to continue the
    chain from its real head.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                          0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            head = verify_audit(self.path)
        except AuditChainError:
            self.close()
            raise
        finally:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._seq, self._prev = head.entries, head.head
        self._size = os.fstat(self._fd).st_size if self._fd is not None else 0

    def append(self, *, frame: bytes, decision: Decision, direction: str, kind: str,
               job_id: str = "", round_id: int = 0, time: float = 0.0,
               reason: Optional[str] = None) -> str:
        """Append one entry; returns its hash. `reason` replaces the decision's own
        (an approval says who approved what)."""
        if self._fd is None:
            raise AuditChainError(f"{self.path}: the audit log is closed")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size != self._size:  # another writer appended
                head = verify_audit(self.path)
                self._seq, self._prev = head.entries, head.head
            entry: dict[str, Any] = {
                "seq": self._seq + 1, "time": round(time, 3), "direction": direction,
                "kind": kind, "job_id": job_id, "round_id": int(round_id),
                "frame_sha256": hashlib.sha256(frame).hexdigest(),
                **decision_fields(decision), "prev": self._prev}
            if reason is not None:
                entry["reason"] = reason
            entry["hash"] = _digest(entry)
            line = _canonical(entry) + b"\n"
            os.write(self._fd, line)
            os.fsync(self._fd)
            self._size = os.fstat(self._fd).st_size
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._seq, self._prev = entry["seq"], entry["hash"]
        return str(entry["hash"])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
