"""`fedcollab run` as a user types it: the default job, and errors as one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def fedcollab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcollab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_cli_run_default_job_reaches_090_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = fedcollab("run", "examples/community-vendor.yaml", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.strip().splitlines()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 20
    assert summary["final_accuracy"] >= 0.90
    verified = fedcollab("verify", str(out / "release"))
    assert verified.returncode == 0 and verified.stdout.startswith("ok:")


def test_cli_run_unreachable_address_is_one_line_exit_1(tmp_path: Path) -> None:
    result = fedcollab("run", "examples/iid.yaml", "--address", "127.0.0.1:9", "--out",
                       str(tmp_path / "x"), timeout=60)
    assert result.returncode == 1
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "cannot reach the Ray cluster at 127.0.0.1:9" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_run_bad_spec_exits_2_before_starting_ray(tmp_path: Path) -> None:
    result = fedcollab("run", "examples/iid.yaml", "--set", "rounds=0", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "fedcollab: error: spec: rounds: got 0, expected an integer > 0"
