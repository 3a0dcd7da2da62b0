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
    result = timing_out("once", "run", SPEC, "--set", "rounds=2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trying again (2/3)" in result.stderr
    # not a terminal: a plain line for the first and the last round (item 9)
    said = [x for x in lines(result.stderr) if x.startswith("fedcollab: round ")]
    assert [x.split(":")[1] for x in said] == [" round 1/2", " round 2/2"], result.stderr
    assert all(": accuracy 0." in x and " s elapsed" in x for x in said), said
    assert "Traceback" not in result.stderr
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 2


@pytest.mark.ray
@pytest.mark.slow
def test_grade_retries_a_ray_startup_timeout_and_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "grade"
    result = timing_out("once", "grade", SPEC, "--mixes", "open", "--out", str(out),
                        timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trying again (2/3)" in result.stderr
    # not a terminal: a plain line per finished run (item 9): the mix and its canary
    # audit run, in whichever order they end
    said = [x for x in lines(result.stderr) if x.startswith("fedcollab: grade: mix ")]
    assert sorted(x.split(" run (")[0] for x in said) == [
        "fedcollab: grade: mix open", "fedcollab: grade: mix open+canaries"], said
    assert all("/2), " in x for x in said), said
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


# ------------------------------------------------------------------ 4: --out, before Ray
def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("command", ["run", "grade"])
@pytest.mark.parametrize("where", ["/proc/fedcollab-out", "a-file/out"])
def test_an_unwritable_out_is_refused_before_ray(tmp_path: Path, command: str,
                                                  where: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    out = where if where.startswith("/") else str(tmp_path / where)
    result = fedcollab(command, SPEC, "--out", out, timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(lines(result.stderr)) == 1, result.stderr
    assert f"--out {out}" in result.stderr and "Traceback" not in result.stderr
    assert "starting Ray" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_grade_into_a_used_out_is_refused_without_resume_advice(tmp_path: Path) -> None:
    out = tmp_path / "grade"
    (out / "mixes" / "open").mkdir(parents=True)
    (out / "scorecard.json").write_text("{}")
    before = tree(out)
    result = fedcollab("grade", SPEC, "--out", str(out), timeout=60)
    assert result.returncode == 2
    assert len(lines(result.stderr)) == 1, result.stderr
    assert "already holds a scorecard" in result.stderr and "choose a new directory" in \
        result.stderr
    assert "--resume" not in result.stderr
    assert tree(out) == before


def test_a_full_disk_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    from fedcollab.job.outdir import OutDirError, check_can_write

    check_can_write(tmp_path / "new" / "out")
    with pytest.raises(OutDirError, match="MiB free on its disk") as refused:
        check_can_write(tmp_path / "new" / "out", min_free=2**62)
    assert refused.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 3: the first cause
@pytest.mark.ray
@pytest.mark.slow
def test_diverged_training_with_a_secure_vendor_says_non_finite(tmp_path: Path) -> None:
    """A learning rate of 1e300 makes every update NaN/inf, the open community's and the
    secure vendor's (private head) alike: the round's warning, the summary's failure
    and the CLI's line name that, not the empty secure sum it leads to."""
    out = tmp_path / "job"
    result = fedcollab("run", "examples/community-vendor.yaml", "--set", "rounds=1",
                       "--set", "local.learning_rate=1e300", "--set", "release.sign=false",
                       "--out", str(out), "--quiet")
    assert result.returncode == 1, result.stderr[-2000:]
    said = lines(result.stderr)
    assert "Traceback" not in result.stderr
    assert said[0].startswith("fedcollab: warning: round 1 aborted: updates were non-finite")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failure"].startswith("updates were non-finite")
    assert said[-1].startswith("fedcollab: error: digits-community-vendor: "
                               + summary["failure"])
    rejected = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["rejected"]
    assert sorted(rejected, key=int) == [str(p) for p in range(11)]  # 8 open, 3 secure
    assert all(why.startswith("non_finite:") for why in rejected.values())


# ------------------------------------------------------------------ 8: SIGTERM
@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_ends_a_run_with_143_no_crash_dump_and_it_resumes(tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "job"
    proc = subprocess.Popen([sys.executable, "-m", "fedcollab.cli", "run", SPEC, "--set",
                             "rounds=100000", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "latest.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no round was committed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert lines(err)[-1] == (f"fedcollab: terminated (SIGTERM); `fedcollab run {SPEC} --out "
                              f"{out} --resume` continues it")
    assert "SIGTERM received" not in err and "Traceback" not in err
    committed = json.loads((out / "checkpoints" / "latest.json").read_text())["round"]
    resumed = fedcollab("run", SPEC, "--set", f"rounds={committed + 1}", "--out", str(out),
                        "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == committed + 1
    # rounds_seconds covers the whole job, the rounds before the resume included (item 10)
    seconds = [m["seconds"] for m in map(json.loads, (out / "metrics.jsonl").open())]
    assert summary["rounds_seconds"] >= sum(seconds[:-1]) > 0
