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
  approximately for model updates.

All functions are pure numpy over flat vectors (``n_i * delta_i`` as the secure sum
weighs them).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from fedcollab.grading.inversion import relative_error

__all__ = ["DifferencingResult", "vendor_by_differencing", "across_rounds", "EXACT"]

EXACT = 1e-6  # relative error below which a recovery counts as exact


@dataclass(frozen=True)
class DifferencingResult:
    relative_error: float
    exact: bool
    min_group_seen: int  # fewest contributors behind anything the server can isolate

    def to_json(self) -> dict[str, object]:
        return {"relative_error": _finite(self.relative_error), "exact": self.exact,
                "min_group_seen": self.min_group_seen}


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e300


def vendor_by_differencing(open_updates: Mapping[int, np.ndarray],
                           secure_sums: Sequence[tuple[frozenset[int], np.ndarray]],
                           vendor_truth: np.ndarray, vendor_members: frozenset[int]
                           ) -> DifferencingResult:
    """Recover the vendor's aggregate from one round's view.

    Args:
        open_updates: pid -> weighted update the server saw in the clear.
        secure_sums: (members, unmasked sum) per secure group.
        vendor_truth: the vendor's true aggregate (sum of its sites' weighted updates).
        vendor_members: the vendor's participant ids.

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
    for members, total in secure_sums:
        if members & vendor_members:
            groups.append(len(members))
            # subtract any open contribution known for these members (none, normally)
            estimate = estimate + np.asarray(total, np.float64)
    err = relative_error(estimate, vendor_truth)
    return DifferencingResult(err, err < EXACT, min(groups) if groups else 0)


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
