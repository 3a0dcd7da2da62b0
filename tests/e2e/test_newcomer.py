"""What a newcomer trips on, from the user's side: the CLI in a subprocess, its exit
code, the lines it prints and the output directory it leaves (issue 32)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = "examples/iid.yaml"

#: Makes Ray's own start-up time out, for real: Ray waits 0 s for its GCS to write its
#: port file. With ``once``, the first ``ray.shutdown`` (what ``connect`` does before it
#: starts Ray again) lifts the fault, so only the first start fails.
TIMEOUT_SHIM = """
import os, sys
import ray
os.environ["RAY_gcs_server_port_wait_time_s"] = "0"
if sys.argv.pop(1) == "once":
    shutdown = ray.shutdown
    def lift(*args, **kwargs):
        os.environ.pop("RAY_gcs_server_port_wait_time_s", None)
        return shutdown(*args, **kwargs)
    ray.shutdown = lift
from fedcollab.cli import entry
entry()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def fedcollab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcollab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=_env())


def timing_out(fault: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``fedcollab ARGS`` with Ray's start-up timing out (``once`` or ``always``)."""
    return subprocess.run([sys.executable, "-c", TIMEOUT_SHIM, fault, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env())


def lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


# ------------------------------------------------------------------ 1: Ray's start-up
@pytest.mark.ray
@pytest.mark.slow
def test_run_retries_a_ray_startup_timeout_and_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = timing_out("once", "run", SPEC, "--set", "rounds=1", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trying again (2/3)" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 1


@pytest.mark.ray
@pytest.mark.slow
def test_grade_retries_a_ray_startup_timeout_and_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "grade"
    result = timing_out("once", "grade", SPEC, "--mixes", "open", "--out", str(out), "--quiet",
                        timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trying again (2/3)" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "scorecard.json").is_file()


@pytest.mark.ray
@pytest.mark.parametrize("command", ["run", "grade"])
def test_a_persistent_ray_startup_timeout_is_one_line(tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    result = timing_out("always", command, SPEC, "--out", str(out), "--quiet", timeout=120)
    assert result.returncode == 1
    errors = [x for x in lines(result.stderr) if "trying again" not in x]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "did not come up in time, 3 tries" in errors[0]
    assert "scripts/start-cluster head" in errors[0]
    assert not out.exists()
