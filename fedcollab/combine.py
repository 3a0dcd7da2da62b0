"""Combining open updates and secure sums into one global step (pure numpy).

Updates may cover different arrays: a vendor keeps its private layers, so its
update has ``None`` there. Every array is therefore averaged over the
participants that share it, weighted by sample counts:

    delta_j = (W_open_j * r_j + S_j) / (W_open_j + C_j)

where ``r_j`` is the rule's estimate over the open updates sharing array j
(the weighted mean for fedavg, or a robust rule), ``W_open_j`` their total
sample count, and ``S_j`` / ``C_j`` the secure group's sum of ``n_i * delta_ij``
and of ``n_i`` (all the server learns about the secure group).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

__all__ = ["OpenUpdate", "SecureSum", "combine"]


@dataclass(frozen=True)
class OpenUpdate:
    delta: Sequence[Optional[np.ndarray]]
    num_samples: int


@dataclass(frozen=True)
class SecureSum:
    """The unmasked sum over the secure survivors, per array."""

    weighted_delta: Sequence[np.ndarray]  # sum_i n_i * delta_ij (zeros where not shared)
    counts: Sequence[float]               # sum_i n_i over those sharing array j


def _rule_estimate(rule: str, deltas: list[np.ndarray], counts: list[int],
                   options: Mapping[str, Any]) -> np.ndarray:
    from fedcollab.aggregation import aggregate

    result = aggregate(rule, [[d] for d in deltas], counts, **options)
    return np.asarray(result[0], dtype=np.float64)


def combine(shapes: Sequence[tuple[int, ...]], open_updates: Sequence[OpenUpdate],
            secure: Optional[SecureSum] = None, *, rule: str = "fedavg",
            options: Optional[Mapping[str, Any]] = None,
            noise: Optional[Sequence[np.ndarray]] = None) -> tuple[list[np.ndarray], list[float]]:
    """The aggregated delta per array and the total sample weight behind it.

    Arrays nobody shared this round get a zero delta (and weight 0). `noise`
    (central DP) is added to each shared array's weighted sum before dividing.
    """
    options = dict(options or {})
    deltas: list[np.ndarray] = []
    weights: list[float] = []
    for j, shape in enumerate(shapes):
        sharers = [(u.delta[j], u.num_samples) for u in open_updates if u.delta[j] is not None]
        open_weight = float(sum(n for _, n in sharers))
        total = np.zeros(shape, dtype=np.float64)
        if sharers:
            if rule == "fedavg":
                for d, n in sharers:
                    total += n * np.asarray(d, dtype=np.float64)
            else:
                arrays = [np.asarray(d) for d, _ in sharers]
                total = open_weight * _rule_estimate(rule, arrays, [n for _, n in sharers],
                                                     options).reshape(shape)
        weight = open_weight
        if secure is not None and secure.counts[j] > 0:
            total = total + np.asarray(secure.weighted_delta[j], dtype=np.float64).reshape(shape)
            weight += float(secure.counts[j])
        if noise is not None and weight > 0:
            total = total + np.asarray(noise[j], dtype=np.float64).reshape(shape)
        deltas.append(total / weight if weight > 0 else total)
        weights.append(weight)
    return deltas, weights
