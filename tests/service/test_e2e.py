"""End to end over loopback: real jobs in real job processes on the service's Ray."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from fedcollab._proto.fedcollab.v1 import jobs_pb2
from fedcollab.service.errors import FailedPrecondition, InvalidArgument
from fedcollab.service.jobproc import autogroup

from .conftest import TINY_SPEC, Tokens, client

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[Any]:
    from fedcollab.service.server import run_server

    with run_server(tmp_path_factory.mktemp("e2e"), tokens=tokens.path, max_concurrent=1,
                    eager=True, warm_runners=1,
                    allow_model_modules=["tests.user_models"]) as srv:
        yield srv


def _state(job: Any) -> str:
    return str(jobs_pb2.JobState.Name(job.state))


def _wait(c: Any, job_id: str, predicate: Any, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(job_id)
        if predicate(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} stuck in {_state(c.get(job_id))}")


def test_e2e_submit_watch_fetch_and_verify_release(server: Any, tokens: Tokens,
                                                   tmp_path: Path) -> None:
    c = client(server, tokens.submitter)
    # a model whose workers print: their output reaches the job's log through Ray
    spec = TINY_SPEC.replace("model: mlp", "model: tests.user_models:loud")

    job = c.submit(spec)
    events = list(c.watch(job.id))
    log = b"".join(c.logs(job.id)).decode()
    written = c.fetch(job.id, "release", tmp_path / "release")
    verify = subprocess.run([sys.executable, "-m", "fedcollab.cli", "verify",
                             str(tmp_path / "release")], capture_output=True, text=True)
    summary = json.loads(c.get(job.id).summary_json)

    rounds = [e.round.round for e in events if e.HasField("round")]
    states = [jobs_pb2.JobState.Name(e.state.state) for e in events if e.HasField("state")]
    assert rounds == [1, 2, 3]
    # a watcher that reconnects names the last round it saw: only later ones come
    for after, later in ((1, [2, 3]), (3, [])):
        again = list(c.watch(job.id, after_round=after))
        assert [e.round.round for e in again if e.HasField("round")] == later
        assert jobs_pb2.JobState.Name(again[-1].state.state) == "SUCCEEDED"
    with pytest.raises(InvalidArgument, match="after_round -1"):
        list(c.watch(job.id, after_round=-1))
    assert states[-1] == "SUCCEEDED", events[-1]
    assert all("accuracy" in e.round.metrics for e in events if e.HasField("round"))
    assert {p.name for p in written} >= {"model.keras", "manifest.json", "manifest.sig"}
    assert verify.returncode == 0, verify.stderr
    assert summary["rounds_completed"] == 3
    assert "round 3/3" in log  # the job process's own output
    worker_lines = [line for line in log.splitlines() if "fedcollab-test: model built" in line]
    assert worker_lines and all(line.startswith("(") and " pid=" in line
                                for line in worker_lines), log  # Ray's prefix
    assert "\x1b[" not in log  # a file: no terminal colours


def test_e2e_service_release_matches_a_cold_fedcollab_run(server: Any, tokens: Tokens,
                                                           tmp_path: Path) -> None:
    c = client(server, tokens.admin)
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)

    job = c.submit(TINY_SPEC)
    cold = subprocess.run([sys.executable, "-m", "fedcollab.cli", "run",
                           str(tmp_path / "tiny.yaml"), "--quiet", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True)
    done = _wait(c, job.id, lambda j: _state(j) in ("SUCCEEDED", "FAILED"))
    served = c.fetch(job.id, "release/manifest.json", tmp_path / "served.json")

    assert cold.returncode == 0, cold.stderr
    assert _state(done) == "SUCCEEDED", done.error
    assert json.loads(served[0].read_text())["weights_sha256"] == json.loads(
        (tmp_path / "run" / "release" / "manifest.json").read_text())["weights_sha256"]


def test_e2e_failing_job_fails_alone_and_service_keeps_serving(server: Any,
                                                               tokens: Tokens) -> None:
    c = client(server, tokens.admin)
    pinned = TINY_SPEC.replace("resources: {workers: 1}",
                               "resources: {workers: 1}").replace(
        "partition: {kind: iid}}", "partition: {kind: iid}, resources: {vendor_site: 1}}")

    job = c.submit(pinned)
    done = _wait(c, job.id, lambda j: _state(j) in ("SUCCEEDED", "FAILED", "CANCELLED"))

    assert _state(done) == "FAILED"
    assert "vendor_site" in done.error and "\n" not in done.error
    assert c.list().jobs


def test_e2e_queue_beyond_max_concurrent_and_cancel_within_seconds(server: Any,
                                                                    tokens: Tokens) -> None:
    c = client(server, tokens.admin)
    long = TINY_SPEC.replace("rounds: 3", "rounds: 500")
    first, second = c.submit(long), c.submit(long)
    _wait(c, first.id, lambda j: j.rounds_completed >= 1)

    queued = c.get(second.id)
    t0 = time.monotonic()
    cancelled = c.cancel(first.id)
    seconds = time.monotonic() - t0
    c.cancel(second.id)

    assert _state(queued) == "QUEUED"
    assert _state(cancelled) == "CANCELLED" and seconds < 10
    assert _state(c.get(second.id)) == "CANCELLED"
    with pytest.raises(FailedPrecondition):
        c.cancel(first.id)


def _grader_available() -> bool:
    return importlib.util.find_spec("fedcollab.grading") is not None


@pytest.mark.skipif(not _grader_available(),
                    reason="the local grader (`fedcollab grade SPEC --budget --priority --out`, "
                           "package fedcollab.grading) is not merged into this branch yet")
def test_e2e_grade_as_a_job_and_fetch_scorecard(server: Any, tokens: Tokens,
                                                tmp_path: Path) -> None:
    c = client(server, tokens.submitter)

    job = c.grade(TINY_SPEC, budget="fast", priority="balanced")
    done = _wait(c, job.id, lambda j: _state(j) in ("SUCCEEDED", "FAILED"), timeout=900)
    written = c.fetch(job.id, "scorecard.json", tmp_path)

    assert _state(done) == "SUCCEEDED", done.error
    card = json.loads(written[0].read_text())
    assert card["mixes"] and "recommendation" in card


def _descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> its command line (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            out[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(
                b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return out


def test_jobs_and_the_ray_head_run_below_the_service_in_cpu_priority(server: Any) -> None:
    """On a busy host the API and health checks answer before training: the warm job
    process, the service's Ray head and every Ray process under it (the job's workers
    are started by its raylet) run --job-nice (10) steps below the service, and so do
    their scheduler autogroups."""
    import os

    own = os.getpriority(os.PRIO_PROCESS, 0)
    want = min(own + 10, 19)

    def lowered(pid: int) -> tuple[int, str]:
        """The process's nice and its autogroup's nice: each runs in a session of its
        own, so where Linux has autogroups its group must be lowered too, or its nice
        ranks it only against its own children (no autogroup: nothing to lower)."""
        try:
            nice = os.getpriority(os.PRIO_PROCESS, pid)
        except OSError:
            return (-1, "")  # gone meanwhile
        group = autogroup(pid)
        return (nice, "10" if group is None else str(group[1]))

    deadline = time.monotonic() + 120
    while True:
        tree = _descendants(os.getpid())
        jobs = [p for p, cmd in tree.items() if "fedcollab.service.jobproc" in cmd]
        heads = [p for p, cmd in tree.items() if "fedcollab.service.rayhead" in cmd]
        rays = [p for p, cmd in tree.items() if "raylet" in cmd or "gcs_server" in cmd]
        # a process caught between its start and its first line (which lowers it)
        # is looked at again
        settled = all(lowered(p) == (want, "10") for p in jobs + heads + rays)
        if (jobs and heads and rays and settled) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert jobs and heads and rays, tree
    for pid in jobs + heads + rays:
        assert lowered(pid) == (want, "10"), (pid, tree[pid])
