"""Every mistake a user can make with `fedcollab run`, through the CLI as typed.

Each case: the exit code, exactly one line on stderr, no traceback, and nothing in
an existing output directory changed. Most fail before Ray starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = "examples/iid.yaml"

pytestmark = [pytest.mark.slow]


def fedcollab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "fedcollab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its sha256 (what must not change)."""
    if not path.exists():
        return {}
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "job"
    result = fedcollab("run", SPEC, "--set", "rounds=2", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _npz_with_wrong_names(tmp: Path) -> str:
    path = tmp / "bad.npz"
    np.savez(path, features=np.zeros((20, 3)), labels=np.zeros(20))
    return str(path)


def _rsa_key(tmp: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp / "rsa.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


# (case, args builder (tmp, finished) -> args, exit code, text in the one line)
CASES: list[tuple[str, Callable[[Path, Path], list[str]], int, str]] = [
    ("unknown private layer", lambda t, f: [
        SPEC, "--set", "participants.0.role=vendor",
        "--set", "participants.0.private_layers=[nope]"],
     2, "participants.0.private_layers: no layer 'nope'"),
    ("model input does not match the data", lambda t, f: [
        SPEC, "--set", "task.model=tests.user_models:wrong_input"], 2, "does not fit the data"),
    ("model function raises", lambda t, f: [
        SPEC, "--set", "task.model=tests.user_models:raises"],
     2, "raised ValueError: the user's model function failed"),
    ("model module missing", lambda t, f: [
        SPEC, "--set", "task.model=no_such_module:build"], 2, "cannot import 'no_such_module'"),
    ("model function missing", lambda t, f: [
        SPEC, "--set", "task.model=tests.user_models:nothing_here"], 2, "has no function"),
    ("npz without x and y", lambda t, f: [
        SPEC, "--set", "task.dataset=file", "--set", f"task.path={_npz_with_wrong_names(t)}"],
     2, "needs arrays named x and y"),
    ("release key missing", lambda t, f: [
        SPEC, "--set", f"release.key={t / 'missing.pem'}"], 2, "no such file"),
    ("release key not Ed25519", lambda t, f: [
        SPEC, "--set", f"release.key={_rsa_key(t)}"], 2, "expected an Ed25519 private key"),
    ("--out is a file", lambda t, f: [SPEC, "--out", str(f / "summary.json")], 2, "is a file"),
    ("--out holds a finished job", lambda t, f: [SPEC, "--set", "rounds=2", "--out", str(f)],
     2, "use --resume"),
    ("--out holds foreign files", lambda t, f: [SPEC, "--out", str(f / "checkpoints")],
     2, "already holds other files"),
    ("--resume of a missing directory", lambda t, f: [
        SPEC, "--out", str(t / "nope"), "--resume"], 2, "does not exist; nothing to resume"),
    ("--resume with a changed spec", lambda t, f: [
        SPEC, "--set", "rounds=3", "--set", "local.learning_rate=0.5", "--out", str(f),
        "--resume"], 2, "differs from the one"),
]


@pytest.mark.parametrize("case,build,code,text", CASES, ids=[c[0] for c in CASES])
def test_cli_run_mistake_is_one_line_and_touches_nothing(case: str, build: Any, code: int,
                                                          text: str, tmp_path: Path,
                                                          finished: Path) -> None:
    args = build(tmp_path, finished)
    before = tree(finished)
    result = fedcollab("run", *args, "--quiet", timeout=180)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and text in lines[0], lines
    assert tree(finished) == before


def test_cli_resume_of_a_finished_job_says_so_at_once(finished: Path) -> None:
    before = tree(finished)
    result = fedcollab("run", SPEC, "--set", "rounds=2", "--out", str(finished), "--resume",
                       timeout=60)
    assert result.returncode == 0 and "already finished all 2 rounds" in result.stdout
    assert tree(finished) == before


@pytest.mark.ray
def test_cli_job_that_learns_nothing_exits_1_and_records_it(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    result = fedcollab("run", SPEC, "--set", "rounds=2", "--set", "local.learning_rate=1e300",
                       "--out", str(out), "--quiet")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 1, result.stderr[-2000:]
    assert any("warning: round 1 no update was accepted (non_finite" in x for x in lines)
    assert "no round accepted an update" in lines[-1] and "Traceback" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "non_finite" in summary["failure"]
    assert not (out / "release").exists()


def test_cli_validate_deep_finds_a_bad_private_layer_without_ray() -> None:
    result = fedcollab("validate", SPEC, "--deep", "--set", "participants.0.role=vendor",
                       "--set", "participants.0.private_layers=[nope]", timeout=120)
    assert result.returncode == 2 and "no layer 'nope'" in result.stderr
    quick = fedcollab("validate", SPEC, "--set", "participants.0.role=vendor",
                      "--set", "participants.0.private_layers=[nope]", timeout=60)
    assert quick.returncode == 0  # without --deep: no TensorFlow, layers unchecked
