"""The bounded YAML loader: plain data as yaml.safe_load reads it, or a one-line refusal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.spec import SpecError, load_spec
from fedcollab.spec.yamlsafe import YamlRefused, safe_load

_keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8)
_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
)
_data = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=25,
)


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(data: Any, *, flow: bool) -> str:
    return str(yaml.dump(data, Dumper=_NoAliases, default_flow_style=flow, allow_unicode=True))


@settings(max_examples=150, deadline=None)
@given(data=_data, flow=st.booleans())
def test_safe_load_reads_alias_free_documents_as_pyyaml_does(data: Any, flow: bool) -> None:
    text = _dump(data, flow=flow)

    # as PyYAML reads it (not always ``data``: PyYAML's own dump of a lone NEL, U+0085,
    # reads back as a space)
    assert safe_load(text) == yaml.safe_load(text)


@settings(max_examples=100, deadline=None)
@given(
    data=st.dictionaries(_keys, _scalars, min_size=1, max_size=6),
    pick=st.integers(0, 5),
    value=_scalars,
    nest=st.booleans(),
)
def test_safe_load_any_duplicate_key_is_refused(
    data: dict[str, Any], pick: int, value: Any, nest: bool
) -> None:
    key = sorted(data)[pick % len(data)]
    body = _dump(data, flow=False) + _dump({key: value}, flow=False)
    text = "outer:\n" + "".join(f"  {line}\n" for line in body.splitlines()) if nest else body

    with pytest.raises(YamlRefused, match="duplicate key"):
        safe_load(text)


@settings(max_examples=100, deadline=None)
@given(data=_data, name=st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True))
def test_safe_load_any_anchor_or_alias_is_refused(data: Any, name: str) -> None:
    text = f"first: &{name} {_dump(data, flow=True).strip()}\nsecond: *{name}\n"

    with pytest.raises(YamlRefused, match="anchor|alias"):
        safe_load(text)


def test_safe_load_alias_bomb_is_refused_at_once_with_a_short_message() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]"
        for i in range(8)
    ]
    bomb = "\n".join(lines) + "\n"
    t0 = time.perf_counter()

    with pytest.raises(YamlRefused) as caught:
        safe_load(bomb)

    assert time.perf_counter() - t0 < 0.5
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x: " + "[" * 100 + "]" * 100, "nested deeper than 64"),
        ("x: " + "9" * 5000, "too large"),
        ("<<: {a: 1}\nb: 2\n", "merge key"),
        ("- 1\n" * 300_000, "bytes; the limit"),
    ],
)
def test_safe_load_bounds_depth_digits_merges_and_size(text: str, problem: str) -> None:
    with pytest.raises(YamlRefused, match=problem):
        safe_load(text)


def test_load_spec_duplicate_key_is_a_spec_error_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\nrounds: 5\nrounds: 50\n")

    with pytest.raises(SpecError, match=r"line 3: duplicate key 'rounds' \(first at line 2\)"):
        load_spec(path)


def test_load_spec_json_duplicate_key_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"name": "x", "rounds": 5, "rounds": 50}')

    with pytest.raises(SpecError, match="duplicate key 'rounds'"):
        load_spec(path)


def _outcome(load: Any, text: str) -> tuple[str, Any]:
    """What a loader makes of `text`: its data, or its refusal's problem and line."""
    try:
        return ("data", load(text))
    except YamlRefused as err:
        mark = err.problem_mark
        return ("refused", (err.problem, None if mark is None else mark.line))
    except yaml.YAMLError:
        return ("syntax", None)


def _python_only(text: str) -> Any:
    from fedcollab.spec import yamlsafe

    loader = yamlsafe._BoundedLoader(text, yamlsafe._Budget(yamlsafe.MAX_DEPTH,
                                                           yamlsafe.MAX_NODES))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without LibYAML")
@settings(max_examples=150, deadline=None)
@given(
    data=_data,
    flow=st.booleans(),
    extra=st.sampled_from(["", "dup: 1\ndup: 2\n", "a: &x 1\nb: *x\n", "c: *nope\n",
                           "d: " + "[" * 70 + "]" * 70 + "\n", "<<: {m: 1}\n", "e: [1, 2\n",
                           "f: &y {g: 1}\n", "\tbad: 1\n"]),
)
def test_safe_load_in_c_refuses_and_reads_what_the_python_loader_does(
    data: Any, flow: bool, extra: str
) -> None:
    """The service parses with LibYAML (five times faster); every bound must hold
    there exactly as in the pure-Python loader: the same data, or the same refusal
    at the same line (a syntax error the C path meets is re-read by the Python one)."""
    from fedcollab.spec.yamlsafe import MAX_DEPTH, MAX_NODES, _load_in_c

    body = _dump({"top": data}, flow=False) if extra else _dump(data, flow=flow)
    text = body + extra

    python = _outcome(_python_only, text)
    c = _outcome(lambda t: _load_in_c(t, MAX_DEPTH, MAX_NODES), text)

    if c[0] == "syntax":  # safe_load words these with the Python loader
        assert _outcome(safe_load, text) == python
    else:
        assert c == python
