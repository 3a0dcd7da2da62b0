"""FedProx's proximal term, as a pure helper for the local training step.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020. Each participant minimises
``loss(w) + mu/2 * ||w - w_global||^2`` locally; the extra term pulls local models
towards the round's global model, which steadies FedAvg on non-IID data. The
TensorFlow train step adds that term to its loss itself; these helpers give its
value and gradient on numpy weights (for tests, and for code outside TF).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fedcollab.aggregation._structure import same_structure
from fedcollab.aggregation.errors import AggregationError
from fedcollab.arrays import global_norm, output_dtype
from fedcollab.types import Weights

__all__ = ["proximal_gradient", "proximal_term"]


def _check_mu(mu: float) -> None:
    if not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu >= 0):
        raise AggregationError(f"fedprox: got mu={mu!r}, expected a number >= 0")


def proximal_gradient(weights: Sequence[np.ndarray], global_weights: Sequence[np.ndarray],
                      mu: float) -> Weights:
    """Gradient of ``mu/2 * ||w - w_global||^2`` with respect to ``w``: ``mu * (w - w_global)``.

    Args:
        weights: The participant's current local weights.
        global_weights: The global weights it started the round from.
        mu: The proximal coefficient (>= 0; 0 turns FedProx into FedAvg).

    Returns:
        One array per weight, in the weights' float dtype.

    Raises:
        AggregationError: ``mu`` negative or not finite, or the shapes differ.
    """
    _check_mu(mu)
    same_structure(weights, global_weights, what="fedprox",
                   names=("the weights", "the global weights"))
    return [(mu * (np.asarray(w, dtype=np.float64) - np.asarray(g, dtype=np.float64)))
            .astype(output_dtype([w])) for w, g in zip(weights, global_weights)]


def proximal_term(weights: Sequence[np.ndarray], global_weights: Sequence[np.ndarray],
                  mu: float) -> float:
    """The value ``mu/2 * ||w - w_global||^2`` added to the local loss.

    Raises:
        AggregationError: ``mu`` negative or not finite, or the shapes differ.
    """
    _check_mu(mu)
    same_structure(weights, global_weights, what="fedprox",
                   names=("the weights", "the global weights"))
    diff = [np.asarray(w, dtype=np.float64) - np.asarray(g, dtype=np.float64)
            for w, g in zip(weights, global_weights)]
    return 0.5 * mu * global_norm(diff) ** 2
