"""The robust rules against an independent, straightforward reference implementation.

The reference below is written from the papers' definitions with plain Python
numbers (exact ``Fraction`` arithmetic, lists, ``sorted``), sharing no code with
:mod:`fedcollab.aggregation.rules`. Hypothesis draws multi-array updates of small
integers, so distances and scores are exact in both implementations and ties (equal
scores, equal distances to a median) are frequent: the selections must agree index
for index, the aggregates value for value.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional, Sequence, Union

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.aggregation import (
    NotEnoughUpdatesError,
    bulyan,
    bulyan_select,
    krum,
    krum_select,
    median,
    multi_krum,
    norm_bounded_mean,
    trimmed_mean,
)

REFERENCE = settings(deadline=None, max_examples=150)

Flat = list[int]


# --------------------------------------------------------------------------- the reference

def _flat(update: list[np.ndarray]) -> Flat:
    values = [float(x) for a in update for x in np.asarray(a).ravel().tolist()]
    assert all(v.is_integer() for v in values)  # the inputs below: exact as Python ints
    return [int(v) for v in values]


def _unflat(values: Sequence[Union[int, Fraction]], like: list[np.ndarray]) -> list[np.ndarray]:
    out, at = [], 0
    for a in like:
        size = int(np.asarray(a).size)
        out.append(np.array([float(v) for v in values[at:at + size]]).reshape(np.shape(a)))
        at += size
    return out


def _dist2(a: Flat, b: Flat) -> int:
    return sum((x - y) ** 2 for x, y in zip(a, b))


def _mean(values: list[int]) -> Fraction:
    return Fraction(sum(values), len(values))


def _median(values: list[int]) -> Fraction:
    s = sorted(values)
    mid = len(s) // 2
    return Fraction(s[mid]) if len(s) % 2 else Fraction(s[mid - 1] + s[mid], 2)


def ref_krum_select(vectors: list[Flat], f: int, m: int) -> list[int]:
    """Blanchard et al. 2017: score = sum of the n - f - 2 smallest squared distances
    to the others; the m lowest scores, ties to the lower index."""
    n = len(vectors)
    scores = []
    for i in range(n):
        others = sorted(_dist2(vectors[i], vectors[j]) for j in range(n) if j != i)
        scores.append((sum(others[:n - f - 2]), i))
    return [i for _, i in sorted(scores)[:m]]


def ref_bulyan(vectors: list[Flat], f: int) -> tuple[list[int], list[Fraction]]:
    """El Mhamdi et al. 2018: Krum over what is left, theta = n - 2f times (at least
    one neighbour per score), then per coordinate the mean of the beta = theta - 2f
    selected values closest to their median (ties to the earlier pick)."""
    n = len(vectors)
    left = list(range(n))
    picks: list[int] = []
    while len(picks) < n - 2 * f:
        k = max(len(left) - f - 2, 1)
        best = None
        for i in left:  # ascending index: a tie keeps the lower one
            others = sorted(_dist2(vectors[i], vectors[j]) for j in left if j != i)
            score = sum(others[:k])
            if best is None or score < best[0]:
                best = (score, i)
        assert best is not None
        picks.append(best[1])
        left.remove(best[1])
    beta = len(picks) - 2 * f
    out = []
    for c in range(len(vectors[0])):
        column = [vectors[i][c] for i in picks]
        med = _median(column)
        nearest = sorted(range(len(column)), key=lambda p: (abs(column[p] - med), p))[:beta]
        out.append(_mean([column[p] for p in nearest]))
    return picks, out


def ref_coordinatewise(vectors: list[Flat], trim: Optional[float]) -> list[Fraction]:
    """Yin et al. 2018: the median, or the mean after dropping floor(beta n) per end."""
    n = len(vectors)
    out = []
    for c in range(len(vectors[0])):
        column = sorted(v[c] for v in vectors)
        if trim is None:
            out.append(_median(column))
        else:
            k = math.floor(trim * n)
            out.append(_mean(column[k:n - k]))
    return out


def ref_norm_bounded(vectors: list[Flat], counts: list[int], bound: float) -> list[float]:
    """Sun et al. 2019: scale each update to norm <= bound, then the count-weighted mean."""
    total = sum(counts)
    out = [0.0] * len(vectors[0])
    for v, c in zip(vectors, counts):
        norm = math.sqrt(sum(float(x) ** 2 for x in v))
        scale = min(1.0, bound / norm) if norm > 0 else 1.0
        for i, x in enumerate(v):
            out[i] += c * float(x) * scale / total
    return out


# --------------------------------------------------------------------------- inputs

@st.composite
def integer_updates(draw: st.DrawFn, min_n: int = 1, max_n: int = 12,
                    ) -> list[list[np.ndarray]]:
    """n updates of 1-3 arrays (scalars included) of small integers: exact distances,
    many ties."""
    shapes = draw(st.lists(st.sampled_from([(), (1,), (3,), (2, 2), (1, 3)]),
                           min_size=1, max_size=3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(min_n, max_n))
    span = draw(st.sampled_from([1, 3, 20]))
    values = st.integers(-span, span)
    return [[np.array(draw(st.lists(values, min_size=int(np.prod(s)),
                                    max_size=int(np.prod(s)))), dtype=dtype).reshape(s)
             for s in shapes] for _ in range(n)]


def _close(got: list[np.ndarray], want: Sequence[Union[int, Fraction]],
           like: list[np.ndarray]) -> None:
    expected = _unflat(want, like)
    rtol = 1e-6 if like[0].dtype == np.float32 else 1e-12
    for g, e in zip(got, expected):
        assert g.dtype == like[0].dtype
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol)


# --------------------------------------------------------------------------- the comparisons

@REFERENCE
@given(us=integer_updates(), data=st.data())
def test_krum_and_multi_krum_match_reference(us: list[list[np.ndarray]],
                                             data: st.DataObject) -> None:
    n = len(us)
    if n < 3:
        return
    f = data.draw(st.integers(0, (n - 3) // 2))
    m = data.draw(st.integers(1, n))
    vectors = [_flat(u) for u in us]
    want = ref_krum_select(vectors, f, m)
    assert krum_select(us, f=f, m=m) == want
    _close(krum(us, f=f), vectors[want[0]], us[0])
    _close(multi_krum(us, f=f, m=m), [_mean(list(c)) for c in zip(*(vectors[i] for i in want))],
           us[0])


@REFERENCE
@given(us=integer_updates(min_n=3, max_n=11), data=st.data())
def test_bulyan_matches_reference(us: list[list[np.ndarray]], data: st.DataObject) -> None:
    f = data.draw(st.integers(0, (len(us) - 3) // 4))
    picks, want = ref_bulyan([_flat(u) for u in us], f)
    assert bulyan_select(us, f=f) == picks
    _close(bulyan(us, f=f), want, us[0])


@REFERENCE
@given(us=integer_updates(), beta=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.34, 0.49]))
def test_median_and_trimmed_mean_match_reference(us: list[list[np.ndarray]],
                                                 beta: float) -> None:
    vectors = [_flat(u) for u in us]
    _close(median(us), ref_coordinatewise(vectors, None), us[0])
    _close(trimmed_mean(us, beta=beta), ref_coordinatewise(vectors, beta), us[0])


@REFERENCE
@given(us=integer_updates(), data=st.data())
def test_norm_bounded_mean_matches_reference(us: list[list[np.ndarray]],
                                             data: st.DataObject) -> None:
    counts = data.draw(st.lists(st.integers(1, 50), min_size=len(us), max_size=len(us)))
    bound = data.draw(st.floats(0.1, 50.0))
    got = norm_bounded_mean(us, counts, bound=bound)
    want = ref_norm_bounded([_flat(u) for u in us], counts, bound)
    rtol = 1e-5 if us[0][0].dtype == np.float32 else 1e-9
    np.testing.assert_allclose(np.concatenate([g.ravel() for g in got]), want, rtol=rtol,
                               atol=rtol)


# --------------------------------------------------------------------------- Bulyan, by hand

def test_bulyan_low_index_byzantine_updates_are_not_picked() -> None:
    """Finding: Bulyan's last two picks took the lowest remaining index, so Byzantine
    updates at low ids always got into the selection. n = 7, f = 1: theta = 5."""
    rng = np.random.default_rng(0)
    honest = [[rng.normal(0.0, 0.01, 5)] for _ in range(6)]
    byzantine = [[np.full(5, 100.0)]]
    picks = bulyan_select(byzantine + honest, f=1)
    assert len(picks) == 5 and 0 not in picks


def test_bulyan_fewer_than_4f_plus_3_raises() -> None:
    with pytest.raises(NotEnoughUpdatesError, match="4f \\+ 3 = 11"):
        bulyan([[np.zeros(2)] for _ in range(10)], f=2)


def test_bulyan_selects_by_geometry_not_order() -> None:
    us = [[np.array([float(v)])] for v in (100, 0, 1, 3, 6, 10, 15)]
    for perm in ([0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [1, 0, 6, 2, 3, 4, 5]):
        picked = {perm[i] for i in bulyan_select([us[p] for p in perm], f=1)}
        assert 0 not in picked and len(picked) == 5
