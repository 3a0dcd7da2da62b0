"""Checks that updates can be combined: the same layers, shapes and dtypes."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcollab.aggregation.errors import AggregationError, NotEnoughUpdatesError

__all__ = ["check_structure", "same_structure"]


def check_structure(updates: Sequence[Sequence[np.ndarray]], *, what: str) -> None:
    """Raise unless there is at least one update and all have the same array shapes."""
    if len(updates) == 0:
        raise NotEnoughUpdatesError(f"{what}: got 0 updates, need at least 1")
    first = updates[0]
    shapes = [np.shape(a) for a in first]
    for index, update in enumerate(updates[1:], start=1):
        if len(update) != len(shapes):
            raise AggregationError(
                f"{what}: update {index} has {len(update)} arrays, expected {len(shapes)} "
                "(as update 0)")
        for layer, (array, shape) in enumerate(zip(update, shapes)):
            if np.shape(array) != shape:
                raise AggregationError(
                    f"{what}: update {index} array {layer} has shape {np.shape(array)}, "
                    f"expected {shape} (as update 0)")


def same_structure(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, what: str,
                   names: tuple[str, str]) -> None:
    """Raise unless two weight lists have the same number of arrays and shapes."""
    if len(a) != len(b):
        raise AggregationError(
            f"{what}: {names[0]} has {len(a)} arrays but {names[1]} has {len(b)}")
    for layer, (x, y) in enumerate(zip(a, b)):
        if np.shape(x) != np.shape(y):
            raise AggregationError(
                f"{what}: array {layer} has shape {np.shape(x)} in {names[0]} but "
                f"{np.shape(y)} in {names[1]}")
