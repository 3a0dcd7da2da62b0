"""Bearer tokens and roles, for every role and every method, over a real socket."""
from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
import yaml

from fedcollab.service.auth import TokenFile, TokensFileError, hash_token, new_token
from fedcollab.service.errors import PermissionDenied, ServiceError, Unauthenticated

from .conftest import TINY_SPEC, Tokens, client


def test_new_token_stores_only_its_hash_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"

    token = new_token(path, name="ci", role="admin")

    text = path.read_text()
    assert token not in text
    [entry] = yaml.safe_load(text)["tokens"]
    assert entry == {"name": "ci", "role": "admin", "sha256": hash_token(token),
                     "id": entry["id"]}
    assert len(entry["id"]) == 16 and int(entry["id"], 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_new_token_refuses_duplicate_name_and_unknown_role(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    new_token(path, name="ci", role="viewer")

    with pytest.raises(TokensFileError, match="exists already"):
        new_token(path, name="ci", role="viewer")
    with pytest.raises(TokensFileError, match="role"):
        new_token(path, name="x", role="root")


def test_token_file_rejects_plain_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens: [{name: ci, role: admin, sha256: hunter2}]\n")

    with pytest.raises(TokensFileError, match="64 hex"):
        TokenFile(path)


def test_token_file_picks_up_new_tokens_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    new_token(path, name="a", role="admin")
    tokens = TokenFile(path)

    later = new_token(path, name="b", role="viewer")

    assert tokens.authenticate(later).name == "b"


def test_token_priority_and_quota_survive_another_token_being_added(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    vip = new_token(path, name="vip", role="submitter", priority=7, max_running=2)

    new_token(path, name="later", role="viewer")  # rewrites the file
    caller = TokenFile(path).authenticate(vip)

    assert (caller.priority, caller.max_running) == (7, 2)


@pytest.mark.parametrize("entry", ["priority: high", "max_running: -1", "max_running: true"])
def test_token_file_rejects_bad_priority_or_quota(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens: [{{name: ci, role: admin, sha256: {'a' * 64}, {entry}}}]\n")

    with pytest.raises(TokensFileError, match=entry.split(":")[0]):
        TokenFile(path)


# ---------------------------------------------------------------- over gRPC

def test_submit_carries_the_tokens_priority_and_running_quota(queue_server: Any,
                                                              tokens: Tokens) -> None:
    vip = new_token(tokens.path, name="vip-submitter", role="submitter", priority=7,
                    max_running=1)

    with client(queue_server, vip) as c:
        job_id = c.submit(TINY_SPEC).id
    stored = queue_server.store.get(job_id)

    assert stored.priority == 7
    assert stored.params["max_running"] == 1

def _calls(job_id: str) -> dict[str, Callable[[Any], Any]]:
    return {
        "SubmitJob": lambda c: c.submit(TINY_SPEC),
        "GradeJob": lambda c: c.grade(TINY_SPEC),
        "GetJob": lambda c: c.get(job_id),
        "ListJobs": lambda c: c.list(),
        "WatchJob": lambda c: next(iter(c.watch(job_id))),
        "CancelJob": lambda c: c.cancel(job_id),
        "FetchArtifact": lambda c: c.fetch(job_id, "spec.yaml", Path("/nonexistent-dir/x")),
    }


@pytest.fixture(scope="module")
def alice_job(queue_server: Any, tokens: Tokens) -> str:
    return str(client(queue_server, tokens.submitter).submit(TINY_SPEC).id)


@pytest.mark.parametrize("method", list(_calls("x")))
@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_auth_missing_or_wrong_token_is_unauthenticated(queue_server: Any, alice_job: str,
                                                        method: str, token: str | None) -> None:
    with pytest.raises(Unauthenticated):
        _calls(alice_job)[method](client(queue_server, token))


@pytest.mark.parametrize("method", ["SubmitJob", "GradeJob", "CancelJob"])
def test_auth_viewer_cannot_change_anything(queue_server: Any, tokens: Tokens, alice_job: str,
                                            method: str) -> None:
    with pytest.raises(PermissionDenied):
        _calls(alice_job)[method](client(queue_server, tokens.viewer))


@pytest.mark.parametrize("method", ["GetJob", "WatchJob", "CancelJob", "FetchArtifact"])
def test_auth_submitter_cannot_touch_another_submitters_job(
        queue_server: Any, tokens: Tokens, alice_job: str, method: str) -> None:
    with pytest.raises(PermissionDenied):
        _calls(alice_job)[method](client(queue_server, tokens.other))


def test_auth_submitter_lists_only_its_own_jobs(queue_server: Any, tokens: Tokens,
                                                alice_job: str) -> None:
    client(queue_server, tokens.other).submit(TINY_SPEC)

    mine = client(queue_server, tokens.submitter).list(page_size=500).jobs
    everyone = client(queue_server, tokens.viewer).list(page_size=500).jobs

    assert {j.owner for j in mine} == {"alice"}
    assert {"alice", "bob"} <= {j.owner for j in everyone}


@pytest.mark.parametrize("role", ["admin", "submitter", "viewer"])
def test_auth_every_role_reads_what_it_may(queue_server: Any, tokens: Tokens, alice_job: str,
                                           role: str) -> None:
    token = {"admin": tokens.admin, "submitter": tokens.submitter, "viewer": tokens.viewer}[role]
    c = client(queue_server, token)

    job = c.get(alice_job)
    first = next(iter(c.watch(alice_job)))

    assert job.id == first.job.id == alice_job
    assert any(j.id == alice_job for j in c.list(page_size=500).jobs)


@pytest.mark.parametrize("role", ["admin", "submitter"])
def test_auth_writers_submit_grade_and_cancel(queue_server: Any, tokens: Tokens,
                                              role: str) -> None:
    c = client(queue_server, tokens.admin if role == "admin" else tokens.submitter)

    run, grade = c.submit(TINY_SPEC), c.grade(TINY_SPEC)
    cancelled = c.cancel(run.id)

    assert (run.kind, grade.kind) == ("run", "grade")
    assert cancelled.state == 5  # CANCELLED


def test_auth_admin_cancels_anyones_job(queue_server: Any, tokens: Tokens) -> None:
    job = client(queue_server, tokens.other).submit(TINY_SPEC)

    assert client(queue_server, tokens.admin).cancel(job.id).state == 5


def test_auth_health_and_reflection_answer_without_token(queue_server: Any) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(queue_server.address)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="fedcollab.v1.JobService"), timeout=10)
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for r in replies for s in r.list_services_response.service}

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "fedcollab.v1.JobService" in names


def test_auth_errors_are_service_errors(queue_server: Any) -> None:
    with pytest.raises(ServiceError, match="missing token"):
        client(queue_server, None).list()
