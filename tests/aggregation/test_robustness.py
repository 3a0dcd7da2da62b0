"""A pure-numpy robustness check: sign-flipped, scaled Byzantine updates."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.aggregation import aggregate, global_norm, weighted_mean


def _attack(seed: int = 0) -> tuple[list, list[int], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    direction = [np.full((10, 5), 0.5), np.full(5, 0.5)]
    honest = [[d + rng.normal(0.0, 0.1, size=d.shape) for d in direction] for _ in range(16)]
    byzantine = [[-10.0 * a for a in honest[i]] for i in range(4)]   # 20%: sign flip, x10
    updates = honest[:8] + byzantine[:2] + honest[8:] + byzantine[2:]
    honest_mean = weighted_mean(honest, [1] * len(honest))
    return updates, [1] * len(updates), honest_mean


def _cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    dot = sum(float(np.sum(x * y)) for x, y in zip(a, b))
    return dot / (global_norm(a) * global_norm(b))


def test_robustness_weighted_mean_goes_the_wrong_way() -> None:
    updates, counts, honest_mean = _attack()
    assert _cosine(aggregate("fedavg", updates, counts), honest_mean) < 0


@pytest.mark.parametrize("rule,options", [
    ("median", {}),
    ("trimmed_mean", {"beta": 0.2}),
    ("krum", {"f": 4}),
    ("multi_krum", {"f": 4}),
])
def test_robustness_robust_rules_stay_close_to_honest_mean(rule: str, options: dict) -> None:
    updates, counts, honest_mean = _attack()
    result = aggregate(rule, updates, counts, **options)
    error = global_norm([r - h for r, h in zip(result, honest_mean)])
    assert _cosine(result, honest_mean) > 0.95
    assert error < 0.25 * global_norm(honest_mean)


def test_robustness_norm_bound_limits_byzantine_pull() -> None:
    updates, counts, honest_mean = _attack()
    bound = 1.2 * max(global_norm(u) for u in updates[:8])
    result = aggregate("norm_bounded", updates, counts, bound=bound)
    # 4 clipped attackers can pull at most 4/20 of the bound against the honest direction.
    assert _cosine(result, honest_mean) > 0.5
