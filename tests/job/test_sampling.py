"""Tests for the orchestrator's pure planning: worker pools and per-round sampling (no Ray)."""
from __future__ import annotations

from typing import Any

import pytest

from fedcollab.cluster.pool import plan_workers
from fedcollab.job.sampling import sample_participants
from fedcollab.spec import JobSpec, spec_from_dict
from fedcollab.spec.roster import roster


def _spec(groups: list[dict[str, Any]], **top: Any) -> JobSpec:
    return spec_from_dict({"name": "plan", "participants": groups, **top})


def _pinned_spec(**top: Any) -> JobSpec:
    return _spec([{"name": "community", "count": 8},
                  {"name": "vendor", "role": "vendor", "count": 3,
                   "resources": {"vendor_site": 1}}], **top)


def _all_pids(plan: list[tuple[dict[str, float], list[int]]]) -> list[int]:
    return sorted(pid for _, pids in plan for pid in pids)


# --------------------------------------------------------------------------- plan_workers

def test_plan_workers_pinned_group_gets_its_own_worker_with_its_resources() -> None:
    spec = _pinned_spec()

    plan = plan_workers(spec, roster(spec), cluster_cpus=4)

    pinned = [(res, pids) for res, pids in plan if res]
    assert pinned == [({"vendor_site": 1.0}, [8, 9, 10])]


def test_plan_workers_auto_uses_cluster_cpus_minus_pinned_workers() -> None:
    spec = _pinned_spec()

    plan = plan_workers(spec, roster(spec), cluster_cpus=4)

    general = [pids for res, pids in plan if not res]
    assert len(general) == 3  # 4 CPUs, 1 taken by the vendor worker
    assert sorted(len(p) for p in general) == [2, 3, 3]


def test_plan_workers_every_participant_is_placed_exactly_once() -> None:
    spec = _pinned_spec()

    plan = plan_workers(spec, roster(spec), cluster_cpus=4)

    assert _all_pids(plan) == list(range(11))


def test_plan_workers_auto_divides_by_cpus_per_worker() -> None:
    spec = _spec([{"name": "community", "count": 10}], resources={"cpus_per_worker": 2})

    plan = plan_workers(spec, roster(spec), cluster_cpus=8)

    assert len(plan) == 4


def test_plan_workers_explicit_worker_count_is_honoured() -> None:
    spec = _pinned_spec(resources={"workers": 2})

    plan = plan_workers(spec, roster(spec), cluster_cpus=16)

    assert len([pids for res, pids in plan if not res]) == 2


def test_plan_workers_never_more_workers_than_participants() -> None:
    spec = _spec([{"name": "community", "count": 3}])

    plan = plan_workers(spec, roster(spec), cluster_cpus=16)

    assert len(plan) == 3
    assert all(len(pids) == 1 for _, pids in plan)


def test_plan_workers_explicit_count_above_participants_is_capped() -> None:
    spec = _spec([{"name": "community", "count": 2}], resources={"workers": 5})

    plan = plan_workers(spec, roster(spec), cluster_cpus=16)

    assert len(plan) == 2


def test_plan_workers_too_few_cpus_still_gives_one_general_worker() -> None:
    spec = _pinned_spec()

    plan = plan_workers(spec, roster(spec), cluster_cpus=1)

    general = [pids for res, pids in plan if not res]
    assert general == [list(range(8))]


def test_plan_workers_is_deterministic() -> None:
    spec = _pinned_spec()

    first = plan_workers(spec, roster(spec), cluster_cpus=4)
    second = plan_workers(spec, roster(spec), cluster_cpus=4)

    assert first == second


# --------------------------------------------------------------------------- sample_participants

def _two_groups(fraction: float, **top: Any) -> JobSpec:
    return _spec([{"name": "community", "count": 5}, {"name": "lab", "count": 4}],
                 fraction=fraction, **top)


def _per_group(spec: JobSpec, chosen: list[int]) -> list[int]:
    people = roster(spec)
    return [sum(1 for pid in chosen if people[pid].group == g)
            for g in range(len(spec.participants))]


def test_sample_participants_fraction_one_chooses_everyone() -> None:
    spec = _two_groups(1.0)

    chosen = sample_participants(roster(spec), spec, round_id=3)

    assert chosen == list(range(9))


def test_sample_participants_half_takes_ceil_per_group() -> None:
    spec = _two_groups(0.5)

    chosen = sample_participants(roster(spec), spec, round_id=1)

    assert _per_group(spec, chosen) == [3, 2]  # ceil(2.5), ceil(2.0)
    assert len(set(chosen)) == len(chosen)


def test_sample_participants_same_round_is_deterministic() -> None:
    spec = _two_groups(0.5)

    first = sample_participants(roster(spec), spec, round_id=4)
    second = sample_participants(roster(spec), spec, round_id=4)

    assert first == second


def test_sample_participants_varies_across_rounds() -> None:
    spec = _spec([{"name": "community", "count": 20}], fraction=0.25)

    samples = {tuple(sample_participants(roster(spec), spec, round_id=r)) for r in range(10)}

    assert len(samples) > 1


def test_sample_participants_depends_on_the_seed() -> None:
    a = _spec([{"name": "community", "count": 20}], fraction=0.25, seed=0)
    b = _spec([{"name": "community", "count": 20}], fraction=0.25, seed=1)

    first = [sample_participants(roster(a), a, round_id=r) for r in range(5)]
    second = [sample_participants(roster(b), b, round_id=r) for r in range(5)]

    assert first != second


def test_sample_participants_tiny_fraction_takes_at_least_one_per_group() -> None:
    spec = _two_groups(0.01)

    chosen = sample_participants(roster(spec), spec, round_id=0)

    assert _per_group(spec, chosen) == [1, 1]


@pytest.mark.parametrize("round_id", range(5))
def test_sample_participants_secure_group_never_below_min_group(round_id: int) -> None:
    # Two secure groups of 3 at fraction 0.5: ceil(1.5) = 2 per group, below min_group 3.
    spec = _spec([{"name": "community", "count": 10},
                  {"name": "vendor", "role": "vendor", "count": 3, "sharing": "secure"},
                  {"name": "lab", "count": 3, "sharing": "secure"}], fraction=0.5)

    chosen = sample_participants(roster(spec), spec, round_id=round_id)

    assert _per_group(spec, chosen) == [5, 3, 3]


def test_sample_participants_canary_group_last_changes_no_real_participants_sample() -> None:
    """The grader's canary clients join as one more group after the others: each round
    the real participants sampled are those sampled without them, and the canaries are
    sampled at the same fraction as everyone."""
    groups = [{"name": "community", "count": 20},
              {"name": "vendor", "role": "vendor", "count": 6, "sharing": "secure"}]
    plain = _spec(groups, fraction=0.5)
    audited = _spec(groups + [{"name": "canaries", "count": 40, "behaviour": "canary"}],
                    fraction=0.5)
    for r in range(1, 6):
        before = sample_participants(roster(plain), plain, r)
        after = sample_participants(roster(audited), audited, r)
        assert [p for p in after if p < 26] == before
        assert len([p for p in after if p >= 26]) == 20
