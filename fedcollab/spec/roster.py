"""The roster: every logical participant of a job, in group order, as cheap views.

Shared nouns of the spec (who takes part, with which role and sharing policy), used
by the driver and the workers alike. A kind of party is one :class:`Sharing` member and
its :data:`POLICIES` entry: the code that acts on a participant asks its policy
(``policy(g.sharing).in_secure_sum``), never compares the word.
"""
from __future__ import annotations

import bisect
import dataclasses
import enum
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, overload

from fedcollab.types import ParticipantId

if TYPE_CHECKING:
    from fedcollab.spec.schema import JobSpec

__all__ = ["ROLES", "SHARING", "POLICIES", "Role", "Sharing", "SharingPolicy", "policy",
           "ParticipantInfo", "Roster", "roster", "group_sample_sizes", "group_sampling_rates",
           "expected_participants", "DATALESS_BEHAVIOURS", "holds_data"]


class Role(str, enum.Enum):
    """Who a group is (``role``): open community contributors, or the vendor's sites.

    A ``str`` enum: a member equals the spec's word (``Role.VENDOR == "vendor"``) and
    ``json.dumps`` writes the word, so specs and outputs read as before.
    """

    COMMUNITY = "community"
    VENDOR = "vendor"

    def __str__(self) -> str:  # str() and f-strings give the spec's word
        return self.value


class Sharing(str, enum.Enum):
    """How a group shares (``sharing``); what that means is its :data:`POLICIES` entry.

    A ``str`` enum like :class:`Role`: ``Sharing.SECURE == "secure"``.
    """

    OPEN = "open"
    SECURE = "secure"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SharingPolicy:
    """What a participant of one kind sends each round, and how the server treats it.

    Exactly one of the two holds: a participant's update leaves it either alone or
    inside the secure sum. A kind that sends neither or both needs code in
    :func:`fedcollab.worker.outgoing.outgoing` and in what receives it, not only an entry.

    Attributes:
        in_clear: Its update reaches the server alone: validated, logged with a hash in
            ``metrics.jsonl``, seen by robust rules, and open to simulated attacks
            (``behaviour``) and the grader's per-update attacks. Under distributed DP
            it adds the full noise itself, since no sum hides it.
        in_secure_sum: It masks its update into the secure group's sum (SecAgg): it
            takes part in key setup, its group is never sampled below
            ``secure.min_group``, and under distributed DP it adds only its share of
            the noise.
    """

    in_clear: bool
    in_secure_sum: bool

    def __post_init__(self) -> None:
        if self.in_clear == self.in_secure_sum:
            raise ValueError(f"{self}: a participant's update goes either in the clear or "
                             "into the secure sum; sending neither or both needs code in "
                             "worker/outgoing.py, not only a policy")


#: What each kind of party sends: the one place a new kind is declared.
POLICIES: Mapping[Sharing, SharingPolicy] = MappingProxyType({
    Sharing.OPEN: SharingPolicy(in_clear=True, in_secure_sum=False),
    Sharing.SECURE: SharingPolicy(in_clear=False, in_secure_sum=True),
})

#: Behaviours whose participants hold no training data and train nothing: probes that
#: send a fixed update (the grader's canary clients, ``fedcollab.worker.outgoing.PROBES``).
#: Their group takes no share of the data, so the real participants' data is what it
#: would be without them.
DATALESS_BEHAVIOURS: tuple[str, ...] = ("canary",)


def holds_data(group: object) -> bool:
    """Whether a group (a ``GroupSpec``) gets a share of the training data."""
    return getattr(group, "behaviour", "honest") not in DATALESS_BEHAVIOURS


#: The spec's allowed ``role`` and ``sharing`` words (``Choices`` validates against them).
ROLES = tuple(r.value for r in Role)
SHARING = tuple(s.value for s in Sharing)

_POLICY_FIELDS = frozenset(f.name for f in dataclasses.fields(SharingPolicy))


def policy(sharing: str | Sharing) -> SharingPolicy:
    """The policy of a ``sharing`` word (as the spec holds it) or member.

    Raises:
        ValueError: ``sharing`` is not a :class:`Sharing` (the spec refuses those first).
    """
    return POLICIES[Sharing(sharing)]


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

    @property
    def policy(self) -> SharingPolicy:
        """What this participant sends and how the server treats it."""
        return policy(self.sharing)


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
        """Ids of the groups whose attributes match, without building a
        :class:`ParticipantInfo` per participant.

        A key is a group attribute (``role=Role.VENDOR``, ``sharing=Sharing.OPEN``) or a
        field of the group's :class:`SharingPolicy` (``in_secure_sum=True``): ask the
        policy rather than name a kind, so a new kind needs no change here.
        """
        out: list[int] = []
        for g, group in enumerate(self.groups):
            rules = policy(group.sharing)
            if all(getattr(rules if k in _POLICY_FIELDS else group, k) == v
                   for k, v in attrs.items()):
                out.extend(self.group_range(g))
        return out


def roster(spec: JobSpec) -> Roster:
    """Every logical participant of the job, group by group, in a stable order."""
    return Roster(spec)


def group_sample_sizes(spec: JobSpec) -> list[int]:
    """How many of each group take part per round: ``ceil(fraction * count)``, at least 1,
    and a group in the secure sum never below ``secure.min_group`` (a smaller sum is no
    secret)."""
    sizes = []
    for group in spec.participants:
        k = group.count if spec.fraction >= 1 else max(1, math.ceil(spec.fraction * group.count))
        if policy(group.sharing).in_secure_sum:
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
