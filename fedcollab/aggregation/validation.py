"""Check each open update before it is aggregated; reject, don't crash.

The server validates every update it sees in the clear (DESIGN.md, round step 5):
the right number of arrays, each with the expected shape and dtype, finite values,
and optionally an L2 norm within a bound (norm bounding, Sun et al. 2019). A bad
update is dropped with a reason; the round continues without it. Reasons describe
the update (counts, shapes, dtypes, its norm) and never its values.
"""
from __future__ import annotations

import math
from typing import Collection, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from fedcollab.aggregation.errors import AggregationError, UpdateRejected
from fedcollab.arrays import global_norm
from fedcollab.types import Update, Weights

__all__ = ["validate_update", "partition_valid", "reference_of", "check_update",
           "check_secure_sum"]

DTypes = Union[npt.DTypeLike, Sequence[npt.DTypeLike]]

#: dtype kinds an update may hold (bool, ints, floats, complex): never objects or text,
#: whose elements no finiteness check can vouch for
_NUMERIC = "biufc"


def reference_of(weights: Sequence[np.ndarray]) -> tuple[list[tuple[int, ...]], list[np.dtype]]:
    """The shapes and dtypes an update to ``weights`` must have (for :func:`validate_update`)."""
    return [tuple(np.shape(a)) for a in weights], [np.asarray(a).dtype for a in weights]


def _expected_dtypes(dtypes: DTypes, n: int) -> list[np.dtype]:
    if isinstance(dtypes, (str, np.dtype, type)):
        return [np.dtype(dtypes)] * n
    listed = list(dtypes)  # type: ignore[arg-type]
    if len(listed) != n:
        raise AggregationError(f"validate_update: got {len(listed)} dtypes for {n} reference "
                               "shapes; expected one dtype, or one per array")
    return [np.dtype(d) for d in listed]


