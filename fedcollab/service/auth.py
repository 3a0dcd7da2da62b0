"""Bearer tokens and roles for the job service.

``tokens.yaml`` holds only sha256 hashes of the tokens (a stolen file opens
nothing)::

    tokens: [{name: ci, role: admin, sha256: "<hex sha256 of the token>"}]

Roles: ``admin`` does everything; ``submitter`` submits jobs and reads or cancels
its own; ``viewer`` reads every job. The file is re-read when it changes, so
``fedcollab token new`` takes effect without a restart.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from fedcollab.errors import FedcollabError
from fedcollab.io import atomic_write_bytes
from fedcollab.service.errors import PermissionDenied, Unauthenticated

__all__ = ["ROLES", "Caller", "TokenFile", "TokensFileError", "hash_token", "new_token",
           "authorize", "check_owner", "token_from_metadata"]

ROLES = ("admin", "submitter", "viewer")
_READ = frozenset(ROLES)
_WRITE = frozenset({"admin", "submitter"})
PERMISSIONS: dict[str, frozenset[str]] = {
    "SubmitJob": _WRITE, "GradeJob": _WRITE, "CancelJob": _WRITE,
    "GetJob": _READ, "ListJobs": _READ, "WatchJob": _READ, "FetchArtifact": _READ,
}


class TokensFileError(FedcollabError):
    """The tokens file is missing, unreadable or malformed."""

    exit_code = 2


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's name and role."""

    name: str
    role: str

    @property
    def sees_everything(self) -> bool:
        return self.role in ("admin", "viewer")


ANONYMOUS_ADMIN = Caller("anonymous", "admin")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _read_entries(path: Path) -> list[dict[str, str]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
        out.append({"name": str(entry["name"]), "role": role, "sha256": digest})
    return out


class TokenFile:
    """The tokens file, re-read whenever its modification time changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries = _read_entries(self.path)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def _current(self) -> list[dict[str, str]]:
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._entries = _read_entries(self.path)
                except TokensFileError:
                    pass  # a half-edited file: keep serving with the last good one
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
        digest = hash_token(token)
        found: Optional[Caller] = None
        for entry in self._current():  # check every entry: no early exit to time
            if hmac.compare_digest(digest, entry["sha256"]):
                found = Caller(entry["name"], entry["role"])
        if found is None:
            raise Unauthenticated("unknown token")
        return found


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


def check_owner(caller: Caller, owner: str, job_id: str) -> None:
    """A submitter touches only its own jobs; admins and viewers see all."""
    if not caller.sees_everything and caller.name != owner:
        raise PermissionDenied(f"job {job_id} belongs to another submitter")


def new_token(path: str | Path, *, name: str, role: str) -> str:
    """Make a token, append its sha256 to the tokens file (0600) and return it.

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
    token = secrets.token_urlsafe(32)
    entries.append({"name": name, "role": role, "sha256": hash_token(token)})
    text = "# fedcollab job service tokens: sha256 hashes only (fedcollab token new)\n"
    text += yaml.safe_dump({"tokens": entries}, sort_keys=False)
    mode = (target.stat().st_mode & 0o777) if target.exists() else 0o600
    atomic_write_bytes(target, text.encode(), mode=mode)
    os.chmod(target, mode)
    return token
