"""Model builders: names, heads, user functions, private-layer lookup."""
from __future__ import annotations

import pytest

from fedcollab.models import build_model, private_weight_indices
from fedcollab.spec import SpecError


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
