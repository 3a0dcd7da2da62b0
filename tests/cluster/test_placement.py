"""Pure placement checks: can the planned workers ever be placed on these nodes?"""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.cluster.placement import (
    ClusterError,
    WorkerRequest,
    check_placement,
    reserved_nodes,
    worker_requests,
)


def node(node_id: str, **resources: float) -> dict[str, Any]:
    return {"NodeID": node_id, "Alive": True,
            "Resources": {"memory": 1e9, f"node:{node_id}": 1.0, **resources}}


def test_check_placement_quarter_gpus_pack_four_per_gpu() -> None:
    nodes = [node("cpu", CPU=8), node("gpu", CPU=8, GPU=1)]
    where = check_placement([WorkerRequest(cpus=1, gpus=0.25)] * 4, nodes)
    assert where == ["gpu"] * 4


def test_check_placement_fifth_quarter_gpu_worker_has_no_slot() -> None:
    nodes = [node("gpu", CPU=8, GPU=1)]
    with pytest.raises(ClusterError, match="5 workers need CPU 1, GPU 0.25 each but the "
                                           "cluster has room for only 4"):
        check_placement([WorkerRequest(cpus=1, gpus=0.25)] * 5, nodes)


def test_check_placement_fractions_do_not_straddle_devices() -> None:
    nodes = [node("gpu", CPU=8, GPU=2)]
    # 0.75 + 0.5 do not share a device: three of them need three GPUs
    with pytest.raises(ClusterError, match="room for only 2"):
        check_placement([WorkerRequest(cpus=0, gpus=0.75)] * 3, nodes)
    assert check_placement([WorkerRequest(cpus=0, gpus=0.5)] * 4, nodes) == ["gpu"] * 4


def test_check_placement_gpus_where_there_are_none_names_gpus() -> None:
    with pytest.raises(ClusterError, match="0.5 GPU per worker but the cluster has no GPUs"):
        check_placement([WorkerRequest(cpus=1, gpus=0.5)], [node("a", CPU=4)])


def test_check_placement_missing_custom_resource_is_named() -> None:
    with pytest.raises(ClusterError, match="'vendor_site'.*--vendor-site"):
        check_placement([WorkerRequest(resources={"vendor_site": 1}, label="group vendor")],
                        [node("a", CPU=4)])


def test_check_placement_more_workers_than_cpu_slots_fails() -> None:
    nodes = [node("a", CPU=2), node("b", CPU=1)]
    assert sorted(check_placement([WorkerRequest()] * 3, nodes)) == ["a", "a", "b"]
    with pytest.raises(ClusterError, match="4 workers need CPU 1 each but the cluster has "
                                           "room for only 3 of them at once"):
        check_placement([WorkerRequest()] * 4, nodes)


def test_check_placement_worker_bigger_than_any_node_fails() -> None:
    with pytest.raises(ClusterError, match="one worker needs CPU 4 but no single node"):
        check_placement([WorkerRequest(cpus=4)], [node("a", CPU=2), node("b", CPU=2)])


def test_check_placement_pinned_workers_placed_before_general_ones() -> None:
    nodes = [node("vendor", CPU=1, vendor_site=1), node("head", CPU=1)]
    requests = [WorkerRequest(), WorkerRequest(resources={"vendor_site": 1})]
    assert check_placement(requests, nodes) == ["head", "vendor"]


def test_check_placement_dead_nodes_do_not_count() -> None:
    dead = {**node("gpu", CPU=4, GPU=1), "Alive": False}
    with pytest.raises(ClusterError, match="no GPUs"):
        check_placement([WorkerRequest(gpus=1)], [dead, node("a", CPU=4)])


def test_worker_request_fraction_above_one_is_refused() -> None:
    with pytest.raises(ClusterError, match="whole number of GPUs"):
        WorkerRequest(gpus=1.5)


def test_worker_requests_from_plan_shape() -> None:
    plan = [({"vendor_site": 1.0}, [8, 9]), ({}, [0, 1, 2]), ({}, [3, 4])]
    requests = worker_requests(plan, cpus_per_worker=1.0, gpus_per_worker=0.25)
    assert [r.resources for r in requests] == [{"vendor_site": 1.0}, {}, {}]
    assert all(r.gpus == 0.25 and r.cpus == 1.0 for r in requests)
    assert "vendor_site" in requests[0].label


def test_community_workers_stay_off_vendor_nodes_while_another_node_has_room() -> None:
    nodes = [node("vendor", CPU=4, vendor_site=4), node("head", CPU=2)]
    requests = [WorkerRequest(resources={"vendor_site": 1}), WorkerRequest(), WorkerRequest()]
    assert reserved_nodes(requests, nodes) == ["vendor"]
    assert check_placement(requests, nodes) == ["vendor", "head", "head"]
    with pytest.raises(ClusterError, match="room for only 2 of them"):
        check_placement([*requests, WorkerRequest()], nodes)  # not on the vendor node
    # a job with no vendor group may use every node; one node is never kept apart
    assert reserved_nodes([WorkerRequest()], nodes) == []
    assert reserved_nodes(requests, [node("laptop", CPU=2, vendor_site=1)]) == []


@settings(max_examples=200, deadline=None)
@given(vendor_cpus=st.lists(st.integers(0, 3), max_size=3),
       other_cpus=st.lists(st.integers(0, 3), min_size=1, max_size=3),
       pinned=st.integers(0, 4), unpinned=st.integers(0, 4))
def test_a_placement_never_puts_an_unpinned_worker_on_a_kept_node(
        vendor_cpus: list[int], other_cpus: list[int], pinned: int, unpinned: int) -> None:
    nodes = ([node(f"v{i}", CPU=c, vendor_site=max(c, 1)) for i, c in enumerate(vendor_cpus)]
             + [node(f"o{i}", CPU=c) for i, c in enumerate(other_cpus)])
    requests = ([WorkerRequest(resources={"vendor_site": 1})] * pinned
                + [WorkerRequest()] * unpinned)
    kept = set(reserved_nodes(requests, nodes))
    assert kept == ({f"v{i}" for i in range(len(vendor_cpus))} if pinned else set())
    try:
        placed = check_placement(requests, nodes)
    except ClusterError:
        return
    for request, where in zip(requests, placed):
        assert where.startswith("v") if request.resources else where not in kept
