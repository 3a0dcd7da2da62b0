"""The service's CLI commands: output contract, exit codes, no TensorFlow or Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedcollab.cli import main

from .conftest import TINY_SPEC, Tokens

CLIENT_COMMANDS = ["submit", "jobs", "status", "watch", "logs", "cancel", "fetch", "token", "certs",
                   "grade"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcollab.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("command", CLIENT_COMMANDS + ["serve"])
def test_cli_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])

    assert done.value.code == 0
    assert "example:\n  fedcollab" in capsys.readouterr().out


def test_cli_client_commands_import_neither_tensorflow_nor_ray(
        queue_server: Any, tokens: Tokens, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    script = f"""
import sys
from fedcollab.cli import main
base = ["--server", {queue_server.address!r}, "--token", {tokens.admin!r}]
codes = [main(["submit", {str(spec)!r}, *base]), main(["jobs", *base]),
         main(["token", "new", "--name", "x", "--role", "viewer", "--tokens",
               {str(tmp_path / 't.yaml')!r}]),
         main(["certs", "init", "--dir", {str(tmp_path / 'pki')!r}])]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "ray", "keras"))
print("CODES", codes, "HEAVY", heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)

    assert "CODES [0, 0, 0, 0] HEAVY []" in done.stdout, done.stdout + done.stderr


def test_cli_submit_prints_the_id_alone_and_status_json_has_the_contract_keys(
        queue_server: Any, tokens: Tokens, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    env = {"FEDCOLLAB_SERVER": queue_server.address, "FEDCOLLAB_TOKEN": tokens.submitter}

    submitted = _run("submit", str(spec), "--set", "rounds=4", env=env)
    job_id = submitted.stdout.strip()
    status = _run("status", job_id, "--json", env=env)
    info = json.loads(status.stdout)

    assert submitted.returncode == 0 and submitted.stdout == job_id + "\n"
    assert {"id", "state", "rounds_completed", "rounds"} <= set(info)
    assert (info["id"], info["state"], info["rounds"], info["owner"]) == \
        (job_id, "QUEUED", 4, "alice")


def test_cli_cancel_then_jobs_lists_it(queue_server: Any, tokens: Tokens, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    env = {"FEDCOLLAB_SERVER": queue_server.address, "FEDCOLLAB_TOKEN": tokens.admin}
    job_id = _run("submit", str(spec), env=env).stdout.strip()

    cancelled = _run("cancel", job_id, env=env)
    listed = _run("jobs", "--state", "CANCELLED", "--json", env=env)

    assert cancelled.stdout.strip() == f"{job_id} CANCELLED"
    assert job_id in {json.loads(x)["id"] for x in listed.stdout.splitlines()}


@pytest.mark.parametrize("args,code,needle", [
    (["status", "0123456789ab"], 2, "no job"),
    (["submit", "does-not-exist.yaml"], 2, "no such file"),
    (["status", "x", "--token", "wrong"], 1, "unknown token"),
    (["status", "x", "--server", "127.0.0.1:1"], 1, "cannot reach the job service"),
    # reconnecting is for a service that went away, not one never reached (a typo):
    # at once, not after --reconnect's 60 s
    (["watch", "x", "--server", "127.0.0.1:1"], 1, "cannot reach the job service"),
    (["watch", "x", "--reconnect", "-1"], 2, "--reconnect -1: give seconds >= 0"),
])
def test_cli_errors_are_one_line_with_exit_code(queue_server: Any, tokens: Tokens,
                                                args: list[str], code: int, needle: str) -> None:
    env = {"FEDCOLLAB_SERVER": queue_server.address, "FEDCOLLAB_TOKEN": tokens.admin}

    done = _run(*args, env=env)

    assert done.returncode == code
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cli_token_new_prints_token_once_and_stores_hash(tmp_path: Path) -> None:
    done = _run("token", "new", "--name", "ci", "--role", "admin", "--tokens",
                str(tmp_path / "tokens.yaml"))
    token = done.stdout.strip()

    assert done.returncode == 0 and len(token) >= 32
    assert token not in (tmp_path / "tokens.yaml").read_text()


def test_cli_token_expiry_data_roots_and_revoke(tmp_path: Path) -> None:
    import time

    import yaml

    path = tmp_path / "tokens.yaml"
    made = _run("token", "new", "--name", "team", "--role", "submitter", "--tokens", str(path),
                "--expires-in", "2d", "--data-root", str(tmp_path))
    [entry] = yaml.safe_load(path.read_text())["tokens"]
    revoked = _run("token", "revoke", "--name", "team", "--tokens", str(path))
    again = _run("token", "revoke", "--name", "team", "--tokens", str(path))
    bad = _run("token", "new", "--name", "x", "--role", "viewer", "--tokens", str(path),
               "--expires-in", "soon")

    assert made.returncode == 0 and revoked.returncode == 0
    assert 2 * 86400 - 60 < entry["expires"] - time.time() <= 2 * 86400 + 1
    assert entry["data_roots"] == [str(tmp_path)]
    assert yaml.safe_load(path.read_text())["tokens"] == []
    assert again.returncode == 2 and "no token named 'team'" in again.stderr
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_cli_serve_beyond_loopback_without_tokens_is_refused(tmp_path: Path) -> None:
    done = _run("serve", "--listen", "0.0.0.0:0", "--state-dir", str(tmp_path))

    assert done.returncode == 2
    assert "needs --tokens" in done.stderr


def test_submit_with_same_idempotency_key_returns_same_job(queue_server: Any,
                                                           tokens: Tokens) -> None:
    from .conftest import client

    c = client(queue_server, tokens.submitter)

    first = c.submit(TINY_SPEC, idempotency_key="retry-1")
    again = c.submit(TINY_SPEC, idempotency_key="retry-1")
    other = c.submit(TINY_SPEC, idempotency_key="retry-2")

    assert first.id == again.id != other.id
