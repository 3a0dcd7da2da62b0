"""The job service: gRPC server, sqlite job store, auth, certificates, and the client.

``fedcollab serve`` runs :class:`JobServer`; the CLI's client commands use
:class:`JobClient`. Neither imports TensorFlow or Ray: jobs run in their own
processes (:mod:`fedcollab.service.jobproc`). See docs/service.md.
"""
from __future__ import annotations

from typing import Any

__all__ = ["JobClient", "JobServer", "ServeConfig", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "JobClient":
        from fedcollab.service.client import JobClient

        return JobClient
    if name in ("JobServer", "ServeConfig", "run_server"):
        from fedcollab.service import server

        return getattr(server, name)
    raise AttributeError(f"module 'fedcollab.service' has no attribute {name!r}")
