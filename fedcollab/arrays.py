"""Shared array helpers: norms, stacking and per-layer reductions (float64 throughout)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from fedcollab.types import Weights

__all__ = ["global_norm"]

Reducer = Callable[[np.ndarray], np.ndarray]


def global_norm(weights: Sequence[np.ndarray]) -> float:
    """The L2 norm of all arrays taken together, as if flattened into one vector.

    Accumulates in float64, so a float32 update cannot overflow to ``inf`` here.

    Args:
        weights: One array per model weight.

    Returns:
        ``sqrt(sum_i ||w_i||^2)``; ``nan`` or ``inf`` when an array holds such values.
    """
    total = 0.0
    for array in weights:
        flat = np.asarray(array, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def output_dtype(arrays: Sequence[np.ndarray]) -> np.dtype:
    """The dtype a result is cast back to: the inputs' common float dtype."""
    dtype = np.result_type(*[np.asarray(a).dtype for a in arrays])
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def layer_stack(updates: Sequence[Sequence[np.ndarray]], layer: int) -> np.ndarray:
    """Array ``layer`` of every update, stacked along a new axis 0, as float64."""
    return np.stack([np.asarray(u[layer], dtype=np.float64) for u in updates])


def flatten(update: Sequence[np.ndarray]) -> np.ndarray:
    """One update as a single float64 vector (arrays concatenated in order)."""
    if len(update) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in update])


def per_layer(updates: Sequence[Sequence[np.ndarray]], reduce: Reducer) -> Weights:
    """Apply ``reduce`` to each layer's float64 stack and cast back to the input dtype."""
    out: Weights = []
    for layer in range(len(updates[0])):
        dtype = output_dtype([u[layer] for u in updates])
        out.append(np.asarray(reduce(layer_stack(updates, layer)), dtype=np.float64).astype(dtype))
    return out

