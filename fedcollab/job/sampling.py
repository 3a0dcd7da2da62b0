"""Who takes part: the roster of logical participants and who is sampled each round.

The roster is derived from the spec alone (group by group, in a stable order), so the
driver, every worker and a resumed job agree on participant ids without talking.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedcollab.privacy.server import accounting_plan as dp_accounting_plan
from fedcollab.privacy.server import fresh_rng
from fedcollab.spec.roster import (
    ParticipantInfo,
    Roster,
    group_sample_sizes,
    group_sampling_rates,
    policy,
)

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["sample_participants", "poisson_sample", "Sampler", "dp_accounting_plan"]


def sample_participants(people: Sequence[ParticipantInfo], spec: JobSpec, round_id: int,
                        rng: np.random.Generator | None = None) -> list[int]:
    """Per-group sampling of :func:`group_sample_sizes` participants without replacement.

    With no ``rng`` the sample is a function of (seed, round), so a resumed job samples
    the same participants as an uninterrupted one. Under DP the caller passes fresh OS
    entropy instead: the job seed is published with the release, and amplification by
    sampling only holds if nobody can predict the sample. The draw costs what the
    sample costs, not what the roster does (numpy picks few of many by Floyd's method).
    """
    if spec.fraction >= 1:
        return list(range(len(people)))
    rng = rng if rng is not None else np.random.default_rng([spec.seed, round_id, 7])
    chosen: list[int] = []
    everyone = Roster(spec)
    for g, k in enumerate(group_sample_sizes(spec)):
        members = everyone.group_range(g)
        picked = rng.choice(len(members), size=k, replace=False) + members.start
        chosen.extend(sorted(picked.tolist()))
    return sorted(chosen)


def poisson_sample(people: Sequence[ParticipantInfo], spec: JobSpec,
                   rng: np.random.Generator) -> list[int]:
    """Poisson sampling: each participant takes part independently with its group's rate.

    This is the sampling DP accounting composes (``PoissonSampledDpEvent`` at the
    group's :func:`group_sampling_rates` rate), so the epsilon is the one spent. It is
    drawn as a binomial count then that many distinct members, which is the same
    distribution as one coin per member at the cost of the sample. A secure group
    whose draw falls below ``secure.min_group`` sits the round out (a smaller sum is
    no secret); that choice depends on the draw alone, never on data, so it only
    lowers the group's exposure. A round can sample nobody (the loop skips it).
    """
    rates = group_sampling_rates(spec)
    chosen: list[int] = []
    everyone = Roster(spec)
    for g, group in enumerate(spec.participants):
        members = everyone.group_range(g)
        k = int(rng.binomial(len(members), rates[group.name]))
        if policy(group.sharing).in_secure_sum and k < min(group.count, spec.secure.min_group):
            continue
        chosen.extend((rng.choice(len(members), size=k, replace=False)
                       + members.start).tolist())
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
        self.people = people
        self.secret = secret

    def sample(self, round_id: int) -> list[int]:
        if self.secret:
            return poisson_sample(self.people, self.spec, fresh_rng())
        return sample_participants(self.people, self.spec, round_id)


