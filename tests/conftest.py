"""Shared fixtures: a real local Ray and a real multi-node ``ray.cluster_utils.Cluster``."""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator, TypeVar

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")

T = TypeVar("T")


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
    from fedcollab.cluster.connect import _send_token

    _send_token()


def _worker_env() -> dict[str, Any]:
    from fedcollab.cluster.connect import worker_env

    return {"env_vars": worker_env()}


#: Starts tried before a fixture fails (each hang costs Ray's 30 s).
_STARTS = 3


def _start_retrying(ray: Any, start: Callable[[], T]) -> T:
    """``start()`` a Ray instance in this process; again (up to ``_STARTS`` in all) if it
    timed out coming up.

    Ray forks its processes with a Python ``preexec_fn``, which Python documents as
    unsafe in a process with other threads: the child can hang before ``exec``. A
    test process that ran an in-process job service keeps gRPC's threads (gRPC logs
    "Other threads are currently calling into gRPC, skipping fork() handlers" at
    every later fork), and in three of four fresh-clone CI runs one forked raylet or
    GCS never started (Ray gives up after 30 s). Each start forks afresh; the run
    that retried passed. (The job service itself starts Ray in processes of their
    own, never in its gRPC process.)
    """
    for _ in range(_STARTS - 1):
        try:
            return start()
        except Exception as err:  # noqa: BLE001 - Ray raises bare Exception / RuntimeError
            from fedcollab.cluster.connect import is_startup_timeout

            if not is_startup_timeout(err):
                raise
        ray.shutdown()
    return start()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray with 2 CPUs, shared by the tests of one module."""
    import ray

    ray.shutdown()
    fresh_ray_auth()
    _start_retrying(ray, lambda: ray.init(
        address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
        log_to_driver=False, runtime_env=_worker_env()))
    from fedcollab.cluster.reuse import worker_reuse

    # the module's jobs run back to back, as a grade's mixes do: each takes the
    # workers the last one left (fedcollab.cluster.reuse.worker_reuse) instead of starting
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

    def start() -> Any:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                                "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=1, resources={"vendor_site": 1})
            cluster.wait_for_nodes()
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    cluster = _start_retrying(ray, start)
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env=_worker_env())
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = os.environ.get("FEDCOLLAB_GPU_TESTS") == "1"
    long = os.environ.get("FEDCOLLAB_LONG_TESTS") == "1"
    skip_gpu = pytest.mark.skip(reason="GPU test: set FEDCOLLAB_GPU_TESTS=1 on a GPU machine")
    skip_long = pytest.mark.skip(reason="long tier (minutes; CI runs the short one): set "
                                        "FEDCOLLAB_LONG_TESTS=1")
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)
        if "long" in item.keywords and not long:
            item.add_marker(skip_long)
