"""Preflight: checks needing data or protocol parameters, shared by validate and run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedcollab.job.preflight import preflight
from fedcollab.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "examples" / "community-vendor.yaml"


def test_preflight_default_job_reports_ring_width() -> None:
    facts = preflight(load_spec(DEFAULT))
    assert facts == {"train_samples": 1437, "secure_ring_bits": 32}


def test_preflight_secure_range_that_could_overflow_raises_spec_error() -> None:
    with pytest.raises(SpecError, match="spec: secure: .*lower clip or scale_bits"):
        preflight(load_spec(DEFAULT, ["secure.clip=1e12"]))


def test_cli_validate_overflowing_secure_config_exits_2_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "fedcollab.cli", "validate", str(DEFAULT),
                             "--set", "secure.clip=1e12"], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
