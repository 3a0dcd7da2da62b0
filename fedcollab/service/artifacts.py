"""Which files of a job FetchArtifact may send, and how it refuses the rest.

Only named outputs leave the service: never the job's signing key, its
checkpoints or the service's own files. A name is a relative path inside the
job directory; absolute paths, ``..``, symbolic links and hard links are refused,
and each file is opened with ``O_NOFOLLOW`` after its real path was checked.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

from fedcollab.service.errors import InvalidArgument, NotFound

__all__ = ["FILES", "DIRECTORIES", "CHUNK_BYTES", "LOG_READ_BYTES", "resolve", "open_all",
           "read_log"]

FILES = ("summary.json", "metrics.jsonl", "spec.yaml", "scorecard.json", "scorecard.md",
         "scorecard.html", "job.log")
DIRECTORIES = ("release", "plots")
CHUNK_BYTES = 256 * 1024
LOG_READ_BYTES = 16 * CHUNK_BYTES  # the most of job.log one read of StreamJobLogs takes


def _check_name(name: str) -> tuple[str, ...]:
    if not name:
        raise InvalidArgument("an artifact name is required, e.g. release or summary.json")
    if "\\" in name or "\x00" in name or name.startswith("/") or os.path.isabs(name):
        raise InvalidArgument(f"artifact {name!r}: give a name relative to the job, "
                              "e.g. release/manifest.json")
    if any(p in ("..", ".") for p in name.split("/")):
        raise InvalidArgument(f"artifact {name!r}: '..' and '.' are not allowed")
    parts = PurePosixPath(name).parts
    top = parts[0]
    allowed = (len(parts) == 1 and (top in FILES or top in DIRECTORIES)) or \
              (len(parts) == 2 and top in DIRECTORIES)
    if not allowed:
        raise NotFound(f"no artifact {name!r}; artifacts are {', '.join(FILES)}, "
                       f"{', '.join(DIRECTORIES)} and the files in them")
    return parts


def _inside(root: Path, path: Path) -> Path:
    """`path` if it is a regular file, not a symlink, whose real path is under `root`."""
    if path.is_symlink():
        raise InvalidArgument(f"artifact {path.relative_to(root)}: is a symbolic link; refused")
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise InvalidArgument(f"artifact {path.relative_to(root)}: resolves outside the job "
                              "directory; refused")
    return real


def resolve(job_dir: Path, name: str, job: Any) -> list[tuple[str, Path]]:
    """(relative name, real path) of every file the artifact `name` stands for.

    The job's outputs are in ``job_dir/run`` (as ``fedcollab run --out`` writes them);
    ``job.log`` is the service's, beside it.
    """
    parts = _check_name(name)
    if parts != ("job.log",):
        job_dir = job_dir / "run"
    root = Path(os.path.realpath(job_dir))
    target = job_dir.joinpath(*parts)
    if not target.exists() and not target.is_symlink():
        raise NotFound(f"job {job.id} ({job.state}) has no {name} yet")
    if len(parts) == 1 and parts[0] in DIRECTORIES:
        directory = _inside(root, target)
        if not directory.is_dir():
            raise NotFound(f"job {job.id} has no {name} directory")
        out = []
        for child in sorted(directory.iterdir()):
            real = _inside(root, child)
            if real.is_file():
                out.append((f"{parts[0]}/{child.name}", real))
        if not out:
            raise NotFound(f"job {job.id} has an empty {name} directory")
        return out
    _inside(root, target.parent)
    real = _inside(root, target)
    if not real.is_file():
        raise NotFound(f"artifact {name!r} of job {job.id} is not a file")
    return [("/".join(parts), real)]


def open_all(files: list[tuple[str, Path]]) -> Iterator[tuple[str, IO[bytes], int]]:
    """Open each file without following a symlink swapped in since the check; only a
    regular file with one link is sent (a hard link could name any file the service
    can read)."""
    for relative, path in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            raise InvalidArgument(f"artifact {relative}: cannot be opened (a symbolic link, "
                                  "or gone)") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise InvalidArgument(f"artifact {relative}: not a regular file with one link; "
                                  "refused")
        handle = os.fdopen(fd, "rb")
        yield relative, handle, info.st_size


def read_log(job_dir: Path, job: Any, offset: int, *, missing_ok: bool = False) -> bytes:
    """Up to LOG_READ_BYTES of the job's job.log from byte `offset`, checked as
    FetchArtifact checks it (no symlink, one link, inside the job directory).

    Args:
        missing_ok: a job.log not written yet (a queued job) reads as empty instead
            of raising NotFound.
    """
    try:
        files = resolve(job_dir, "job.log", job)
    except NotFound:
        if missing_ok:
            return b""
        raise
    for _, handle, size in open_all(files):
        with handle:
            if offset >= size:
                return b""
            handle.seek(offset)
            return handle.read(LOG_READ_BYTES)
    return b""
