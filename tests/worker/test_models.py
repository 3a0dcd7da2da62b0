"""Model builders: names, heads, user functions, private-layer lookup."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fedcollab.spec import SpecError
from fedcollab.worker.models import (
    build_model,
    check_builder_name,
    private_weight_indices,
    resolve_builder,
)

ROOT = Path(__file__).resolve().parents[2]


def test_build_model_mlp_for_regression_has_linear_head() -> None:
    model = build_model("mlp", input_shape=(3,), num_classes=0, seed=0)
    head = model.get_layer("head")
    assert head.units == 1 and head.activation.__name__ == "linear"


def test_build_model_same_seed_same_initial_weights() -> None:
    a = build_model("mlp", input_shape=(64,), num_classes=10, seed=3).get_weights()
    b = build_model("mlp", input_shape=(64,), num_classes=10, seed=3).get_weights()
    assert all((x == y).all() for x, y in zip(a, b))


def test_build_model_user_function_is_imported() -> None:
    model = build_model("tests.user_models:tiny", input_shape=(4,), num_classes=2, seed=0)
    assert model.name == "tiny"


def test_build_model_user_function_returning_no_model_raises() -> None:
    with pytest.raises(SpecError, match="expected a keras.Model"):
        build_model("tests.user_models:not_a_model", input_shape=(4,), num_classes=2, seed=0)


def test_private_weight_indices_unknown_layer_names_the_layers() -> None:
    model = build_model("mlp", input_shape=(64,), num_classes=10, seed=0)
    assert private_weight_indices(model, ["head"]) == [2, 3]
    with pytest.raises(SpecError, match="no layer 'top'.*layers: features, hidden, head"):
        private_weight_indices(model, ["top"])


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("name,message", [
    ("no_such_module:build", "cannot import 'no_such_module' (No module named"),
    ("no_such_pkg.models:build", "cannot import 'no_such_pkg.models' (No module named"),
    ("tests.user_models:nothing_here", "'tests.user_models' has no function 'nothing_here'"),
])
def test_check_builder_name_finds_a_typo_without_importing_the_module(
        name: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        check_builder_name(name)
    with pytest.raises(SpecError, match=re.escape(message)):
        resolve_builder(name)  # the check says what building would have said


def test_check_builder_name_reads_the_source_and_never_runs_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module(tmp_path, monkeypatch, "fc_user_model", (
        "raise SystemExit('imported')\n"
        "if True:\n    from keras import Model as build\n"
        "try:\n    import numpy as np\nexcept ImportError:\n    def fallback(): pass\n"
        "class Builder: pass\n"
        "[made] = [lambda: None]\n"))
    for name in ("build", "np", "fallback", "Builder", "made"):
        check_builder_name(f"fc_user_model:{name}")
    with pytest.raises(SpecError, match="has no function 'missing'"):
        check_builder_name("fc_user_model:missing")
    assert "fc_user_model" not in sys.modules


@pytest.mark.parametrize("source", [
    "from os.path import *\n",
    "globals()['build'] = lambda: None\n",
    "def __getattr__(name):\n    return lambda: None\n",
    "setattr(__import__(__name__), 'build', 1)\n",
    "import sys\nsys.modules[__name__].build = len\n",
])
def test_check_builder_name_leaves_dynamic_modules_to_the_import(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module(tmp_path, monkeypatch, "fc_dynamic_model", source)
    check_builder_name("fc_dynamic_model:build")  # cannot tell from the source: no error
    check_builder_name("mlp")

