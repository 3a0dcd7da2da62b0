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

from fedcollab.privacy.server import fresh_rng
from fedcollab.types import ParticipantId

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["ParticipantInfo", "roster", "sample_participants", "poisson_sample", "Sampler",
           "ROLES", "SHARING", "group_sample_sizes", "group_sampling_rates"]

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


def sample_participants(people: Sequence[ParticipantInfo], spec: JobSpec, round_id: int,
                        rng: np.random.Generator | None = None) -> list[int]:
    """Per-group sampling of :func:`group_sample_sizes` participants without replacement.

    With no ``rng`` the sample is a function of (seed, round), so a resumed job samples
    the same participants as an uninterrupted one. Under DP the caller passes fresh OS
    entropy instead: the job seed is published with the release, and amplification by
    sampling only holds if nobody can predict the sample.
    """
    if spec.fraction >= 1:
        return [p.pid for p in people]
    rng = rng if rng is not None else np.random.default_rng([spec.seed, round_id, 7])
    chosen: list[int] = []
    for g, k in enumerate(group_sample_sizes(spec)):
        members = [p.pid for p in people if p.group == g]
        chosen.extend(sorted(rng.choice(members, size=k, replace=False).tolist()))
    return sorted(chosen)


def poisson_sample(people: Sequence[ParticipantInfo], spec: JobSpec,
                   rng: np.random.Generator) -> list[int]:
    """Poisson sampling: each participant takes part independently with its group's rate.

    This is the sampling DP accounting composes (``PoissonSampledDpEvent`` at the
    group's :func:`group_sampling_rates` rate), so the epsilon is the one spent. A secure
    group whose draw falls below ``secure.min_group`` sits the round out (a smaller sum
    is no secret); that choice depends on the draw alone, never on data, so it only
    lowers the group's exposure. A round can sample nobody (the loop skips it).
    """
    rates = group_sampling_rates(spec)
    chosen: list[int] = []
    for g, group in enumerate(spec.participants):
        members = [p.pid for p in people if p.group == g]
        draw = rng.random(len(members))
        picked = [pid for pid, u in zip(members, draw) if u < rates[group.name]]
        if group.sharing == "secure" and len(picked) < min(group.count, spec.secure.min_group):
            picked = []
        chosen.extend(picked)
    return sorted(chosen)


class Sampler:
    """Chooses each round's participants.

    Without DP: :func:`sample_participants`, a function of (seed, round), so a resumed
    job samples as an uninterrupted one. ``secret`` (DP jobs): :func:`poisson_sample`
    from OS entropy, never from the published job seed.
    """

    def __init__(self, spec: JobSpec, people: Sequence[ParticipantInfo], *,
                 secret: bool = False) -> None:
        self.spec = spec
        self.people = list(people)
        self.secret = secret

    def sample(self, round_id: int) -> list[int]:
        if self.secret:
            return poisson_sample(self.people, self.spec, fresh_rng())
        return sample_participants(self.people, self.spec, round_id)
