"""Job specs as the service receives them: YAML text, checked like `fedcollab validate`."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from fedcollab.spec import JobSpec, SpecError, spec_from_dict
from fedcollab.spec.yamlsafe import safe_load

__all__ = ["parse_spec_text", "spec_data", "MAX_SPEC_BYTES"]

MAX_SPEC_BYTES = 256 * 1024
SOURCE = "submitted spec"


def spec_data(text: str) -> dict[str, Any]:
    """The spec's raw data through the bounded YAML loader (no aliases, no duplicate
    keys, at most MAX_SPEC_BYTES).

    Raises:
        SpecError: not YAML, outside the loader's bounds, or not a mapping.
    """
    try:
        data = safe_load(text, max_bytes=MAX_SPEC_BYTES)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise SpecError(f"spec: {SOURCE}: invalid YAML{line}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec: {SOURCE}: expected a mapping at the top level")
    return data


@functools.lru_cache(maxsize=64)
def parse_spec_text(text: str, *, check_data: bool = True, find_model: bool = True) -> JobSpec:
    """Parse and validate a spec sent as text; messages match `fedcollab validate`.

    Args:
        check_data: also run the preflight checks (load and partition the data),
            as `fedcollab validate` does. For a ``dataset: file`` spec a failing check
            is reported without its details: they may quote the file.
        find_model: look a ``package.module:function`` model up (imports its parent
            packages; the service checks its allowlist instead).

    Valid specs are cached by their text (a JobSpec is immutable), so resubmitting
    the same spec does not load its data again; errors are not cached.

    Raises:
        SpecError: the text is not a valid spec.
    """
    spec = spec_from_dict(spec_data(text))
    if spec.task.dataset == "file":
        path = Path(str(spec.task.path))
        if not path.is_absolute() or not path.is_file():
            raise SpecError(f"spec: task.path: {spec.task.path}: no such file on the job "
                            "service's machine (give an absolute path there)")
    if check_data:
        from fedcollab.errors import FedcollabError
        from fedcollab.job.preflight import preflight

        try:
            preflight(spec, find_model=find_model)
        except FedcollabError:
            if spec.task.dataset != "file":
                raise
            # A loader's message can quote the file (a CSV header, a label value):
            # the submitter may not read that file's content through us.
            raise SpecError(f"spec: task.path: {Path(str(spec.task.path)).name}: not a "
                            "usable dataset for this spec (the service does not quote "
                            "files; check it with `fedcollab validate --deep` where you can "
                            "read it)") from None
    return spec
