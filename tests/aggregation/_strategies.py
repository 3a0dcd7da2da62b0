"""Hypothesis strategies shared by the aggregation tests: lists of updates."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcollab.types import Weights

SHAPES = [(2, 3), (4,), ()]
FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def update(draw: st.DrawFn, shapes: list[tuple[int, ...]] = SHAPES) -> Weights:
    """One update with the given array shapes and finite float64 values."""
    return [draw(hnp.arrays(np.float64, shape, elements=FINITE)) for shape in shapes]


@st.composite
def updates(draw: st.DrawFn, min_size: int = 1, max_size: int = 8) -> list[Weights]:
    """Several updates sharing :data:`SHAPES`."""
    n = draw(st.integers(min_size, max_size))
    return [draw(update()) for _ in range(n)]


def assert_weights_close(a: Weights, b: Weights, *, rtol: float = 1e-9,
                         atol: float = 1e-9) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
