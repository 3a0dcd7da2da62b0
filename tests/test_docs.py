"""The user-facing docs name every spec field, and the README no longer points outside."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from fedcollab import spec as spec_module

ROOT = Path(__file__).resolve().parents[1]


def _fields(cls: type, prefix: str = "") -> list[str]:
    names = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        listed = typing.get_origin(tp) is tuple
        inner = typing.get_args(tp)[0] if listed else tp
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            step = f"{f.name}.N." if listed else f"{f.name}."
            names += _fields(inner, prefix + step)
        else:
            names.append(prefix + f.name)
    return names


def test_docs_spec_reference_names_every_field() -> None:
    text = (ROOT / "docs" / "spec.md").read_text()
    missing = [name for name in _fields(spec_module.JobSpec) if f"`{name}`" not in text]
    assert not missing, f"docs/spec.md does not document {missing}"


def test_readme_points_only_at_files_users_have() -> None:
    text = (ROOT / "README.md").read_text()
    assert "../shared" not in text
    for doc in ("docs/spec.md", "docs/outputs.md", "docs/bench.md"):
        assert doc in text and (ROOT / doc).is_file()
