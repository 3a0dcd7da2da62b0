"""Restart safety: SIGKILL the whole service mid-job, start it again, lose nothing.

The service runs as a real subprocess (`fedcollab serve`) in its own process
group; the test kills that group after round 3 is reported, restarts the service
on the same state directory and checks that every job is still there, the
interrupted one resumed from its checkpoint and released weights bit-identical
to an uninterrupted run of the same spec.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from fedcollab._proto.fedcollab.v1 import jobs_pb2
from fedcollab.service.client import JobClient
from fedcollab.service.errors import ServiceError

from .conftest import Tokens

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# All-open community plus a secure group, no private layers: resume is exact today.
RESTART_SPEC = """\
name: restart
seed: 3
task: {dataset: digits, model: mlp}
rounds: 10
local: {epochs: 3, batch_size: 8, optimizer: sgd, learning_rate: 0.05}
participants:
  - {name: community, role: community, count: 3, sharing: open, partition: {kind: iid}}
  - {name: vendor, role: vendor, count: 3, sharing: secure, data_fraction: 0.3,
     partition: {kind: iid}}
secure: {protocol: secaggplus, threshold: 0.67, min_group: 3}
resources: {workers: 1}
release: {sign: true}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`fedcollab serve` as a subprocess in its own process group."""

    def __init__(self, state: Path, tokens: Path) -> None:
        self.state, self.tokens = state, tokens
        self.address = f"127.0.0.1:{_free_port()}"
        self.proc: Any = None

    def start(self) -> None:
        log = open(self.state.parent / f"{self.state.name}-serve.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedcollab.cli", "serve", "--listen", self.address,
             "--state-dir", str(self.state), "--tokens", str(self.tokens),
             "--max-concurrent", "1"],
            stdout=log, stderr=log, start_new_session=True, cwd=ROOT,
            # no spare workers: these tests are about restarts, and each warm job
            # process's spares would import TensorFlow twice more on 2 cores
            env={**os.environ, "PYTHONPATH": str(ROOT), "FEDCOLLAB_SPARE_WORKERS": "0"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                import grpc
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                with grpc.insecure_channel(self.address) as channel:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=2)
                return
            except Exception:  # noqa: BLE001  (not up yet)
                assert self.proc.poll() is None, "the service exited while starting"
                time.sleep(0.3)
        raise AssertionError("the service did not come up")

    def kill_group(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return int(self.proc.wait(timeout))


@pytest.fixture
def service(tmp_path: Path, tokens: Tokens) -> Iterator[Service]:
    svc = Service(tmp_path / "state", tokens.path)
    svc.start()
    try:
        yield svc
    finally:
        if svc.proc.poll() is None:
            svc.terminate()


def _wait_done(c: JobClient, job_id: str, timeout: float = 400) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(job_id)
        if job.state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def _weights_sha(state: Path, job_id: str) -> str:
    manifest = json.loads((state / "jobs" / job_id / "run" / "release" /
                           "manifest.json").read_text())
    return str(manifest["weights_sha256"])


def _kill_after_round(service: Service, c: JobClient, spec: str, after: int,
                      watchers: Optional[list[Any]] = None, token: str = "") -> tuple[str, str]:
    job = c.submit(spec)
    waiting = c.submit(spec.replace("rounds: 10", "rounds: 2"))  # QUEUED behind it
    if watchers is not None:  # `fedcollab watch`, as a user runs it, across the restart
        watchers.append(subprocess.Popen(
            [sys.executable, "-m", "fedcollab.cli", "watch", job.id, "--server",
             service.address, "--token", token, "--reconnect", "180"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}))
    seen = 0
    for event in c.watch(job.id):
        if event.HasField("round"):
            seen = event.round.round
            if seen >= after:
                service.kill_group()
                break
    assert after <= seen < 10, "the job finished before the kill"
    return str(job.id), str(waiting.id)


def _restart_and_compare(service: Service, tokens: Tokens, spec: str, after: int) -> None:
    c = JobClient(service.address, token=tokens.admin)
    watchers: list[Any] = []
    job_id, other_id = _kill_after_round(service, c, spec, after, watchers, tokens.admin)

    service.start()
    c = JobClient(service.address, token=tokens.admin)
    resumed = _wait_done(c, job_id)
    # the watch that was open when the service was killed reconnected and went on from
    # its last round: every round once, in order, and the job's end
    out, err = watchers[0].communicate(timeout=120)
    rounds = [int(line.split()[2].split("/")[0]) for line in err.splitlines()
              if line.startswith(f"{job_id} round ")]
    assert watchers[0].returncode == 0, err[-2000:]
    assert out.strip() == f"{job_id} SUCCEEDED", (out, err[-2000:])
    assert rounds == list(range(1, 11)), err[-2000:]
    assert "reconnecting for up to 180 s" in err, err[-2000:]
    queued = _wait_done(c, other_id)
    fresh = _wait_done(c, c.submit(spec).id)

    assert jobs_pb2.JobState.Name(resumed.state) == "SUCCEEDED", resumed.error
    assert resumed.attempts == 2 and resumed.rounds_completed == 10
    assert jobs_pb2.JobState.Name(queued.state) == "SUCCEEDED" and queued.attempts == 1
    assert {job_id, other_id} <= {j.id for j in c.list(page_size=500).jobs}
    assert _weights_sha(service.state, job_id) == _weights_sha(service.state, fresh.id)


def test_restart_after_sigkill_resumes_with_identical_weights(service: Service,
                                                              tokens: Tokens) -> None:
    """The default job (secure vendor with private layers), SIGKILLed with the whole
    service after round 3: after a restart every job is there and the resumed one
    ends bit-identical to a fresh run; SIGTERM then shuts the service down cleanly."""
    spec = (ROOT / "examples" / "community-vendor.yaml").read_text().replace(
        "rounds: 20", "rounds: 10").replace("name: digits-community-vendor", "name: restart")
    _restart_and_compare(service, tokens, spec, after=3)

    code = service.terminate()
    rows = sqlite3.connect(service.state / "jobs.sqlite").execute(
        "SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()

    assert code == 0
    assert dict(rows) == {"SUCCEEDED": 3}


def test_sigterm_interrupts_running_job_which_resumes_next_start(service: Service,
                                                                 tokens: Tokens) -> None:
    c = JobClient(service.address, token=tokens.admin)
    job = c.submit(RESTART_SPEC.replace("rounds: 10", "rounds: 400"))
    deadline = time.monotonic() + 300
    while c.get(job.id).rounds_completed < 1 and time.monotonic() < deadline:
        time.sleep(0.3)

    code = service.terminate()
    state = sqlite3.connect(service.state / "jobs.sqlite").execute(
        "SELECT state FROM jobs WHERE id=?", (job.id,)).fetchone()[0]

    assert code == 0
    assert state == "QUEUED"  # interrupted, not failed: it resumes on the next start
    with pytest.raises(ServiceError):
        JobClient(service.address, token=tokens.admin, timeout=2).get(job.id)


def _ray_head_pid(service_pid: int) -> int:
    """The service's Ray head process (its child started with our --parent-pid)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fedcollab.service.rayhead" in argv and str(service_pid).encode() in argv:
            return int(entry.name)
    raise AssertionError("the service has no Ray head process")


