"""The rule registry: look rules up by the names the job spec uses, and say which
rules can run over a secure sum.

Who sees what: a ``secure`` group reaches the server only as the masked **sum** of
its members' count-weighted updates. A weighted mean is a sum divided by a count, so
``fedavg`` composes with secure sums exactly (:func:`combine_with_secure_sum`). Every
robust rule compares individual updates (sorts coordinates, measures distances,
clips norms), so it can only act on ``open`` updates; secure sums are added after it
(:class:`fedcollab.aggregation.aggregator.Aggregator` is the one place that composes
the two). What bounds a secure group under a robust rule instead: each member caps
its weight at one participant's share and clips its update to the rule's bound
(:func:`secure_member_bound`) before masking, and the server refuses a decoded sum
whose total weight or norm exceeds what that many bounded members can produce.

Adding a rule is one function in :mod:`~fedcollab.aggregation.rules` plus one entry
in :data:`RULES`, which also names the spec fields (``aggregation.*``) its options
come from; the spec validates ``aggregation.rule`` against this registry.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fedcollab.aggregation.errors import UnknownRuleError
from fedcollab.aggregation.rules import (
    bulyan,
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
    "options_from_spec",
    "rule_needs_individual_updates",
    "secure_compatibility_message",
    "secure_member_bound",
    "min_updates",
]


@dataclass(frozen=True)
class Rule:
    """One aggregation rule as the registry knows it.

    Attributes:
        name: The name used in job specs (``aggregation.rule``).
        apply: ``apply(updates, counts, **options) -> Weights`` over whole updates.
        needs_individual_updates: True when the rule must see each update in the
            clear, so it cannot run over a secure sum.
        uses_counts: Whether sample counts change the result.
        required: Options that must be given.
        optional: Options that may be given.
        reference: The paper the rule comes from.
        spec_options: For each option, the ``aggregation`` spec field it comes from.
    """

    name: str
    apply: Callable[..., Weights]
    needs_individual_updates: bool
    uses_counts: bool
    required: tuple[str, ...]
    optional: tuple[str, ...]
    reference: str
    spec_options: Mapping[str, str] = field(default_factory=dict)

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
                m: int | None = None) -> Weights:
    return multi_krum(updates, f=f, m=m)


def _norm_bounded(updates: Sequence[Weights], counts: Sequence[float], *,
                  bound: float) -> Weights:
    return norm_bounded_mean(updates, counts, bound=bound)


def _bulyan(updates: Sequence[Weights], counts: Sequence[float], *, f: int) -> Weights:
    return bulyan(updates, f=f)


#: Every rule by its spec name (read-only).
RULES: Mapping[str, Rule] = MappingProxyType({
    "fedavg": Rule("fedavg", _fedavg, False, True, (), (),
                   "McMahan et al., AISTATS 2017"),
    "median": Rule("median", _median, True, False, (), (),
                   "Yin et al., ICML 2018"),
    "trimmed_mean": Rule("trimmed_mean", _trimmed_mean, True, False, ("beta",), (),
                         "Yin et al., ICML 2018", {"beta": "trim_beta"}),
    "krum": Rule("krum", _krum, True, False, ("f",), (),
                 "Blanchard et al., NeurIPS 2017", {"f": "krum_f"}),
    "multi_krum": Rule("multi_krum", _multi_krum, True, False, ("f",), ("m",),
                       "Blanchard et al., NeurIPS 2017", {"f": "krum_f", "m": "multi_krum_m"}),
    "norm_bounded": Rule("norm_bounded", _norm_bounded, True, True, ("bound",), (),
                         "Sun et al., arXiv 2019", {"bound": "clip_bound"}),
    "bulyan": Rule("bulyan", _bulyan, True, False, ("f",), (),
                   "El Mhamdi et al., ICML 2018", {"f": "krum_f"}),
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
    """Aggregate whole updates with the rule named ``rule``.

    Args:
        rule: A key of :data:`RULES`.
        updates: One update per participant (every array of it: distances and norms
            are over the whole update, as the papers define them).
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


def options_from_spec(rule: str, fields: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The options :func:`aggregate` needs for ``rule``, read from the spec's fields.

    Args:
        rule: A key of :data:`RULES`.
        fields: The ``aggregation`` spec section (an object with attributes, or a
            mapping), e.g. ``spec.aggregation``.

    Raises:
        UnknownRuleError: Unknown rule, or a required option whose field is unset.
    """
    info = _rule(rule)
    options: dict[str, Any] = {}
    for option, field_name in info.spec_options.items():
        value = fields.get(field_name) if isinstance(fields, Mapping) else \
            getattr(fields, field_name, None)
        if value is None and option in info.required:
            raise UnknownRuleError(f"aggregation rule {rule!r} needs aggregation.{field_name}")
        if value is not None or option in info.optional:
            options[option] = value
    return options


def rule_needs_individual_updates(rule: str) -> bool:
    """Whether ``rule`` must see each update in the clear (True for every robust rule).

    Raises:
        UnknownRuleError: ``rule`` is not a key of :data:`RULES`.
    """
    return _rule(rule).needs_individual_updates


def min_updates(rule: str, fields: Mapping[str, Any] | Any) -> tuple[int, str]:
    """The fewest updates ``rule`` can aggregate with its spec options, and why.

    Krum and Multi-Krum need ``n > 2f + 2`` (Blanchard et al. 2017), Bulyan
    ``n >= 4f + 3`` (El Mhamdi et al. 2018), with ``f = krum_f``; the other rules one.

    Raises:
        UnknownRuleError: ``rule`` is not a key of :data:`RULES`.
    """
    _rule(rule)
    f = fields.get("krum_f") if isinstance(fields, Mapping) else getattr(fields, "krum_f", 0)
    f = int(f or 0)
    if rule in ("krum", "multi_krum"):
        return 2 * f + 3, (f"more than 2f + 2 = {2 * f + 2} open updates "
                           "(Blanchard et al. 2017)")
    if rule == "bulyan":
        return 4 * f + 3, (f"at least 4f + 3 = {4 * f + 3} open updates "
                           "(El Mhamdi et al. 2018)")
    return 1, "at least one open update"


def secure_member_bound(rule: str, fields: Mapping[str, Any] | Any) -> float | None:
    """The L2 norm each secure member clips its update to under ``rule``, or ``None``.

    A robust rule cannot see a secure member's update, so each member bounds its own
    before masking, at the rule's bound: ``clip_bound`` for ``norm_bounded`` (what
    the rule scales open updates to), otherwise ``norm_bound`` (what open updates
    are checked against). ``None`` for ``fedavg`` (a sum: nothing to bound) and for a
    robust rule whose bound is unset (the spec refuses that with a secure group).

    Args:
        rule: A key of :data:`RULES`.
        fields: The ``aggregation`` spec section (an object or a mapping).

    Raises:
        UnknownRuleError: ``rule`` is not a key of :data:`RULES`.
    """
    if not _rule(rule).needs_individual_updates:
        return None
    name = "clip_bound" if rule == "norm_bounded" else "norm_bound"
    value = fields.get(name) if isinstance(fields, Mapping) else getattr(fields, name, None)
    return None if value is None else float(value)


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
    return (f"{rule!r} ({info.reference}) cannot see a secure member's update in the clear, "
            "only the group's masked sum, so it filters the open updates alone: each secure "
            "member is held to one participant's weight and the rule's norm bound, which "
            "limits how far the group moves the model but cannot filter a Byzantine member out.")
