"""The server's side of DP-FedAvg for one job: settings per round, noise, accounting.

One object holds what changes across rounds (the clip norm under adaptive
clipping, the privacy ledger) so the round loop only asks it three things: what to
tell participants this round, what noise to add centrally, and what to record once
the round is aggregated. Its state goes into every checkpoint, so a resumed job
continues with the same ledger and clip norm.

What is composed is what happened, for the most exposed participant:

* participants are Poisson-sampled (:func:`fedcollab.job.sampling.poisson_sample`) at their
  group's true rate, the event the accountant composes; the rate fed to it is the
  largest group rate (a secure group raised to ``min_group`` may take part every
  round whatever ``fraction`` says);
* a secure sum whose members dropped carries only ``survivors / sampled`` of the
  distributed noise variance: that round is recorded with the smaller multiplier;
* adaptive clipping's noisy count of clipped updates is a second Gaussian query on
  the same data (0/1 bits, sensitivity 1): the round is recorded with the multiplier
  of the two together, ``(z^-2 + sigma_b^-2)^(-1/2)``;
* under ``distributed_discrete_gaussian`` each round is the distributed discrete
  Gaussian's own event (:mod:`fedcollab.privacy.ddg_accounting`) for the shares of
  the members that survived, or the open participants' Gaussian if weaker;
* aborted rounds are recorded too (their updates were computed and, if open, seen),
  and so are rounds that sampled nobody (the Poisson event composes every round).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.privacy.accounting import PrivacyLedger, noise_multiplier_for_target
from fedcollab.privacy.ddg_accounting import DdgLedger, ddg_noise_multiplier_for_target
from fedcollab.privacy.errors import PrivacyError
from fedcollab.privacy.noise import DDG_MODE

if TYPE_CHECKING:
    from fedcollab.spec import DpSpec

__all__ = ["DpServer", "fresh_rng", "solve_noise_multiplier"]


def fresh_rng() -> np.random.Generator:
    """A generator seeded with 128 bits from the OS's CSPRNG (``secrets``), never the
    job seed: the server, which knows the seed, must not predict DP noise or the sample.
    """
    import secrets

    return np.random.default_rng(secrets.randbits(128))


def solve_noise_multiplier(dp: DpSpec, *, sampling_rate: float, rounds: int,
                           participants_per_round: Optional[float] = None) -> float:
    """The noise multiplier z a job adds: the spec's, or the one that spends exactly
    ``target_epsilon`` over ``rounds`` at ``sampling_rate``.

    With adaptive clipping every round also answers the noisy count query (noise std
    ``m / 20`` on 0/1 bits), so the target is solved for the two together: the
    composed multiplier ``(z^-2 + sigma_b^-2)^(-1/2)`` meets the target at the
    expected ``m = participants_per_round`` (rounds that sample fewer are accounted
    as they happen).

    Raises:
        PrivacyError: The count query alone spends more than the target allows.
    """
    if dp.target_epsilon is None:
        return float(dp.noise_multiplier or 0.0)
    total = noise_multiplier_for_target(target_epsilon=dp.target_epsilon,
                                        sampling_rate=sampling_rate, rounds=rounds,
                                        delta=dp.delta)
    if not dp.adaptive_clipping or not participants_per_round:
        return total
    from fedcollab.privacy.adaptive import default_count_noise_std

    sigma_b = default_count_noise_std(participants_per_round)
    if sigma_b <= total:
        raise PrivacyError(
            f"privacy.dp.target_epsilon {dp.target_epsilon:g} cannot be met with adaptive "
            f"clipping: it needs a combined noise multiplier of at least {total:.3g}, but "
            f"with {participants_per_round:g} participants per round the count query's "
            f"noise std is only {sigma_b:.3g}, so that query alone spends more; sample more "
            "participants, raise target_epsilon or turn adaptive_clipping off")
    return float((total ** -2 - sigma_b ** -2) ** -0.5)


class DpServer:
    """DP settings, central noise and the privacy ledger across a job's rounds.

    Args:
        dp: The spec's ``privacy.dp`` section.
        sampling_rate: The rate fed to the accountant: the largest true group rate.
        rounds: The job's rounds (to solve ``target_epsilon`` for ``z``).
        group_rates: Each group's true rate (reported with every round).
    """

    def __init__(self, dp: DpSpec, *, sampling_rate: float, rounds: int,
                 group_rates: Optional[Mapping[str, float]] = None,
                 participants_per_round: Optional[float] = None, dim: int = 0) -> None:
        self.spec = dp
        self.sampling_rate = sampling_rate
        self.group_rates = dict(group_rates or {})
        self.clip_norm = dp.clip_norm
        self.dim = dim  # the model's parameters (the distributed discrete Gaussian's d)
        self.ledger: Any = DdgLedger() if dp.mode == DDG_MODE else PrivacyLedger()
        self.noise_multiplier = 0.0
        if dp.mode == DDG_MODE and dp.target_epsilon is not None:
            self.noise_multiplier = ddg_noise_multiplier_for_target(
                target_epsilon=dp.target_epsilon, clip_norm=dp.clip_norm, members=1,
                rounds=rounds, sampling_rate=sampling_rate, delta=dp.delta,
                dim=self._ddg_dim())
        elif dp.mode != "none":
            self.noise_multiplier = solve_noise_multiplier(
                dp, sampling_rate=sampling_rate, rounds=rounds,
                participants_per_round=participants_per_round)
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
                                   self.noise_multiplier * self.clip_norm, fresh_rng())

    def count_noise_std(self, participants: int) -> float:
        """The noise on adaptive clipping's count (Andrew et al.'s m / 20), 0 when off."""
        if not self.adaptive or participants < 1:
            return 0.0
        from fedcollab.privacy.adaptive import default_count_noise_std

        return default_count_noise_std(participants)

    @property
    def epsilon(self) -> Optional[float]:
        """What the job has spent so far (None without DP)."""
        if not self.on:
            return None
        eps = self.ledger.epsilon(delta=self.spec.delta)
        return eps if math.isfinite(eps) else None

    def account(self, clip_bits: Sequence[bool], *, participants: int,
                secure_bits: Optional[float] = None, secure_count: int = 0,
                secure_sampled: int = 0) -> dict[str, Any]:
        """Record one round in the ledger; adapt the clip norm if asked.

        Args:
            clip_bits: ``norm <= C`` of each accepted open update.
            participants: Everyone sampled this round (the count query's ``m``).
            secure_bits: The secure sum's (noisy) count of members that fit under C.
            secure_count: Secure members whose input is in the sum (survivors).
            secure_sampled: Secure members sampled this round.

        Returns:
            The figures the round's metrics line carries.
        """
        dp = self.spec
        z = self.noise_multiplier
        out: dict[str, Any] = {}
        if self.mode == DDG_MODE:
            return self._account_ddg(bool(clip_bits), secure_count, secure_sampled)
        if self.mode == "distributed" and 0 < secure_count < secure_sampled:
            # dropped members took their share of the noise with them
            z = z * math.sqrt(secure_count / secure_sampled)
            out["noise_shortfall"] = {"survivors": secure_count, "sampled": secure_sampled}
        sigma_b = self.count_noise_std(participants)
        if sigma_b > 0:
            z = (z ** -2 + sigma_b ** -2) ** -0.5  # the count query spends budget too
        self.ledger = self.ledger.record(noise_multiplier=z, sampling_rate=self.sampling_rate)
        out.update({"epsilon": self.epsilon, "delta": dp.delta,
                    "noise_multiplier": self.noise_multiplier, "accounted_multiplier": z,
                    "sampling_rate": self.sampling_rate, "clip_norm": self.clip_norm})
        if sigma_b > 0 and (clip_bits or secure_count):
            from fedcollab.privacy.adaptive import adaptive_clip_step

            # Only whether each update fits under C is used, never a norm: open
            # updates send the bit, the secure group only the (noised) sum of bits.
            fits = sum(bool(b) for b in clip_bits) + int(round(max(secure_bits or 0.0, 0.0)))
            total = len(clip_bits) + secure_count
            above = 2.0 * self.clip_norm
            values = [0.0] * min(fits, total) + [above] * max(total - fits, 0)
            self.clip_norm = adaptive_clip_step(
                self.clip_norm, values, target_quantile=dp.target_quantile,
                learning_rate=dp.clip_learning_rate, count_noise_std=sigma_b,
                rng=np.random.default_rng())
        return out

    def _ddg_dim(self) -> int:
        if self.dim < 1:
            raise PrivacyError("the distributed discrete Gaussian needs the model's size "
                               "(DpServer(dim=...))")
        return self.dim

    def _ddg_round(self, members: int, sampled: int, open_updates: bool
                   ) -> tuple[float, float, int]:
        """One round's distributed-discrete-Gaussian event: ``members`` shares of a
        plan made for ``sampled`` (dropped members took theirs with them); open
        participants' own Gaussian (multiplier z) when it is the weaker of the two."""
        from fedcollab.privacy.ddg import plan
        from fedcollab.privacy.ddg_accounting import ddg_round

        z = self.noise_multiplier
        the_plan = plan(noise_multiplier=z, clip_norm=self.clip_norm, members=max(sampled, 1),
                        dim=self._ddg_dim(), modulus_bits=64)
        l2, tau, dim = ddg_round(the_plan, max(members, 1))
        return (max(l2, 1.0 / z) if open_updates else l2), tau, dim

    def _account_ddg(self, open_updates: bool, secure_count: int,
                     secure_sampled: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if secure_count > 0:
            l2, tau, dim = self._ddg_round(secure_count, secure_sampled, open_updates)
            if secure_count < secure_sampled:
                out["noise_shortfall"] = {"survivors": secure_count, "sampled": secure_sampled}
        else:  # only open participants, each with its own Gaussian
            l2, tau, dim = 1.0 / self.noise_multiplier, 0.0, 1
        self.ledger = self.ledger.record(l2, tau, dim, sampling_rate=self.sampling_rate)
        out.update({"epsilon": self.epsilon, "delta": self.spec.delta,
                    "noise_multiplier": self.noise_multiplier, "accounted_multiplier": 1.0 / l2,
                    "sampling_rate": self.sampling_rate, "clip_norm": self.clip_norm,
                    "mechanism": DDG_MODE})
        return out

    def account_aborted(self) -> dict[str, Any]:
        """An aborted round (or one that sampled nobody): record it at the plain rate."""
        if self.mode == DDG_MODE:  # as if one member's share had carried all the noise
            l2, tau, dim = self._ddg_round(1, 1, True)
            self.ledger = self.ledger.record(l2, tau, dim, sampling_rate=self.sampling_rate)
        else:
            self.ledger = self.ledger.record(noise_multiplier=self.noise_multiplier,
                                             sampling_rate=self.sampling_rate)
        return {"epsilon": self.epsilon, "delta": self.spec.delta,
                "noise_multiplier": self.noise_multiplier,
                "sampling_rate": self.sampling_rate, "clip_norm": self.clip_norm}

    def state(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "ledger": self.ledger.to_dict()}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.clip_norm = float(state.get("clip_norm", self.clip_norm))
        if state.get("ledger"):
            kind = DdgLedger if self.spec.mode == DDG_MODE else PrivacyLedger
            self.ledger = kind.from_dict(state["ledger"])
