"""What a submitted spec may reach on the service's machine: data and model code.

* ``task.path`` must name a regular file inside one of the caller's data roots (its
  token's ``data_roots``, else ``serve --data-root``). Every component from the root
  down is checked with ``lstat``: a symbolic link anywhere below the root, ``..``,
  a missing file and a file outside the roots all get the same answer, so a refusal
  says nothing about what exists outside the roots, and nothing is read.
* ``task.model`` is a built-in model, or ``package.module:function`` whose module is
  in the operator's allowlist (``serve --allow-model-module``). The service looks
  the module's source up on the path without importing it (nor its parents): the
  module runs only inside the job's workers.
"""

from __future__ import annotations

import importlib.machinery
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Sequence

from fedcollab.service.errors import PermissionDenied

__all__ = ["confine_data_path", "check_model", "data_path_refusal", "normalise_roots"]


def normalise_roots(roots: Sequence[str | Path]) -> tuple[Path, ...]:
    """The roots as absolute real directories (the operator's own symlinks resolved)."""
    return tuple(Path(os.path.realpath(os.path.expanduser(str(r)))) for r in roots)


def data_path_refusal(given: str) -> PermissionDenied:
    """The one answer for every path that is not usable: missing, outside, a symlink."""
    return PermissionDenied(
        f"spec: task.path: {given!r} is not a regular file inside your "
        "data roots (paths are relative to a data root; symbolic links "
        "and '..' are refused)"
    )


def confine_data_path(given: str, roots: Sequence[Path]) -> Path:
    """The real path of `given` inside one of `roots`, or the refusal.

    A relative path is taken against each root in turn; an absolute one must lie
    lexically under a root. Each component below the root must be a directory (the
    last a regular file) and none a symbolic link.

    Raises:
        PermissionDenied: the same line for every path that is not such a file.
    """
    if not roots:
        raise PermissionDenied(
            "spec: task.path: this token has no data roots on the job "
            "service's machine (ask its operator for data_roots)"
        )
    text = str(given)
    if not text or "\x00" in text:
        raise data_path_refusal(text)
    pure = PurePosixPath(text)
    if any(part in ("..", ".") for part in text.split("/")):
        raise data_path_refusal(text)
    for root in roots:
        if pure.is_absolute():
            try:
                relative = pure.relative_to(PurePosixPath(root))
            except ValueError:
                continue
        else:
            relative = pure
        found = _walk(root, relative.parts)
        if found is not None:
            return found
    raise data_path_refusal(text)


def _walk(root: Path, parts: Sequence[str]) -> Optional[Path]:
    if not parts:
        return None
    here = root
    for i, part in enumerate(parts):
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            return None
        last = i == len(parts) - 1
        if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
            return None
    return here


def _module_spec(module: str) -> Any:
    """The module's spec found by walking the path finders, importing nothing."""
    parts = module.split(".")
    search: Optional[Sequence[str]] = None
    spec = None
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if spec is None:
            return None
        locations = spec.submodule_search_locations
        if i < len(parts) - 1:
            if locations is None:
                return None
            search = list(locations)
    return spec


def _allowed(module: str, allowlist: Sequence[str]) -> bool:
    return any(module == allowed or module.startswith(allowed + ".") for allowed in allowlist)


def check_model(model: Any, builtins: Sequence[str], allowlist: Sequence[str]) -> None:
    """Refuse a ``task.model`` outside the built-ins and the allowlist, importing nothing.

    Raises:
        PermissionDenied: a module not in the allowlist, or not on the service's path.
    """
    if not isinstance(model, str) or model in builtins:
        return  # not a string: the spec's own validation says what is wrong
    module, sep, function = model.partition(":")
    if not sep:
        return  # an unknown built-in name: the spec's validation lists the built-ins
    if not _allowed(module, allowlist):
        allowed = ", ".join(allowlist) if allowlist else "none"
        raise PermissionDenied(
            f"spec: task.model: module {module!r} is not in this service's "
            f"allowlist (allowed: {allowed}; built-in models: "
            f"{', '.join(builtins)})"
        )
    if not all(p.isidentifier() for p in module.split(".")) or not function.isidentifier():
        raise PermissionDenied(f"spec: task.model: {model!r} is not package.module:function")
    spec = _module_spec(module)
    if spec is None or not spec.has_location:
        raise PermissionDenied(
            f"spec: task.model: module {module!r} is allowed but not "
            "installed on the job service's machine"
        )
