"""Resume is exact: a job SIGKILLed (the whole process group) at random rounds and
resumed each time ends bit-identical to the uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DEFAULT = ["examples/community-vendor.yaml", "--set", "rounds=10"]
SECURE_FEDADAM = [
    "examples/iid.yaml", "--set", "rounds=8", "--set", "fraction=0.5",
    "--set", "participants.0.count=8", "--set", "participants.0.sharing=secure",
    "--set", "aggregation.server_optimizer=fedadam"]


def _cmd(spec_args: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedcollab.cli", "run", *spec_args, "--out", str(out),
            "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _weights_sha(out: Path) -> str:
    return str(json.loads((out / "release" / "manifest.json").read_text())["weights_sha256"])


def _rounds_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _kill_at(spec_args: list[str], out: Path, at_round: int, *, resume: bool) -> None:
    """Run (or resume) until ``at_round`` is logged, then SIGKILL the process group."""
    proc = subprocess.Popen(_cmd(spec_args, out, *(["--resume"] if resume else [])),
                            cwd=ROOT, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while _rounds_logged(out) < at_round and proc.poll() is None:
            assert time.monotonic() < deadline, "the job did not reach the round in time"
            time.sleep(0.05)
        assert proc.poll() is None, f"finished before round {at_round} could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("spec_args,rounds", [(DEFAULT, 10), (SECURE_FEDADAM, 8)],
                         ids=["default-job", "all-secure-fedadam-half-sampled"])
def test_resume_after_sigkill_is_bit_identical(spec_args: list[str], rounds: int,
                                               tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    # the uninterrupted run goes alongside the killed one (its own embedded Ray)
    reference = subprocess.Popen(_cmd(spec_args, straight), cwd=ROOT, env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        rng = random.Random(int.from_bytes(os.urandom(4), "big"))
        first = rng.randint(2, rounds // 2)
        second = rng.randint(first + 1, rounds - 1)
        out = tmp_path / "killed"
        _kill_at(spec_args, out, first, resume=False)
        _kill_at(spec_args, out, second, resume=True)
        done = subprocess.run(_cmd(spec_args, out, "--resume"), cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=600)
    finally:
        _, errors = reference.communicate(timeout=600)

    assert reference.returncode == 0, errors.decode()[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert _weights_sha(out) == _weights_sha(straight), f"killed at rounds {first}, {second}"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == list(range(1, rounds + 1))
