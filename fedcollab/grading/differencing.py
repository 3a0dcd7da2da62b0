"""Differencing: what subtraction recovers from what the server legitimately sees.

Secure aggregation hides an update inside a sum but not the sum. Two cases:

* **Open minus total**: the server sees every open update in the clear and the
  secure group's unmasked sum. If the vendor's sites are the only secure members,
  ``total - sum(open)`` *is* the vendor's aggregate, exactly (DESIGN.md, "Secure
  aggregation, honestly"). With community members inside the secure group the
  difference mixes them in and the vendor aggregate is not isolated.
* **Across rounds** (So et al., "Securing Secure Aggregation", AAAI 2023; Lam et al.,
  "Gradient Disaggregation", ICML 2021): sums over member sets that differ by a few
  participants give those participants' contributions by subtraction; exactly so
  when their contributions do not change between rounds (federated analytics), and
  approximately for model updates. :func:`across_changing_rounds` is the general
  form: any set of participants whose indicator is a linear combination of the
  rounds' membership vectors (a nested pair ``B \\ A``; with enough rounds every
  participant alone, Lam et al.'s disaggregation) is estimated by the same
  combination of the sums.

All functions are pure numpy over flat vectors (``n_i * delta_i`` as the secure sum
weighs them).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from fedcollab.grading.inversion import relative_error

__all__ = ["DifferencingResult", "vendor_by_differencing", "across_rounds", "EXACT", "SumSeen",
           "CrossRoundResult", "identifiable_sets", "across_changing_rounds", "cosine",
           "EXACT_FROM_RUN", "cosine_gain"]

EXACT = 1e-6  # relative error below which a recovery counts as exact
#: The same, for a sum read off the run's own output (a float32 checkpoint, a fixed-point
#: secure sum): an exact recovery through them shows as ~1e-5, a leak-free one as >= 0.1.
EXACT_FROM_RUN = 1e-3


def cosine_gain(cos: Optional[float], base: Optional[float]) -> float:
    """The share of the angle between what isolates nothing (a whole sum, cosine ``base``)
    and the truth that a recovery with cosine ``cos`` closes: 0 = no better than the
    round's aggregate, 1 = the truth's direction. Without a baseline, ``cos`` itself."""
    c = 0.0 if cos is None else float(cos)
    if base is None:
        return c
    return _excess(c, float(base))


def cosine(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Cosine similarity of two flat vectors (0 when either is zero): how much of the true
    update's direction an estimate gives away, whatever its scale or added noise. A random
    direction scores ~1/sqrt(d) (d = the model's size; ~0.014 on the default task)."""
    a = np.asarray(estimate, np.float64).ravel()
    b = np.asarray(truth, np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else 0.0


@dataclass(frozen=True)
class DifferencingResult:
    relative_error: float
    exact: bool
    min_group_seen: int  # fewest contributors behind anything the server can isolate
    cosine: Optional[float] = None  # of the estimate to the truth
    # of the round's whole aggregate to the truth: what isolating nothing already gives
    # (updates of one round share a direction, the global gradient's)
    baseline_cosine: Optional[float] = None

    def to_json(self) -> dict[str, object]:
        return {"relative_error": _finite(self.relative_error), "exact": self.exact,
                "min_group_seen": self.min_group_seen, "cosine": self.cosine,
                "baseline_cosine": self.baseline_cosine}


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e300


def vendor_by_differencing(open_updates: Mapping[int, np.ndarray],
                           secure_sums: Sequence[tuple[frozenset[int], np.ndarray]],
                           vendor_truth: np.ndarray, vendor_members: frozenset[int], *,
                           exact_below: float = EXACT,
                           known: Optional[Mapping[int, np.ndarray]] = None
                           ) -> DifferencingResult:
    """Recover the vendor's aggregate from one round's view.

    Args:
        open_updates: pid -> weighted update the server saw in the clear.
        secure_sums: (members, unmasked sum) per secure group.
        vendor_truth: the vendor's true aggregate (sum of its sites' weighted updates).
        vendor_members: the vendor's participant ids.
        known: what colluding participants add: their own vectors as they entered the
            secure sum (DP noise included: they know it), subtracted from every sum
            they are in (the server with c community members; So et al. 2023).

    Returns:
        The best estimate's error: the vendor's open updates (if any) plus every
        secure sum containing a vendor site; ``min_group_seen`` is the smallest
        number of participants behind a vector the server holds that carries vendor
        data (1 for an open vendor update).
    """
    estimate = np.zeros_like(np.asarray(vendor_truth, np.float64))
    groups: list[int] = []  # sizes of the vectors that hold vendor data
    for pid, update in open_updates.items():
        if pid in vendor_members:
            groups.append(1)
            estimate = estimate + np.asarray(update, np.float64)
    known = dict(known or {})
    for members, total in secure_sums:
        if members & vendor_members:
            told = [p for p in members if p in known and p not in vendor_members]
            groups.append(len(members) - len(told))
            estimate = estimate + np.asarray(total, np.float64)
            for p in told:  # colluders take their own contributions out of the sum
                estimate = estimate - np.asarray(known[p], np.float64)
    err = relative_error(estimate, vendor_truth)
    whole = sum((np.asarray(v, np.float64) for v in open_updates.values()),
                np.zeros_like(estimate))
    for _, total in secure_sums:
        whole = whole + np.asarray(total, np.float64)
    return DifferencingResult(err, err < exact_below, min(groups) if groups else 0,
                              cosine(estimate, vendor_truth), cosine(whole, vendor_truth))


def across_rounds(sums: Sequence[tuple[frozenset[int], np.ndarray]],
                  truths: Mapping[int, np.ndarray]) -> DifferencingResult:
    """Subtract every pair of secure sums whose member sets are nested.

    For ``A ⊂ B``, ``sum_B - sum_A`` estimates the contribution of ``B \\ A``; the
    result reports the smallest such difference and its error against the true
    contributions (``truths``: pid -> that participant's vector, assumed the same in
    both rounds, the exact case).
    """
    best_err, best_size = math.inf, min((len(m) for m, _ in sums), default=0)
    for (ma, sa), (mb, sb) in itertools.permutations(sums, 2):
        if not (ma < mb):
            continue
        rest = mb - ma
        truth = sum((np.asarray(truths[p], np.float64) for p in rest),
                    np.zeros_like(np.asarray(sb, np.float64)))
        err = relative_error(np.asarray(sb, np.float64) - np.asarray(sa, np.float64), truth)
        if len(rest) < best_size or (len(rest) == best_size and err < best_err):
            best_size, best_err = len(rest), err
    return DifferencingResult(best_err, best_err < EXACT, best_size)


# ------------------------------------------------------------------ across changing rounds
_SPAN_TOL = 1e-8  # residual below which an indicator is in the span of the memberships


@dataclass(frozen=True)
class SumSeen:
    """One secure sum as the server saw it, and the truth behind it (for scoring).

    ``total`` is the unmasked sum the server reads (DP noise included, if any);
    ``parts`` is each member's true contribution that round, before noise, weighted
    as the sum weighs it.
    """

    round: int
    members: frozenset[int]
    total: np.ndarray
    parts: Mapping[int, np.ndarray]


@dataclass(frozen=True)
class CrossRoundResult:
    sums: int                    # secure sums compared
    identifiable: int            # candidate sets below the group size the sums determine
    isolated: int                # size of the best recovered set (0: none)
    relative_error: Optional[float]
    exact: bool
    rounds: tuple[int, ...]      # rounds whose sums the best recovery combines
    members: tuple[int, ...]     # the participants it isolates
    cosine: Optional[float] = None  # of the best recovery to the true contribution
    baseline_cosine: Optional[float] = None  # of the best single whole sum to it

    def to_json(self) -> dict[str, object]:
        err = None if self.relative_error is None else _finite(self.relative_error)
        return {"sums": self.sums, "identifiable": self.identifiable, "isolated": self.isolated,
                "relative_error": err, "exact": self.exact, "rounds": list(self.rounds),
                "members": list(self.members), "cosine": self.cosine,
                "baseline_cosine": self.baseline_cosine}


def _membership_matrix(memberships: Sequence[frozenset[int]]) -> tuple[np.ndarray, list[int]]:
    pids = sorted(set().union(*memberships)) if memberships else []
    col = {p: j for j, p in enumerate(pids)}
    m = np.zeros((len(memberships), len(pids)))
    for r, members in enumerate(memberships):
        for p in members:
            m[r, col[p]] = 1.0
    return m, pids


def _combination(m: np.ndarray, pids: Sequence[int], target: frozenset[int]
                 ) -> Optional[np.ndarray]:
    """Coefficients ``a`` with ``a @ m`` equal to the target's indicator (least norm),
    or None when no combination of the sums isolates the target."""
    t = np.array([1.0 if p in target else 0.0 for p in pids])
    a, *_ = np.linalg.lstsq(m.T, t, rcond=None)
    if float(np.linalg.norm(m.T @ a - t)) > _SPAN_TOL * max(1.0, math.sqrt(len(pids))):
        return None
    a[np.abs(a) < 1e-12] = 0.0
    return np.asarray(a)


def identifiable_sets(memberships: Sequence[frozenset[int]], *,
                      targets: Optional[frozenset[int]] = None
                      ) -> list[tuple[frozenset[int], np.ndarray]]:
    """The sets of participants smaller than every sum whose total the sums determine.

    Candidates: every participant alone, every difference ``B \\ A`` of nested
    member sets ``A < B`` and, with ``targets``, the targets together (e.g. the
    vendor's aggregate); with ``targets`` only sets holding a target count. Each comes
    with the coefficients over ``memberships`` that isolate it, smallest sets first.
    Pure in the memberships: tells, before any replay, which rounds are worth it.
    """
    rows = [frozenset(s) for s in memberships]
    nonempty = [s for s in rows if s]
    if len(nonempty) < 2:
        return []
    smallest = min(len(s) for s in nonempty)
    candidates: set[frozenset[int]] = {frozenset({p}) for p in set().union(*nonempty)}
    for a, b in itertools.permutations(set(nonempty), 2):
        if a < b:
            candidates.add(b - a)
    if targets is not None and targets & set().union(*nonempty):
        candidates.add(frozenset(targets & set().union(*nonempty)))
    m, pids = _membership_matrix(rows)
    found = []
    for cand in sorted(candidates, key=lambda c: (len(c), sorted(c))):
        if len(cand) >= smallest or (targets is not None and not cand & targets):
            continue
        coeffs = _combination(m, pids, cand)
        if coeffs is not None:
            found.append((cand, coeffs))
    return found


def across_changing_rounds(sums: Sequence[SumSeen], *,
                           targets: Optional[frozenset[int]] = None) -> CrossRoundResult:
    """What subtracting secure sums across rounds whose membership changed recovers.

    For each set ``T`` the sums determine (:func:`identifiable_sets`), the estimate is
    ``sum_r a_r * total_r`` and the truth is ``sum_r a_r * sum_{j in T} parts_r[j]``
    (for a nested pair ``A < B``: the newcomers' contributions in B's round). The
    rest cancels only if the other members contributed the same in every round
    combined: exact for constant inputs, approximate for model updates (each round
    starts from a different global model). A nested pair is also tried on its own
    (``total_B - total_A``), which an attacker prefers when the rounds are adjacent.

    Returns:
        The smallest recovered set, and among those the highest cosine to the truth
        (then the lowest relative error); ``isolated`` 0 and ``relative_error`` None when
        membership never changed in a way that isolates anything smaller than a sum.
    """
    found = identifiable_sets([s.members for s in sums], targets=targets)
    if not found:
        return CrossRoundResult(len(sums), 0, 0, None, False, (), ())
    best: Optional[tuple[int, float, float, float, tuple[int, ...], frozenset[int]]] = None
    for target, coeffs in found:
        options = [coeffs]
        for i, j in itertools.permutations(range(len(sums)), 2):
            if sums[i].members < sums[j].members and sums[j].members - sums[i].members == target:
                pair = np.zeros(len(sums))
                pair[i], pair[j] = -1.0, 1.0
                options.append(pair)
        for a in options:
            estimate = np.zeros_like(np.asarray(sums[0].total, np.float64))
            truth = np.zeros_like(estimate)
            for r, s in enumerate(sums):
                if a[r]:
                    estimate = estimate + a[r] * np.asarray(s.total, np.float64)
                    for p in target & s.members:
                        truth = truth + a[r] * np.asarray(s.parts[p], np.float64)
            err = relative_error(estimate, truth)
            cos = cosine(estimate, truth)
            # a whole sum of one of those rounds isolates nothing: its cosine is the bar
            base = max(cosine(sums[r].total, truth) for r in range(len(sums)) if a[r])
            gain = _excess(cos, base)
            rounds = tuple(sorted({sums[r].round for r in range(len(sums)) if a[r]}))
            if best is None or (len(target), -gain, err) < \
                    (best[0], -_excess(best[2], best[3]), best[1]):
                best = (len(target), err, cos, base, rounds, target)
    assert best is not None
    size, err, cos, base, rounds, target = best
    return CrossRoundResult(len(sums), len(found), size, err, err < EXACT, rounds,
                            tuple(sorted(target)), cos, base)


def _excess(cos: float, base: float) -> float:
    """How much of the angle a whole sum leaves, a recovery closes: (cos - base) / (1 - base)."""
    return (cos - base) / (1.0 - base) if base < 1.0 else 0.0
