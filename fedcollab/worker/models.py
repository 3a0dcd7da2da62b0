"""Keras model builders, by name or as ``package.module:function``.

Built-in models name their output layer ``head`` so a vendor can keep it private
(``private_layers: [head]``). A user function is called with the keyword
arguments it accepts among ``input_shape`` and ``num_classes`` and must return
an uncompiled ``keras.Model``.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fedcollab.errors import FedcollabError
from fedcollab.spec import SpecError

__all__ = ["SEEDED_BUILD_LOCK", "build_model", "build_checked_model", "misfit_as_spec_error",
           "check_builder_name", "resolve_builder",
           "private_weight_indices", "private_arrays_by_group", "layer_names"]


def _head(num_classes: int) -> Any:
    """Softmax over classes, or one linear output for regression (num_classes 0)."""
    import keras

    if num_classes > 0:
        return keras.layers.Dense(num_classes, activation="softmax", name="head")
    return keras.layers.Dense(1, name="head")


def _build_mlp(input_shape: tuple[int, ...], num_classes: int) -> Any:
    import keras

    inputs = keras.Input(shape=input_shape, name="features")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    x = keras.layers.Dense(64, activation="relu", name="hidden")(x)
    return keras.Model(inputs, _head(num_classes)(x), name="mlp")


def _build_cnn(input_shape: tuple[int, ...], num_classes: int) -> Any:
    import keras

    if int(_prod(input_shape)) != 64:
        raise SpecError(f"spec: task.model: 'cnn' is built for 8x8 images (64 features), "
                        f"got input shape {input_shape}")
    inputs = keras.Input(shape=input_shape, name="features")
    x = keras.layers.Reshape((8, 8, 1), name="image")(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="conv")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="hidden")(x)
    return keras.Model(inputs, _head(num_classes)(x), name="cnn")


def _build_regression(input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The classic Keras regression example: Input(1) -> Dense(10, relu) -> Dense(1)."""
    import keras

    inputs = keras.Input(shape=input_shape, name="features")
    x = keras.layers.Dense(10, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="head")(x)
    return keras.Model(inputs, outputs, name="regression")


def _prod(shape: Sequence[int]) -> int:
    result = 1
    for dim in shape:
        result *= int(dim)
    return result


#: Built-in model builders by the name ``task.model`` uses (a new one: a function here
#: plus an entry); any other name must be ``package.module:function``.
MODELS: dict[str, Callable[[tuple[int, ...], int], Any]] = {
    "mlp": _build_mlp, "cnn": _build_cnn, "regression": _build_regression}
_BUILTIN = MODELS


