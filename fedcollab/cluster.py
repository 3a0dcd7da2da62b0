"""Connecting to Ray: an embedded local instance, or an existing cluster.

With no address, a local Ray starts inside the job and declares the custom
resources the spec asks for (e.g. ``vendor_site``), so a spec written for a
cluster also runs on a laptop. With an address, an unreachable cluster is one
clear line (:class:`ClusterError`), not a minute of retries and a traceback.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any, Iterator, Mapping, Optional

from fedcollab.errors import FedcollabError

__all__ = ["ClusterError", "connect", "check_reachable", "worker_env"]


class ClusterError(FedcollabError):
    """The Ray cluster cannot be reached or cannot host the job."""


def worker_env() -> dict[str, str]:
    """Environment for every Ray worker: quiet TensorFlow, one thread each."""
    from fedcollab.training import TF_ENV

    return dict(TF_ENV)


def check_reachable(address: str, *, timeout: float = 3.0) -> None:
    """Fail fast if ``host:port`` does not accept a TCP connection."""
    if address in ("auto", "local") or address.startswith("ray://"):
        target = address[len("ray://"):] if address.startswith("ray://") else ""
        if not target:
            return
        address = target
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ClusterError(f"cluster address {address!r}: expected HOST:PORT, 'auto' or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as err:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: "
                           f"{err.strerror or err.__class__.__name__}; is `ray start --head` "
                           "running there?") from None


@contextlib.contextmanager
def connect(address: Optional[str] = None, *, resources: Optional[Mapping[str, float]] = None,
            num_cpus: Optional[int] = None, num_gpus: Optional[int] = None) -> Iterator[Any]:
    """Connect to Ray for the duration of a job.

    Args:
        address: None for an embedded local Ray; else "auto", "HOST:PORT" or "ray://...".
        resources: custom resources an embedded instance declares (ignored with an address).
        num_cpus: CPUs an embedded instance declares (default: this machine's count).

    Raises:
        ClusterError: the address is unreachable or Ray refuses the connection.
    """
    import ray

    if ray.is_initialized():  # a caller (a test, a notebook) already connected
        yield ray
        return
    runtime_env = {"env_vars": worker_env()}
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": bool(os.environ.get("FEDCOLLAB_WORKER_LOGS")),
                              "runtime_env": runtime_env}
    if address is None:
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                      resources=dict(resources or {}))
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        check_reachable(address)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or "a local instance"
        raise ClusterError(f"cannot start or join Ray at {where}: "
                           f"{str(err).splitlines()[0] if str(err) else err.__class__.__name__}") \
            from None
    try:
        yield ray
    finally:
        ray.shutdown()
