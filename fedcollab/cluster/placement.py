"""Where workers can run: the resources each asks of Ray, checked against the
cluster's nodes before any actor is created, so an impossible request is one line
instead of an actor pending forever."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from fedcollab.errors import FedcollabError

__all__ = ["ClusterError", "WorkerRequest", "check_placement", "worker_requests",
           "reserved_nodes"]


class ClusterError(FedcollabError):
    """The Ray cluster cannot be reached or cannot host the job."""


# ------------------------------------------------------------------ placement (pure)
_UNIT = 10_000  # Ray's fixed-point resolution for resource amounts


_IGNORED = ("memory", "object_store_memory")


def _units(amount: float) -> int:
    return int(round(float(amount) * _UNIT))


@dataclass(frozen=True)
class WorkerRequest:
    """What one worker actor asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    label: str = "worker"  # names the group in messages

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0 or any(v < 0 for v in self.resources.values()):
            raise ClusterError(f"{self.label}: resource amounts must be >= 0")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ClusterError(f"{self.label}: gpus_per_worker={self.gpus}: above 1 it must "
                               "be a whole number of GPUs")

    def wants(self) -> dict[str, float]:
        want = {"CPU": self.cpus, "GPU": self.gpus, **dict(self.resources)}
        return {k: v for k, v in want.items() if v > 0}


class _Node:
    """Free capacity of one node in fixed-point units; GPUs tracked per device."""

    def __init__(self, resources: Mapping[str, float]) -> None:
        self.free = {k: _units(v) for k, v in resources.items()
                     if k != "GPU" and k not in _IGNORED and not k.startswith("node:")}
        total = _units(resources.get("GPU", 0.0))
        self.gpus = [_UNIT] * (total // _UNIT) + ([total % _UNIT] if total % _UNIT else [])

    def take(self, request: WorkerRequest) -> bool:
        want = {k: _units(v) for k, v in request.wants().items() if k != "GPU"}
        if any(self.free.get(k, 0) < v for k, v in want.items()):
            return False
        gpu = _units(request.gpus)
        chosen: list[int] = []
        if gpu >= _UNIT:  # whole GPUs
            chosen = [i for i, free in enumerate(self.gpus) if free == _UNIT][:gpu // _UNIT]
            if len(chosen) < gpu // _UNIT:
                return False
        elif gpu > 0:  # a fraction must fit on one device: best fit keeps devices whole
            fits = [i for i, free in enumerate(self.gpus) if free >= gpu]
            if not fits:
                return False
            chosen = [min(fits, key=lambda i: self.gpus[i])]
        for k, v in want.items():
            self.free[k] -= v
        for i in chosen:
            self.gpus[i] -= min(gpu, _UNIT)
        return True


def _fmt(amount: float) -> str:
    return f"{amount:g}"


def _describe(want: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(want.items())) or "nothing"


def reserved_nodes(requests: Sequence[WorkerRequest],
                   nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The alive nodes kept for pinned workers: those offering a custom resource some
    worker of the job is pinned to (a vendor node offers ``vendor_site``). A worker
    pinned to nothing (a community one) runs elsewhere, so a vendor node hosts only
    the groups that asked for it. Empty when no other node is left (an embedded Ray,
    a cluster of vendor nodes only): then nothing is kept apart.
    """
    pinned = {key for request in requests for key in request.resources}
    alive = [n for n in nodes if n.get("Alive", True)]
    reserved = [str(n.get("NodeID")) for n in alive
                if pinned & {k for k, v in (n.get("Resources") or {}).items() if v > 0}]
    return [] if len(reserved) == len(alive) else reserved


def check_placement(requests: Sequence[WorkerRequest],
                    nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Decide whether all workers can be placed at once on the cluster's nodes.

    Bin-packs the requests (pinned and largest first, first fit) onto the alive nodes'
    total resources, as Ray's scheduler must: a fractional GPU request must fit
    on one device (four 0.25 workers share a GPU, a 0.75 and a 0.5 do not); a
    worker pinned to nothing never lands on a node in :func:`reserved_nodes`.

    Args:
        requests: one entry per worker actor.
        nodes: ``ray.nodes()`` entries (``NodeID``, ``Alive``, ``Resources``).

    Returns:
        The ``NodeID`` each request would land on (index-aligned with ``requests``).

    Raises:
        ClusterError: one line naming what is missing: GPUs where there are none,
            a custom resource no node offers, a worker bigger than any node, or
            more workers than the cluster has slots for.
    """
    alive = [n for n in nodes if n.get("Alive", True)]
    totals: dict[str, float] = {}
    for n in alive:
        for k, v in (n.get("Resources") or {}).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    for req in requests:
        for key, amount in req.wants().items():
            if totals.get(key, 0.0) > 0:
                continue
            if key == "GPU":
                raise ClusterError(f"{req.label}: the spec asks for {_fmt(amount)} GPU per "
                                   "worker but the cluster has no GPUs; set "
                                   "resources.gpus_per_worker: 0 or add GPU nodes "
                                   "(scripts/start-cluster worker HEAD:PORT --gpus N)")
            if key == "CPU":
                raise ClusterError(f"{req.label}: the cluster offers no CPUs to workers")
            hint = (" (scripts/start-cluster worker HEAD:PORT --vendor-site)"
                    if key == "vendor_site" else "")
            raise ClusterError(f"{req.label}: no node in the cluster offers the custom "
                               f"resource {key!r} the group is pinned to; start a node "
                               f"offering it{hint}")
    free = [_Node(n.get("Resources") or {}) for n in alive]
    for req in requests:
        if not any(_Node(n.get("Resources") or {}).take(req) for n in alive):
            raise ClusterError(f"{req.label}: one worker needs {_describe(req.wants())} but "
                               "no single node has that much; lower resources.cpus_per_worker "
                               "/ gpus_per_worker or add bigger nodes")
    order = sorted(range(len(requests)),
                   key=lambda i: (-len(requests[i].resources), -requests[i].gpus,
                                  -requests[i].cpus, i))  # most constrained first
    placed: list[Optional[int]] = [None] * len(requests)
    kept = set(reserved_nodes(requests, nodes))
    for i in order:
        for index, node in enumerate(free):
            if not requests[i].resources and str(alive[index].get("NodeID")) in kept:
                continue  # a vendor node hosts only the workers pinned to it
            if node.take(requests[i]):
                placed[i] = index
                break
    unplaced = [i for i in order if placed[i] is None]
    if unplaced:
        first = requests[unplaced[0]]
        same = [i for i in range(len(requests)) if requests[i].wants() == first.wants()]
        room = sum(1 for i in same if placed[i] is not None)
        raise ClusterError(f"{first.label}: {len(same)} workers need {_describe(first.wants())} "
                           f"each but the cluster has room for only {room} of them at once "
                           f"({len(alive)} node(s)); lower resources.workers or add nodes")
    return [str(alive[index].get("NodeID", index)) for index in placed if index is not None]


def worker_requests(plan: Sequence[tuple[Mapping[str, float], Sequence[int]]], *,
                    cpus_per_worker: float, gpus_per_worker: float,
                    labels: Optional[Sequence[str]] = None) -> list[WorkerRequest]:
    """One :class:`WorkerRequest` per planned worker (``plan_workers`` output shape)."""
    out = []
    for index, (resources, _) in enumerate(plan):
        label = labels[index] if labels else (
            f"worker {index} ({', '.join(sorted(resources))})" if resources
            else f"worker {index}")
        out.append(WorkerRequest(cpus=cpus_per_worker, gpus=gpus_per_worker,
                                 resources=dict(resources), label=label))
    return out
