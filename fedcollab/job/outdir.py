"""A job's output directory: checked before anything runs, never silently reused.

A new job needs a new (or empty) directory; ``--resume`` needs the directory of an
unfinished job started with a spec that gives the same result. Every check here
runs before Ray starts and before anything is written, so a refused run leaves the
directory exactly as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fedcollab.errors import FedcollabError
from fedcollab.spec import SpecError

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["OutDirError", "JobAlreadyFinished", "OutDirPlan", "plan_out_dir",
           "default_out_dir", "spec_differences", "RESULT_NEUTRAL_FIELDS", "check_can_write",
           "MIN_FREE_BYTES"]

#: The free space a job's output directory needs before it starts: a small job's
#: checkpoints, TensorBoard log, plots and release take a few MiB; a disk with less
#: than this would fail mid-run.
MIN_FREE_BYTES = 64 * 1024 * 1024

#: Spec fields that do not change a job's result, so ``--resume`` may change them:
#: how many rounds (more rounds continue the same trajectory), where workers run,
#: how the release is signed, the job's name, what an aborted round does and the
#: mixes ``fedcollab grade`` adds.
RESULT_NEUTRAL_FIELDS = ("rounds", "resources", "release", "name", "secure.on_abort",
                         "grading")


class OutDirError(FedcollabError):
    """An output directory that cannot be used as asked."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class JobAlreadyFinished(FedcollabError):
    """``--resume`` of a job that has run all its rounds: nothing to do (exit 0)."""

    exit_code = 0


@dataclass(frozen=True)
class OutDirPlan:
    """Where a job writes, and the committed round it continues from (0: a new job)."""

    path: Path
    resume_round: int = 0
    resume: bool = False

    def create(self) -> Path:
        """Create the directory (after every other check passed); prove it is writable."""
        _check_writable(self.path)
        return self.path.resolve()


def default_out_dir(spec: JobSpec) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{spec.name}-{stamp}"


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        out = {}
        for i, value in enumerate(data):
            out.update(_flatten(value, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): data}


def spec_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted fields in which two resolved specs differ in a way that changes results."""
    a, b = _flatten(saved), _flatten(new)
    target_epsilon = b.get("privacy.dp.target_epsilon") is not None
    neutral = [f for f in RESULT_NEUTRAL_FIELDS if not (f == "rounds" and target_epsilon)]
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                  and not any(k == f or k.startswith(f + ".") for f in neutral))


def _committed_round(path: Path) -> int:
    pointer = path / "checkpoints" / "latest.json"
    if not pointer.exists():
        return 0
    try:
        return int(json.loads(pointer.read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError):
        raise OutDirError(f"--resume: {pointer} is damaged; the job cannot be resumed "
                          "from it") from None


def _check_writable(path: Path) -> None:
    """Create ``path`` if needed and prove a file can be written in it (exit 1 if not)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OutDirError(f"cannot write to the output directory {path}: "
                          f"{err.strerror or err.__class__.__name__}", exit_code=1) from None


def check_can_write(path: Path, *, flag: str = "--out",
                    min_free: int = MIN_FREE_BYTES) -> None:
    """Prove ``path`` could be created and written, and its disk has room, leaving
    nothing behind: a directory is made and removed in the nearest existing
    ancestor (so a read-only file system counts, whoever runs the job).

    Raises:
        OutDirError: (exit 1) a parent that is a file, a directory that cannot be
            written, or a disk with less than ``min_free`` bytes free.
    """
    path = Path(path).absolute()
    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise OutDirError(f"{flag} {path}: {base} is a file, not a directory", exit_code=1)
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".fedcollab-write-test-"))
    except OSError as err:
        raise OutDirError(f"{flag} {path}: cannot write in {base} "
                          f"({err.strerror or err.__class__.__name__}); choose a directory you "
                          "can write", exit_code=1) from None
    free = shutil.disk_usage(base).free
    if free < min_free:
        raise OutDirError(f"{flag} {path}: only {free / 2**20:.0f} MiB free on its disk, a job "
                          f"needs at least {min_free / 2**20:.0f} MiB; free some space or "
                          "choose a directory on another disk", exit_code=1)


#: What a start that was refused before its first round may leave in the directory: the
#: job id a remote silo knows the job by (``fedcollab.silo.remote.JOB_FILE``, written
#: before the offer leaves). A new run there reuses it; nothing else of the job exists.
_START_LEFTOVERS = frozenset({"silo-job.json"})


def plan_out_dir(spec: JobSpec, out: Optional[Path], *, resume: bool) -> OutDirPlan:
    """Check the output directory for a run of ``spec``; writes nothing.

    Raises:
        OutDirError: (exit 2) a file where the directory should be, a finished or
            foreign run in ``out`` without ``--resume``, ``--resume`` of a missing or
            non-job directory; (exit 1, :func:`check_can_write`) a directory that
            cannot be written or a full disk.
        SpecError: ``--resume`` with a spec that would give a different result.
        JobAlreadyFinished: ``--resume`` of a job that has run all its rounds.
    """
    import yaml

    from fedcollab.spec import spec_to_dict

    path = Path(out) if out is not None else default_out_dir(spec)
    if path.exists() and not path.is_dir():
        raise OutDirError(f"--out {path}: is a file, expected a directory")
    if resume:
        if out is None:
            raise OutDirError("--resume needs --out DIR (the job's output directory)")
        if not path.is_dir():
            raise OutDirError(f"--resume: {path} does not exist; nothing to resume (leave "
                              "out --resume to start a new job there)")
        saved_spec = path / "spec.yaml"
        if not saved_spec.is_file():
            raise OutDirError(f"--resume: {path} is not a fedcollab job directory "
                              "(no spec.yaml)")
        try:
            saved = yaml.safe_load(saved_spec.read_text())
        except (OSError, yaml.YAMLError):
            raise OutDirError(f"--resume: {saved_spec} cannot be read") from None
        differ = spec_differences(saved if isinstance(saved, dict) else {}, spec_to_dict(spec))
        if differ:
            shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more"
                                             if len(differ) > 6 else "")
            raise SpecError(f"--resume: the spec differs from the one {path} was started "
                            f"with in {shown}; that would change the result (resume with "
                            "the saved spec.yaml, or start a new --out directory)")
        committed = _committed_round(path)
        # all rounds committed but no summary: the job died before its release, so a
        # resume only writes the release and the summary
        if committed >= spec.rounds and (path / "summary.json").exists():
            raise JobAlreadyFinished(f"{path}: the job already finished all {committed} "
                                     f"rounds; nothing to resume (raise rounds to continue "
                                     "training)")
        check_can_write(path)
        return OutDirPlan(path, committed, resume=True)
    if path.is_dir() and any(p.name not in _START_LEFTOVERS for p in path.iterdir()):
        what = "a fedcollab job" if (path / "spec.yaml").exists() else "other files"
        if (path / "summary.json").exists():
            what = "a finished fedcollab job"
        raise OutDirError(f"--out {path} already holds {what}; use --resume to continue a "
                          "job there, or choose a new directory")
    check_can_write(path)
    return OutDirPlan(path)
