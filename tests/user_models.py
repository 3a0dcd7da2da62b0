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


def wrong_input(input_shape: tuple[int, ...], num_classes: int) -> Any:
    """Expects 3 features whatever the data has (a user's mistake)."""
    import keras

    inputs = keras.Input(shape=(3,))
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(inputs))


def raises(input_shape: tuple[int, ...], num_classes: int) -> Any:
    raise ValueError("the user's model function failed")


def custom_layer(input_shape: tuple[int, ...], num_classes: int) -> Any:
    """A model with a layer class of the user's own."""
    import keras

    class Halve(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x * 0.5

    inputs = keras.Input(shape=input_shape)
    hidden = Halve()(keras.layers.Dense(8, activation="relu", name="hidden")(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax",
                                                  name="head")(hidden), name="custom")


def loud(input_shape: tuple[int, ...], num_classes: int) -> Any:
    """`tiny` that prints the pid of the process building it: a worker, whose output
    Ray forwards to its driver (in the job service, to the job's job.log)."""
    import os

    print(f"fedcollab-test: model built in pid {os.getpid()}", flush=True)
    return tiny(input_shape, num_classes)
