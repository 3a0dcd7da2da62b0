"""Jobs that each want every CPU of the service's Ray: one submitted while the other
runs queues in Ray for its reservation instead of sharing the cores, and both
succeed. Real service over loopback, real warm job processes, the service's Ray."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from fedcollab._proto.fedcollab.v1 import jobs_pb2

from .conftest import Tokens, client

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_WHOLE_CLUSTER = """\
name: whole
seed: 0
task: {dataset: digits, model: mlp}
rounds: ROUNDS
participants:
  - {name: community, role: community, count: 4, sharing: open, partition: {kind: iid}}
resources: {workers: auto}
release: {sign: false}
"""


def test_service_jobs_wanting_every_cpu_queue_in_ray_and_both_succeed(
        tmp_path: Path, tokens: Tokens) -> None:
    from fedcollab.service.server import run_server

    state = tmp_path / "state"
    with run_server(state, tokens=tokens.path, max_concurrent=2, eager=True) as server:
        _until(lambda: _warm(state) >= 2, "two warm job processes")
        with client(server, tokens.submitter) as c:
            long = c.submit(_WHOLE_CLUSTER.replace("ROUNDS", "300")).id
            _until(lambda: c.get(long).rounds_completed >= 1, "the first job's rounds")
            ids = [long, c.submit(_WHOLE_CLUSTER.replace("ROUNDS", "1")).id]
            _until(lambda: all(c.get(i).state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED)
                               for i in ids), "both jobs to end")
            jobs = [c.get(job_id) for job_id in ids]
        logs = [(state / "jobs" / job_id / "job.log").read_text(errors="replace")
                for job_id in ids]

    assert [jobs_pb2.JobState.Name(job.state) for job in jobs] == ["SUCCEEDED"] * 2
    waited = ["waiting for Ray to grant" in log for log in logs]
    assert waited == [False, True]  # the second queued in Ray while the first held the CPUs


def _warm(state: Path) -> int:
    log = state / "service.log"
    return log.read_text(errors="replace").count(" warm in ") if log.exists() else 0


def _until(done: Callable[[], bool], what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:g} s")
        time.sleep(0.2)
