"""Jobs that each want every CPU of the service's Ray: one submitted while the other
runs queues in Ray for its reservation instead of sharing the cores, and both
succeed; of two waiting, the higher priority is granted the CPUs first, whichever
asked first. Real service over loopback, real warm job processes, the service's Ray."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from fedcollab._proto.fedcollab.v1 import jobs_pb2
from fedcollab.service.auth import new_token
from fedcollab.service.reservations import STATE_FILE

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


def test_service_later_high_priority_job_gets_freed_cpus_before_earlier_low_one(
        tmp_path: Path) -> None:
    from fedcollab.service.server import run_server

    path = tmp_path / "tokens.yaml"
    holder = new_token(path, name="holder", role="submitter")
    low = new_token(path, name="low", role="submitter", priority=0)
    high = new_token(path, name="high", role="submitter", priority=10)
    state = tmp_path / "state"

    def reserve_state(job_id: str) -> str:
        path = state / "jobs" / job_id / STATE_FILE
        return path.read_text().strip() if path.exists() else ""

    def log(job_id: str) -> str:
        path = state / "jobs" / job_id / "job.log"
        return path.read_text(errors="replace") if path.exists() else ""

    with run_server(state, tokens=path, max_concurrent=3, eager=True) as server, \
            client(server, holder) as h, client(server, low) as lo, client(server, high) as hi:
        _until(lambda: _warm(state) >= 1, "a warm job process")
        held = h.submit(_WHOLE_CLUSTER.replace("ROUNDS", "300")).id
        _until(lambda: h.get(held).rounds_completed >= 1, "the holding job's rounds")
        first = lo.submit(_WHOLE_CLUSTER.replace("ROUNDS", "1")).id
        _until(lambda: "waiting for Ray to grant" in log(first), "the low job waiting in Ray")
        later = hi.submit(_WHOLE_CLUSTER.replace("ROUNDS", "1")).id
        _until(lambda: "waiting for Ray to grant" in log(later), "the high job waiting")
        # only the high job has a request in Ray's queue: the low one gave its place back
        _until(lambda: (reserve_state(first), reserve_state(later)) == ("waiting", "asking"),
               "the low job to withdraw its request and the high one to ask", timeout=60.0)
        h.cancel(held)  # its CPUs free up: both want them
        _until(lambda: all(c.get(i).state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED)
                           for c, i in ((lo, first), (hi, later))), "both jobs to end")
        low_job, high_job = lo.get(first), hi.get(later)

    assert [jobs_pb2.JobState.Name(j.state) for j in (low_job, high_job)] == ["SUCCEEDED"] * 2
    # each wants every CPU, so they ran one after the other: the later, higher one first
    assert high_job.finished_unix < low_job.finished_unix


def _warm(state: Path) -> int:
    log = state / "service.log"
    return log.read_text(errors="replace").count(" warm in ") if log.exists() else 0


def _until(done: Callable[[], bool], what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:g} s")
        time.sleep(0.2)
