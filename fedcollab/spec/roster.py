"""The roster: every logical participant of a job, in group order, as cheap views.

Shared nouns of the spec (who takes part, with which role and sharing policy), used
by the driver and the workers alike.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

from fedcollab.types import ParticipantId

if TYPE_CHECKING:
    from fedcollab.spec.schema import JobSpec

__all__ = ["ROLES", "SHARING", "ParticipantInfo", "Roster", "roster", "group_sample_sizes",
           "group_sampling_rates", "expected_participants"]


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


class Roster(Sequence[ParticipantInfo]):
    """Every logical participant of a job, computed on demand from the spec.

    ``roster[pid]`` builds that participant's :class:`ParticipantInfo` from its group's
    offset, so registering 100,000 participants costs one offset per group, not one
    object each; only iterating the whole roster is linear in its size.
    """

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.groups = tuple(spec.participants)
        self.starts = [0]
        for group in self.groups:
            self.starts.append(self.starts[-1] + group.count)

    def __len__(self) -> int:
        return self.starts[-1]

    @overload
    def __getitem__(self, pid: int) -> ParticipantInfo: ...

    @overload
    def __getitem__(self, pid: slice) -> list[ParticipantInfo]: ...

    def __getitem__(self, pid: int | slice) -> ParticipantInfo | list[ParticipantInfo]:
        if isinstance(pid, slice):
            return [self[i] for i in range(*pid.indices(len(self)))]
        pid = int(pid)
        if pid < 0:
            pid += len(self)
        if not 0 <= pid < len(self):
            raise IndexError(f"participant {pid} is not in the roster of {len(self)}")
        g = self.group_of(pid)
        group = self.groups[g]
        return ParticipantInfo(pid, g, group.name, group.role, group.sharing,
                               tuple(group.private_layers), dict(group.resources))

    def __iter__(self) -> Iterator[ParticipantInfo]:
        return (self[i] for i in range(len(self)))

    def group_of(self, pid: int) -> int:
        """The index of the group participant ``pid`` belongs to."""
        return bisect.bisect_right(self.starts, pid) - 1

    def group_range(self, g: int) -> range:
        """The participant ids of group ``g`` (consecutive)."""
        return range(self.starts[g], self.starts[g + 1])

    def pids_where(self, **attrs: object) -> list[int]:
        """Ids of the groups whose attributes match, e.g. ``pids_where(sharing="secure")``,
        without building a :class:`ParticipantInfo` per participant."""
        out: list[int] = []
        for g, group in enumerate(self.groups):
            if all(getattr(group, k) == v for k, v in attrs.items()):
                out.extend(self.group_range(g))
        return out


def roster(spec: JobSpec) -> Roster:
    """Every logical participant of the job, group by group, in a stable order."""
    return Roster(spec)


def group_sample_sizes(spec: JobSpec) -> list[int]:
    """How many of each group take part per round: ``ceil(fraction * count)``, at least 1,
    and a secure group never below ``secure.min_group`` (a smaller sum is no secret)."""
    sizes = []
    for group in spec.participants:
        k = group.count if spec.fraction >= 1 else max(1, math.ceil(spec.fraction * group.count))
        if group.sharing == "secure":
            k = max(k, min(group.count, spec.secure.min_group))
        sizes.append(min(k, group.count))
    return sizes


def group_sampling_rates(spec: JobSpec) -> dict[str, float]:
    """Each group's true per-round sampling rate (what DP accounting must use).

    It can exceed ``fraction``: a 3-site secure vendor with ``min_group: 3`` takes part
    in every round whatever the fraction.
    """
    return {g.name: k / g.count for g, k in zip(spec.participants, group_sample_sizes(spec))}


def expected_participants(spec: JobSpec) -> float:
    """How many participants a round samples on average (all groups)."""
    rates = group_sampling_rates(spec)
    return float(sum(g.count * rates[g.name] for g in spec.participants))
