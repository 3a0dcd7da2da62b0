"""Bad input gets the right status code, and never stops the service serving."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedcollab._proto.fedcollab.v1 import jobs_pb2
from fedcollab.service.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

from .conftest import TINY_SPEC, Tokens, client

BAD_SPEC = TINY_SPEC.replace("rounds: 3", "rounds: 0")


def _validate_message(spec_path: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "fedcollab.cli", "validate", str(spec_path)],
                          capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 2
    return done.stderr.strip().removeprefix("fedcollab: error: ")


def test_invalid_spec_is_invalid_argument_with_validates_message(
        queue_server: Any, tokens: Tokens, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SPEC)

    with pytest.raises(InvalidArgument) as caught:
        client(queue_server, tokens.admin).submit(BAD_SPEC)

    assert str(caught.value) == _validate_message(path)


def test_spec_that_is_not_yaml_is_invalid_argument(queue_server: Any, tokens: Tokens) -> None:
    with pytest.raises(InvalidArgument, match="invalid YAML at line"):
        client(queue_server, tokens.admin).submit("name: [unclosed\n  rounds: 3")


def test_oversize_message_is_resource_exhausted(queue_server: Any, tokens: Tokens) -> None:
    huge = TINY_SPEC + "# " + "x" * (2 * 1024 * 1024) + "\n"

    with pytest.raises(ResourceExhausted):
        client(queue_server, tokens.admin).submit(huge)
    assert client(queue_server, tokens.admin).list().next_page_token == ""


def test_oversize_spec_under_message_limit_is_resource_exhausted(
        queue_server: Any, tokens: Tokens) -> None:
    big = TINY_SPEC + "# " + "x" * (300 * 1024) + "\n"

    with pytest.raises(ResourceExhausted, match="limit"):
        client(queue_server, tokens.admin).submit(big)


@pytest.mark.parametrize("call", ["get", "cancel", "watch"])
def test_unknown_job_id_is_not_found(queue_server: Any, tokens: Tokens, call: str) -> None:
    c = client(queue_server, tokens.admin)
    action = {"get": lambda: c.get("0123456789ab"), "cancel": lambda: c.cancel("0123456789ab"),
              "watch": lambda: list(c.watch("0123456789ab"))}[call]

    with pytest.raises(NotFound):
        action()


def test_bad_page_token_is_invalid_argument(queue_server: Any, tokens: Tokens) -> None:
    with pytest.raises(InvalidArgument):
        client(queue_server, tokens.admin).list(page_token="../../x")


# ---------------------------------------------------------------- artifacts

@pytest.fixture(scope="module")
def job_with_files(queue_server: Any, tokens: Tokens) -> str:
    job = client(queue_server, tokens.admin).submit(TINY_SPEC)
    job_dir = queue_server.state_dir / "jobs" / job.id / "run"
    job_dir.mkdir(parents=True)  # the runner makes it when a job starts
    (job_dir / "summary.json").write_text('{"rounds_completed": 3}\n')
    (job_dir / "release").mkdir()
    (job_dir / "release" / "manifest.json").write_text("{}\n")
    (job_dir / "signing-key.pem").write_text("PRIVATE\n")
    (job_dir / "release" / "evil.json").symlink_to("/etc/passwd")
    (job_dir / "plots").symlink_to("/etc")
    return str(job.id)


def test_fetch_named_artifact_is_served(queue_server: Any, tokens: Tokens, job_with_files: str,
                                        tmp_path: Path) -> None:
    written = client(queue_server, tokens.admin).fetch(job_with_files, "summary.json", tmp_path)

    assert [p.read_text() for p in written] == ['{"rounds_completed": 3}\n']


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "release/../../x",
                                  "release\\..\\x", "./summary.json"])
def test_fetch_path_escapes_are_invalid_argument(queue_server: Any, tokens: Tokens,
                                                 job_with_files: str, name: str,
                                                 tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        client(queue_server, tokens.admin).fetch(job_with_files, name, tmp_path / "out")


@pytest.mark.parametrize("name", ["release/evil.json", "release", "plots", "plots/passwd"])
def test_fetch_symlinks_out_of_the_job_are_refused(queue_server: Any, tokens: Tokens,
                                                   job_with_files: str, name: str,
                                                   tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="symbolic link|outside"):
        client(queue_server, tokens.admin).fetch(job_with_files, name, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("name", ["signing-key.pem", "jobs.sqlite", "request.yaml",
                                  "checkpoints/latest.json"])
def test_fetch_files_that_are_not_artifacts_are_not_found(queue_server: Any, tokens: Tokens,
                                                          job_with_files: str, name: str,
                                                          tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        client(queue_server, tokens.admin).fetch(job_with_files, name, tmp_path / "out")


def test_fetch_by_other_submitter_is_permission_denied(queue_server: Any, tokens: Tokens,
                                                       job_with_files: str,
                                                       tmp_path: Path) -> None:
    with pytest.raises(PermissionDenied):
        client(queue_server, tokens.other).fetch(job_with_files, "summary.json", tmp_path)


# ---------------------------------------------------------------- robustness

def test_malformed_protobuf_leaves_service_serving(queue_server: Any, tokens: Tokens) -> None:
    channel = grpc.insecure_channel(queue_server.address)
    raw = channel.unary_unary("/fedcollab.v1.JobService/GetJob",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)

    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\xff\xff\xff\xff\x0f garbage", timeout=10,
            metadata=(("authorization", f"Bearer {tokens.admin}"),))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GetJobRequest" in caught.value.details()
    assert client(queue_server, tokens.admin).list().next_page_token == ""


def test_client_disconnecting_mid_stream_leaves_service_serving(queue_server: Any,
                                                                tokens: Tokens) -> None:
    c = client(queue_server, tokens.admin)
    job = c.submit(TINY_SPEC)
    for _ in range(3):
        stream = c.stub.WatchJob(jobs_pb2.WatchJobRequest(id=job.id),
                                 metadata=(("authorization", f"Bearer {tokens.admin}"),))
        first = next(stream)
        stream.cancel()  # the client goes away while the server waits for news
        assert first.job.id == job.id

    assert c.get(job.id).id == job.id


def test_many_open_watches_do_not_starve_other_calls(queue_server: Any, tokens: Tokens) -> None:
    """A watch waits on the event loop, not in a thread: 200 idle watchers (more than
    any thread pool the service could afford) leave GetJob and SubmitJob answering."""
    c = client(queue_server, tokens.admin)
    job = c.submit(TINY_SPEC)  # stays QUEUED: the watches wait for news that won't come
    metadata = (("authorization", f"Bearer {tokens.admin}"),)
    streams = [c.stub.WatchJob(jobs_pb2.WatchJobRequest(id=job.id), metadata=metadata)
               for _ in range(200)]
    try:
        assert all(next(s).job.id == job.id for s in streams)

        assert c.stub.GetJob(jobs_pb2.GetJobRequest(id=job.id), metadata=metadata,
                             timeout=5).state == jobs_pb2.QUEUED
        assert c.submit(TINY_SPEC).id != job.id
    finally:
        for s in streams:
            s.cancel()
    assert c.get(job.id).id == job.id