def resolve_builder(name: str) -> Callable[..., Any]:
    """The builder for a model name; imports ``package.module:function`` lazily."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    module_name, _, func_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError(f"spec: task.model: cannot import {module_name!r} ({err})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise SpecError(f"spec: task.model: {module_name!r} has no function {func_name!r}")
    return func


def check_builder_name(name: str) -> None:
    """Find a ``package.module:function`` model without importing the module.

    A user's module usually imports TensorFlow, so :func:`resolve_builder` waits for
    it; this finds the module on the path and reads its source for the function, so
    that a typo fails in a second, before Ray starts, not after it. A module whose
    names cannot be read off its source (no source, ``from x import *``, a module
    ``__getattr__``, names made with ``globals()``, ``exec``, ``setattr`` or through
    ``sys.modules`` or a ``__dict__``) is left to :func:`resolve_builder`.

    Raises:
        SpecError: the module is not on the path, or its source defines no such name.
    """
    if name in _BUILTIN:
        return
    module_name, _, func_name = name.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
    except ImportError as err:  # a parent package is missing
        raise SpecError(f"spec: task.model: cannot import {module_name!r} ({err})") from None
    except ValueError:  # in sys.modules with no __spec__: resolve_builder decides
        return
    if spec is None:
        raise SpecError(f"spec: task.model: cannot import {module_name!r} "
                        f"(No module named {module_name!r})")
    names = _bound_names(spec.origin) if spec.origin and spec.has_location else None
    if names is not None and func_name not in names:
        raise SpecError(f"spec: task.model: {module_name!r} has no function {func_name!r}")


_DYNAMIC_NAMES = frozenset({"__getattr__", "globals", "exec", "setattr", "vars"})
_DYNAMIC_ATTRIBUTES = frozenset({"__dict__", "modules"})  # sys.modules[__name__].f = ...


def _bound_names(origin: str) -> Optional[set[str]]:
    """Every name a Python source file binds anywhere (a superset of its module-level
    names: a name it lacks is certainly not there), or None where the source cannot
    say (not a .py file, unreadable, unparsable, or names bound dynamically)."""
    import ast

    if not origin.endswith(".py"):
        return None
    try:
        with open(origin, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), filename=origin)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name):
            if node.id in _DYNAMIC_NAMES:
                return None
            if isinstance(node.ctx, ast.Store):
                names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return None
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Attribute) and node.attr in _DYNAMIC_ATTRIBUTES:
            return None
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return None if "__getattr__" in names else names


#: Held while a model is built from a seed. Keras' initialisers draw their seeds from
#: Python's global ``random`` after ``set_random_seed``, so anything in this process
#: that may draw from it meanwhile must hold this too; otherwise the same seed could
#: give other initial weights (it did, once in a while, when a job's driver built its
#: model beside ``ray.init``, which picks ports with it; a driver builds none now,
#: its workers do, each in its own process).
SEEDED_BUILD_LOCK = threading.RLock()


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int,
                seed: int) -> Any:
    """Build the named model with weights initialised from `seed`.

    Raises:
        SpecError: the name cannot be resolved or the function returns no Keras model.
    """
    import keras

    builder = resolve_builder(name)
    # Keras' initialisers draw from process-wide random state: two threads building
    # at once (a grade's runs side by side) would mix up each other's weights.
    with SEEDED_BUILD_LOCK:
        keras.utils.set_random_seed(seed)
        if name in _BUILTIN:
            model = builder(input_shape, num_classes)
        else:
            accepted = inspect.signature(builder).parameters
            kwargs = {k: v for k, v in (("input_shape", input_shape),
                                        ("num_classes", num_classes)) if k in accepted}
            model = builder(**kwargs)
    if not isinstance(model, keras.Model):
        raise SpecError(f"spec: task.model: {name!r} returned {type(model).__name__}, "
                        "expected a keras.Model")
    return model


def build_checked_model(spec: Any, data: Any) -> Any:
    """The spec's model for ``data`` (a federation), checked against both.

    Where the model is built (a worker for a job, the process for ``validate
    --deep``) the same checks run with the same messages.

    Raises:
        SpecError: the model cannot be built (the user's function raised), a group's
            ``private_layers`` names no layer with weights, or its outputs do not
            match the data's classes.
    """
    name = spec.task.model
    try:
        model = build_model(name, input_shape=data.input_shape, num_classes=data.num_classes,
                            seed=spec.seed)
    except FedcollabError:
        raise
    except Exception as err:  # the user's model function failed
        raise SpecError(f"spec: task.model: {name!r} raised {type(err).__name__}: "
                        f"{first_line(err)}") from None
    for g, group in enumerate(spec.participants):
        if group.private_layers:
            private_weight_indices(model, group.private_layers,
                                   where=f"participants.{g}.private_layers")
    out_dim = model.outputs[0].shape[-1] if model.outputs else None
    expected = data.num_classes if data.num_classes > 0 else 1
    if out_dim is not None and int(out_dim) != expected:
        raise SpecError(f"spec: task.model: {name!r} has {out_dim} outputs, but the data "
                        f"has {_describe(data)}: expected {expected}")
    return model


@contextmanager
def misfit_as_spec_error(spec: Any, data: Any) -> Iterator[None]:
    """Running the model on the data first (a trace): a shape that does not fit
    surfaces as a TensorFlow error, reported as the spec's mistake it is."""
    try:
        yield
    except FedcollabError:
        raise
    except Exception as err:
        raise SpecError(f"spec: task.model: {spec.task.model!r} does not fit the data "
                        f"({_describe(data)}): {first_line(err)}") from None


def _describe(data: Any) -> str:
    return (f"inputs of shape {data.input_shape} and "
            + (f"{data.num_classes} classes" if data.num_classes > 0 else "a scalar target"))


def first_line(err: BaseException) -> str:
    """An error's first non-empty line, at most 200 characters (for one-line messages)."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def layer_names(model: Any) -> list[str]:
    return [layer.name for layer in model.layers]


def private_weight_indices(model: Any, private_layers: Sequence[str], *,
                           where: str = "private_layers") -> list[int]:
    """Indices into ``model.weights`` of the weights that belong to `private_layers`.

    Raises:
        SpecError: a named layer does not exist or holds no weights.
    """
    names = layer_names(model)
    position = {id(v): i for i, v in enumerate(model.weights)}
    indices: list[int] = []
    for layer_name in private_layers:
        if layer_name not in names:
            raise SpecError(f"spec: {where}: no layer {layer_name!r} in model "
                            f"{model.name!r}; layers: {', '.join(names)}")
        weights = model.get_layer(layer_name).weights
        if not weights:
            raise SpecError(f"spec: {where}: layer {layer_name!r} has no weights to keep private")
        indices.extend(position[id(v)] for v in weights)
    return sorted(indices)


def weight_layers(model: Any) -> tuple[str, ...]:
    """Per entry of ``model.weights``, the name of the Keras layer that holds it: the
    layer manifest a cross-silo offer names (docs/cross-silo.md)."""
    position = {id(v): i for i, v in enumerate(model.weights)}
    names = [""] * len(position)
    for layer in model.layers:
        for v in layer.weights:
            if id(v) in position and not names[position[id(v)]]:
                names[position[id(v)]] = layer.name
    return tuple(names)


def private_arrays_by_group(model: Any, spec: Any) -> dict[int, tuple[int, ...]]:
    """Group index -> the model indices its ``private_layers`` cover (only groups
    that keep layers private): what the server expects their updates to leave out."""
    return {g: tuple(private_weight_indices(model, group.private_layers,
                                            where=f"participants.{g}.private_layers"))
            for g, group in enumerate(spec.participants) if group.private_layers}


@dataclass(frozen=True)
class ModelFile:
    """A model saved as ``model.keras``, as bytes: what a worker sends a driver that
    does not load TensorFlow, and the names, shapes and dtypes of its weights."""

    data: bytes
    weights: tuple[Mapping[str, Any], ...]


def export_model(model: Any, weights: Sequence[np.ndarray]) -> ModelFile:
    """``model`` with ``weights``, saved as ``model.keras`` (needs TensorFlow here)."""
    model.set_weights(list(weights))
    with tempfile.TemporaryDirectory(prefix="fedcollab-model-") as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        data = path.read_bytes()
    return ModelFile(data, tuple({"name": v.path, "shape": list(v.shape), "dtype": str(v.dtype)}
                                 for v in model.weights))
