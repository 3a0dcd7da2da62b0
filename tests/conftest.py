"""Shared fixtures: a real local Ray and a real multi-node ``ray.cluster_utils.Cluster``."""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def _restore_ray_environment() -> Iterator[None]:
    """Ray reads its address and token settings from the environment, and joining a
    cluster sets some (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH): put them back after each
    test so one test's (since deleted) token file cannot reach the next one's Ray."""
    keys = [k for k in os.environ if k.startswith("RAY_")]
    saved = {k: os.environ[k] for k in keys}
    yield
    for key in [k for k in os.environ if k.startswith("RAY_")]:
        if key not in saved:
            del os.environ[key]
    os.environ.update(saved)


def fresh_ray_auth() -> None:
    """Start the fixture's own Ray as an embedded run would: token auth with this
    user's token, not a token file or in-process token cache an earlier test (which
    joined a `ray start` cluster of its own) left behind."""
    for key in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        os.environ.pop(key, None)
    os.environ.pop("RAY_AUTH_MODE", None)
    from fedcollab.cluster import _send_token

    _send_token()


def _worker_env() -> dict[str, Any]:
    from fedcollab.cluster import worker_env

    return {"env_vars": worker_env()}


def _init_local(ray: Any) -> None:
    """``ray.init`` of a local instance, tried twice. Once, in a fresh-clone CI run,
    a module's new instance never got its raylet (no raylet log at all) and Ray gave
    up after its 30 s; as it started, gRPC logged "Other threads are currently
    calling into gRPC, skipping fork() handlers", which no other run logged, and
    Ray runs Python in each forked child before exec. A second start is what a
    user would do; a Ray that cannot start twice still fails the module."""
    kwargs: dict[str, Any] = dict(address="local", num_cpus=2, include_dashboard=False,
                                  logging_level=logging.WARNING, log_to_driver=False,
                                  runtime_env=_worker_env())
    try:
        ray.init(**kwargs)
    except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception for this
        if "timed out during startup" not in str(err):
            raise
        ray.shutdown()
        ray.init(**kwargs)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray with 2 CPUs, shared by the tests of one module."""
    import ray

    ray.shutdown()
    fresh_ray_auth()
    _init_local(ray)
    from fedcollab.pool import worker_reuse

    # the module's jobs run back to back, as a grade's mixes do: each takes the
    # workers the last one left (fedcollab.pool.worker_reuse) instead of starting
    # new processes that import TensorFlow again
    with worker_reuse(ray):
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
    fresh_ray_auth()
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
