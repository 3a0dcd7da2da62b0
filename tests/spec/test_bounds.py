"""validate refuses numbers no job can use and a krum_f the open participants cannot
tolerate (issue 32); the krum check agrees with the rules themselves."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.aggregation.errors import AggregationError
from fedcollab.aggregation.registry import RULES
from fedcollab.spec import SpecError, spec_from_dict


def _spec(open_count: int, secure_count: int = 0, **aggregation: object) -> dict[str, object]:
    groups = [{"name": "community", "role": "community", "count": open_count,
               "sharing": "open"}]
    if secure_count:
        groups.append({"name": "vendor", "role": "vendor", "count": secure_count,
                       "sharing": "secure"})
    return {"name": "bounds", "task": {"dataset": "digits", "model": "mlp"},
            "participants": groups, "aggregation": dict(aggregation)}


@pytest.mark.parametrize("path,value,message", [
    (("rounds",), 10**20, "rounds: got 100000000000000000000, expected at most 1,000,000"),
    (("local", "epochs"), 10**9, "local.epochs: got 1000000000, expected at most 10,000"),
    (("local", "batch_size"), 10**11, "local.batch_size: got 100000000000, expected at most"),
    (("resources", "workers"), 10**8, "resources.workers: got 100000000, expected at most"),
])
def test_huge_numbers_are_one_line(path: tuple[str, ...], value: int, message: str) -> None:
    data = _spec(4)
    target = data
    for key in path[:-1]:
        target = target.setdefault(key, {})  # type: ignore[assignment]
    target[path[-1]] = value
    with pytest.raises(SpecError, match=message):
        spec_from_dict(data)


@settings(max_examples=60, deadline=None)
@given(rule=st.sampled_from(["krum", "multi_krum", "bulyan", "median"]),
       open_count=st.integers(1, 12), secure=st.sampled_from([0, 3]), f=st.integers(0, 6))
def test_krum_f_is_refused_exactly_when_krum_cannot_run(rule: str, open_count: int,
                                                         secure: int, f: int) -> None:
    """The spec refuses krum_f iff the rule itself (the oracle, run on as many updates as
    the spec has open participants) refuses that many updates; rules without krum_f
    ignore it. (A secure group under a robust rule needs a norm bound: given here.)"""
    data = _spec(open_count, secure, rule=rule, krum_f=f, norm_bound=10.0)
    uses_f = "krum_f" in dict(RULES[rule].spec_options or {}).values()
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=3).astype(np.float32)] for _ in range(open_count)]
    try:
        RULES[rule if uses_f else "krum"].apply(updates, [1.0] * open_count, f=f)
        krum_runs = True
    except AggregationError:
        krum_runs = False
    try:
        spec_from_dict(data)
        accepted = True
    except SpecError as err:
        assert str(err).startswith("spec: aggregation.krum_f: ")
        accepted = False
    assert accepted == (krum_runs or not uses_f)
