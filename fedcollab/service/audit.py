"""The service's audit log: who submitted, cancelled and fetched what.

``STATE_DIR/audit.log`` (0600) is append-only and hash-chained: each line is
``<sha256 hex> <JSON record>``, the hash taken over the previous line's hash and
this line's JSON bytes exactly as written, starting from 64 zeros. Changing,
removing or reordering any line breaks the chain at that line, which
:func:`verify` names. (It shows tampering by someone who cannot rewrite the whole
tail; keep a copy of the last hash elsewhere to pin it.)
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

from fedcollab.errors import FedcollabError

__all__ = ["AuditLog", "AuditError", "verify", "GENESIS"]

GENESIS = "0" * 64


class AuditError(FedcollabError):
    """The audit log's chain is broken (the service will not start on it)."""


def _link(prev: str, body: bytes) -> str:
    return hashlib.sha256(prev.encode("ascii") + body).hexdigest()


class AuditLog:
    """Appends records to the chain; thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._last, self._seq = verify(self.path) if self.path.exists() else (GENESIS, 0)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        self._fd: Optional[int] = fd

    def record(self, action: str, *, who: str, job: str = "", **detail: Any) -> None:
        """Append one record: {"seq", "time", "who", "action", "job", ...detail}."""
        with self._lock:
            if self._fd is None:
                return
            entry = {
                "seq": self._seq + 1,
                "time": round(time.time(), 3),
                "who": who,
                "action": action,
                "job": job,
                **detail,
            }
            body = json.dumps(
                entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True
            ).encode("ascii")
            digest = _link(self._last, body)
            os.write(self._fd, digest.encode("ascii") + b" " + body + b"\n")
            self._last, self._seq = digest, self._seq + 1

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def verify(path: str | Path) -> tuple[str, int]:
    """Check the whole chain; returns (last hash, last seq).

    Raises:
        AuditError: the first line whose hash, sequence number or format is wrong.
    """
    prev, seq = GENESIS, 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\n")
            digest, sep, body = line.partition(b" ")
            try:
                entry = json.loads(body)
                ok = (
                    sep == b" "
                    and raw.endswith(b"\n")
                    and digest.decode("ascii") == _link(prev, body)
                    and entry.get("seq") == seq + 1
                )
            except (ValueError, UnicodeDecodeError, AttributeError):
                ok = False
            if not ok:
                raise AuditError(
                    f"{path}: line {number}: the hash chain is broken "
                    "(changed, removed or reordered); keep the file for "
                    "inspection and move it aside to start afresh"
                )
            prev, seq = digest.decode("ascii"), seq + 1
    return prev, seq
