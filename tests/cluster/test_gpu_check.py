"""scripts/gpu-check: its no-GPU line and its CPU path (no GPU in CI)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def run(*args: str, path: str = "", timeout: int = 400) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if path:
        env["PATH"] = path
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_gpu_check_without_gpu_says_so_in_one_line_exit_0(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the no-GPU path cannot be shown here")
    result = run(path=f"{tmp_path}:/usr/bin:/bin")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines() == [
        "gpu-check: no NVIDIA GPU on this machine (nvidia-smi not found); nothing to check"]
    assert "Traceback" not in result.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_gpu_check_cpu_path_prints_placement_and_seconds_per_round() -> None:
    result = run("--cpu-only", "--rounds", "2", "--workers", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    checks = {line["check"]: line for line in lines}
    assert set(checks) == {"machine", "bench_cpu_workers", "cnn_cpu_workers", "total"}
    for name in ("bench_cpu_workers", "cnn_cpu_workers"):
        line = checks[name]
        assert line["rounds"] == 2 and line["seconds_per_round"] > 0
        assert line["device"].endswith("CPU:0") and line["gpu_ids"] == []
        assert line["node_id"] and line["gpus_per_worker"] == 0.0
    assert checks["total"]["seconds"] < 300
