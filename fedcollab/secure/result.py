"""What one secure-aggregation round tells the caller."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fedcollab.secure.encoding import split_weighted_sum
from fedcollab.secure.stages import STAGE_NAMES

__all__ = ["STAGES", "SecureSumResult"]

#: Stage names used as keys of the per-stage byte and time counters, in the order of
#: :data:`fedcollab.secure.stages.STAGES` (``consistency`` runs only with a
#: malicious-server model).
STAGES: tuple[str, ...] = STAGE_NAMES


@dataclass(frozen=True)
class SecureSumResult:
    """The unmasked sum of one round and what it cost.

    Attributes:
        round_id: The round.
        total: float64 decoded sum over ``survivors`` (weighted update + weight coord).
        integer_sum: The same sum in the ring (``uint32``/``uint64``), before decoding.
        survivors: Participants whose masked input is in the sum.
        dropped: Participants that were asked for a masked input and sent none (or a
            rejected one); their dangling pairwise masks were removed.
        unresponsive: Survivors that did not answer (or were rejected at) the unmask
            stage; their input still counts.
        rejected: Reason per participant whose message was rejected (bad bytes, replay,
            wrong length, unknown peer, refusal...). Rejected senders count as dropped.
        excluded: Reason per participant the server left out before masking (missing
            key-setup message, too few neighbours with keys, ...).
        key_setup: Participants that advertised fresh keys this round.
        bytes_up: Bytes received by the server per stage (see :data:`STAGES`).
        bytes_down: Bytes sent by the server per stage (attributed to the stage that
            consumes them).
        seconds: Server compute seconds per stage.
        participant_seconds: Participants' compute seconds per stage, summed (filled
            by a driver such as :func:`~fedcollab.secure.driver.run_secure_round`).
    """

    round_id: int
    total: np.ndarray = field(repr=False)
    integer_sum: np.ndarray = field(repr=False)
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    unresponsive: tuple[int, ...]
    rejected: Mapping[int, str]
    excluded: Mapping[int, str]
    key_setup: tuple[int, ...]
    bytes_up: Mapping[str, int]
    bytes_down: Mapping[str, int]
    seconds: Mapping[str, float]
    participant_seconds: Mapping[str, float] = field(default_factory=dict)

    def weighted_mean(self) -> tuple[np.ndarray, float]:
        """(Weighted mean update, summed weight): the sums divided, weight coord dropped."""
        return split_weighted_sum(self.total)
