"""deploy/Dockerfile is reproducible: its base image is pinned by digest and every Python
package comes from a hash-locked file that agrees with pyproject.toml."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.manifests import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEPLOY = ROOT / "deploy"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
LOCKS = ("requirements.lock", "requirements-gpu.lock")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^]]*\])?==([^\s;\\]+)", re.M)


def locked(name: str) -> dict[str, str]:
    """{canonical name: version} of every package pinned in deploy/`name`."""
    text = (DEPLOY / name).read_text()
    return {canonicalize_name(n): v for n, v in PIN.findall(text)}


def test_base_image_is_pinned_by_digest() -> None:
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M)

    assert froms and all(re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", f) for f in froms)


def test_python_packages_install_only_from_a_hash_locked_file() -> None:
    installs = re.findall(r"pip install ([^\n\\&]*)", DOCKERFILE)
    lock_arg = re.search(r"^ARG LOCK=(\S+)$", DOCKERFILE, re.M)

    assert lock_arg and lock_arg.group(1) in LOCKS
    assert "COPY deploy/${LOCK} /tmp/requirements.lock" in DOCKERFILE
    assert installs[0].split() == ["--require-hashes", "--no-deps", "-r",
                                   "/tmp/requirements.lock"]
    # fedcollab itself: nothing resolved or fetched beyond the lock
    assert all({"--no-deps", "--no-index"} <= set(i.split()) for i in installs[1:])
    assert "pip check" in DOCKERFILE
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!deploy/{lock}" in ignore for lock in LOCKS)  # in the build context


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_pins_every_package_with_hashes(lock: str) -> None:
    text = (DEPLOY / lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])

    assert len(entries) == len(locked(lock)) > 50
    for entry in entries:
        assert PIN.match(entry) and "--hash=sha256:" in entry, entry.split("\n")[0]


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_satisfies_pyproject_dependencies(lock: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked(lock)
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]

    for spec in project["dependencies"] + build:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {requirement.name}: run scripts/lock-deps"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, pyproject wants {requirement.specifier}"
        )


def test_gpu_lock_has_tensorflows_cuda_wheels_and_the_cpu_lock_has_none() -> None:
    cpu, gpu = locked(LOCKS[0]), locked(LOCKS[1])

    assert any(name.startswith("nvidia-") for name in gpu)
    assert not any(name.startswith("nvidia-") for name in cpu)
    assert cpu["tensorflow"] == gpu["tensorflow"]


def test_image_is_documented_with_how_to_refresh_digest_and_locks() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    digest = re.search(r"@sha256:([0-9a-f]{64})", DOCKERFILE)

    assert digest and digest.group(1) in docs
    assert "scripts/lock-deps" in docs and "imagetools inspect" in docs
    assert Path(ROOT / "scripts" / "lock-deps").stat().st_mode & 0o111
