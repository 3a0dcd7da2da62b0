"""The coordinator's silo job id: fresh per job, kept by a resumed one (issue #31)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcollab.silo.errors import SiloError
from fedcollab.silo.remote import JOB_FILE, silo_job_id
from fedcollab.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "examples" / "community-vendor.yaml")


def test_silo_job_id_new_job_is_fresh_and_written(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()

    first, second = silo_job_id(one, SPEC, "vendor"), silo_job_id(two, SPEC, "vendor")

    assert first != second and first.startswith(f"{SPEC.name}-")
    assert json.loads((one / JOB_FILE).read_text()) == {"job_id": first, "party": "vendor"}


def test_silo_job_id_resumed_job_keeps_its_id(tmp_path: Path) -> None:
    first = silo_job_id(tmp_path, SPEC, "vendor")

    assert silo_job_id(tmp_path, SPEC, "vendor") == first


def test_silo_job_id_of_another_party_is_refused(tmp_path: Path) -> None:
    silo_job_id(tmp_path, SPEC, "vendor")

    with pytest.raises(SiloError, match="names party 'vendor', not 'other'"):
        silo_job_id(tmp_path, SPEC, "other")


def test_silo_job_id_unreadable_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / JOB_FILE).write_text("{not json")

    with pytest.raises(SiloError, match="unreadable") as err:
        silo_job_id(tmp_path, SPEC, "vendor")

    assert "\n" not in str(err.value)
