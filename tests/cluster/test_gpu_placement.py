"""Placement with logical GPUs: a Ray node can declare ``num_gpus`` without hardware."""
from __future__ import annotations

import logging
from typing import Any, Iterator

import pytest

from fedcollab.cluster.placement import ClusterError, WorkerRequest, check_placement
from tests.conftest import fresh_ray_auth

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[Any]:
    """Head with 1 CPU and no GPU; a second node with 2 CPUs and 1 logical GPU."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    fresh_ray_auth()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                            "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield gpu_node.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


class Probe:
    def where(self) -> tuple[str, list[str]]:
        import ray

        return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]


def test_quarter_gpu_workers_pack_four_on_the_gpu_node(gpu_cluster: str) -> None:
    import ray

    requests = [WorkerRequest(cpus=0.25, gpus=0.25)] * 4
    predicted = check_placement(requests, ray.nodes())
    actors = [ray.remote(Probe).options(num_cpus=0.25, num_gpus=0.25).remote() for _ in requests]
    try:
        landed = ray.get([a.where.remote() for a in actors], timeout=60)
    finally:
        for actor in actors:
            ray.kill(actor)
    assert predicted == [gpu_cluster] * 4
    assert [node for node, _ in landed] == predicted
    assert {tuple(ids) for _, ids in landed} == {("0",)}  # all four share GPU 0


def test_fifth_quarter_gpu_worker_fails_fast_instead_of_pending(gpu_cluster: str) -> None:
    import ray

    requests = [WorkerRequest(cpus=0.25, gpus=0.25)] * 5
    with pytest.raises(ClusterError, match="5 workers need CPU 0.25, GPU 0.25 each but the "
                                           "cluster has room for only 4"):
        check_placement(requests, ray.nodes())
    # what the check saves the user from: Ray leaves the fifth actor pending forever
    actors = [ray.remote(Probe).options(num_cpus=0.25, num_gpus=0.25).remote() for _ in requests]
    try:
        ready, pending = ray.wait([a.where.remote() for a in actors], num_returns=5, timeout=15)
    finally:
        for actor in actors:
            ray.kill(actor)
    assert len(ready) == 4 and len(pending) == 1


def test_whole_gpu_and_missing_resource_fail_with_the_name(gpu_cluster: str) -> None:
    import ray

    with pytest.raises(ClusterError, match="room for only 1"):
        check_placement([WorkerRequest(cpus=1, gpus=1)] * 2, ray.nodes())
    with pytest.raises(ClusterError, match="'vendor_site'"):
        check_placement([WorkerRequest(cpus=1, resources={"vendor_site": 1})], ray.nodes())


def test_device_info_in_a_worker_names_node_and_cpu_device(gpu_cluster: str) -> None:
    import ray

    from fedcollab.cluster.connect import node_info
    from fedcollab.worker.training import device_info, enable_gpu_memory_growth

    @ray.remote(num_cpus=0.5, num_gpus=0.5)
    def inside() -> tuple[list[str], dict[str, Any]]:
        return enable_gpu_memory_growth(), {**device_info(), **node_info()}

    gpus, info = ray.get(inside.remote(), timeout=120)
    assert gpus == []  # a logical GPU: TensorFlow sees no device, growth is a no-op
    assert info["node_id"] == gpu_cluster and info["gpu_ids"] == ["0"]
    assert info["device"].endswith("CPU:0") and info["host"]
