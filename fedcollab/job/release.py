"""The open-weights release: model.keras + manifest.json + an Ed25519 signature.

``release/`` holds:

* ``model.keras``: the global model. Its weights are the aggregate of what was
  *shared*; a vendor's private layers live only on the vendor's workers (their
  copies are checkpointed there), so they cannot be in it.
* ``manifest.json``: sha256 of every file, a sha256 over the raw weights (stable
  across runs, unlike the zip container's timestamps), the resolved spec, seeds,
  package versions, and the participants with their roles and policies.
* ``manifest.sig``: Ed25519 signature over the exact bytes of manifest.json
  (base64), and ``public_key.pem``, the key it verifies with.

:func:`verify_release` recomputes every hash and checks the signature. Against the
shipped ``public_key.pem`` it proves integrity only; pass the publisher's key
(``--public-key``) to prove who signed it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fedcollab.errors import FedcollabError
from fedcollab.io import atomic_write_bytes, fsync_dir
from fedcollab.worker.models import ModelFile, export_model

__all__ = ["ReleaseError", "ModelFile", "export_model", "write_release", "verify_release",
           "weights_sha256", "load_or_create_key", "load_key", "VerifiedRelease"]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"
FORMAT = "fedcollab-release/1"


class ReleaseError(FedcollabError):
    """A release that is not intact, or a key that cannot be used."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def weights_sha256(weights: Sequence[np.ndarray]) -> str:
    """sha256 over each array's dtype, shape and little-endian bytes, in order."""
    digest = hashlib.sha256()
    for w in weights:
        array = np.ascontiguousarray(w)
        digest.update(f"{array.dtype.newbyteorder('<').str}{array.shape}".encode())
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_key(path: str | Path, *, what: str = "release.key") -> Any:
    """The Ed25519 private key in the PEM file at ``path``.

    Raises:
        ReleaseError: (exit 2) the file is missing, not a PEM private key, or not Ed25519.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ReleaseError(f"{what}: {path}: no such file", exit_code=2) from None
    except (OSError, ValueError, TypeError) as err:
        raise ReleaseError(f"{what}: cannot load {path} as an unencrypted PEM private key "
                           f"({err.__class__.__name__})", exit_code=2) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{what}: {path} is a {type(key).__name__.lstrip('_')}, expected an "
                           "Ed25519 private key", exit_code=2)
    return key


def load_or_create_key(path: Optional[str], fallback: Path) -> Any:
    """The Ed25519 private key at ``path``; else the job's own key at ``fallback``.

    The job's own key is created once (mode 0600, outside ``release/``) and reused
    by every later release of the job, so a published public key stays valid.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path:
        return load_key(path)
    if fallback.exists():
        return load_key(fallback, what="signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write_bytes(fallback, pem, mode=0o600)
    return key


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("fedcollab", "tensorflow", "keras", "numpy", "ray", "cryptography"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_release(release_dir: Path, *, model: Any, weights: Sequence[np.ndarray], spec: Any,
                  participants: Sequence[Any], summary: Mapping[str, Any],
                  key_path: Optional[str] = None, sign: bool = True) -> Path:
    """Write the release directory atomically (built beside it, then renamed).

    ``model`` is a Keras model (given ``weights`` here) or the :class:`ModelFile` a
    worker exported with them.

    Returns:
        The release directory.
    """
    from cryptography.hazmat.primitives import serialization

    from fedcollab.spec import spec_to_dict

    release_dir = Path(release_dir)
    parent = release_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".release-"))
    try:
        if not isinstance(model, ModelFile):
            model = export_model(model, weights)
        (tmp / "model.keras").write_bytes(model.data)
        groups: dict[str, dict[str, Any]] = {}
        for p in participants:
            g = groups.setdefault(p.group_name, {"group": p.group_name, "role": p.role,
                                                 "sharing": p.sharing,
                                                 "private_layers": list(p.private_layers),
                                                 "participants": []})
            g["participants"].append(p.pid)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "name": spec.name,
            "files": {"model.keras": _file_sha256(tmp / "model.keras")},
            "weights_sha256": weights_sha256(weights),
            "weights": [dict(w) for w in model.weights],
            "seeds": {"job": spec.seed, "model_init": spec.seed, "partition": spec.seed,
                      "participant_round": "numpy default_rng([seed, round, participant])"},
            "spec": spec_to_dict(spec),
            "participants": list(groups.values()),
            "private_layers_not_released": {
                name: g["private_layers"] for name, g in groups.items() if g["private_layers"]},
            "metrics": {k: summary.get(k) for k in ("final_accuracy", "final_loss",
                                                    "rounds_completed", "vendor_accuracy")
                        if summary.get(k) is not None},
            "versions": _versions(),
        }
        # cross-silo: what each remote party promised to enforce (its policy's sha256)
        # and the fedcollab it runs, from its Join (docs/cross-silo.md)
        parties = [{k: w.get(k) for k in ("party", "policy_sha256", "fedcollab_version")}
                   for w in summary.get("workers", []) if isinstance(w, Mapping)
                   and "policy_sha256" in w]
        if parties:
            manifest["silo_parties"] = parties
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        if sign:
            key = load_or_create_key(key_path, parent / "signing-key.pem")
            (tmp / SIGNATURE).write_bytes(base64.b64encode(key.sign(manifest_bytes)) + b"\n")
            (tmp / PUBLIC_KEY).write_bytes(key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        for path in tmp.iterdir():
            path.chmod(0o644)  # the release is the public artefact
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        tmp.chmod(0o755)
        old = None
        if release_dir.exists():
            old = parent / f".release-old-{os.getpid()}"
            os.replace(release_dir, old)
        os.replace(tmp, release_dir)
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return release_dir


@dataclass(frozen=True)
class VerifiedRelease:
    name: str
    files: int
    signer_checked: bool  # True when checked against a key other than the shipped one


def verify_release(release_dir: str | Path, *,
                   public_key: Optional[str | Path] = None) -> VerifiedRelease:
    """Check every hash and the signature of a release.

    Raises:
        ReleaseError: a file is missing, added or changed, or the signature fails.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    root = Path(release_dir)
    if not (root / MANIFEST).is_file():
        raise ReleaseError(f"{root}: no {MANIFEST}; is this a release directory?")
    manifest_bytes = (root / MANIFEST).read_bytes()
    key_file = Path(public_key) if public_key else root / PUBLIC_KEY
    if not (root / SIGNATURE).is_file():
        raise ReleaseError(f"{root}: no {SIGNATURE}; the release is unsigned")
    try:
        key = serialization.load_pem_public_key(key_file.read_bytes())
    except (OSError, ValueError) as err:
        raise ReleaseError(f"cannot load public key {key_file} ({err.__class__.__name__})") \
            from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(f"{key_file} is not an Ed25519 public key")
    try:
        key.verify(base64.b64decode((root / SIGNATURE).read_bytes().strip(), validate=True),
                   manifest_bytes)
    except (InvalidSignature, ValueError):
        raise ReleaseError(f"{root}: signature check failed: {MANIFEST} was changed or was "
                           f"not signed by {key_file.name}") from None
    try:
        manifest = json.loads(manifest_bytes)
        files: dict[str, str] = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise ReleaseError(f"{root}: {MANIFEST} is not a fedcollab manifest") from None
    for name, expected in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise ReleaseError(f"{root}: {name} is missing")
        if _file_sha256(path) != expected:
            raise ReleaseError(f"{root}: {name} was modified (sha256 does not match the manifest)")
    extra = sorted(p.name for p in root.iterdir()
                   if p.name not in files and p.name not in (MANIFEST, SIGNATURE, PUBLIC_KEY))
    if extra:
        raise ReleaseError(f"{root}: unexpected file(s) not in the manifest: {', '.join(extra)}")
    # The release's own public_key.pem (or any file inside the release) proves nothing
    # about the signer: whoever re-signed the release replaced it too.
    own_key = public_key is not None and \
        Path(public_key).resolve().parent == root.resolve()
    return VerifiedRelease(str(manifest.get("name", "")), len(files),
                           public_key is not None and not own_key)
