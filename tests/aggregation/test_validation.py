"""Tests for fedcollab.aggregation.validation: reject bad updates with a reason."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcollab.aggregation import (
    AggregationError,
    UpdateRejected,
    check_update,
    partition_valid,
    reference_of,
    validate_update,
)
from fedcollab.types import Update

SHAPES = [(3, 2), (2,)]
DTYPES = [np.float32, np.float32]


def _good(value: float = 0.25) -> list[np.ndarray]:
    return [np.full((3, 2), value, np.float32), np.full(2, value, np.float32)]


def test_validate_update_good_update_passes() -> None:
    validate_update(_good(), SHAPES, dtypes=DTYPES, norm_bound=10.0)


def test_validate_update_single_dtype_applies_to_all_arrays() -> None:
    validate_update(_good(), SHAPES, dtypes="float32")
    validate_update(_good(), SHAPES, dtypes=np.float32)


def test_validate_update_nan_rejected_as_non_finite() -> None:
    update = _good()
    update[1][0] = np.nan
    with pytest.raises(UpdateRejected, match=r"array 1 \(shape \(2,\)\) has 1 non-finite") as info:
        validate_update(update, SHAPES, dtypes=DTYPES)
    assert info.value.kind == "non_finite"


def test_validate_update_inf_rejected_as_non_finite() -> None:
    update = _good()
    update[0][2, 1] = -np.inf
    with pytest.raises(UpdateRejected, match="non-finite"):
        validate_update(update, SHAPES, dtypes=DTYPES)


def test_validate_update_wrong_shape_rejected() -> None:
    update = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)]
    with pytest.raises(UpdateRejected, match=r"array 0 has shape \(2, 3\), expected \(3, 2\)") \
            as info:
        validate_update(update, SHAPES, dtypes=DTYPES)
    assert info.value.kind == "shape"


def test_validate_update_wrong_number_of_arrays_rejected() -> None:
    with pytest.raises(UpdateRejected, match="got 1 arrays, expected 2") as info:
        validate_update(_good()[:1], SHAPES, dtypes=DTYPES)
    assert info.value.kind == "count"


def test_validate_update_wrong_dtype_rejected() -> None:
    update = [a.astype(np.float64) for a in _good()]
    with pytest.raises(UpdateRejected, match="array 0 has dtype float64, expected float32") \
            as info:
        validate_update(update, SHAPES, dtypes=DTYPES)
    assert info.value.kind == "dtype"


def test_validate_update_norm_above_bound_rejected() -> None:
    with pytest.raises(UpdateRejected, match="L2 norm 1000 exceeds the bound 10") as info:
        validate_update(_good(1000 / np.sqrt(8)), SHAPES, dtypes=DTYPES, norm_bound=10.0)
    assert info.value.kind == "norm"


def test_validate_update_not_a_list_rejected() -> None:
    with pytest.raises(UpdateRejected, match="got a ndarray, expected a list of 2") as info:
        validate_update(np.zeros((3, 2), np.float32), SHAPES, dtypes=DTYPES)  # type: ignore
    assert info.value.kind == "type"


def test_validate_update_element_not_ndarray_rejected() -> None:
    with pytest.raises(UpdateRejected, match="array 1 is a list"):
        validate_update([np.zeros((3, 2), np.float32), [0.0, 0.0]], SHAPES,  # type: ignore
                        dtypes=DTYPES)


def test_validate_update_reason_never_contains_weights() -> None:
    secret = 1234.5678
    update = [np.full((3, 2), secret, np.float32), np.array([secret, np.nan], np.float32)]
    with pytest.raises(UpdateRejected) as info:
        validate_update(update, SHAPES, dtypes=DTYPES)
    assert "1234" not in str(info.value)
    wrong_shape = [np.full((2, 3), secret, np.float32), np.full(2, secret, np.float32)]
    with pytest.raises(UpdateRejected) as info:
        validate_update(wrong_shape, SHAPES, dtypes=DTYPES)
    assert "1234" not in str(info.value)


def test_validate_update_bad_norm_bound_is_caller_error() -> None:
    with pytest.raises(AggregationError, match="norm_bound=-1"):
        validate_update(_good(), SHAPES, dtypes=DTYPES, norm_bound=-1)


def test_validate_update_dtype_count_mismatch_is_caller_error() -> None:
    with pytest.raises(AggregationError, match="got 1 dtypes for 2 reference shapes"):
        validate_update(_good(), SHAPES, dtypes=[np.float32])


def test_reference_of_returns_shapes_and_dtypes() -> None:
    shapes, dtypes = reference_of(_good())
    assert shapes == SHAPES and dtypes == [np.dtype(np.float32)] * 2


def test_partition_valid_splits_and_keeps_order() -> None:
    bad = _good()
    bad[0][0, 0] = np.nan
    updates = {5: _good(), 2: bad, 9: _good(), 1: _good()[:1]}
    valid, rejected = partition_valid(updates, SHAPES, dtypes=DTYPES)
    assert list(valid) == [5, 9]
    assert valid[5] is updates[5]
    assert set(rejected) == {2, 1}
    assert "non-finite" in rejected[2] and "got 1 arrays" in rejected[1]


def test_partition_valid_norm_bound_rejects_large_update() -> None:
    valid, rejected = partition_valid({0: _good(0.1), 1: _good(100.0)}, SHAPES, dtypes=DTYPES,
                                      norm_bound=5.0)
    assert list(valid) == [0] and "exceeds the bound 5" in rejected[1]


# ------------------------------------------------------------------- hidden non-finite values

NON_FINITE = [np.nan, np.inf, -np.inf]
FLOAT_DTYPES = [np.float16, np.float32, np.float64, np.longdouble]
COMPLEX_DTYPES = [np.complex64, np.complex128]


@st.composite
def _poisoned(draw: st.DrawFn) -> tuple[np.ndarray, np.dtype]:
    """A finite array of some float or complex dtype with one non-finite entry
    (NaN, inf or -inf; for complex in the real or the imaginary part)."""
    dtype = np.dtype(draw(st.sampled_from(FLOAT_DTYPES + COMPLEX_DTYPES)))
    shape = draw(st.sampled_from([(), (1,), (5,), (2, 3), (2, 1, 2)]))
    array = draw(hnp.arrays(dtype, shape, elements=st.floats(-10, 10, width=16)))
    bad = draw(st.sampled_from(NON_FINITE))
    at = draw(st.integers(0, max(array.size - 1, 0)))
    flat = array.reshape(-1)
    if dtype.kind == "c" and draw(st.booleans()):
        flat[at] = complex(float(flat[at].real), bad)
    else:
        flat[at] = bad
    return array, dtype


@settings(deadline=None, max_examples=200)
@given(case=_poisoned())
def test_validate_update_any_non_finite_form_rejected(case: tuple[np.ndarray, np.dtype]) -> None:
    array, dtype = case
    with pytest.raises(UpdateRejected) as info:
        validate_update([array], [array.shape], dtypes=dtype)
    assert info.value.kind == "non_finite"


@settings(deadline=None, max_examples=100)
@given(case=_poisoned(), mask=st.sampled_from(["all", "bad", "none"]))
def test_validate_update_masked_array_rejected_whatever_it_hides(
        case: tuple[np.ndarray, np.dtype], mask: str) -> None:
    """Finding (a regression): a NaN under a numpy mask passed the finiteness check."""
    array, dtype = case
    hide = {"all": np.ones(array.shape, bool), "bad": ~np.isfinite(array),
            "none": np.zeros(array.shape, bool)}[mask]
    masked = np.ma.masked_array(array, mask=hide)
    with pytest.raises(UpdateRejected) as info:
        validate_update([masked], [array.shape], dtypes=dtype)
    assert info.value.kind == "type" and "MaskedArray" in info.value.reason


def test_validate_update_masked_nan_in_float32_update_rejected() -> None:
    update = _good()
    hidden = _good()[0]
    hidden[1, 1] = np.nan
    update[0] = np.ma.masked_array(hidden, mask=np.isnan(hidden))
    assert bool(np.isfinite(update[0]).all())  # what the old check saw: all finite
    with pytest.raises(UpdateRejected, match="MaskedArray, expected a plain numpy ndarray"):
        validate_update(update, SHAPES, dtypes=DTYPES)


@pytest.mark.parametrize("values", [[0.5, 1.0], [float("nan"), 1.0], [None, 1.0], ["1", 2]])
def test_validate_update_object_array_rejected_even_when_object_expected(values: list) -> None:
    array = np.array(values, dtype=object)
    with pytest.raises(UpdateRejected, match="expected numbers") as info:
        validate_update([array], [(2,)], dtypes=object)
    assert info.value.kind == "dtype"


class _Subclass(np.ndarray):
    pass


def test_validate_update_ndarray_subclass_rejected() -> None:
    with pytest.raises(UpdateRejected, match="_Subclass"):
        validate_update([_good()[0].view(_Subclass), _good()[1]], SHAPES, dtypes=DTYPES)


# --------------------------------------------------------------------------- whole updates only

def _update(delta: list, pid: int = 0) -> Update:
    return Update(pid, delta, 10, 0.0)


def test_check_update_missing_array_rejects_the_whole_update() -> None:
    reason = check_update(_update([_good()[0], None]), SHAPES)
    assert reason.startswith("missing: array(s) 1 left out")


def test_check_update_private_arrays_of_its_group_may_be_left_out() -> None:
    assert check_update(_update([_good()[0], None]), SHAPES, private={1}) == ""
    assert check_update(_update(_good()), SHAPES, private={1}).startswith("private: array(s) 1")
    reason = check_update(_update([None, None]), SHAPES, private={1})
    assert reason.startswith("missing: array(s) 0")
