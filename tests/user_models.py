"""User model functions for the `package.module:function` model tests."""
from __future__ import annotations

from typing import Any


def tiny(input_shape: tuple[int, ...], num_classes: int) -> Any:
    import keras

    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax",
                                                  name="head")(inputs), name="tiny")


def not_a_model() -> int:
    return 3
