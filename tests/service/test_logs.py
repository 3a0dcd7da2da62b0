"""StreamJobLogs and `fedcollab logs`: a job's job.log over real gRPC, from an offset,
followed until the job ends, refused as FetchArtifact refuses (owner, links)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from fedcollab.service.artifacts import LOG_READ_BYTES
from fedcollab.service.errors import InvalidArgument, NotFound, PermissionDenied

from .conftest import TINY_SPEC, Tokens, client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[Any]:
    """Queue only (--max-concurrent 0): the test writes job.log as a job process would."""
    from fedcollab.service.server import run_server

    with run_server(tmp_path_factory.mktemp("state"), tokens=tokens.path,
                    max_concurrent=0) as running:
        yield running


def _queued_job(server: Any, token: str) -> tuple[str, Path]:
    with client(server, token) as c:
        job_id = c.submit(TINY_SPEC).id
    job_dir = server.state_dir / "jobs" / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    return job_id, job_dir / "job.log"


def _logs(server: Any, token: str, job_id: str, **kwargs: Any) -> bytes:
    with client(server, token) as c:
        return b"".join(c.logs(job_id, **kwargs))


def test_logs_send_job_log_from_an_offset(server: Any, tokens: Tokens) -> None:
    job_id, log = _queued_job(server, tokens.submitter)
    log.write_bytes(b"round 1\n(WorkerActor pid=42) hello from a worker\n")

    whole = _logs(server, tokens.submitter, job_id)
    tail = _logs(server, tokens.submitter, job_id, offset=8)
    past_end = _logs(server, tokens.submitter, job_id, offset=10_000)

    assert whole == log.read_bytes()
    assert tail == b"(WorkerActor pid=42) hello from a worker\n"
    assert past_end == b""


def test_logs_larger_than_one_read_arrive_whole_and_in_order(server: Any,
                                                              tokens: Tokens) -> None:
    job_id, log = _queued_job(server, tokens.submitter)
    content = b"".join(b"%09d\n" % i for i in range(LOG_READ_BYTES // 10 * 3))  # 3 reads
    log.write_bytes(content)

    assert _logs(server, tokens.submitter, job_id) == content


def test_logs_follow_sends_new_output_until_the_job_ends(server: Any, tokens: Tokens) -> None:
    job_id, log = _queued_job(server, tokens.submitter)  # no job.log yet: follow waits
    got: list[tuple[float, bytes]] = []

    def follow() -> None:
        with client(server, tokens.submitter) as c:
            for data in c.logs(job_id, follow=True):
                got.append((time.monotonic(), data))

    follower = threading.Thread(target=follow)
    follower.start()
    for i in range(3):
        time.sleep(0.3)
        with log.open("ab") as out:
            out.write(b"line %d\n" % i)
    time.sleep(1.5)  # past one poll
    cancelled_at = time.monotonic()
    with client(server, tokens.submitter) as c:
        c.cancel(job_id)  # QUEUED -> CANCELLED: the job ends, the stream with it
    follower.join(timeout=30)

    assert not follower.is_alive()
    assert b"".join(data for _, data in got) == b"line 0\nline 1\nline 2\n"
    assert got[0][0] < cancelled_at  # streamed while the job was still going


def test_logs_of_a_job_without_a_log_are_not_found(server: Any, tokens: Tokens) -> None:
    job_id, _ = _queued_job(server, tokens.submitter)

    with pytest.raises(NotFound, match="job.log"):
        _logs(server, tokens.submitter, job_id)


def test_logs_of_another_submitters_job_are_refused(server: Any, tokens: Tokens) -> None:
    job_id, log = _queued_job(server, tokens.submitter)
    log.write_bytes(b"private\n")

    with pytest.raises(PermissionDenied):
        _logs(server, tokens.other, job_id)


def test_logs_negative_offset_is_invalid(server: Any, tokens: Tokens) -> None:
    job_id, log = _queued_job(server, tokens.submitter)
    log.write_bytes(b"x\n")

    with pytest.raises(InvalidArgument, match="offset"):
        _logs(server, tokens.submitter, job_id, offset=-1)


def test_logs_refuse_a_symlinked_log(server: Any, tokens: Tokens, tmp_path: Path) -> None:
    job_id, log = _queued_job(server, tokens.submitter)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours\n")
    log.symlink_to(secret)

    with pytest.raises(InvalidArgument, match="symbolic link"):
        _logs(server, tokens.submitter, job_id)


def test_cli_logs_prints_the_log_bytes(server: Any, tokens: Tokens) -> None:
    job_id, log = _queued_job(server, tokens.submitter)
    log.write_bytes(b"(WorkerActor pid=7) caf\xc3\xa9\n")

    done = subprocess.run([sys.executable, "-m", "fedcollab.cli", "logs", job_id, "--offset",
                           "20"], capture_output=True, timeout=120,
                          env={**os.environ, "FEDCOLLAB_SERVER": server.address,
                               "FEDCOLLAB_TOKEN": tokens.submitter})

    assert done.returncode == 0, done.stderr
    assert done.stdout == "café\n".encode()
