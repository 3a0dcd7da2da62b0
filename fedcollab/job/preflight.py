"""Checks that need the data or the protocol parameters, run before any training.

`fedcollab validate` and `fedcollab run` both call :func:`preflight`, so a spec that
validates also starts; neither imports TensorFlow or Ray here.
"""
from __future__ import annotations

from typing import Any

from fedcollab.errors import FedcollabError
from fedcollab.spec import JobSpec, SpecError
from fedcollab.spec.roster import policy

__all__ = ["preflight", "spec_warnings"]


def preflight(spec: JobSpec, *, find_model: bool = True) -> dict[str, Any]:
    """Find the model, load the data, partition it, check the secure encoding and
    the release key.

    `find_model` False skips looking up a ``package.module:function`` model (finding
    a submodule imports its parent packages: the job service checks its allowlist
    instead, importing nothing).

    Returns:
        Facts for the user: training samples and the secure group's ring width.

    Raises:
        SpecError: a ``package.module:function`` model that is not there, too few
            samples for the participants, or a secure configuration whose
            fixed-point sum could overflow.
        fedcollab.job.release.ReleaseError: ``release.key`` is missing or not Ed25519.
    """
    from fedcollab.data import load_federation
    from fedcollab.data.federation import PartitionedFederation
    from fedcollab.worker.models import check_builder_name

    if find_model:
        check_builder_name(spec.task.model)
    data = load_federation(spec)
    facts: dict[str, Any] = {
        "train_samples": len(data.dataset.y_train) if isinstance(data, PartitionedFederation)
        else data.max_samples() * spec.total_participants}
    secure = sum(g.count for g in spec.participants if policy(g.sharing).in_secure_sum)
    if secure:
        from fedcollab.secure.params import SecAggParams

        try:
            codec = SecAggParams.from_spec(spec).codec(secure)
        except FedcollabError as err:
            raise SpecError(f"spec: secure: {err}") from None
        facts["secure_ring_bits"] = codec.ring_bits
        _check_secure_room_for_noise(spec)
    if spec.privacy.dp.mode != "none":
        _noise_multiplier(spec)  # a target epsilon that cannot be met fails here
    if spec.release.sign and spec.release.key:
        from fedcollab.job.release import load_key

        load_key(spec.release.key)
    return facts


def spec_warnings(spec: JobSpec) -> list[str]:
    """What a valid spec cannot do that its user may expect, one sentence each
    (``fedcollab validate`` prints them)."""
    from fedcollab.aggregation.registry import (
        rule_needs_individual_updates,
        secure_compatibility_message,
    )

    warnings = []
    rule = spec.aggregation.rule
    if rule_needs_individual_updates(rule) and any(
            policy(g.sharing).in_secure_sum for g in spec.participants):
        warnings.append(f"aggregation.rule: {secure_compatibility_message(rule)}")
    return warnings


def _noise_multiplier(spec: JobSpec) -> float:
    """The z the job will add (solved for ``target_epsilon`` as the job solves it).

    Raises:
        SpecError: a target epsilon that adaptive clipping's count query makes unreachable.
    """
    from fedcollab.privacy.errors import PrivacyError
    from fedcollab.privacy.server import DpServer

    # the distributed discrete Gaussian's bound grows with the model's size, unknown
    # before the model is built: a target out of reach at size 1 is out of reach at any
    # (the job solves it again at the real size)
    try:
        return DpServer.from_spec(spec, dim=1).noise_multiplier
    except PrivacyError as err:
        raise SpecError(f"spec: {err}") from None


def _check_secure_room_for_noise(spec: JobSpec) -> None:
    """Distributed DP noise must fit the fixed-point range, or clamping removes it.

    Each member sends a clipped update (every coordinate within C) plus
    N(0, (zC)^2 / m); ``secure.clip`` must hold C plus four standard deviations, or
    saturation would clip the noise and the sum would carry less than accounted.
    """
    dp = spec.privacy.dp
    if dp.mode not in ("distributed", "local"):
        return
    from fedcollab.spec.roster import group_sampling_rates

    rates = group_sampling_rates(spec)
    secure = [g for g in spec.participants if policy(g.sharing).in_secure_sum]
    # Poisson sampling: the fewest secure members a round can sum is every member of
    # the groups that always take part, or else the smallest group at its min_group
    forced = sum(g.count for g in secure if rates[g.name] >= 1)
    members = forced or min((min(g.count, spec.secure.min_group) for g in secure), default=1)
    z = _noise_multiplier(spec)
    share = max(members, 1) if dp.mode == "distributed" else 1  # local: each adds all of it
    sigma = float(z or 0.0) * dp.clip_norm / share ** 0.5
    need = dp.clip_norm + 4.0 * sigma
    if spec.secure.clip < need:
        raise SpecError(f"spec: secure.clip: got {spec.secure.clip:g}, but each of the "
                        f"{members} secure members adds noise of std {sigma:.3g} to updates "
                        f"clipped to {dp.clip_norm:g}; the fixed-point range must hold "
                        f"C + 4 std = {need:.3g} or the noise saturates (raise secure.clip)")
    if dp.adaptive_clipping:
        # the clip bit's slot: 1 + N(0, sigma_b^2 / members), sigma_b = m / 20 for the
        # m a round samples (its 99% upper quantile: more participants, more noise)
        mean = sum(g.count * rates[g.name] for g in spec.participants)
        var = sum(g.count * rates[g.name] * (1 - rates[g.name]) for g in spec.participants)
        high = min(mean + 2.33 * var ** 0.5, float(spec.total_participants))
        bit_sigma = high / 20.0 / share ** 0.5
        need = 1.0 + 4.0 * bit_sigma
        if spec.secure.clip < need:
            raise SpecError(
                f"spec: secure.clip: got {spec.secure.clip:g}, but adaptive clipping's count "
                f"noise on each secure member's clip bit has std {bit_sigma:.3g} (m / 20 for "
                f"up to {high:.0f} participants a round, over {share} member(s)); the "
                f"fixed-point range must hold 1 + 4 std = {need:.3g} or that noise saturates "
                "and the count carries less than accounted (raise secure.clip, sample fewer "
                "participants per round or turn adaptive_clipping off)")