def _health(address: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fedcollab.v1.JobService"), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_lost_ray_head_is_restarted_and_its_job_resumes_bit_exact(service: Service,
                                                                  tokens: Tokens) -> None:
    """Kill the service's Ray head (and the Ray processes in its group) after round 3:
    health says NOT_SERVING within seconds, then SERVING; the job ends SUCCEEDED with
    the weights of an uninterrupted run."""
    c = JobClient(service.address, token=tokens.admin)
    job = c.submit(RESTART_SPEC)
    for event in c.watch(job.id):
        if event.HasField("round") and event.round.round >= 3:
            break
    head = _ray_head_pid(service.proc.pid)

    os.killpg(head, signal.SIGKILL)
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline and (not seen or seen[-1] != "SERVING"
                                           or "NOT_SERVING" not in seen):
        seen.append(_health(service.address))
        time.sleep(0.1)
    resumed = _wait_done(c, job.id)
    fresh = _wait_done(c, c.submit(RESTART_SPEC).id)

    assert "NOT_SERVING" in seen[:60], seen[:10]  # within about 6 s
    assert seen[-1] == "SERVING"
    assert jobs_pb2.JobState.Name(resumed.state) == "SUCCEEDED", resumed.error
    assert resumed.attempts == 2 and resumed.rounds_completed == 10
    assert _ray_head_pid(service.proc.pid) != head
    assert _weights_sha(service.state, job.id) == _weights_sha(service.state, fresh.id)
