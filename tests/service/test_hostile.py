"""Hostile tenants against a real service over a socket, with a real sqlite store.

Each refusal has the right status code and leaves nothing read, run or stored: the
store's job count is the same before and after, modules named by a refused spec
were never imported, and no message quotes a file or says whether a path exists
outside the caller's data roots.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from fedcollab._proto.fedcollab.v1 import jobs_pb2
from fedcollab.service.auth import new_token, revoke_token
from fedcollab.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from fedcollab.service.limits import LimitsConfig

from .conftest import TINY_SPEC, client

SECRET = "SECRET_CREDENTIAL_7f3a"

FILE_SPEC = """\
name: tenant-file
seed: 0
task: {{dataset: file, model: {model}, path: {path!r}, label_column: y}}
rounds: 2
participants:
  - {{name: community, role: community, count: 2, sharing: open, partition: {{kind: iid}}}}
"""


def _csv(path: Path, header: str = "a,b,y") -> Path:
    rows = [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(80)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@dataclass
class World:
    server: Any
    tokens_path: Path
    alice: str  # submitter, data root alice/
    bob: str  # submitter, data root bob/
    viewer: str
    admin: str
    alice_root: Path
    bob_file: Path
    outside: Path
    modules: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from fedcollab.service.server import run_server

    base = tmp_path_factory.mktemp("hostile")
    alice_root, bob_root = base / "alice", base / "bob"
    alice_root.mkdir()
    bob_root.mkdir()
    _csv(alice_root / "good.csv")
    _csv(alice_root / "leaky.csv", header=f"a,{SECRET},y")
    bob_file = _csv(bob_root / "private.csv", header=f"a,{SECRET},y")
    outside = _csv(base / "outside.csv")
    (alice_root / "link.csv").symlink_to(bob_file)
    (alice_root / "linkdir").symlink_to(bob_root, target_is_directory=True)
    modules = base / "modules"  # on the service's sys.path: importing writes a marker
    (modules / "evilpkg").mkdir(parents=True)
    for name in ("evilpkg/__init__.py", "evilmod.py"):
        (modules / name).write_text(
            f"open({str(base / 'imported')!r} + '-' + __name__, 'w').close()\n"
            "def build():\n    return None\n"
        )
    sys.path.insert(0, str(modules))
    tokens = base / "tokens.yaml"
    w = dict(
        alice=new_token(tokens, name="alice", role="submitter", data_roots=[str(alice_root)]),
        bob=new_token(tokens, name="bob", role="submitter", data_roots=[str(bob_root)]),
        viewer=new_token(tokens, name="eve", role="viewer"),
        admin=new_token(tokens, name="root", role="admin"),
    )
    limits = LimitsConfig(
        watch_per_token=16, watch_total=64, queued_per_token=5, submits_per_minute=10_000
    )
    try:
        with run_server(
            base / "state",
            tokens=tokens,
            max_concurrent=0,
            limits=limits,
            allow_model_modules=("evilpkg",),
        ) as server:
            yield World(
                server,
                tokens,
                alice_root=alice_root,
                bob_file=bob_file,
                outside=outside,
                modules=modules,
                **w,
            )
    finally:
        sys.path.remove(str(modules))


def _count(world: World) -> int:
    return int(world.server.store.count())


def _refused(world: World, token: str, spec: str, error: type[Exception]) -> str:
    before = _count(world)
    with pytest.raises(error) as caught:
        client(world.server, token).submit(spec)
    assert _count(world) == before, "a refused submit stored a job"
    return str(caught.value)


# ---------------------------------------------------------------- data roots
def test_path_inside_own_root_is_accepted_and_stored_resolved(world: World) -> None:
    c = client(world.server, world.alice)
    job = c.submit(FILE_SPEC.format(model="mlp", path="good.csv"))

    stored = world.server.store.spec(job.id)
    record = world.server.store.get(job.id)

    assert str(world.alice_root / "good.csv") in stored
    assert record.params["data_roots"] == [str(world.alice_root)]
    c.cancel(job.id)


@pytest.mark.parametrize(
    "given",
    [
        "{bob}",
        "{outside}",
        "../bob/private.csv",
        "link.csv",
        "linkdir/private.csv",
        "./good.csv",
        "{alice_root}/../bob/private.csv",
        "does-not-exist.csv",
        "/nonexistent/really.csv",
    ],
)
def test_path_outside_roots_missing_or_linked_gets_one_answer(world: World, given: str) -> None:
    path = given.format(bob=world.bob_file, outside=world.outside, alice_root=world.alice_root)

    message = _refused(
        world, world.alice, FILE_SPEC.format(model="mlp", path=path), PermissionDenied
    )
    missing = _refused(
        world, world.alice, FILE_SPEC.format(model="mlp", path="nope.csv"), PermissionDenied
    )

    assert message.replace(repr(path), "P") == missing.replace(repr("nope.csv"), "P")
    assert SECRET not in message


def test_file_content_is_never_quoted_in_errors(world: World) -> None:
    spec = FILE_SPEC.format(model="mlp", path="leaky.csv").replace(
        "label_column: y", "label_column: nope"
    )

    message = _refused(world, world.alice, spec, InvalidArgument)

    assert SECRET not in message and "leaky.csv" in message


def test_token_without_roots_reads_no_file(world: World) -> None:
    message = _refused(
        world, world.admin, FILE_SPEC.format(model="mlp", path=str(world.outside)), PermissionDenied
    )

    assert "no data roots" in message


# ---------------------------------------------------------------- model allowlist
@pytest.mark.parametrize(
    "model", ["evilmod:build", "tempfile:mkdtemp", "os:getcwd", "evilmodx.sub:build"]
)
def test_model_outside_allowlist_is_refused_and_never_imported(world: World, model: str) -> None:
    before = set(sys.modules)

    message = _refused(
        world, world.alice, TINY_SPEC.replace("model: mlp", f"model: '{model}'"), PermissionDenied
    )

    assert "allowlist" in message
    assert not (world.modules.parent / "imported-evilmod").exists()
    assert set(sys.modules) - before <= {
        m for m in set(sys.modules) - before if m.startswith("fedcollab")
    }


def test_allowlisted_model_is_accepted_without_importing_it(world: World) -> None:
    c = client(world.server, world.alice)

    job = c.submit(TINY_SPEC.replace("model: mlp", "model: 'evilpkg:build'"))

    assert "evilpkg" not in sys.modules
    assert not (world.modules.parent / "imported-evilpkg").exists()
    c.cancel(job.id)


# ---------------------------------------------------------------- bounded requests
def test_alias_bomb_is_invalid_argument_at_once(world: World) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]"
        for i in range(8)
    ]
    t0 = time.perf_counter()

    message = _refused(world, world.alice, TINY_SPEC + "\n".join(lines) + "\n", InvalidArgument)

    assert time.perf_counter() - t0 < 2.0 and len(message) < 300
    assert "anchor" in message


def test_duplicate_key_is_invalid_argument(world: World) -> None:
    message = _refused(world, world.alice, TINY_SPEC + "rounds: 50\n", InvalidArgument)

    assert "duplicate key 'rounds'" in message


def test_2000_watch_streams_from_one_token_leave_admin_and_health_answering(world: World) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedcollab._proto.fedcollab.v1 import jobs_pb2_grpc

    admin = client(world.server, world.admin)
    job = admin.submit(TINY_SPEC)  # stays QUEUED: watchers wait for news
    viewer = (("authorization", f"Bearer {world.viewer}"),)
    root = (("authorization", f"Bearer {world.admin}"),)

    async def flood() -> tuple[list[Any], Any, Any, Any]:
        channels = [
            grpc.aio.insecure_channel(
                world.server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(20)
        ]  # 20 connections
        calls = [
            jobs_pb2_grpc.JobServiceStub(channels[i % 20]).WatchJob(
                jobs_pb2.WatchJobRequest(id=job.id), metadata=viewer
            )
            for i in range(2000)
        ]

        async def first(call: Any) -> Any:
            try:
                await call.read()
                return "open"
            except grpc.RpcError as err:
                return (err.code(), err.details())

        try:
            results = await asyncio.gather(*(first(c) for c in calls))
            async with grpc.aio.insecure_channel(world.server.address) as ch:
                health = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="fedcollab.v1.JobService"), timeout=5
                )
                got = await jobs_pb2_grpc.JobServiceStub(ch).GetJob(
                    jobs_pb2.GetJobRequest(id=job.id), metadata=root, timeout=5
                )
                watched = (
                    await jobs_pb2_grpc.JobServiceStub(ch)
                    .WatchJob(jobs_pb2.WatchJobRequest(id=job.id), metadata=root, timeout=5)
                    .read()
                )
        finally:
            for c in calls:
                c.cancel()
            for ch in channels:
                await ch.close()
        return results, health, got, watched

    results, health, got, watched = asyncio.run(flood())

    refused = [r for r in results if r != "open"]
    assert results.count("open") == 16 and len(refused) == 1984
    assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "--max-watch-per-token" in refused[0][1]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert got.id == watched.job.id == job.id
    admin.cancel(job.id)


def test_100_queued_jobs_from_one_token_stop_at_its_limit(world: World) -> None:
    bob = client(world.server, world.bob)
    accepted, refused = [], []
    for _ in range(100):
        try:
            accepted.append(bob.submit(TINY_SPEC).id)
        except ResourceExhausted as err:
            refused.append(str(err))

    other = client(world.server, world.alice).submit(TINY_SPEC)

    assert len(accepted) == 5 and len(refused) == 95
    assert "--max-queued-per-token" in refused[0]
    assert other.id not in accepted
    for job_id in accepted + [other.id]:
        client(world.server, world.admin).cancel(job_id)


# ---------------------------------------------------------------- tokens
@pytest.fixture()
def own_server(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    from fedcollab.service.server import run_server

    tokens = tmp_path / "tokens.yaml"
    new_token(tokens, name="root", role="admin")
    with run_server(tmp_path / "state", tokens=tokens, max_concurrent=0) as server:
        yield server, tokens


def _touch_later(path: Path) -> None:
    """Make sure the service sees a change (mtime granularity)."""
    later = time.time() + 2
    os.utime(path, (later, later))


def test_revoked_token_is_refused_on_its_next_call(own_server: tuple[Any, Path]) -> None:
    server, tokens = own_server
    token = new_token(tokens, name="ci", role="submitter")
    client(server, token).list()

    revoke_token(tokens, name="ci")
    _touch_later(tokens)

    with pytest.raises(Unauthenticated):
        client(server, token).list()


def test_corrupted_tokens_file_fails_closed_then_recovers(
    own_server: tuple[Any, Path], caplog: Any
) -> None:
    server, tokens = own_server
    token = new_token(tokens, name="ci", role="submitter")
    good = tokens.read_text()

    tokens.write_text("tokens: [{name: ci, role: submitter, sha256: ")
    _touch_later(tokens)
    with pytest.raises(Unauthenticated, match="tokens file"):
        client(server, token).list()
    tokens.unlink()
    with pytest.raises(Unauthenticated, match="tokens file"):
        client(server, token).list()
    tokens.write_text(good)
    _touch_later(tokens)

    assert client(server, token).list() is not None
    assert sum("every call is refused" in r.getMessage() for r in caplog.records) == 2


def test_expired_token_is_refused(own_server: tuple[Any, Path]) -> None:
    import yaml

    server, tokens = own_server
    token = new_token(tokens, name="brief", role="viewer", expires_in=3600)
    client(server, token).list()
    data = yaml.safe_load(tokens.read_text())
    for entry in data["tokens"]:
        if entry["name"] == "brief":
            entry["expires"] = int(time.time()) - 1
    tokens.write_text(yaml.safe_dump(data))
    _touch_later(tokens)

    with pytest.raises(Unauthenticated, match="expired"):
        client(server, token).list()


def test_reissued_name_owns_nothing_old(own_server: tuple[Any, Path]) -> None:
    server, tokens = own_server
    first = new_token(tokens, name="ci", role="submitter")
    old = client(server, first).submit(TINY_SPEC).id
    revoke_token(tokens, name="ci")
    second = new_token(tokens, name="ci", role="submitter")
    _touch_later(tokens)

    with pytest.raises(PermissionDenied):
        client(server, second).get(old)
    assert client(server, second).list().jobs == []


# ---------------------------------------------------------------- files and the state dir
def test_state_files_are_private(own_server: tuple[Any, Path]) -> None:
    server, tokens = own_server
    client(server, new_token(tokens, name="w", role="submitter")).submit(TINY_SPEC)
    state = server.state_dir

    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in [state, state / "jobs", tokens, *state.glob("jobs.sqlite*")]
    }

    assert modes.pop(state.name) == modes.pop("jobs") == 0o700
    assert set(modes.values()) == {0o600} and "jobs.sqlite" in modes


def test_second_service_on_a_state_dir_is_refused_and_touches_nothing(
    own_server: tuple[Any, Path],
) -> None:
    from fedcollab.service.server import JobServer, ServeConfig

    server, tokens = own_server
    state = server.state_dir
    before = {p: p.stat().st_mtime_ns for p in state.rglob("*")}

    with pytest.raises(FailedPrecondition, match="in use by another fedcollab serve"):
        JobServer(ServeConfig(state_dir=state, listen="127.0.0.1:0", tokens=tokens))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedcollab.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state),
            "--tokens",
            str(tokens),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "in use" in done.stderr
    assert {p: p.stat().st_mtime_ns for p in state.rglob("*")} == before


def test_fetch_refuses_a_hard_link(own_server: tuple[Any, Path], tmp_path: Path) -> None:
    server, tokens = own_server
    c = client(server, new_token(tokens, name="f", role="admin"))
    job = c.submit(TINY_SPEC)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    run = server.state_dir / "jobs" / job.id / "run"
    run.mkdir(parents=True)
    os.link(secret, run / "summary.json")

    with pytest.raises(InvalidArgument, match="one link"):
        c.fetch(job.id, "summary.json", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists() or SECRET not in (tmp_path / "out.json").read_text()


def test_release_key_outside_roots_is_refused_and_never_read(world: World) -> None:
    spec = TINY_SPEC.replace(
        "release: {sign: true}", f"release: {{sign: true, key: {str(world.bob_file)!r}}}"
    )

    message = _refused(world, world.alice, spec, PermissionDenied)

    assert SECRET not in message


@pytest.mark.parametrize("override", ["task.path", "task", "release.key", "task.model"])
def test_grade_mix_may_not_reach_files_or_code_through_overrides(
    world: World, override: str
) -> None:
    spec = TINY_SPEC + (
        f"grading: {{mixes: [{{name: sneaky, overrides: "
        f"{{{override}: {str(world.bob_file)!r}}}}}]}}\n"
    )
    before = _count(world)

    with pytest.raises(PermissionDenied, match="may not change task or release"):
        client(world.server, world.alice).grade(spec)
    assert _count(world) == before
