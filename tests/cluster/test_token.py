"""Where the cluster token comes from (Ray's own order), without a cluster."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedcollab.cluster.connect import (
    ensure_token_file,
    find_token,
    is_loopback,
    use_token_file,
)
from fedcollab.cluster.placement import ClusterError


def test_find_token_env_value_wins_over_path(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("from-file\n")
    token = find_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")})
    assert token is not None and token.value == "from-env" and token.source == "$RAY_AUTH_TOKEN"


def test_find_token_path_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("abc\n")
    token = find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")})
    assert token is not None and token.value == "abc" and "RAY_AUTH_TOKEN_PATH" in token.source
    assert "abc" not in repr(token)


def test_find_token_unreadable_named_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="cannot read the token file"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_find_token_falls_back_to_home_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert find_token({}) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token")
    token = find_token({})
    assert token is not None and token.value == "home-token"


def test_ensure_token_file_creates_secret_0600_once(tmp_path: Path) -> None:
    path = ensure_token_file(tmp_path / "sub" / "token")
    first = path.read_text()
    assert len(first) == 64 and int(first, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token_file(path).read_text() == first


def test_ensure_token_file_makes_a_world_readable_token_0600(tmp_path: Path) -> None:
    """A token ``ray start`` or ``ray.init`` left readable by others (0644) is made
    0600, its value kept: the head printed "mode 0600" for a 0644 file."""
    path = tmp_path / "auth_token"
    path.write_text("a" * 64)
    path.chmod(0o644)
    assert ensure_token_file(path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "a" * 64


def test_use_token_file_sets_path_and_drops_env_value(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t").write_text("x" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "other")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    use_token_file(tmp_path / "t")
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str((tmp_path / "t").resolve())
    assert "RAY_AUTH_TOKEN" not in os.environ


@pytest.mark.parametrize("content", [None, ""])
def test_use_token_file_missing_or_empty_is_one_line(tmp_path: Path,
                                                     content: str | None) -> None:
    path = tmp_path / "t"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClusterError, match="token file"):
        use_token_file(path)


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("localhost", True),
                                           ("::1", True), ("[::1]", True),
                                           ("10.0.0.5", False), ("head.example", False)])
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_resolve_auto_prefers_ray_address_then_recorded_head(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from fedcollab.cluster.connect import resolve_auto

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_auto(tmp_path) == "auto"  # nothing recorded: Ray's own auto
    (tmp_path / "head-1.json").write_text('{"role": "head", "address": "127.0.0.1:6390"}')
    (tmp_path / "worker-2.json").write_text('{"role": "worker", "head": "127.0.0.1:6390"}')
    assert resolve_auto(tmp_path) == "127.0.0.1:6390"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_auto(tmp_path) == "10.0.0.1:6379"


def test_resolve_auto_with_two_recorded_clusters_is_one_line(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from fedcollab.cluster.connect import resolve_auto

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "head-1.json").write_text('{"role": "head", "address": "127.0.0.1:6390"}')
    (tmp_path / "worker-2.json").write_text('{"role": "worker", "head": "10.0.0.9:6379"}')
    with pytest.raises(ClusterError, match="several clusters.*pass --address HOST:PORT"):
        resolve_auto(tmp_path)