def validate_update(update: Sequence[np.ndarray], reference_shapes: Sequence[Sequence[int]], *,
                    dtypes: DTypes, norm_bound: Optional[float] = None) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` is fit to aggregate.

    Checks, in order: a list of plain numpy arrays (no subclass: a masked array could
    hide a NaN); as many as ``reference_shapes``; each with its reference shape and a
    numeric dtype equal to its reference; all values finite (NaN, inf and -inf in any
    float or complex dtype are rejected); global L2 norm (all arrays together) at most
    ``norm_bound`` when one is given.

    Args:
        update: The participant's update, one array per shared model weight.
        reference_shapes: The expected shape of each array, in model order.
        dtypes: The expected dtype: one for all arrays, or one per array.
        norm_bound: The largest L2 norm accepted; None for no bound.

    Raises:
        UpdateRejected: With ``reason`` naming the first problem found and ``kind``
            one of ``type``, ``count``, ``shape``, ``dtype``, ``non_finite``, ``norm``.
        AggregationError: The reference itself is inconsistent, or ``norm_bound``
            is not a positive number (a caller bug, not the participant's fault).
    """
    shapes = [tuple(int(d) for d in s) for s in reference_shapes]
    expected = _expected_dtypes(dtypes, len(shapes))
    if norm_bound is not None and not (math.isfinite(norm_bound) and norm_bound > 0):
        raise AggregationError(f"validate_update: got norm_bound={norm_bound!r}, "
                               "expected a number > 0 or None")
    if isinstance(update, np.ndarray) or not isinstance(update, Sequence):
        raise UpdateRejected(f"got a {type(update).__name__}, expected a list of "
                             f"{len(shapes)} numpy arrays", kind="type")
    if len(update) != len(shapes):
        raise UpdateRejected(f"got {len(update)} arrays, expected {len(shapes)}", kind="count")
    for index, (array, shape, dtype) in enumerate(zip(update, shapes, expected)):
        # exactly ndarray: a subclass (a numpy masked array, a matrix) changes what
        # isfinite, sum and norm see, so a NaN under a mask would pass every check
        if type(array) is not np.ndarray:
            raise UpdateRejected(f"array {index} is a {type(array).__name__}, expected a "
                                 "plain numpy ndarray", kind="type")
        if array.shape != shape:
            raise UpdateRejected(f"array {index} has shape {array.shape}, expected {shape}",
                                 kind="shape")
        if array.dtype.kind not in _NUMERIC:
            raise UpdateRejected(f"array {index} has dtype {array.dtype}, expected numbers "
                                 f"({dtype})", kind="dtype")
        if array.dtype != dtype:
            raise UpdateRejected(f"array {index} has dtype {array.dtype}, expected {dtype}",
                                 kind="dtype")
    for index, array in enumerate(update):
        if array.dtype.kind in "fc":
            finite = np.isfinite(array)  # complex: both parts; float16 and longdouble too
            if not finite.all():
                bad = int(array.size - np.count_nonzero(finite))
                raise UpdateRejected(f"array {index} (shape {array.shape}) has {bad} "
                                     "non-finite value(s) (NaN or inf)", kind="non_finite")
    if norm_bound is not None:
        norm = global_norm(update)
        if norm > norm_bound:
            raise UpdateRejected(f"L2 norm {norm:.4g} exceeds the bound {norm_bound:g}",
                                 kind="norm")


def partition_valid(updates: Mapping[int, Weights], reference_shapes: Sequence[Sequence[int]], *,
                    dtypes: DTypes, norm_bound: Optional[float] = None,
                    ) -> tuple[dict[int, Weights], dict[int, str]]:
    """Split updates by participant into the valid ones and the rejected ones.

    Args:
        updates: Participant id -> update.
        reference_shapes: As for :func:`validate_update`.
        dtypes: As for :func:`validate_update`.
        norm_bound: As for :func:`validate_update`.

    Returns:
        ``(valid, rejected)``: ``valid`` maps id -> update (the same objects, input
        order kept); ``rejected`` maps id -> the reason it was dropped.

    Raises:
        AggregationError: The reference or ``norm_bound`` is itself invalid.
    """
    valid: dict[int, Weights] = {}
    rejected: dict[int, str] = {}
    for pid, update in updates.items():
        try:
            validate_update(update, reference_shapes, dtypes=dtypes, norm_bound=norm_bound)
        except UpdateRejected as error:
            rejected[pid] = error.reason
        else:
            valid[pid] = update
    return valid, rejected


def check_update(update: Update, shapes: Sequence[tuple[int, ...]], *,
                 norm_bound: Optional[float] = None,
                 max_samples: Optional[float] = None,
                 private: Collection[int] = ()) -> str:
    """Why an open update must be rejected, or ``""`` when it is fit to aggregate.

    Checks the claimed sample count (an integer in ``1..max_samples``: a participant
    could otherwise outweigh everyone by claiming 1e30 examples), that the update
    carries exactly the arrays its participant shares (``None`` at the indices in
    ``private``, an array everywhere else: an update is taken whole or not at all, so
    a participant cannot leave out an array to be judged array by array), then every
    shared array with :func:`validate_update`.
    The reason is ``"<kind>: <what is wrong>"`` and never contains values.

    Args:
        update: The open update as received.
        shapes: Every model array's shape, in model order.
        norm_bound: As for :func:`validate_update`.
        max_samples: The largest sample count a participant can hold.
        private: The model indices this participant keeps private (its group's
            ``private_layers``); every other array must be sent.
    """
    if isinstance(update.delta, np.ndarray) or not isinstance(update.delta, Sequence):
        return f"type: got a {type(update.delta).__name__}, expected a list of arrays"
    if len(update.delta) != len(shapes):
        return f"count: expected {len(shapes)} arrays, got {len(update.delta)}"
    n = update.num_samples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        return f"samples: sample count must be a positive integer, got {n!r}"
    if max_samples is not None and n > max_samples:
        return f"samples: claims {n} examples, more than any participant holds ({max_samples:g})"
    missing = [j for j, d in enumerate(update.delta) if d is None and j not in private]
    if missing:
        return (f"missing: array(s) {', '.join(map(str, missing))} left out (None), but this "
                "participant shares them; an update is taken whole or not at all")
    extra = [j for j, d in enumerate(update.delta) if d is not None and j in private]
    if extra:
        return (f"private: array(s) {', '.join(map(str, extra))} sent, but this participant's "
                "group keeps them private")
    shared = [(d, s) for d, s in zip(update.delta, shapes) if d is not None]
    try:
        validate_update([d for d, _ in shared], [s for _, s in shared],
                        dtypes=[np.float32] * len(shared), norm_bound=norm_bound)
    except UpdateRejected as err:
        return f"{err.kind}: {err.reason}"
    return ""


def check_secure_sum(weighted_delta: Sequence[np.ndarray], counts: Sequence[float], *,
                     members: int, weight_cap: float, norm_bound: Optional[float] = None,
                     quantum: float = 0.0) -> str:
    """Why a decoded secure sum must be refused, or ``""`` when ``members`` bounded
    members could have produced it.

    The server sees only the sum, never a member, so this is all it can check: each
    member declares a weight of at most ``weight_cap`` (one participant's share), so
    every per-array total weight lies in ``[0, members * weight_cap]``; and with a
    ``norm_bound`` B (robust rules) each member's ``weight * update`` has L2 norm at
    most ``weight_cap * B``, so the summed arrays have norm at most
    ``members * weight_cap * B`` (the triangle inequality). A member that inflates
    its weight or skips its clipping breaks the bound for the whole sum; which
    member did is not knowable, so the whole sum is refused.

    Args:
        weighted_delta: Per array, the decoded sum of ``weight * delta``.
        counts: Per array, the decoded sum of the weights.
        members: The members whose inputs are in the sum (the survivors).
        weight_cap: The largest weight one member may declare (same unit as ``counts``).
        norm_bound: The L2 bound each member clipped its update to, or ``None``.
        quantum: The fixed-point step of one member's coordinate (same unit), for
            the rounding the encoding adds.

    Returns:
        ``"<kind>: <what is wrong>"`` (``weight`` or ``norm``), or ``""``. It names the
        total weight (``weight_sum`` in metrics.jsonl anyway) and public bounds, never
        values or the norm of the sum.
    """
    if members <= 0:
        return ""
    cap = members * weight_cap
    slack = members * quantum
    for j, count in enumerate(counts):
        if not (math.isfinite(count) and -slack <= count <= cap * (1 + 1e-9) + slack):
            return (f"weight: the secure sum's total weight {count:.6g} on array {j} is outside "
                    f"[0, {cap:g}] = {members} member(s) x one participant's share "
                    f"{weight_cap:g}; a member declared more than its share")
    if norm_bound is not None:
        norm = global_norm(weighted_delta)
        size = sum(int(np.size(a)) for a in weighted_delta)
        limit = cap * norm_bound * (1 + 1e-9) + slack * math.sqrt(size)
        if not norm <= limit:
            return (f"norm: the secure sum's L2 norm exceeds {limit:.4g} = {members} "
                    f"member(s) x share {weight_cap:g} x bound {norm_bound:g}; a member did "
                    "not clip its update")
    return ""
