"""Atomic file writes: write a temporary file, fsync it, rename it into place.

A crash at any point leaves either the old file or the new one, never half of
one. Used for checkpoints, summaries, manifests and the job store's artifacts.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_save_npz", "load_npz",
           "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """fsync ``path`` (its data written through another descriptor: the same file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o644,
                       durable: bool = True) -> None:
    """Write `data` to `path` atomically and, unless ``durable`` is False (a file that
    is reset after a crash anyway), durably: fsynced, and its rename too."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(target.parent)


def append_line_durably(path: str | Path, line: str, *, mode: int = 0o644,
                        sync: bool = True) -> None:
    """Append ``line`` (one JSON object, no newline) to the journal at ``path`` (created
    with ``mode``) and fsync it: a crash leaves at most a torn last line, which readers
    skip. With ``sync`` False the line is only written (a killed process keeps it; the
    caller fsyncs the file before anything relies on it surviving the machine)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = (line + "\n").encode("utf-8")
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"{target}: short write of a journal line")
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any, *, indent: Optional[int] = 2) -> None:
    text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False, default=_default)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_save_npz(path: str | Path, arrays: Mapping[str, np.ndarray], *,
                    meta: Optional[Mapping[str, Any]] = None) -> None:
    """Save arrays (and a small JSON `meta`) as one .npz, atomically."""
    buffer = io.BytesIO()
    payload = dict(arrays)
    if meta is not None:
        payload["__meta__"] = np.frombuffer(json.dumps(meta, default=_default).encode(),
                                            dtype=np.uint8)
    np.savez(buffer, **payload)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and meta saved by :func:`atomic_save_npz`."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "__meta__"}
        meta = json.loads(archive["__meta__"].tobytes()) if "__meta__" in archive.files else {}
    return arrays, meta
