"""Tests for fedcollab.aggregation.registry: rules by name, secure-sum compatibility."""
from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest

from fedcollab.aggregation import (
    INDIVIDUAL_UPDATE_RULES,
    RULES,
    SECURE_SUM_RULES,
    UnknownRuleError,
    aggregate,
    krum,
    median,
    multi_krum,
    norm_bounded_mean,
    options_from_spec,
    rule_needs_individual_updates,
    secure_compatibility_message,
    trimmed_mean,
    weighted_mean,
)

from ._strategies import assert_weights_close


def _updates(n: int = 7) -> tuple[list[list[np.ndarray]], list[int]]:
    rng = np.random.default_rng(1)
    return ([[rng.normal(size=(3, 2)), rng.normal(size=2)] for _ in range(n)],
            [int(c) for c in rng.integers(1, 20, size=n)])


@pytest.mark.parametrize("rule,options,direct", [
    ("fedavg", {}, lambda u, c: weighted_mean(u, c)),
    ("median", {}, lambda u, c: median(u)),
    ("trimmed_mean", {"beta": 0.2}, lambda u, c: trimmed_mean(u, beta=0.2)),
    ("krum", {"f": 2}, lambda u, c: krum(u, f=2)),
    ("multi_krum", {"f": 1, "m": 3}, lambda u, c: multi_krum(u, f=1, m=3)),
    ("multi_krum", {"f": 1}, lambda u, c: multi_krum(u, f=1)),
    ("norm_bounded", {"bound": 0.5}, lambda u, c: norm_bounded_mean(u, c, bound=0.5)),
])
def test_aggregate_each_rule_equals_direct_call(rule: str, options: dict,
                                                direct: typing.Callable) -> None:
    updates, counts = _updates()
    assert_weights_close(aggregate(rule, updates, counts, **options), direct(updates, counts))


def test_aggregate_unknown_rule_raises_listing_rules() -> None:
    with pytest.raises(UnknownRuleError, match="got 'mean', expected one of bulyan, fedavg, krum"):
        aggregate("mean", *_updates())


def test_aggregate_unknown_option_raises() -> None:
    with pytest.raises(UnknownRuleError, match="got option\\(s\\) trim_beta, expected beta"):
        aggregate("trimmed_mean", *_updates(), trim_beta=0.1)


def test_aggregate_missing_required_option_raises() -> None:
    with pytest.raises(UnknownRuleError, match="missing option\\(s\\) f"):
        aggregate("krum", *_updates())


def test_rule_callable_equals_aggregate() -> None:
    updates, counts = _updates()
    assert_weights_close(RULES["krum"](updates, counts, f=1), aggregate("krum", updates, counts,
                                                                        f=1))


SPEC_FIELDS = {"trim_beta": 0.25, "krum_f": 2, "multi_krum_m": None, "clip_bound": 3.0,
               "norm_bound": 99.0}


@pytest.mark.parametrize("rule,expected", [
    ("fedavg", {}), ("median", {}), ("trimmed_mean", {"beta": 0.25}), ("krum", {"f": 2}),
    ("multi_krum", {"f": 2, "m": None}), ("norm_bounded", {"bound": 3.0})])
def test_options_from_spec_maps_each_rules_declared_fields(rule: str, expected: dict) -> None:
    options = options_from_spec(rule, SPEC_FIELDS)
    assert options == expected
    updates, counts = _updates()
    aggregate(rule, updates, counts, **options)  # accepted as is


def test_options_from_spec_norm_bounded_without_clip_bound_raises() -> None:
    with pytest.raises(UnknownRuleError, match="needs aggregation.clip_bound"):
        options_from_spec("norm_bounded", {})


def test_rule_needs_individual_updates_only_fedavg_runs_over_sums() -> None:
    assert rule_needs_individual_updates("fedavg") is False
    for rule in ("median", "trimmed_mean", "krum", "multi_krum", "norm_bounded", "bulyan"):
        assert rule_needs_individual_updates(rule) is True
    assert SECURE_SUM_RULES == {"fedavg"}
    assert SECURE_SUM_RULES | INDIVIDUAL_UPDATE_RULES == set(RULES)


def test_rule_needs_individual_updates_unknown_rule_raises() -> None:
    with pytest.raises(UnknownRuleError):
        rule_needs_individual_updates("geomedian")


def test_secure_compatibility_message_robust_rule_explains_open_only() -> None:
    message = secure_compatibility_message("median")
    assert "cannot see a secure member's update in the clear" in message
    assert "filters the open updates alone" in message and message.count(". ") == 0


def test_secure_compatibility_message_fedavg_says_it_composes() -> None:
    assert "any mix of open and secure" in secure_compatibility_message("fedavg")


def test_spec_accepts_every_registered_rule_and_refuses_others() -> None:
    from fedcollab.spec import SpecError, spec_from_dict

    base = {"name": "x", "participants": [{"name": "c", "count": 8}],
            "aggregation": {"clip_bound": 1.0}}
    for rule in RULES:
        spec_from_dict({**base, "aggregation": {"rule": rule, "clip_bound": 1.0}})
    with pytest.raises(SpecError, match="aggregation.rule: got 'geomedian', expected one of"):
        spec_from_dict({**base, "aggregation": {"rule": "geomedian"}})


def test_registry_rules_mapping_is_read_only() -> None:
    with pytest.raises(TypeError):
        RULES["mine"] = RULES["fedavg"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RULES["fedavg"].needs_individual_updates = True  # type: ignore[misc]
