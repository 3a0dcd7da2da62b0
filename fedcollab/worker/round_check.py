"""What a participant derives of a round's DP settings itself, and the check that
refuses a round config naming anything else (issue 27, finding 6).

The server sends a :class:`~fedcollab.worker.messages.RoundConfig` with every round.
Its DP fields decide how much noise a participant adds, so a participant never takes
them on the server's word: the mode, the noise multiplier ``z`` and (without adaptive
clipping) the clip norm ``C`` come from its own spec, computed as the job computes
them (:class:`~fedcollab.privacy.server.DpServer`), and the member count ``m`` over
which distributed noise is split is bounded by the secure group it knows. A server
that claims ``m = 10^12`` (noise std divided by a million) or ``dp_mode: none`` is
refused. Under adaptive clipping the clip bit is sent only when the participant's own
spec clips adaptively, and the noise on it (distributed and local DP: the participant
adds it) is at least what the smallest round its spec can sample gets (``m / 20`` for
the ``m`` members every round samples); a server that names less, or none, to read
the bits bare is refused. Pure: no TensorFlow, no Ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from fedcollab.privacy.noise import DDG_MODE
from fedcollab.secure.errors import ParameterMismatchError, UnsafeRosterError
from fedcollab.worker.messages import RoundConfig

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec
    from fedcollab.spec.roster import Roster

__all__ = ["OwnDp", "own_dp", "check_round_config", "check_layer_sharers"]

#: the modes whose participants noise their own clip bits (the server is not trusted)
_NOISED_BY_SENDER = ("distributed", "local")


@dataclass(frozen=True)
class OwnDp:
    """The DP settings a participant derives from its own spec.

    Attributes:
        mode: ``none`` (also when ``z`` is 0), ``central``, ``distributed`` or ``local``.
        noise_multiplier: ``z``.
        clip_norm: ``C`` (the starting value under adaptive clipping).
        adaptive: Whether the server moves ``C`` (adaptive clipping): noise and clipping
            then both use the round's ``C``, so the noise relative to the sensitivity,
            ``z``, is what must not change.
        secure_members: The secure group's size (the largest possible ``m``).
        count_noise_floor: The least noise std the participant puts on its clip bits
            (distributed and local DP under adaptive clipping, else 0): the count
            query's ``m / 20`` for the participants every round samples (those of groups
            sampled at rate 1; at least one).
    """

    mode: str
    noise_multiplier: float
    clip_norm: float
    adaptive: bool
    secure_members: int
    count_noise_floor: float = 0.0


def own_dp(spec: JobSpec, dim: int = 0) -> OwnDp:
    """The DP settings of ``spec`` for a model of ``dim`` parameters (only the distributed
    discrete Gaussian's noise depends on it), derived exactly as the job derives them
    (:meth:`DpServer.from_spec`: the same per-observer plan for ``target_epsilon``)."""
    from fedcollab.privacy.server import DpServer
    from fedcollab.spec.roster import group_sampling_rates, roster

    dp = DpServer.from_spec(spec, dim=dim)
    secure = len(roster(spec).pids_where(in_secure_sum=True))
    floor = 0.0
    if dp.adaptive and dp.mode in _NOISED_BY_SENDER:
        rates = group_sampling_rates(spec)
        always = sum(g.count for g in spec.participants if rates[g.name] >= 1.0)
        floor = dp.count_noise_std(max(always, 1))  # the server's own m / 20 at that m
    return OwnDp(dp.mode, float(dp.noise_multiplier), float(dp.clip_norm), bool(dp.adaptive),
                 secure, floor)


def check_round_config(config: RoundConfig, own: OwnDp) -> None:
    """Refuse a round config whose DP settings are not the participant's own.

    Raises:
        ParameterMismatchError: Another mode, ``z`` or (without adaptive clipping) ``C``;
            a non-positive ``C``; or ``m`` outside ``[1, secure group size]``.
    """
    if config.dp_mode != own.mode:
        raise ParameterMismatchError(f"round config: dp mode {config.dp_mode!r}, this "
                                     f"participant's spec says {own.mode!r}")
    if own.mode == "none":
        return
    if not math.isclose(config.noise_multiplier, own.noise_multiplier, rel_tol=1e-9,
                        abs_tol=0.0):
        raise ParameterMismatchError(
            f"round config: noise multiplier {config.noise_multiplier:g}, this participant's "
            f"spec gives {own.noise_multiplier:g}")
    if not (math.isfinite(config.clip_norm) and config.clip_norm > 0):
        raise ParameterMismatchError(f"round config: clip norm {config.clip_norm!r}")
    if config.clip_bit != own.adaptive:
        raise ParameterMismatchError(
            f"round config: clip bit {'on' if config.clip_bit else 'off'}, this participant's "
            f"spec has adaptive clipping {'on' if own.adaptive else 'off'}")
    if own.count_noise_floor > 0 and not (
            config.count_noise_std >= own.count_noise_floor * (1 - 1e-9)):
        raise ParameterMismatchError(
            f"round config: clip-bit noise std {config.count_noise_std:g}, below the "
            f"{own.count_noise_floor:g} this participant's spec gives its smallest round")
    if not own.adaptive and not math.isclose(config.clip_norm, own.clip_norm, rel_tol=1e-12):
        raise ParameterMismatchError(
            f"round config: clip norm {config.clip_norm:g}, this participant's spec gives "
            f"{own.clip_norm:g} (no adaptive clipping)")
    # both distributed mechanisms split the noise over m members: m bounds each share
    if own.mode in ("distributed", DDG_MODE) and not 1 <= config.noisy_participants <= max(
            own.secure_members, 1):
        raise ParameterMismatchError(
            f"round config: distributed noise split over {config.noisy_participants} "
            f"members; the secure group has {own.secure_members}")


def check_layer_sharers(spec: JobSpec, people: Roster, pid: int, members: Sequence[int], *,
                        round_id: int) -> None:
    """Private layers under sampling: ``pid`` refuses to mask if a layer it shares is
    shared by fewer than ``secure.min_group`` of the round's secure ``members`` (that
    array's secure sum would be theirs alone; issue 27, finding 5). ``validate`` checks
    the same over the whole group (``spec.schema.layer_sharers``).

    Raises:
        UnsafeRosterError: Such a layer.
    """
    from fedcollab.spec.schema import layer_sharers

    groups = spec.participants
    counts = [0] * len(groups)
    for member in members:
        counts[people[member].group] += 1
    mine = groups[people[pid].group].private_layers
    floor = spec.secure.min_group
    for layer, count in sorted(layer_sharers(groups, counts).items()):
        if layer not in mine and count < floor:
            raise UnsafeRosterError(
                f"round {round_id}: layer {layer!r} is shared by {count} of the round's "
                f"secure members, below min_group={floor}; participant {pid} does not put "
                "it into that sum")
