"""The server's side of DP-FedAvg for one job: settings per round, noise, accounting.

One object holds what changes across rounds (the clip norm under adaptive
clipping, the privacy ledger) so the round loop only asks it three things: what to
tell participants this round, what noise to add centrally, and what to record once
the round is aggregated. Its state goes into every checkpoint, so a resumed job
continues with the same ledger and clip norm.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.privacy.accounting import PrivacyLedger, noise_multiplier_for_target

if TYPE_CHECKING:
    from fedcollab.spec import DpSpec

__all__ = ["DpServer"]


class DpServer:
    """DP settings, central noise and the privacy ledger across a job's rounds.

    Args:
        dp: The spec's ``privacy.dp`` section.
        sampling_rate: The rate fed to the accountant.
        rounds: The job's rounds (to solve ``target_epsilon`` for ``z``).
    """

    def __init__(self, dp: DpSpec, *, sampling_rate: float, rounds: int) -> None:
        self.spec = dp
        self.sampling_rate = sampling_rate
        self.clip_norm = dp.clip_norm
        self.ledger = PrivacyLedger()
        self.noise_multiplier = 0.0
        if dp.mode != "none":
            if dp.target_epsilon is not None:
                self.noise_multiplier = noise_multiplier_for_target(
                    target_epsilon=dp.target_epsilon, sampling_rate=sampling_rate,
                    rounds=rounds, delta=dp.delta)
            else:
                self.noise_multiplier = float(dp.noise_multiplier or 0.0)
        # z = 0 is no DP at all (identical weights; a noiseless mechanism has no privacy)
        self.on = dp.mode != "none" and self.noise_multiplier > 0
        self.mode = dp.mode if self.on else "none"

    @property
    def adaptive(self) -> bool:
        return self.on and self.spec.adaptive_clipping

    def central_noise(self, shapes: Sequence[tuple[int, ...]]) -> Optional[list[np.ndarray]]:
        """N(0, (zC)^2) per array for central mode (fresh OS entropy), else None."""
        if self.mode != "central":
            return None
        from fedcollab.privacy.noise import gaussian_noise_like

        return gaussian_noise_like([np.zeros(s) for s in shapes],
                                   self.noise_multiplier * self.clip_norm,
                                   np.random.default_rng())

    def account(self, norms: Sequence[float], *, secure_bits: Optional[float] = None,
                secure_count: int = 0) -> dict[str, Any]:
        """Record one round in the ledger; adapt the clip norm if asked.

        Returns the figures the round's metrics line carries.
        """
        dp = self.spec
        self.ledger = self.ledger.record(noise_multiplier=self.noise_multiplier,
                                         sampling_rate=self.sampling_rate)
        eps = self.ledger.epsilon(delta=dp.delta)
        out: dict[str, Any] = {"epsilon": eps if math.isfinite(eps) else None,
                               "delta": dp.delta, "noise_multiplier": self.noise_multiplier,
                               "clip_norm": self.clip_norm}
        if dp.adaptive_clipping and (norms or secure_count):
            from fedcollab.privacy.adaptive import adaptive_clip_step, default_count_noise_std

            # Secure participants reveal only how many fit under C (summed bits), so
            # they enter as norms 0 (fits) or infinity (does not).
            values = list(norms)
            fits = int(round(secure_bits or 0.0))
            values += [0.0] * fits + [float("inf")] * max(secure_count - fits, 0)
            self.clip_norm = adaptive_clip_step(
                self.clip_norm, values, target_quantile=dp.target_quantile,
                learning_rate=dp.clip_learning_rate,
                count_noise_std=default_count_noise_std(len(values)),
                rng=np.random.default_rng())
        return out

    def state(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "ledger": self.ledger.to_dict()}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.clip_norm = float(state.get("clip_norm", self.clip_norm))
        if state.get("ledger"):
            self.ledger = PrivacyLedger.from_dict(state["ledger"])
