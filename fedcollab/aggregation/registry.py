"""The rule registry: look rules up by the names the job spec uses, and say which
rules can run over a secure sum.

Who sees what: a ``secure`` group reaches the server only as the masked **sum** of
its members' count-weighted updates. A weighted mean is a sum divided by a count, so
``fedavg`` composes with secure sums exactly (:func:`combine_with_secure_sum`). Every
robust rule compares individual updates (sorts coordinates, measures distances,
clips norms), so it can only act on ``open`` updates; secure sums are added after it,
unfiltered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from fedcollab.aggregation._arrays import output_dtype, same_structure
from fedcollab.aggregation.errors import AggregationError, UnknownRuleError
from fedcollab.aggregation.rules import (
    krum,
    median,
    multi_krum,
    norm_bounded_mean,
    trimmed_mean,
    weighted_mean,
)
from fedcollab.types import Weights

__all__ = [
    "Rule",
    "RULES",
    "SECURE_SUM_RULES",
    "INDIVIDUAL_UPDATE_RULES",
    "aggregate",
    "rule_options",
    "rule_needs_individual_updates",
    "secure_compatibility_message",
    "combine_with_secure_sum",
]


@dataclass(frozen=True)
class Rule:
    """One aggregation rule as the registry knows it.

    Attributes:
        name: The name used in job specs (``aggregation.rule``).
        apply: ``apply(updates, counts, **options) -> Weights``.
        needs_individual_updates: True when the rule must see each update in the
            clear, so it cannot run over a secure sum.
        uses_counts: Whether sample counts change the result.
        required: Options that must be given.
        optional: Options that may be given.
        reference: The paper the rule comes from.
    """

    name: str
    apply: Callable[..., Weights]
    needs_individual_updates: bool
    uses_counts: bool
    required: tuple[str, ...]
    optional: tuple[str, ...]
    reference: str

    def __call__(self, updates: Sequence[Weights], counts: Sequence[float],
                 **options: Any) -> Weights:
        """Same as :func:`aggregate` with this rule's name."""
        return aggregate(self.name, updates, counts, **options)


def _fedavg(updates: Sequence[Weights], counts: Sequence[float]) -> Weights:
    return weighted_mean(updates, counts)


def _median(updates: Sequence[Weights], counts: Sequence[float]) -> Weights:
    return median(updates)


def _trimmed_mean(updates: Sequence[Weights], counts: Sequence[float], *, beta: float) -> Weights:
    return trimmed_mean(updates, beta=beta)


def _krum(updates: Sequence[Weights], counts: Sequence[float], *, f: int) -> Weights:
    return krum(updates, f=f)


def _multi_krum(updates: Sequence[Weights], counts: Sequence[float], *, f: int,
                m: Optional[int] = None) -> Weights:
    return multi_krum(updates, f=f, m=m)


def _norm_bounded(updates: Sequence[Weights], counts: Sequence[float], *,
                  bound: float) -> Weights:
    return norm_bounded_mean(updates, counts, bound=bound)


#: Every rule by its spec name (read-only).
RULES: Mapping[str, Rule] = MappingProxyType({
    "fedavg": Rule("fedavg", _fedavg, False, True, (), (),
                   "McMahan et al., AISTATS 2017"),
    "median": Rule("median", _median, True, False, (), (),
                   "Yin et al., ICML 2018"),
    "trimmed_mean": Rule("trimmed_mean", _trimmed_mean, True, False, ("beta",), (),
                         "Yin et al., ICML 2018"),
    "krum": Rule("krum", _krum, True, False, ("f",), (),
                 "Blanchard et al., NeurIPS 2017"),
    "multi_krum": Rule("multi_krum", _multi_krum, True, False, ("f",), ("m",),
                       "Blanchard et al., NeurIPS 2017"),
    "norm_bounded": Rule("norm_bounded", _norm_bounded, True, True, ("bound",), (),
                         "Sun et al., arXiv 2019"),
})

#: Rules that are a (weighted) sum, so they can run over secure sums.
SECURE_SUM_RULES: frozenset[str] = frozenset(n for n, r in RULES.items()
                                             if not r.needs_individual_updates)
#: Rules that must see every update in the clear (all the robust ones).
INDIVIDUAL_UPDATE_RULES: frozenset[str] = frozenset(n for n, r in RULES.items()
                                                    if r.needs_individual_updates)


def _rule(name: str) -> Rule:
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise UnknownRuleError(
            f"aggregation rule: got {name!r}, expected one of {', '.join(sorted(RULES))}"
        ) from None


def aggregate(rule: str, updates: Sequence[Weights], counts: Sequence[float],
              **options: Any) -> Weights:
    """Aggregate updates with the rule named ``rule``.

    Options by rule: ``trimmed_mean``: ``beta``; ``krum``: ``f``; ``multi_krum``:
    ``f`` and optionally ``m``; ``norm_bounded``: ``bound``. (Spec fields:
    ``trim_beta``, ``krum_f``, ``multi_krum_m``, ``norm_bound``.)

    Args:
        rule: A key of :data:`RULES`.
        updates: One update per participant.
        counts: One sample count per update (ignored by rules that do not use them).
        **options: The rule's options; unknown ones are an error, so a typo is not
            silently ignored.

    Returns:
        The aggregated update.

    Raises:
        UnknownRuleError: Unknown rule, unknown option or missing required option.
        AggregationError: From the rule itself (too few updates, bad shapes, ...).
    """
    info = _rule(rule)
    allowed = info.required + info.optional
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UnknownRuleError(
            f"aggregation rule {rule!r}: got option(s) {', '.join(unknown)}, expected "
            f"{', '.join(allowed) if allowed else 'no options'}")
    missing = [name for name in info.required if name not in options]
    if missing:
        raise UnknownRuleError(
            f"aggregation rule {rule!r}: missing option(s) {', '.join(missing)}")
    return info.apply(updates, counts, **options)


