"""Who takes part: the roster of logical participants and who is sampled each round.

The roster is derived from the spec alone (group by group, in a stable order), so the
driver, every worker and a resumed job agree on participant ids without talking.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedcollab.types import ParticipantId

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["ParticipantInfo", "roster", "sample_participants", "Sampler", "ROLES", "SHARING"]

#: Who a group is (``role``): open community contributors, or the vendor's sites.
ROLES = ("community", "vendor")
#: How a group shares (``sharing``): updates in the clear, or only inside a secure sum.
SHARING = ("open", "secure")


@dataclass(frozen=True)
class ParticipantInfo:
    """What the roster knows about a logical participant (no data, no keys)."""

    pid: ParticipantId
    group: int
    group_name: str
    role: str
    sharing: str
    private_layers: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)


def roster(spec: JobSpec) -> list[ParticipantInfo]:
    """Every logical participant of the job, group by group, in a stable order."""
    people: list[ParticipantInfo] = []
    for g, group in enumerate(spec.participants):
        for _ in range(group.count):
            people.append(ParticipantInfo(len(people), g, group.name, group.role, group.sharing,
                                          tuple(group.private_layers), dict(group.resources)))
    return people


def sample_participants(people: Sequence[ParticipantInfo], spec: JobSpec,
                        round_id: int) -> list[int]:
    """Per-group sampling of ceil(fraction * count), deterministic from (seed, round).

    A secure group is never sampled below ``secure.min_group`` (a smaller sum is no
    secret). The sample is a function of the job seed, so a resumed job samples the
    same participants as an uninterrupted one.
    """
    if spec.fraction >= 1:
        return [p.pid for p in people]
    rng = np.random.default_rng([spec.seed, round_id, 7])
    chosen: list[int] = []
    for g, group in enumerate(spec.participants):
        members = [p.pid for p in people if p.group == g]
        k = max(1, math.ceil(spec.fraction * group.count))
        if group.sharing == "secure":
            k = max(k, min(group.count, spec.secure.min_group))
        chosen.extend(sorted(rng.choice(members, size=k, replace=False).tolist()))
    return sorted(chosen)


class Sampler:
    """Chooses each round's participants (see :func:`sample_participants`)."""

    def __init__(self, spec: JobSpec, people: Sequence[ParticipantInfo]) -> None:
        self.spec = spec
        self.people = list(people)

    def sample(self, round_id: int) -> list[int]:
        return sample_participants(self.people, self.spec, round_id)
