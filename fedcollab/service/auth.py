"""Bearer tokens and roles for the job service.

``tokens.yaml`` holds only sha256 hashes of the tokens (a stolen file opens
nothing)::

    tokens: [{name: ci, role: admin, sha256: "<hex sha256 of the token>"}]

Each entry may also carry (``fedcollab token new`` writes the first two):

* ``id``: a random id the token's jobs are owned by, so a token re-issued under an
  old name owns none of the old token's jobs (an entry without one is owned by
  its name, as before ids existed);
* ``expires``: unix seconds (or an ISO 8601 time) after which the token is refused;
* ``data_roots``: directories on the service's machine whose files the token's jobs
  may train on (``task.path``); without it, ``serve --data-root``;
* ``priority``: an integer; the runner starts queued jobs of higher priority first
  (default 0; submission order within a priority). Set by the operator, so a
  submitter cannot raise its own;
* ``max_running``: jobs of this token running at once (its quota of the service's
  ``--max-concurrent`` slots); without it, ``serve --max-running-per-token``.

Roles: ``admin`` does everything; ``submitter`` submits jobs and reads or cancels
its own; ``viewer`` reads every job. The file is re-read when it changes, so
``fedcollab token new`` and ``token revoke`` take effect without a restart. A file
that no longer parses (or is deleted) stops authentication: every call is refused
until it is fixed (fail closed), and the service's log says why in one line.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from fedcollab.errors import FedcollabError
from fedcollab.io import atomic_write_bytes
from fedcollab.service.errors import PermissionDenied, Unauthenticated
from fedcollab.spec.yamlsafe import safe_load

__all__ = ["ROLES", "Caller", "TokenFile", "TokensFileError", "hash_token", "new_token",
           "revoke_token", "authorize", "check_owner", "token_from_metadata"]

log = logging.getLogger("fedcollab.service")

ROLES = ("admin", "submitter", "viewer")
_ADMINS = frozenset({"admin"})
_READ = frozenset(ROLES)
_WRITE = frozenset({"admin", "submitter"})
PERMISSIONS: dict[str, frozenset[str]] = {
    "SubmitJob": _WRITE, "GradeJob": _WRITE, "CancelJob": _WRITE,
    "GetJob": _READ, "ListJobs": _READ, "WatchJob": _READ, "FetchArtifact": _READ,
    "StreamJobLogs": _READ,
}


class TokensFileError(FedcollabError):
    """The tokens file is missing, unreadable or malformed."""

    exit_code = 2


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's name and role."""

    name: str
    role: str
    id: str = ""
    data_roots: tuple[str, ...] = ()
    has_roots: bool = False  # the token names its own data_roots (else serve's apply)
    priority: int = 0
    max_running: Optional[int] = None  # None: serve --max-running-per-token applies

    @property
    def is_admin(self) -> bool:
        """The operator's role: not held to the per-token limits."""
        return self.role in _ADMINS

    @property
    def owner_id(self) -> str:
        """What this caller's jobs are owned by: the token's id, or its name for an
        entry made before tokens had ids."""
        return self.id or f"name:{self.name}"

    @property
    def sees_everything(self) -> bool:
        return self.role in ("admin", "viewer")


ANONYMOUS_ADMIN = Caller("anonymous", "admin")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _expiry(path: Path, i: int, value: Any) -> float:
    if isinstance(value, bool):
        value = None
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time(), datetime.timezone.utc)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    raise TokensFileError(f"tokens file {path}: tokens.{i}.expires: expected unix seconds "
                          "or an ISO 8601 time")