def rule_options(rule: str, *, trim_beta: float = 0.1, krum_f: int = 1,
                 multi_krum_m: Optional[int] = None,
                 norm_bound: Optional[float] = None) -> dict[str, Any]:
    """The options :func:`aggregate` needs for ``rule``, from the job spec's field names.

    ``aggregate(spec.rule, updates, counts, **rule_options(spec.rule, trim_beta=...,
    krum_f=..., multi_krum_m=..., norm_bound=...))`` passes only what the rule takes.

    Raises:
        UnknownRuleError: Unknown rule, or ``norm_bounded`` without ``norm_bound``.
    """
    _rule(rule)
    if rule == "trimmed_mean":
        return {"beta": trim_beta}
    if rule == "krum":
        return {"f": krum_f}
    if rule == "multi_krum":
        return {"f": krum_f, "m": multi_krum_m}
    if rule == "norm_bounded":
        if norm_bound is None:
            raise UnknownRuleError("aggregation rule 'norm_bounded' needs norm_bound "
                                   "(the L2 norm each open update is scaled down to)")
        return {"bound": norm_bound}
    return {}


def rule_needs_individual_updates(rule: str) -> bool:
    """Whether ``rule`` must see each update in the clear (True for every robust rule).

    Raises:
        UnknownRuleError: ``rule`` is not a key of :data:`RULES`.
    """
    return _rule(rule).needs_individual_updates


def secure_compatibility_message(rule: str) -> str:
    """One or two sentences on what ``rule`` means when some groups are secure.

    For the spec validator and the scorecard: ``fedavg`` composes with secure sums;
    a robust rule only filters the open updates.

    Raises:
        UnknownRuleError: ``rule`` is not a key of :data:`RULES`.
    """
    info = _rule(rule)
    if not info.needs_individual_updates:
        return (f"{rule!r} is a weighted sum, so each secure group's masked sum adds into it "
                "exactly; it works with any mix of open and secure groups.")
    return (f"{rule!r} ({info.reference}) must see each update in the clear, but a secure "
            "group reaches the server only as one masked sum: the rule filters the open "
            "updates only, and secure sums are added after it unfiltered (a Byzantine "
            "member of a secure group is not stopped). With every group secure there is "
            "nothing for it to act on: use 'fedavg', or make some groups open.")


def combine_with_secure_sum(open_aggregate: Optional[Weights], open_total: float,
                            secure_weighted_sum: Optional[Weights],
                            secure_total: float) -> Weights:
    """Merge the open groups' aggregate with the secure groups' unmasked sum.

    Secure participants weight their update by their count before masking, so the
    server learns ``S = sum_k n_k * delta_k`` and ``N_s = sum_k n_k``. The result is
    ``(N_o * open_aggregate + S) / (N_o + N_s)``: with ``fedavg`` over the open
    updates it equals the weighted mean over everyone.

    Args:
        open_aggregate: The rule's output over the open updates, or None if none.
        open_total: The open updates' total count (the weight of ``open_aggregate``).
        secure_weighted_sum: The unmasked sum of count-weighted secure updates, or None.
        secure_total: The secure participants' total count.

    Returns:
        The combined update, in the inputs' float dtype.

    Raises:
        AggregationError: Both parts missing, negative or zero totals, or shapes differ.
    """
    for name, value in (("open_total", open_total), ("secure_total", secure_total)):
        if not math.isfinite(float(value)) or value < 0:
            raise AggregationError(f"combine_with_secure_sum: got {name}={value!r}, "
                                   "expected a finite number >= 0")
    parts: list[tuple[Weights, float]] = []
    if open_aggregate is not None and open_total > 0:
        parts.append(([np.asarray(a, dtype=np.float64) * float(open_total)
                       for a in open_aggregate], float(open_total)))
    if secure_weighted_sum is not None and secure_total > 0:
        parts.append(([np.asarray(a, dtype=np.float64) for a in secure_weighted_sum],
                      float(secure_total)))
    if not parts:
        raise AggregationError("combine_with_secure_sum: got no open aggregate and no secure "
                               "sum with a positive count; nothing to combine")
    if len(parts) == 2:
        same_structure(parts[0][0], parts[1][0], what="combine_with_secure_sum",
                       names=("the open aggregate", "the secure sum"))
    total = sum(weight for _, weight in parts)
    sources = [a for a in (open_aggregate, secure_weighted_sum) if a is not None]
    out: Weights = []
    for layer in range(len(parts[0][0])):
        acc = sum((p[0][layer] for p in parts), start=np.zeros(np.shape(parts[0][0][layer])))
        out.append((acc / total).astype(output_dtype([s[layer] for s in sources])))
    return out
