"""Confinement and limits as properties: Hypothesis builds file trees with symlinks
and hard-to-read paths; an independent oracle says what may be read."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fedcollab.service.auth import Caller
from fedcollab.service.errors import PermissionDenied, ResourceExhausted
from fedcollab.service.limits import Limits, LimitsConfig
from fedcollab.service.policy import (
    check_model,
    confine_data_path,
    data_path_refusal,
    normalise_roots,
)

_names = st.sampled_from(["a", "b", "c.csv", "d.npz", "..", ".", "", "x y.csv"])
_entries = st.lists(
    st.tuples(
        st.sampled_from(["root", "other"]),
        st.lists(st.sampled_from(["a", "b"]), max_size=2),
        st.sampled_from(["c.csv", "d.npz", "a", "b"]),
        st.sampled_from(["file", "dir", "link-in", "link-out", "dirlink-out"]),
    ),
    max_size=8,
)


def _build(base: Path, entries: list[tuple[str, list[str], str, str]]) -> None:
    for side, dirs, name, kind in entries:
        parent = base.joinpath(side, *dirs)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            target = parent / name
            if target.exists() or target.is_symlink():
                continue
            if kind == "file":
                target.write_text("x")
            elif kind == "dir":
                target.mkdir()
            elif kind == "link-in":
                target.symlink_to(base / "root" / "c.csv")
            elif kind == "link-out":
                target.symlink_to(base / "other" / "c.csv")
            else:
                target.symlink_to(base / "other", target_is_directory=True)
        except (FileExistsError, NotADirectoryError):
            continue


def _oracle(root: Path, given: str) -> bool:
    """Readable iff a relative path with no '.'/'..' names a regular file below the
    root through real directories only (os.walk never follows links)."""
    if not given or given.startswith("/") or any(p in ("", ".", "..") for p in given.split("/")):
        return False
    allowed = {
        str(Path(d, f).relative_to(root))
        for d, _, files in os.walk(root)
        for f in files
        if not Path(d, f).is_symlink()
    }
    return given in allowed


@settings(max_examples=150, deadline=None)
@given(entries=_entries, parts=st.lists(_names, min_size=1, max_size=4), absolute=st.booleans())
def test_confine_reads_exactly_the_regular_files_below_the_root(
    entries: list[tuple[str, list[str], str, str]], parts: list[str], absolute: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "root").mkdir()
        (base / "other").mkdir()
        (base / "other" / "c.csv").write_text("secret")
        _build(base, entries)
        [root] = normalise_roots([base / "root"])
        given = "/".join(parts)
        text = f"{root}/{given}" if absolute else given

        try:
            found = confine_data_path(text, [root])
        except PermissionDenied as err:
            assert str(err) == str(data_path_refusal(text))  # one answer for every refusal
            assert not _oracle(root, given)
            event("refused")
            return
        event("accepted")

        assert _oracle(root, given)
        assert Path(os.path.realpath(found)) == found and root in found.parents
        assert stat.S_ISREG(os.lstat(found).st_mode)


def test_confine_without_roots_refuses_everything(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_text("x")

    with pytest.raises(PermissionDenied, match="no data roots"):
        confine_data_path(str(tmp_path / "f.csv"), [])


def test_check_model_imports_nothing_and_finds_an_allowed_submodule(tmp_path: Path) -> None:
    package = tmp_path / "teampkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise SystemExit('imported')\n")
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "small.py").write_text("def build():\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        check_model("teampkg.models.small:build", ["mlp"], ["teampkg"])
        with pytest.raises(PermissionDenied, match="not installed"):
            check_model("teampkg.models.missing:build", ["mlp"], ["teampkg"])
        with pytest.raises(PermissionDenied, match="allowlist"):
            check_model("teampkgx:build", ["mlp"], ["teampkg"])
    finally:
        sys.path.remove(str(tmp_path))
    assert "teampkg" not in sys.modules
    check_model("mlp", ["mlp"], [])


def test_submit_rate_is_a_token_bucket_per_token() -> None:
    limits = Limits(LimitsConfig(submits_per_minute=3))
    alice, bob = Caller("alice", "submitter", "a1"), Caller("bob", "submitter", "b1")

    for _ in range(3):
        limits.take_submit(alice)
    with pytest.raises(ResourceExhausted, match="3 per minute"):
        limits.take_submit(alice)
    limits.take_submit(bob)  # another token's bucket is full
    limits.take_submit(Caller("root", "admin", "r1"))


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["a", "b", "admin"]), st.booleans()), max_size=60))
def test_watch_streams_never_exceed_their_limits(ops: list[tuple[str, bool]]) -> None:
    limits = Limits(LimitsConfig(watch_per_token=3, watch_total=4))
    callers = {
        "a": Caller("a", "viewer", "a"),
        "b": Caller("b", "submitter", "b"),
        "admin": Caller("admin", "admin", "admin"),
    }
    held: list[tuple[str, object]] = []
    for who, open_one in ops:
        if open_one:
            ctx = limits.watch_stream(callers[who])
            try:
                ctx.__enter__()
            except ResourceExhausted:
                mine = sum(1 for w, _ in held if w == who)
                shared = sum(1 for w, _ in held if w != "admin")
                assert who != "admin" and (mine >= 3 or shared >= 4)
                continue
            held.append((who, ctx))
        elif held:
            who_closed, ctx = held.pop(0)
            ctx.__exit__(None, None, None)  # type: ignore[attr-defined]
        assert sum(1 for w, _ in held if w != "admin") <= 4
        for name in ("a", "b"):
            assert sum(1 for w, _ in held if w == name) <= 3
            assert limits.streams(callers[name]) == sum(1 for w, _ in held if w == name)
