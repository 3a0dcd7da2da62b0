"""Tests for fedcollab.io: atomic writes leave the old file or the new one, never half."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from fedcollab.io import atomic_save_npz, atomic_write_bytes, atomic_write_json, load_npz


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_atomic_write_bytes_new_file_has_content_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"

    atomic_write_bytes(target, b"hello")

    assert target.read_bytes() == b"hello"
    assert _leftovers(tmp_path, {"out.bin"}) == []


def test_atomic_write_bytes_existing_file_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old content, longer than the new")

    atomic_write_bytes(target, b"new")

    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path, {"out.bin"}) == []


def test_atomic_write_bytes_creates_missing_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"

    atomic_write_bytes(target, b"x")

    assert target.read_bytes() == b"x"


def test_atomic_write_bytes_mode_is_applied(tmp_path: Path) -> None:
    target = tmp_path / "secret.pem"

    atomic_write_bytes(target, b"key", mode=0o600)

    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_write_bytes_failed_rename_keeps_old_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)

    # Act
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new")

    # Assert
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"out.bin"}) == []


def test_atomic_write_bytes_failed_write_keeps_old_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def crash(fd: int) -> None:
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", crash)

    with pytest.raises(OSError, match="fsync failed"):
        atomic_write_bytes(target, b"new")

    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"out.bin"}) == []


def test_atomic_write_json_writes_sorted_json_with_numpy_values(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"

    atomic_write_json(target, {"b": np.float32(1.5), "a": np.arange(3), "p": Path("x/y")})

    assert json.loads(target.read_text()) == {"a": [0, 1, 2], "b": 1.5, "p": "x/y"}


def test_atomic_write_json_nan_raises_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("{}")

    with pytest.raises(ValueError):
        atomic_write_json(target, {"loss": float("nan")})

    assert target.read_text() == "{}"


def test_atomic_save_npz_round_trips_arrays_and_meta(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.npz"
    arrays = {"w0": np.arange(6, dtype=np.float32).reshape(2, 3), "w1": np.array([1, 2])}
    meta = {"round": np.int64(4), "name": "job", "nested": {"ok": True}}

    atomic_save_npz(target, arrays, meta=meta)
    loaded, loaded_meta = load_npz(target)

    assert sorted(loaded) == ["w0", "w1"]
    np.testing.assert_array_equal(loaded["w0"], arrays["w0"])
    assert loaded["w0"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w1"], arrays["w1"])
    assert loaded_meta == {"round": 4, "name": "job", "nested": {"ok": True}}


def test_atomic_save_npz_without_meta_loads_empty_meta(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.npz"

    atomic_save_npz(target, {"w": np.zeros(2)})
    loaded, meta = load_npz(target)

    assert meta == {}
    np.testing.assert_array_equal(loaded["w"], np.zeros(2))


def test_atomic_save_npz_leaves_no_temp_file(tmp_path: Path) -> None:
    atomic_save_npz(tmp_path / "ckpt.npz", {"w": np.zeros(2)}, meta={"r": 1})

    assert _leftovers(tmp_path, {"ckpt.npz"}) == []
