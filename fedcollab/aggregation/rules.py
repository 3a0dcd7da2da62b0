"""Aggregation rules: the weighted mean and the Byzantine-robust rules.

Every rule takes updates (``list[np.ndarray]`` each, one array per model weight, all
with the same shapes), accumulates in float64 and casts the result back to the
inputs' float dtype. Inputs are never modified.

Only :func:`weighted_mean` is a (weighted) *sum*, so only it can run over a secure
sum; the robust rules compare updates with each other and must see each one in the
clear (see :mod:`fedcollab.aggregation.registry`).

The robust rules ignore sample counts on purpose: a count is the participant's own
claim, and a Byzantine participant would inflate it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from fedcollab.aggregation._structure import check_structure
from fedcollab.aggregation.errors import AggregationError, NotEnoughUpdatesError
from fedcollab.arrays import flatten, global_norm, output_dtype, per_layer
from fedcollab.types import Weights

__all__ = [
    "weighted_mean",
    "median",
    "trimmed_mean",
    "krum_scores",
    "krum_select",
    "krum",
    "multi_krum",
    "norm_bounded_mean",
    "bulyan",
    "bulyan_select",
]


def _check_counts(counts: Sequence[float], n: int, *, what: str) -> list[float]:
    if len(counts) != n:
        raise AggregationError(f"{what}: got {n} updates but {len(counts)} counts; "
                               "expected one count per update")
    values = []
    for index, count in enumerate(counts):
        value = float(count)
        if not math.isfinite(value) or value < 0:
            raise AggregationError(
                f"{what}: count {index} is {count!r}, expected a finite number >= 0")
        values.append(value)
    if sum(values) <= 0:
        raise AggregationError(f"{what}: the counts add up to 0; expected a positive total")
    return values


def weighted_mean(updates: Sequence[Weights], counts: Sequence[float]) -> Weights:
    """Average per-layer updates, weighted by sample count (FedAvg).

    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017. The sum runs in the order given, in float64,
    so the result is bit-for-bit reproducible for the same inputs and order.

    Args:
        updates: One update per participant, all with the same array shapes.
        counts: Each participant's sample count (any non-negative weight); the
            server must trust these, as the mean gives each update count/total.

    Returns:
        ``sum_k counts[k] * updates[k] / sum_k counts[k]``, one array per layer, in
        the inputs' float dtype.

    Raises:
        NotEnoughUpdatesError: No updates.
        AggregationError: Counts missing, negative, non-finite or all zero, or the
            updates' shapes differ.
    """
    check_structure(updates, what="weighted_mean")
    weights = _check_counts(counts, len(updates), what="weighted_mean")
    total = math.fsum(weights)
    out: Weights = []
    for layer in range(len(updates[0])):
        acc = np.zeros(np.shape(updates[0][layer]), dtype=np.float64)
        for update, weight in zip(updates, weights):
            if weight:
                acc += np.asarray(update[layer], dtype=np.float64) * weight
        out.append((acc / total).astype(output_dtype([u[layer] for u in updates])))
    return out


def median(updates: Sequence[Weights]) -> Weights:
    """Coordinate-wise median (unweighted).

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018. Tolerates fewer than half of the updates
    being arbitrary. With an even number of updates a coordinate is the mean of its
    two middle values (numpy's convention).

    Args:
        updates: One update per participant, seen in the clear.

    Returns:
        The per-coordinate median, in the inputs' float dtype.

    Raises:
        NotEnoughUpdatesError: No updates.
        AggregationError: The updates' shapes differ.
    """
    check_structure(updates, what="median")
    return per_layer(updates, lambda stack: np.median(stack, axis=0))


def trimmed_mean(updates: Sequence[Weights], *, beta: float) -> Weights:
    """Coordinate-wise trimmed mean: drop the ``beta`` fraction at each end, average the rest.

    Yin et al., ICML 2018 (as :func:`median`). Per coordinate, ``k = floor(beta * n)``
    of the smallest and ``k`` of the largest values are dropped, as in
    ``scipy.stats.trim_mean``; when ``beta * n < 1`` nothing is trimmed, so choose
    ``beta >= 1/n`` (and above the Byzantine fraction) for it to be robust.

    Args:
        updates: One update per participant, seen in the clear.
        beta: Fraction trimmed from each end, in ``[0, 0.5)``.

    Returns:
        The per-coordinate trimmed mean, in the inputs' float dtype.

    Raises:
        AggregationError: ``beta`` outside ``[0, 0.5)``, or the updates' shapes differ.
        NotEnoughUpdatesError: No updates.
    """
    if not (isinstance(beta, (int, float)) and 0 <= beta < 0.5):
        raise AggregationError(f"trimmed_mean: got beta={beta!r}, expected a fraction in [0, 0.5)")
    check_structure(updates, what="trimmed_mean")
    n = len(updates)
    k = int(math.floor(beta * n))

    def reduce(stack: np.ndarray) -> np.ndarray:
        return np.asarray(np.sort(stack, axis=0)[k:n - k].mean(axis=0))

    return per_layer(updates, reduce)


def _check_f(f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
        raise AggregationError(f"krum: got f={f!r}, expected an integer >= 0")


def krum_scores(updates: Sequence[Weights], *, f: int) -> np.ndarray:
    """Krum score of each update: summed squared distance to its ``n - f - 2`` nearest others.

    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017. The guarantee needs
    ``n > 2f + 2``.

    Args:
        updates: One update per participant, seen in the clear.
        f: The number of Byzantine updates to tolerate (>= 0).

    Returns:
        A float64 array of ``n`` scores; lower is more central.

    Raises:
        AggregationError: ``f`` negative or not an integer, or shapes differ.
        NotEnoughUpdatesError: ``n <= 2f + 2``.
    """
    _check_f(f)
    check_structure(updates, what="krum")
    n = len(updates)
    if n <= 2 * f + 2:
        raise NotEnoughUpdatesError(
            f"krum: got {n} updates, need more than 2f + 2 = {2 * f + 2} to tolerate "
            f"f={f} Byzantine updates (Blanchard et al. 2017); lower f or add participants")
    vectors = np.stack([flatten(u) for u in updates])
    neighbours = n - f - 2
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        diff = vectors - vectors[i]
        distances = np.einsum("ij,ij->i", diff, diff)
        distances = np.delete(distances, i)
        scores[i] = np.sort(distances)[:neighbours].sum()
    return scores


def krum_select(updates: Sequence[Weights], *, f: int, m: int = 1) -> list[int]:
    """Indices of the ``m`` updates with the lowest Krum scores, best first.

    Ties go to the lower index, so the choice is deterministic.

    Raises:
        AggregationError: ``m`` outside ``1..n``.
        NotEnoughUpdatesError: ``n <= 2f + 2``.
    """
    scores = krum_scores(updates, f=f)
    n = len(scores)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise AggregationError(f"multi_krum: got m={m!r}, expected an integer in 1..{n}")
    order = np.argsort(scores, kind="stable")
    return [int(i) for i in order[:m]]


def krum(updates: Sequence[Weights], *, f: int) -> Weights:
    """Krum: return (a copy of) the single update with the lowest Krum score.

    Blanchard et al., NeurIPS 2017 (see :func:`krum_scores`).

    Args:
        updates: One update per participant, seen in the clear.
        f: The number of Byzantine updates to tolerate; needs ``n > 2f + 2``.

    Returns:
        The selected update, in the inputs' float dtype.

    Raises:
        NotEnoughUpdatesError: ``n <= 2f + 2``.
        AggregationError: Bad ``f`` or inconsistent shapes.
    """
    (chosen,) = krum_select(updates, f=f, m=1)
    return per_layer([updates[chosen]], lambda stack: stack[0])


def multi_krum(updates: Sequence[Weights], *, f: int, m: Optional[int] = None) -> Weights:
    """Multi-Krum: the unweighted mean of the ``m`` updates with the best Krum scores.

    Blanchard et al., NeurIPS 2017, section 5 (scores computed once over all ``n``
    updates). ``m = 1`` is Krum; ``m = n`` is the plain mean.

    Args:
        updates: One update per participant, seen in the clear.
        f: The number of Byzantine updates to tolerate; needs ``n > 2f + 2``.
        m: How many updates to average; ``None`` means ``n - f``.

    Returns:
        The mean of the selected updates, in the inputs' float dtype.

    Raises:
        NotEnoughUpdatesError: ``n <= 2f + 2``.
        AggregationError: Bad ``f`` or ``m``, or inconsistent shapes.
    """
    if m is None:
        _check_f(f)
        m = len(updates) - int(f)
    chosen = krum_select(updates, f=f, m=m)
    return per_layer([updates[i] for i in chosen], lambda stack: stack.mean(axis=0))


def norm_bounded_mean(updates: Sequence[Weights], counts: Sequence[float], *,
                      bound: float) -> Weights:
    """Scale each update down to global L2 norm <= ``bound``, then take the weighted mean.

    Norm bounding against backdoors: Sun, Kairouz, Suresh, McMahan, "Can You Really
    Backdoor Federated Learning?", arXiv 2019. Updates already within the bound are
    unchanged.

    Args:
        updates: One update per participant, seen in the clear.
        counts: Sample counts, as for :func:`weighted_mean`.
        bound: The largest L2 norm (over all arrays of an update) kept; > 0.

    Returns:
        The weighted mean of the clipped updates, in the inputs' float dtype.

    Raises:
        AggregationError: ``bound`` not a positive finite number, an update with a
            non-finite norm, bad counts or shapes.
        NotEnoughUpdatesError: No updates.
    """
    if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
        raise AggregationError(f"norm_bounded: got bound={bound!r}, expected a number > 0")
    check_structure(updates, what="norm_bounded")
    clipped: list[Weights] = []
    for index, update in enumerate(updates):
        norm = global_norm(update)
        if not math.isfinite(norm):
            raise AggregationError(f"norm_bounded: update {index} has a non-finite L2 norm; "
                                   "validate updates before aggregating")
        scale = min(1.0, bound / norm) if norm > 0 else 1.0
        clipped.append([np.asarray(a, dtype=np.float64) * scale for a in update])
    mean = weighted_mean(clipped, counts)
    return [a.astype(output_dtype([u[layer] for u in updates]))
            for layer, a in enumerate(mean)]


def _krum_pick(vectors: np.ndarray, f: int) -> int:
    """Index (into ``vectors``) of the lowest Krum score, over ``max(n - f - 2, 1)``
    nearest others; ties go to the lower index."""
    n = len(vectors)
    neighbours = max(n - f - 2, 1)
    best, best_score = 0, math.inf
    for i in range(n):
        diff = vectors - vectors[i]
        distances = np.delete(np.einsum("ij,ij->i", diff, diff), i)
        score = float(np.sort(distances)[:neighbours].sum())
        if score < best_score:
            best, best_score = i, score
    return best


def bulyan_select(updates: Sequence[Weights], *, f: int) -> list[int]:
    """The ``theta = n - 2f`` updates Bulyan's iterated Krum picks, in pick order.

    El Mhamdi et al., ICML 2018 (see :func:`bulyan`). Each pick is Krum over the
    updates still left, with the same ``f``: the lowest sum of squared distances to
    its ``n' - f - 2`` nearest other remaining updates (``n'`` left). The very last
    picks have ``n' - f - 2 < 1`` only when ``f = 1`` (three left); there the score is
    the distance to the single nearest remaining update, so every pick is decided by
    the updates' geometry, never by their order. Ties go to the lower index.

    Raises:
        NotEnoughUpdatesError: ``n < 4f + 3``.
        AggregationError: Bad ``f`` or inconsistent shapes.
    """
    _check_f(f)
    check_structure(updates, what="bulyan")
    n = len(updates)
    if n < 4 * f + 3:
        raise NotEnoughUpdatesError(
            f"bulyan: got {n} updates, need at least 4f + 3 = {4 * f + 3} to tolerate "
            f"f={f} Byzantine updates (El Mhamdi et al. 2018); lower f or add participants")
    vectors = np.stack([flatten(u) for u in updates])
    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < n - 2 * f:
        best = _krum_pick(vectors[remaining], f)
        selected.append(remaining.pop(best))
    return selected


def bulyan(updates: Sequence[Weights], *, f: int) -> Weights:
    """Bulyan: iterated Krum selection, then a coordinate-wise trimmed mean of it.

    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning
    in Byzantium", ICML 2018. Krum is applied recursively to pick ``theta = n - 2f``
    updates (:func:`bulyan_select`: each pick removed before the next, scores over
    whole updates); then for each coordinate the ``beta = theta - 2f`` selected
    values closest to the selection's median are averaged (ties in that distance go
    to the earlier pick). The guarantee needs ``n >= 4f + 3``.

    Args:
        updates: One update per participant, seen in the clear.
        f: The number of Byzantine updates to tolerate.

    Returns:
        The aggregated update, in the inputs' float dtype.

    Raises:
        NotEnoughUpdatesError: ``n < 4f + 3``.
        AggregationError: Bad ``f`` or inconsistent shapes.
    """
    selected = bulyan_select(updates, f=f)
    beta = len(selected) - 2 * f

    def reduce(stack: np.ndarray) -> np.ndarray:
        med = np.median(stack, axis=0)
        order = np.argsort(np.abs(stack - med), axis=0, kind="stable")[:beta]
        return np.asarray(np.take_along_axis(stack, order, axis=0).mean(axis=0))

    return per_layer([updates[i] for i in selected], reduce)
