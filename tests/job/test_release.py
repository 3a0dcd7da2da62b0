"""Tests for fedcollab.job.release: the signed open-weights artifact and its verification."""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcollab.job.release import ReleaseError, verify_release, weights_sha256, write_release
from fedcollab.spec import JobSpec, spec_from_dict
from fedcollab.spec.roster import roster

REPO = Path(__file__).resolve().parents[2]
SUMMARY = {"final_loss": 0.25, "rounds_completed": 2, "wall_seconds": 1.0}


def _spec() -> JobSpec:
    return spec_from_dict({
        "name": "release-test", "seed": 0,
        "task": {"dataset": "regression", "model": "regression"},
        "participants": [
            {"name": "community", "count": 2},
            {"name": "vendor", "role": "vendor", "count": 1, "private_layers": ["head"]}]})


@pytest.fixture(scope="module")
def model() -> Any:
    from fedcollab.worker.models import build_model

    return build_model("regression", input_shape=(1,), num_classes=0, seed=0)


def _write(model: Any, release_dir: Path, **kwargs: Any) -> Path:
    spec = _spec()
    return write_release(release_dir, model=model, weights=model.get_weights(), spec=spec,
                         participants=roster(spec), summary=SUMMARY, **kwargs)


@pytest.fixture(scope="module")
def pristine(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One release written once per module; tests tamper with copies of it."""
    return _write(model, tmp_path_factory.mktemp("job") / "release")


@pytest.fixture()
def release(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "release"
    shutil.copytree(pristine, copy)
    return copy


def _flip_byte(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _pem_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_private_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


# --------------------------------------------------------------------------- write + verify

def test_write_release_writes_model_manifest_signature_and_public_key(release: Path) -> None:
    names = sorted(p.name for p in release.iterdir())

    assert names == ["manifest.json", "manifest.sig", "model.keras", "public_key.pem"]


def test_verify_release_intact_release_succeeds(release: Path) -> None:
    result = verify_release(release)

    assert result.name == "release-test"
    assert result.files == 1
    assert result.signer_checked is False


def test_verify_release_with_its_own_shipped_key_is_integrity_only(release: Path) -> None:
    result = verify_release(release, public_key=release / "public_key.pem")

    assert result.signer_checked is False


def test_verify_release_with_the_publisher_key_checks_the_signer(release: Path,
                                                                 tmp_path: Path) -> None:
    publisher = tmp_path / "publisher.pem"
    publisher.write_bytes((release / "public_key.pem").read_bytes())
    result = verify_release(release, public_key=publisher)

    assert result.signer_checked is True


def test_release_is_world_readable_and_the_job_key_is_reused(release: Path) -> None:
    assert (release.stat().st_mode & 0o777) == 0o755
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in release.iterdir())


def test_write_release_manifest_records_spec_weights_and_private_layers(
        release: Path, model: Any) -> None:
    manifest = json.loads((release / "manifest.json").read_text())

    assert manifest["format"] == "fedcollab-release/1"
    assert manifest["weights_sha256"] == weights_sha256(model.get_weights())
    assert manifest["spec"]["name"] == "release-test"
    assert manifest["private_layers_not_released"] == {"vendor": ["head"]}
    assert [g["participants"] for g in manifest["participants"]] == [[0, 1], [2]]
    assert manifest["metrics"] == {"final_loss": 0.25, "rounds_completed": 2}


def test_write_release_model_file_holds_the_given_weights(release: Path, model: Any) -> None:
    import keras

    loaded = keras.models.load_model(release / "model.keras")

    assert weights_sha256(loaded.get_weights()) == weights_sha256(model.get_weights())


def test_write_release_over_an_existing_release_replaces_it(model: Any, tmp_path: Path) -> None:
    target = tmp_path / "release"
    _write(model, target)
    (target / "stale.txt").write_text("from an older release")

    _write(model, target)

    assert not (target / "stale.txt").exists()
    verify_release(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release", "signing-key.pem"]


# --------------------------------------------------------------------------- tampering

def test_verify_release_flipped_byte_in_model_raises_naming_the_file(release: Path) -> None:
    _flip_byte(release / "model.keras", 100)

    with pytest.raises(ReleaseError, match=r"model\.keras was modified"):
        verify_release(release)


def test_verify_release_flipped_byte_in_manifest_raises_signature_error(release: Path) -> None:
    _flip_byte(release / "manifest.json", 40)

    with pytest.raises(ReleaseError, match=r"signature check failed: manifest\.json was changed"):
        verify_release(release)


def test_verify_release_flipped_byte_in_signature_raises_signature_error(release: Path) -> None:
    _flip_byte(release / "manifest.sig", 10)

    with pytest.raises(ReleaseError, match="signature check failed"):
        verify_release(release)


def test_verify_release_unexpected_file_raises_naming_it(release: Path) -> None:
    (release / "backdoor.py").write_text("print('hi')\n")

    with pytest.raises(ReleaseError, match=r"unexpected file\(s\) not in the manifest: "
                                           r"backdoor\.py"):
        verify_release(release)


def test_verify_release_missing_model_raises_naming_it(release: Path) -> None:
    (release / "model.keras").unlink()

    with pytest.raises(ReleaseError, match=r"model\.keras is missing"):
        verify_release(release)


def test_verify_release_missing_signature_raises_unsigned(release: Path) -> None:
    (release / "manifest.sig").unlink()

    with pytest.raises(ReleaseError, match="unsigned"):
        verify_release(release)


def test_verify_release_not_a_release_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match=r"no manifest\.json"):
        verify_release(tmp_path)


def test_verify_release_against_another_public_key_fails(release: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(_pem_public(Ed25519PrivateKey.generate()))

    with pytest.raises(ReleaseError, match=r"not signed by other\.pem"):
        verify_release(release, public_key=other)


def test_verify_release_resigned_with_swapped_shipped_key_fails_against_publisher_key(
        release: Path, tmp_path: Path) -> None:
    # An attacker edits the manifest, re-signs it and ships their own public key: the
    # shipped key proves only integrity; the publisher's key catches the swap.
    import base64

    publisher = tmp_path / "publisher.pem"
    publisher.write_bytes((release / "public_key.pem").read_bytes())
    attacker = Ed25519PrivateKey.generate()
    manifest = (release / "manifest.json").read_bytes().replace(b"release-test", b"release-evil")
    (release / "manifest.json").write_bytes(manifest)
    (release / "manifest.sig").write_bytes(base64.b64encode(attacker.sign(manifest)) + b"\n")
    (release / "public_key.pem").write_bytes(_pem_public(attacker))

    with pytest.raises(ReleaseError, match="signature check failed"):
        verify_release(release, public_key=publisher)


# --------------------------------------------------------------------------- CLI

def _verify_cli(release_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcollab.cli", "verify", str(release_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_verify_intact_release_exits_0(release: Path) -> None:
    result = _verify_cli(release)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: release-test: 1 file(s) match the manifest")


def test_cli_verify_tampered_release_exits_1_with_one_line(release: Path) -> None:
    _flip_byte(release / "model.keras", 100)

    result = _verify_cli(release)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fedcollab: error: ") and "model.keras was modified" in lines[0]


# --------------------------------------------------------------------------- keys

def test_write_release_given_key_file_signs_with_it(model: Any, tmp_path: Path) -> None:
    key = _write_private_key(tmp_path / "release.key")

    target = _write(model, tmp_path / "job" / "release", key_path=str(tmp_path / "release.key"))

    assert (target / "public_key.pem").read_bytes() == _pem_public(key)
    assert not (tmp_path / "job" / "signing-key.pem").exists()


def test_write_release_unreadable_key_file_raises_release_error(
        model: Any, tmp_path: Path) -> None:
    bad = tmp_path / "release.key"
    bad.write_text("not a key")

    with pytest.raises(ReleaseError, match=r"release\.key: cannot load"):
        _write(model, tmp_path / "job" / "release", key_path=str(bad))

    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == []  # no half release


def test_write_release_generated_signing_key_has_mode_0600(pristine: Path) -> None:
    key_file = pristine.parent / "signing-key.pem"

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_write_release_generated_key_matches_the_shipped_public_key(pristine: Path) -> None:
    key = serialization.load_pem_private_key((pristine.parent / "signing-key.pem").read_bytes(),
                                             password=None)

    assert isinstance(key, Ed25519PrivateKey)
    assert (pristine / "public_key.pem").read_bytes() == _pem_public(key)


def test_write_release_unsigned_has_no_signature_and_fails_verify(
        model: Any, tmp_path: Path) -> None:
    target = _write(model, tmp_path / "release", sign=False)

    assert not (target / "manifest.sig").exists()
    with pytest.raises(ReleaseError, match="unsigned"):
        verify_release(target)


# --------------------------------------------------------------------------- weights_sha256

def test_weights_sha256_equal_arrays_give_equal_hashes() -> None:
    a = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]
    b = [x.copy() for x in a]

    assert weights_sha256(a) == weights_sha256(b)


def test_weights_sha256_one_changed_value_changes_the_hash() -> None:
    a = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]
    b = [x.copy() for x in a]
    b[1][2] = np.nextafter(np.float32(1), np.float32(2))

    assert weights_sha256(a) != weights_sha256(b)


def test_weights_sha256_reshape_changes_the_hash() -> None:
    a = np.arange(6, dtype=np.float32)

    assert weights_sha256([a.reshape(2, 3)]) != weights_sha256([a.reshape(3, 2)])


def test_weights_sha256_non_contiguous_view_hashes_like_a_copy() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)

    assert weights_sha256([a.T]) == weights_sha256([np.ascontiguousarray(a.T)])


def test_weights_sha256_byte_order_does_not_change_the_hash() -> None:
    a = np.arange(6, dtype="<f4")

    assert weights_sha256([a]) == weights_sha256([a.astype(">f4")])


def test_second_release_of_a_job_reuses_its_signing_key(model: Any, tmp_path: Path) -> None:
    first = _write(model, tmp_path / "job" / "release")
    key = (first / "public_key.pem").read_bytes()
    second = _write(model, tmp_path / "job" / "release")
    assert (second / "public_key.pem").read_bytes() == key
    assert ((tmp_path / "job" / "signing-key.pem").stat().st_mode & 0o777) == 0o600


def test_release_from_a_workers_model_file_matches_one_from_the_model(
        model: Any, pristine: Path, tmp_path: Path) -> None:
    """A job's driver writes the model.keras bytes a worker exported: same manifest
    (bar the zip's own timestamps), verifiable, loadable with the weights."""
    import keras

    from fedcollab.worker.models import ModelFile, export_model

    exported = export_model(model, model.get_weights())
    assert isinstance(exported, ModelFile)
    spec = _spec()
    out = write_release(tmp_path / "release", model=exported, weights=model.get_weights(),
                        spec=spec, participants=roster(spec), summary=SUMMARY)
    verify_release(out)
    ours = json.loads((out / "manifest.json").read_text())
    theirs = json.loads((pristine / "manifest.json").read_text())
    for key in ("weights", "weights_sha256", "spec", "participants"):
        assert ours[key] == theirs[key], key
    loaded = keras.saving.load_model(out / "model.keras").get_weights()
    assert weights_sha256(loaded) == weights_sha256(model.get_weights())
