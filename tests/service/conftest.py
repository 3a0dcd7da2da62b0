"""Fixtures for the job service: tokens for every role, servers on loopback port 0."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from fedcollab.service.auth import new_token

TINY_SPEC = """\
name: tiny
seed: 0
task: {dataset: digits, model: mlp}
rounds: 3
participants:
  - {name: community, role: community, count: 4, sharing: open, partition: {kind: iid}}
resources: {workers: 1}
release: {sign: true}
"""


@dataclass(frozen=True)
class Tokens:
    path: Path
    admin: str
    submitter: str
    other: str      # a second submitter
    viewer: str


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    path = tmp_path_factory.mktemp("tokens") / "tokens.yaml"
    return Tokens(path, new_token(path, name="root", role="admin"),
                  new_token(path, name="alice", role="submitter"),
                  new_token(path, name="bob", role="submitter"),
                  new_token(path, name="eve", role="viewer"))


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[Any]:
    """A service that only queues (--max-concurrent 0): the API without running jobs."""
    from fedcollab.service.server import run_server

    with run_server(tmp_path_factory.mktemp("state"), tokens=tokens.path,
                    max_concurrent=0) as server:
        yield server


def client(server: Any, token: str | None = None, **kwargs: Any) -> Any:
    from fedcollab.service.client import JobClient

    return JobClient(server.address, token=token, **kwargs)
