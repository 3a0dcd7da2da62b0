"""Secure-aggregation parameters, validated once, shared by participants and server."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING

from fedcollab.secure.encoding import FixedPointCodec
from fedcollab.secure.errors import GroupTooSmallError, SecAggConfigError
from fedcollab.secure.graph import PROTOCOLS

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["MIN_GROUP", "SERVER_MODELS", "SecAggParams", "validate_group_size"]

#: Server models: ``honest_but_curious`` (follows the protocol, reads what it gets)
#: and ``malicious`` (may lie in any message; needs identity keys and the
#: consistency round, see :mod:`fedcollab.secure.identity`).
SERVER_MODELS = ("honest_but_curious", "malicious")

#: No secure group (and no secure sum) may have fewer members than this.
MIN_GROUP = 3


def validate_group_size(size: int, min_group: int = MIN_GROUP, *,
                        what: str = "secure group") -> None:
    """Reject a secure group (or a set of summed inputs) smaller than ``min_group``.

    Raises:
        GroupTooSmallError: ``size < min_group``, with the reason in the message.
    """
    if size < min_group:
        raise GroupTooSmallError(
            f"{what} has {size} member(s), min_group is {min_group}: a sum of one or two "
            "updates is no secret (with two, each member subtracts its own update and "
            "reads the other's); add participants or make the group open")


@dataclass(frozen=True)
class SecAggParams:
    """How one secure group aggregates.

    Attributes:
        protocol: ``"secagg"`` (Bonawitz et al. 2017, complete graph, O(n^2)) or
            ``"secaggplus"`` (Bell et al. 2020, random sparse graph, O(n log n)).
        threshold: Fraction of a participant's neighbourhood (all other members for
            SecAgg, its ``k`` graph neighbours for SecAgg+) whose shares reconstruct
            its secrets: ``t = max(2, ceil(threshold * neighbourhood))``. Must be
            > 0.5: then the honest holders of a participant's shares cannot hand a
            server both its self-mask seed and its pairwise recovery secret. Higher
            means more collusion resistance and less dropout tolerance.
        min_group: Smallest secure group and smallest set of summed inputs (>= 3).
        neighbours: SecAgg+ degree ``k``; ``None`` = automatic: at least
            ``2*ceil(log2 n)``, raised until ``expected_dropout`` random dropouts abort
            a round with probability <= 1% (``graph.auto_degree``), capped at ``n - 1``.
            Ignored for SecAgg.
        expected_dropout: Dropout rate the automatic SecAgg+ degree is sized for;
            must be below ``1 - threshold``. The default 5% is the dropout rate of
            Bell et al.'s headline configuration (16 neighbours at n=100); 10% needs 34.
        clip: Encoding range: each coordinate of ``weight * update`` and the weight
            itself are clipped to ``[-clip, clip]`` (see ``encoding`` module).
        scale_bits: Fixed-point fractional bits; quantisation step ``2**-scale_bits``.
        amortise_keys: Reuse X25519 keys across rounds (pairwise seeds derived per
            round with HKDF; see ``participant`` module for why this is safe). False
            runs the classic per-round protocol with fresh keys every round.
        server: ``"malicious"`` (default): key adverts are signed with Ed25519
            identity keys from a registry provisioned at setup, and a consistency
            round (every survivor signs the survivor set and checks its partners'
            signatures) precedes unmasking, so a server that lies about keys or
            about who survived is refused. ``"honest_but_curious"`` skips both
            (one round trip and one signature per participant per round less) and
            is safe only against a server that follows the protocol.
        key_rotation_rounds: Forward secrecy of amortised keys: every participant
            draws fresh X25519 keys (erasing the old ones) at least every this many
            rounds, so a leaked long-lived key opens at most this many past rounds.
            ``None``: rotate only after a dropout. Ignored without ``amortise_keys``
            (keys are then fresh every round).
        min_round_fraction: The floor of a round: a participant refuses a round whose
            member set (or survivor set) has fewer than
            ``max(min_group, ceil(min_round_fraction * g))`` members, ``g`` the group
            size pinned at setup, so a server cannot shrink a round to a victim and a
            few colluders. In (0, 1].
        min_members: That floor as a count, when the caller knows better than the
            fraction (a job that samples a part of its group each round sets it from
            the spec's sample size); ``None``: from ``min_round_fraction``.
    """

    protocol: str = "secaggplus"
    threshold: float = 0.67
    min_group: int = MIN_GROUP
    neighbours: int | None = None
    expected_dropout: float = 0.05
    clip: float = 4.0
    scale_bits: int = 20
    amortise_keys: bool = True
    server: str = "malicious"
    key_rotation_rounds: int | None = 10
    min_round_fraction: float = 0.5
    min_members: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_round_fraction) and 0.0 < self.min_round_fraction <= 1.0):
            raise SecAggConfigError(f"min_round_fraction={self.min_round_fraction!r} must be "
                                    "in (0, 1]")
        if self.min_members is not None and self.min_members < self.min_group:
            raise GroupTooSmallError(f"min_members={self.min_members} is below "
                                     f"min_group={self.min_group}")
        if self.server not in SERVER_MODELS:
            raise SecAggConfigError(f"server={self.server!r}; expected one of {SERVER_MODELS}")
        if self.key_rotation_rounds is not None and self.key_rotation_rounds < 1:
            raise SecAggConfigError(
                f"key_rotation_rounds={self.key_rotation_rounds} must be at least 1 (or None)")
        if self.protocol not in PROTOCOLS:
            raise SecAggConfigError(f"protocol={self.protocol!r}; expected one of {PROTOCOLS}")
        if not (math.isfinite(self.threshold) and 0.5 < self.threshold <= 1.0):
            raise SecAggConfigError(
                f"threshold={self.threshold!r} must be in (0.5, 1]: at or below one half, "
                "a server could collect both kinds of share of one participant")
        if self.min_group < MIN_GROUP:
            raise GroupTooSmallError(
                f"min_group={self.min_group} is below {MIN_GROUP}: a sum of one or two "
                "updates is no secret")
        if self.neighbours is not None and self.neighbours < 2:
            raise SecAggConfigError(
                f"neighbours={self.neighbours} must be at least 2 (or None for auto)")
        if not 0.0 <= self.expected_dropout < 1.0 - self.threshold:
            raise SecAggConfigError(
                f"expected_dropout={self.expected_dropout!r} must be in [0, 1 - threshold) = "
                f"[0, {1.0 - self.threshold:.2f}): a threshold of {self.threshold} cannot "
                "survive more dropouts")
        FixedPointCodec(clip=self.clip, scale_bits=self.scale_bits, group_size=1)

    @classmethod
    def from_spec(cls, spec: JobSpec) -> SecAggParams:
        """A job's parameters (the same on the server and every participant): the spec's
        ``secure`` section, server model and key-rotation window included."""
        from fedcollab.spec.roster import group_sample_sizes, policy

        sec = spec.secure
        sampled = sum(k for g, k in zip(spec.participants, group_sample_sizes(spec))
                      if policy(g.sharing).in_secure_sum)
        fraction = getattr(sec, "min_round_fraction", 0.5)
        floor = round_floor(sec.min_group, float(fraction), sampled)
        return cls(protocol=sec.protocol, threshold=sec.threshold, min_group=sec.min_group,
                   neighbours=sec.neighbours, expected_dropout=sec.expected_dropout,
                   clip=sec.clip, amortise_keys=sec.amortise_keys, server=sec.server,
                   key_rotation_rounds=sec.key_rotation_rounds, min_round_fraction=fraction,
                   min_members=floor)

    def floor(self, group_size: int) -> int:
        """The fewest members (and survivors) a round of a group of ``group_size`` may
        have: ``min_members``, or ``max(min_group, ceil(min_round_fraction * size))``."""
        if self.min_members is not None:
            return self.min_members
        return round_floor(self.min_group, float(self.min_round_fraction), group_size)

    @property
    def malicious(self) -> bool:
        """Whether participants defend against a server that lies (signatures, consistency)."""
        return self.server == "malicious"

    def codec(self, group_size: int) -> FixedPointCodec:
        """The fixed-point codec (ring width chosen from ``group_size``).

        Raises:
            SecAggConfigError: No ring wide enough for this group, clip and scale.
        """
        return _codec(group_size, self.clip, self.scale_bits)


@lru_cache(maxsize=256)
def round_floor(min_group: int, fraction: float, group_size: int) -> int:
    """``max(min_group, ceil(fraction * group_size))``, with ``fraction`` taken as the
    decimal it prints as (0.3 * 10 is 3, not 4); cached: every participant checks it
    twice a round (a ``Fraction`` costs ~10 us)."""
    return max(min_group, math.ceil(Fraction(repr(fraction)) * group_size))


@lru_cache(maxsize=256)
def _codec(group_size: int, clip: float, scale_bits: int) -> FixedPointCodec:
    """One (immutable) codec per ring shape: every participant asks for it every round."""
    return FixedPointCodec.for_group(group_size, clip=clip, scale_bits=scale_bits)
