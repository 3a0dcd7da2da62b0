"""Shared fixtures: a real local Ray and a real multi-node ``ray.cluster_utils.Cluster``."""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")


def _worker_env() -> dict[str, Any]:
    from fedcollab.cluster import worker_env

    return {"env_vars": worker_env()}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray with 2 CPUs, shared by the tests of one module."""
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, runtime_env=_worker_env())
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_cluster() -> Iterator[Any]:
    """A 2-node Ray cluster on this machine; the second node offers ``vendor_site``.

    Yields the ``Cluster``; ``ray`` is connected to it. Torn down after the test.
    """
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"vendor_site": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env=_worker_env())
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FEDCOLLAB_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="GPU test: set FEDCOLLAB_GPU_TESTS=1 on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
