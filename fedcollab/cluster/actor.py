"""The worker as a Ray actor."""
from __future__ import annotations

from typing import Any

from fedcollab.cluster.connect import node_info
from fedcollab.worker.worker import ParticipantWorker

__all__ = ["RayWorker", "actor_class"]


class RayWorker(ParticipantWorker):
    """A :class:`~fedcollab.worker.worker.ParticipantWorker` whose :meth:`ready` also
    says where in the Ray cluster it runs (node id, Ray's GPU ids)."""

    def ready(self) -> dict[str, Any]:
        return {**super().ready(), **node_info()}


def actor_class(ray: Any) -> Any:
    """The Ray actor class of :class:`RayWorker`."""
    return ray.remote(RayWorker)
