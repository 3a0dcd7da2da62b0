"""``fedcollab.run``: a job from Python, as ``fedcollab run`` runs it from the shell."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from fedcollab.job.callbacks import RoundCallback
    from fedcollab.job.run import JobResult
    from fedcollab.spec import JobSpec

__all__ = ["run"]


def run(spec_or_path: Union[JobSpec, str, Path], *, out: Optional[Union[str, Path]] = None,
        address: Optional[str] = None, callbacks: Sequence[RoundCallback] = (),
        resume: bool = False, quiet: bool = True, release: bool = True,
        **overrides: Any) -> JobResult:
    """Run a collaboration job and return its result.

    Args:
        spec_or_path: A :class:`~fedcollab.spec.JobSpec`, or the path of a YAML/JSON spec.
        out: The output directory (default ``runs/<name>-<UTC timestamp>/``).
        address: A Ray cluster address (``auto``, ``HOST:PORT``); None starts an
            embedded local Ray for the job.
        callbacks: :class:`~fedcollab.job.callbacks.RoundCallback` objects told about every
            round, after the built-in outputs (metrics, checkpoints, ...).
        resume: Continue the job in ``out`` from its last committed round.
        quiet: No progress bar.
        release: Write the signed release.
        **overrides: Spec fields to change, as ``--set`` does: ``rounds=5``, or dotted
            paths through a dict: ``**{"participants.0.count": 20}``.

    Returns:
        The :class:`~fedcollab.job.run.JobResult`.

    Raises:
        fedcollab.spec.SpecError: A bad spec or override (the CLI exits 2 for it).
        fedcollab.errors.FedcollabError: Anything else a user can fix.
    """
    from fedcollab.job.preflight import preflight
    from fedcollab.job.run import RunOptions, run_job
    from fedcollab.spec import JobSpec, apply_overrides, load_spec, spec_from_dict, spec_to_dict

    pairs = [f"{k}={_scalar(v)}" for k, v in overrides.items()]
    if isinstance(spec_or_path, JobSpec):
        spec = spec_from_dict(apply_overrides(spec_to_dict(spec_or_path), pairs)) \
            if pairs else spec_or_path
    else:
        spec = load_spec(spec_or_path, pairs)
    preflight(spec)
    options = RunOptions(out_dir=Path(out) if out is not None else None, address=address,
                         quiet=quiet, resume=resume, release=release,
                         callbacks=tuple(callbacks))
    return run_job(spec, options)


def _scalar(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)
