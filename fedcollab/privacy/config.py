"""The differential-privacy settings of a job, validated once.

The spec module maps ``privacy: {dp: {...}}`` onto :class:`DpConfig` field by field
(the names are the YAML keys).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from fedcollab.privacy.accounting import AccountantKind, noise_multiplier_for_target
from fedcollab.privacy.errors import DpConfigError
from fedcollab.privacy.noise import DP_MODES, DpMode

__all__ = ["DpConfig"]


def _fail(field: str, got: object, expected: str) -> DpConfigError:
    return DpConfigError(f"privacy.dp.{field}: got {got!r}, expected {expected}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


@dataclass(frozen=True)
class DpConfig:
    """User-level DP-FedAvg settings (McMahan et al., ICLR 2018).

    Give the noise either directly (``noise_multiplier``) or as a budget
    (``target_epsilon``, turned into a noise multiplier for the job's sampling rate
    and rounds by :meth:`resolve_noise_multiplier`), never both: one would silently
    override the other. A mode other than ``none`` needs one of them.

    Attributes:
        mode: ``none``, ``central`` (the server adds noise), ``distributed`` (secure
            participants each add a share of it) or ``local`` (every participant
            noises its own update); see :mod:`fedcollab.privacy.noise`.
        noise_multiplier: ``z``, noise std over clip norm (>= 0), or None.
        clip_norm: ``C`` (> 0), the L2 bound on each participant's update; with
            adaptive clipping, the starting value.
        delta: The delta of the reported (epsilon, delta), in (0, 1).
        target_epsilon: A budget (> 0) to meet, or None.
        adaptive_clipping: Learn ``C`` as a quantile of the norms (Andrew et al. 2021).
        target_quantile: That quantile, in [0, 1].
        clip_learning_rate: ``eta_C`` (> 0) of the geometric clip update.
    """

    mode: DpMode = "none"
    noise_multiplier: Optional[float] = None
    clip_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: Optional[float] = None
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise _fail("mode", self.mode, f"one of {', '.join(DP_MODES)}")
        if self.noise_multiplier is not None and not (
                _is_number(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise _fail("noise_multiplier", self.noise_multiplier, "a number >= 0")
        if not (_is_number(self.clip_norm) and self.clip_norm > 0):
            raise _fail("clip_norm", self.clip_norm, "a number > 0")
        if not (_is_number(self.delta) and 0 < self.delta < 1):
            raise _fail("delta", self.delta, "a number in (0, 1)")
        if self.target_epsilon is not None and not (
                _is_number(self.target_epsilon) and self.target_epsilon > 0):
            raise _fail("target_epsilon", self.target_epsilon, "a number > 0")
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise DpConfigError("privacy.dp: give noise_multiplier or target_epsilon, not both "
                                f"(got noise_multiplier={self.noise_multiplier!r} and "
                                f"target_epsilon={self.target_epsilon!r})")
        if self.mode != "none" and self.noise_multiplier is None and self.target_epsilon is None:
            raise DpConfigError(f"privacy.dp: mode {self.mode!r} needs noise_multiplier or "
                                "target_epsilon")
        if not isinstance(self.adaptive_clipping, bool):
            raise _fail("adaptive_clipping", self.adaptive_clipping, "true or false")
        if not (_is_number(self.target_quantile) and 0 <= self.target_quantile <= 1):
            raise _fail("target_quantile", self.target_quantile, "a number in [0, 1]")
        if not (_is_number(self.clip_learning_rate) and self.clip_learning_rate > 0):
            raise _fail("clip_learning_rate", self.clip_learning_rate, "a number > 0")

    @property
    def enabled(self) -> bool:
        """Whether any DP is applied (``mode != "none"``)."""
        return self.mode != "none"

    def resolve_noise_multiplier(self, *, sampling_rate: float, rounds: int,
                                 accountant: AccountantKind = "rdp") -> float:
        """The noise multiplier to use: the one given, or the one meeting ``target_epsilon``.

        Args:
            sampling_rate: Each participant's chance of taking part in a round.
            rounds: The rounds the job will run.
            accountant: ``"rdp"`` or ``"pld"``.

        Returns:
            ``z`` (0 for mode ``none`` without a noise multiplier).

        Raises:
            UnreachableEpsilonError: The target cannot be met.
            PrivacyError: ``sampling_rate`` or ``rounds`` out of range.
        """
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        if self.target_epsilon is None:
            return 0.0
        return noise_multiplier_for_target(target_epsilon=self.target_epsilon,
                                           sampling_rate=sampling_rate, rounds=rounds,
                                           delta=self.delta, accountant=accountant)