def _read_entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise TokensFileError(f"tokens file {path}: no such file "
                              "(create one with `fedcollab token new`)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise TokensFileError(f"tokens file {path}: cannot read ({err.__class__.__name__})") \
            from None
    entries = data.get("tokens", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TokensFileError(f"tokens file {path}: expected `tokens: [...]` at the top level")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"name", "role", "sha256"} <= set(entry):
            raise TokensFileError(f"tokens file {path}: tokens.{i}: needs name, role and sha256")
        role, digest = str(entry["role"]), str(entry["sha256"]).lower()
        if role not in ROLES:
            raise TokensFileError(f"tokens file {path}: tokens.{i}.role: {role!r} is not one of "
                                  f"{', '.join(ROLES)}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise TokensFileError(f"tokens file {path}: tokens.{i}.sha256: expected 64 hex "
                                  "digits (the sha256 of the token, never the token)")
        roots = entry.get("data_roots")
        if roots is not None and (not isinstance(roots, list)
                                  or not all(isinstance(r, str) and r for r in roots)):
            raise TokensFileError(f"tokens file {path}: tokens.{i}.data_roots: expected a list "
                                  "of directories")
        for key in ("priority", "max_running"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or (key == "max_running" and value < 0)):
                raise TokensFileError(f"tokens file {path}: tokens.{i}.{key}: expected "
                                      + ("an integer" if key == "priority"
                                         else "a whole number >= 0 (0: no limit)"))
        out.append({"name": str(entry["name"]), "role": role, "sha256": digest,
                    "id": str(entry.get("id") or ""),
                    "expires": _expiry(path, i, entry["expires"]) if entry.get("expires")
                    is not None else None,
                    "data_roots": None if roots is None else [str(r) for r in roots],
                    "priority": entry.get("priority"), "max_running": entry.get("max_running")})
    return out


class TokenFile:
    """The tokens file, re-read whenever its modification time changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: Optional[list[dict[str, Any]]] = _read_entries(self.path)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def _current(self) -> Optional[list[dict[str, Any]]]:
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._entries = _read_entries(self.path)
                except TokensFileError as err:
                    # Fail closed: a revoked token must not keep working because the
                    # file that revoked it does not parse (`token new` and `revoke`
                    # replace the file atomically, so no reader sees it half-written).
                    self._entries = None
                    log.error("%s; every call is refused until it is fixed", err)
                self._stamp = stamp
            return self._entries

    def authenticate(self, token: Optional[str]) -> Caller:
        """The caller a bearer token stands for.

        Raises:
            Unauthenticated: no token, or one whose hash is not in the file.
        """
        if not token:
            raise Unauthenticated("missing token: pass --token or set FEDCOLLAB_TOKEN "
                                  "(gRPC metadata `authorization: Bearer <token>`)")
        entries = self._current()
        if entries is None:
            raise Unauthenticated("the job service cannot read its tokens file; every token "
                                  "is refused until its operator fixes it")
        digest = hash_token(token)
        found: Optional[dict[str, Any]] = None
        for entry in entries:  # check every entry: no early exit to time
            if hmac.compare_digest(digest, entry["sha256"]):
                found = entry
        if found is None:
            raise Unauthenticated("unknown token")
        if found["expires"] is not None and time.time() >= found["expires"]:
            raise Unauthenticated(f"token {found['name']!r} has expired; ask for a new one")
        roots = found["data_roots"]
        return Caller(found["name"], found["role"], found["id"],
                      tuple(roots or ()), roots is not None,
                      priority=int(found["priority"] or 0), max_running=found["max_running"])


def token_from_metadata(metadata: Sequence[Any]) -> Optional[str]:
    """The token of an `authorization: Bearer <token>` metadata entry, if any."""
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def authorize(caller: Caller, method: str) -> None:
    """Raises PermissionDenied when the caller's role may not call `method`."""
    if caller.role not in PERMISSIONS.get(method, frozenset()):
        raise PermissionDenied(f"{method}: role {caller.role!r} may not do this "
                               f"(allowed: {', '.join(sorted(PERMISSIONS.get(method, ())))})")


def check_owner(caller: Caller, owner_id: str, job_id: str) -> None:
    """A submitter touches only its own jobs (by the token's id, so a re-issued name
    owns nothing old); admins and viewers see all."""
    if not caller.sees_everything and not hmac.compare_digest(caller.owner_id, owner_id):
        raise PermissionDenied(f"job {job_id} belongs to another submitter")


def _write_entries(target: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the tokens file atomically, mode 0600, with only the keys set."""
    keep = [{k: v for k, v in e.items() if v not in (None, "")} for e in entries]
    text = "# fedcollab job service tokens: sha256 hashes only (fedcollab token new)\n"
    text += yaml.safe_dump({"tokens": keep}, sort_keys=False)
    atomic_write_bytes(target, text.encode(), mode=0o600)
    os.chmod(target, 0o600)


def new_token(path: str | Path, *, name: str, role: str,
              expires_in: Optional[float] = None,
              data_roots: Sequence[str] = (), priority: Optional[int] = None,
              max_running: Optional[int] = None) -> str:
    """Make a token, append its sha256 (with a fresh id) to the tokens file (0600) and
    return it.

    Args:
        expires_in: seconds from now until the token is refused (None: never).
        data_roots: directories the token's jobs may read data from.
        priority: its jobs' priority in the queue (higher first; None: 0).
        max_running: its jobs running at once (None: serve's default; 0: no limit).

    The token itself is stored nowhere: print it once and hand it over.
    """
    target = Path(path)
    if role not in ROLES:
        raise TokensFileError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise TokensFileError(f"--name {name!r}: use letters, digits, '-', '_' or '.'")
    entries = _read_entries(target) if target.exists() else []
    if any(e["name"] == name for e in entries):
        raise TokensFileError(f"tokens file {target}: a token named {name!r} exists already")
    if expires_in is not None and expires_in <= 0:
        raise TokensFileError(f"--expires-in {expires_in}: expected a positive duration")
    if max_running is not None and max_running < 0:
        raise TokensFileError(f"--max-running {max_running}: expected 0 (no limit) or more")
    token = secrets.token_urlsafe(32)
    entries.append({"name": name, "role": role, "sha256": hash_token(token),
                    "id": secrets.token_hex(8),
                    "expires": math.ceil(time.time() + expires_in) if expires_in else None,
                    "data_roots": [os.path.abspath(r) for r in data_roots] or None,
                    "priority": priority, "max_running": max_running})
    _write_entries(target, entries)
    return token


def revoke_token(path: str | Path, *, name: str) -> int:
    """Remove the token(s) named `name` from the tokens file; returns how many.

    The running service re-reads the file and refuses the token on its next call.
    """
    target = Path(path)
    entries = _read_entries(target)
    kept = [e for e in entries if e["name"] != name]
    removed = len(entries) - len(kept)
    if not removed:
        raise TokensFileError(f"tokens file {target}: no token named {name!r}")
    _write_entries(target, kept)
    return removed
