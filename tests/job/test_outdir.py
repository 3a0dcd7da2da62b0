"""The output directory a run may use (pure: nothing is written)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedcollab.job.outdir import OutDirError, plan_out_dir
from fedcollab.spec import spec_from_dict

SPEC = spec_from_dict({"name": "t", "task": {"dataset": "digits", "model": "mlp"},
                       "rounds": 2, "participants": [{"name": "c", "count": 4}]})


def test_a_start_refused_before_its_first_round_does_not_lock_its_directory(
        tmp_path: Path) -> None:
    """A job with the vendor remote writes its silo job id before the offer leaves; if
    the vendor never joins or refuses the offer, that file is all the directory holds,
    and a new run there must not be told it holds 'other files' (nor can it resume:
    there is no spec.yaml)."""
    out = tmp_path / "job"
    out.mkdir()
    (out / "silo-job.json").write_text('{"job_id": "t-1", "party": "vendor"}')

    plan = plan_out_dir(SPEC, out, resume=False)

    assert plan.path == out and not plan.resume
    assert (out / "silo-job.json").exists()  # planning writes nothing
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutDirError, match="already holds other files"):
        plan_out_dir(SPEC, out, resume=False)
