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
  the members that survived, or the open participants' Gaussian if weaker: per
  observer, a zCDP query (``rho = l2^2/2``, ``xi = tau d``) composed per participant
  without amplification for the server and the outputs reader, and with Zhu and
  Wang's amplification for the release reader;
* aborted rounds are recorded too (their updates were computed and, if open, seen),
  and so are rounds that sampled nobody (the Poisson event composes every round).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.privacy.accounting import PrivacyLedger, least_noise, noise_multiplier_for_target
from fedcollab.privacy.ddg_accounting import DdgLedger, ddg_noise_multiplier_for_target
from fedcollab.privacy.errors import PrivacyError
from fedcollab.privacy.noise import DDG_MODE

if TYPE_CHECKING:
    from fedcollab.privacy.observers import ObserverLedger
    from fedcollab.spec import DpSpec, JobSpec

__all__ = ["DpServer", "accounting_plan", "fresh_rng", "solve_noise_multiplier",
           "planned_exposure"]


def fresh_rng() -> np.random.Generator:
    """A generator seeded with 128 bits from the OS's CSPRNG (``secrets``), never the
    job seed: the server, which knows the seed, must not predict DP noise or the sample.
    """
    import secrets

    return np.random.default_rng(secrets.randbits(128))


def planned_exposure(rates: Mapping[str, float], counts: Mapping[str, int], rounds: int, *,
                     miss: float = 0.01) -> tuple[int, float]:
    """What a target epsilon is planned for, against the observers who know the sample.

    Returns:
        ``(k, m)``: ``k``, the rounds the most exposed participant takes part in (all
        ``rounds`` at rate 1; else the Binomial(rounds, q) count that every participant
        stays within with probability ``1 - miss``, a union bound over the roster), and
        ``m``, a low (1%) quantile of the participants a round samples (the count
        query's noise ``m / 20`` shrinks with it).
    """
    from scipy.stats import binom

    q = max(rates.values(), default=1.0)
    total = sum(counts.values())
    if q >= 1:
        k = rounds
    else:
        k = int(binom.isf(miss / max(total, 1), rounds, q)) + 1
        k = min(max(k, 1), rounds)
    mean = sum(counts[g] * rates[g] for g in counts)
    var = sum(counts[g] * rates[g] * (1 - rates[g]) for g in counts)
    return k, max(1.0, math.floor(mean - 2.33 * math.sqrt(var)))


def solve_noise_multiplier(dp: DpSpec, *, sampling_rate: float, rounds: int,
                           participants_per_round: Optional[float] = None,
                           known_sample_rounds: Optional[int] = None,
                           min_survivor_fraction: float = 1.0) -> float:
    """The noise multiplier z a job adds: the spec's, or the one that keeps every
    observer's epsilon within ``target_epsilon``.

    With ``known_sample_rounds`` (the job does), the target is met against the server,
    who knows the sample: ``known_sample_rounds`` Gaussian rounds without amplification
    (the release reader's amplified figure is never above it). Without, the old plan: the
    Poisson-sampled event at ``sampling_rate`` over ``rounds``. ``replace_one`` doubles
    the sensitivity. Secure dropouts may leave only ``min_survivor_fraction`` of the
    distributed noise, so the multiplier is raised to keep the target even then.

    With adaptive clipping every round also answers the noisy count query (noise std
    ``m / 20`` on 0/1 bits), so the target is solved for the two together: the
    composed multiplier ``(z^-2 + sigma_b^-2)^(-1/2)`` meets the target at
    ``m = participants_per_round`` (rounds that sample fewer are accounted as they
    happen, and the budget guard stops the job before one would overspend).

    Raises:
        PrivacyError: The count query alone spends more than the target allows.
    """
    if dp.target_epsilon is None:
        return float(dp.noise_multiplier or 0.0)
    if known_sample_rounds is not None:
        total = noise_multiplier_for_target(target_epsilon=dp.target_epsilon,
                                            sampling_rate=1.0, rounds=known_sample_rounds,
                                            delta=dp.delta)
    else:
        total = noise_multiplier_for_target(target_epsilon=dp.target_epsilon,
                                            sampling_rate=sampling_rate, rounds=rounds,
                                            delta=dp.delta)
    if getattr(dp, "adjacency", "add_remove") == "replace_one":
        total *= 2.0  # replacing one participant's update moves the sum by up to 2C
    total /= math.sqrt(min_survivor_fraction)  # what dropouts may leave must still suffice
    if dp.adaptive_clipping and participants_per_round:
        from fedcollab.privacy.adaptive import default_count_noise_std

        sigma_b = default_count_noise_std(participants_per_round)
        if sigma_b <= total:
            raise PrivacyError(
                f"privacy.dp.target_epsilon {dp.target_epsilon:g} cannot be met with adaptive "
                f"clipping: it needs a combined noise multiplier of at least {total:.3g}, but "
                f"with {participants_per_round:g} participants per round the count query's "
                f"noise std is only {sigma_b:.3g}, so that query alone spends more; sample more "
                "participants, raise target_epsilon or turn adaptive_clipping off")
        total = float((total ** -2 - sigma_b ** -2) ** -0.5)
    return float(total)


def accounting_plan(spec: JobSpec) -> dict[str, Any]:
    """What :class:`DpServer` needs of the roster to account per observer: each group's
    participant ids, the groups accounted as one organisation (every ``role: vendor``
    group: one party's sites), and the least share of a secure round's members whose
    noise reaches the sum (``secure.threshold``)."""
    from fedcollab.spec.roster import Role, Roster, policy

    everyone = Roster(spec)
    groups = {g.name: list(everyone.group_range(i)) for i, g in enumerate(spec.participants)}
    organisations = tuple(g.name for g in spec.participants if g.role == Role.VENDOR)
    secure = any(policy(g.sharing).in_secure_sum for g in spec.participants)
    return {"groups": groups, "organisations": organisations,
            "min_survivor_fraction": spec.secure.threshold if secure else 1.0}


class DpServer:
    """DP settings, central noise and the privacy ledgers across a job's rounds.

    Args:
        dp: The spec's ``privacy.dp`` section.
        sampling_rate: The rate fed to the accountant: the largest true group rate.
        rounds: The job's rounds (to solve ``target_epsilon`` for ``z``).
        group_rates: Each group's true rate (reported with every round).
        participants_per_round: Expected participants per round (adaptive clipping).
        groups: Each group's participant ids: turns on accounting per observer
            (:mod:`fedcollab.privacy.observers`), which ``epsilon`` then reports, and
            the budget guard (:meth:`admits`).
        organisations: Groups also accounted as one unit (a vendor's sites).
        min_survivor_fraction: The least share of a secure round's members whose
            distributed noise reaches the sum (the protocol's threshold).
    """

    @classmethod
    def from_spec(cls, spec: JobSpec, *, dim: int) -> DpServer:
        """The job's DP server from its spec and model size (``dim`` parameters) alone:
        the driver, preflight and every worker (which refuses a round config whose DP
        settings are not these, :mod:`fedcollab.worker.round_check`) derive the same
        noise multiplier only if they build it the same way, here."""
        from fedcollab.spec.roster import expected_participants, group_sampling_rates

        rates = group_sampling_rates(spec)
        return cls(spec.privacy.dp, sampling_rate=max(rates.values()), rounds=spec.rounds,
                   group_rates=rates, participants_per_round=expected_participants(spec),
                   dim=dim, **accounting_plan(spec))

    def __init__(self, dp: DpSpec, *, sampling_rate: float, rounds: int,
                 group_rates: Optional[Mapping[str, float]] = None,
                 participants_per_round: Optional[float] = None,
                 groups: Optional[Mapping[str, Sequence[int]]] = None,
                 organisations: Sequence[str] = (),
                 min_survivor_fraction: float = 1.0, dim: int = 0) -> None:
        self.spec = dp
        self.sampling_rate = sampling_rate
        self.group_rates = dict(group_rates or {})
        self.clip_norm = dp.clip_norm
        self.dim = dim  # the model's parameters (the distributed discrete Gaussian's d)
        self.ledger: Any = DdgLedger() if dp.mode == DDG_MODE else PrivacyLedger()
        self.adjacency = getattr(dp, "adjacency", "add_remove")
        self.min_survivor_fraction = (min_survivor_fraction
                                      if dp.mode in ("distributed", DDG_MODE) else 1.0)
        self.observers: Optional[ObserverLedger] = None  # per observer, under DP
        self.planned_rounds: Optional[int] = None
        if groups is not None and dp.mode != "none":
            rates = self.group_rates or {g: sampling_rate for g in groups}
            counts = {g: len(pids) for g, pids in groups.items()}
            self.planned_rounds, low = planned_exposure(rates, counts, rounds)
            if participants_per_round is not None:
                participants_per_round = low
            from fedcollab.privacy.observers import ObserverLedger

            self.observers = ObserverLedger(sum(counts.values()), groups, rates, organisations)
        self.noise_multiplier = 0.0
        if dp.mode == DDG_MODE and dp.target_epsilon is not None and self.observers is not None:
            self.noise_multiplier = self._ddg_solve(dp.target_epsilon, self.planned_rounds or 0)
        elif dp.mode == DDG_MODE and dp.target_epsilon is not None:
            self.noise_multiplier = ddg_noise_multiplier_for_target(
                target_epsilon=dp.target_epsilon, clip_norm=dp.clip_norm, members=1,
                rounds=rounds, sampling_rate=sampling_rate, delta=dp.delta,
                dim=self._ddg_dim())
        elif dp.mode != "none":
            self.noise_multiplier = solve_noise_multiplier(
                dp, sampling_rate=sampling_rate, rounds=rounds,
                participants_per_round=participants_per_round,
                known_sample_rounds=self.planned_rounds,
                min_survivor_fraction=self.min_survivor_fraction)
        # z = 0 is no DP at all (identical weights; a noiseless mechanism has no privacy)
        self.on = dp.mode != "none" and self.noise_multiplier > 0
        self.mode = dp.mode if self.on else "none"
        self.stopped: Optional[str] = None  # why the budget guard stopped the job

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

    # ------------------------------------------------------------------ the figures
    def queries(self, participants: int, *, shortfall: float = 1.0) -> tuple[Any, ...]:
        """The round's noisy queries for one participant: the update sum (``z``) and,
        under adaptive clipping, the count of clip bits (``sigma_b``); each carries
        ``shortfall`` (the share of distributed noise that reached the sum). Central
        mode's server adds the noise, so it sees both exact."""
        from fedcollab.privacy.observers import Query

        exact = ("server",) if self.mode == "central" else ()
        root = math.sqrt(shortfall)
        out = [Query(self.noise_multiplier * root, exact)]
        sigma_b = self.count_noise_std(participants)
        if sigma_b > 0:
            out.append(Query(sigma_b * root, exact))
        return tuple(out)

    def figures(self, *, per_round: bool = False) -> Optional[dict[str, Any]]:
        """Every observer's epsilon so far (:meth:`ObserverLedger.figures`), JSON-safe:
        ``None`` for an observer that sees data without noise (listed in ``trusted``
        when the mode trusts it). None without DP or observers. ``per_round`` (a
        metrics line) leaves out the release reader under ``replace_one``, whose PLD
        composition costs seconds a call; the summary has it."""
        if not self.on or self.observers is None:
            return None
        out = self.observers.figures(delta=self.spec.delta, adjacency=self.adjacency,
                                     mode=self.mode,
                                     release=not (per_round and self.adjacency == "replace_one"))
        return _json_safe(out)

    @property
    def epsilon(self) -> Optional[float]:
        """What the job has spent so far: the largest figure over the observers the mode
        does not trust (None without DP, or when unbounded). Without observers: the
        Poisson-sampled event at the largest group rate (the release reader's)."""
        if not self.on:
            return None
        if self.observers is not None:
            eps = self.observers.headline_epsilon(delta=self.spec.delta,
                                                  adjacency=self.adjacency, mode=self.mode)
        else:
            eps = self.ledger.epsilon(delta=self.spec.delta)
        return eps if math.isfinite(eps) else None

    # ------------------------------------------------------------------ the budget
    def admits(self, sampled: Sequence[int], *, secure_sampled: int = 0) -> Optional[str]:
        """None if running a round with ``sampled`` keeps every observer's epsilon within
        ``target_epsilon`` even if the secure members drop to the threshold; else why
        not (the job stops before the round: nothing of it reaches the server)."""
        target = self.spec.target_epsilon
        if not self.on or target is None or self.observers is None:
            return None
        from fedcollab.privacy.observers import ObserverLedger, RoundSpend

        trial = ObserverLedger(self.observers.participants,
                               {g: list(p) for g, p in self.observers.groups.items()},
                               self.observers.group_rates, self.observers.organisations)
        trial.restore(*self.observers.state())
        shortfall = self.min_survivor_fraction if secure_sampled else 1.0
        if self.mode == DDG_MODE:  # the members down to the threshold, open updates seen
            queries = (self._ddg_query(self._ddg_worst(secure_sampled,
                                                       len(sampled) > secure_sampled)),)
        else:
            queries = self.queries(len(sampled), shortfall=shortfall)
        trial.record(RoundSpend(tuple(sampled), queries))
        eps = trial.headline_epsilon(delta=self.spec.delta, adjacency=self.adjacency,
                                     mode=self.mode)
        if eps <= target:
            return None
        from fedcollab.privacy.observers import headline_observers

        who = " and ".join(o.replace("_", " ") for o in headline_observers(self.mode)
                           if o != "release_reader")
        return (f"privacy budget: this round would take the {who}'s epsilon to "
                f"{eps:.4g} > target_epsilon {target:g} "
                f"({self.adjacency}, delta {self.spec.delta:g}); the job stops before it")

    # ------------------------------------------------------------------ recording
    def _record(self, sampled: Sequence[int], participants: int, shortfall: float,
                z: float) -> None:
        from fedcollab.privacy.observers import RoundSpend

        self.ledger = self.ledger.record(noise_multiplier=z, sampling_rate=self.sampling_rate)
        if self.observers is not None:
            self.observers.record(RoundSpend(tuple(sampled),
                                             self.queries(participants, shortfall=shortfall)))

    def _line(self, z: float) -> dict[str, Any]:
        line: dict[str, Any] = {"epsilon": self.epsilon, "delta": self.spec.delta,
                                "noise_multiplier": self.noise_multiplier,
                                "accounted_multiplier": z,
                                "sampling_rate": self.sampling_rate, "clip_norm": self.clip_norm}
        figures = self.figures(per_round=True)
        if figures is not None:
            line["epsilon_by_observer"] = figures["by_observer"]
            line["adjacency"] = figures["adjacency"]
            if figures["organisation"]:
                line["organisation_epsilon"] = figures["organisation"]
        return line

    def account(self, clip_bits: Sequence[float], *, participants: int,
                secure_bits: Optional[float] = None, secure_count: int = 0,
                secure_sampled: int = 0, sampled: Sequence[int] = ()) -> dict[str, Any]:
        """Record one round in the ledgers; adapt the clip norm if asked.

        Args:
            clip_bits: Each accepted open update's clip bit (``norm <= C``); in
                distributed and local mode already noised by its sender (a float).
            participants: Everyone sampled this round (the count query's ``m``).
            secure_bits: The secure sum's (noisy) count of members that fit under C.
            secure_count: Secure members whose input is in the sum (survivors).
            secure_sampled: Secure members sampled this round.
            sampled: The participants sampled (for the observers who know the sample).

        Returns:
            The figures the round's metrics line carries.
        """
        dp = self.spec
        z = self.noise_multiplier
        shortfall = 1.0
        out: dict[str, Any] = {}
        if self.mode == DDG_MODE:
            return self._account_ddg(sampled, participants > secure_sampled or bool(clip_bits),
                                     secure_count, secure_sampled)
        if self.mode == "distributed" and 0 < secure_count < secure_sampled:
            # dropped members took their share of the noise with them
            shortfall = secure_count / secure_sampled
            z = z * math.sqrt(shortfall)
            out["noise_shortfall"] = {"survivors": secure_count, "sampled": secure_sampled}
        sigma_b = self.count_noise_std(participants)
        if sigma_b > 0:  # the count query spends budget too
            z = (z ** -2 + (sigma_b * math.sqrt(shortfall)) ** -2) ** -0.5
        self._record(sampled, participants, shortfall, z)
        out.update(self._line(z))
        if sigma_b > 0 and (clip_bits or secure_count):
            from fedcollab.privacy.adaptive import clip_step_from_count

            # Only whether each update fits under C is used, never a norm: open updates
            # send the bit (noised by the sender unless the server is trusted), the
            # secure group only the (noised) sum of bits.
            count = float(sum(float(b) for b in clip_bits)) + float(secure_bits or 0.0)
            if self.mode == "central":
                count += float(fresh_rng().normal(0.0, sigma_b))
            self.clip_norm = clip_step_from_count(
                self.clip_norm, count, len(clip_bits) + secure_count,
                target_quantile=dp.target_quantile, learning_rate=dp.clip_learning_rate)
        return out

    # ------------------------------------------------------------------ DDG
    def _ddg_dim(self) -> int:
        if self.dim < 1:
            raise PrivacyError("the distributed discrete Gaussian needs the model's size "
                               "(DpServer(dim=...))")
        return self.dim

    def _ddg_plan(self, members: int, z: Optional[float] = None) -> Any:
        from fedcollab.privacy.ddg import plan

        return plan(noise_multiplier=self.noise_multiplier if z is None else z,
                    clip_norm=self.clip_norm, members=max(members, 1), dim=self._ddg_dim(),
                    modulus_bits=64)

    def _ddg_round(self, members: int, sampled: int, open_updates: bool
                   ) -> tuple[float, float, int]:
        """One round's distributed-discrete-Gaussian event ``(l2, tau, d)``: ``members``
        shares of a plan made for ``sampled`` (dropped members took theirs with them);
        open participants' own Gaussian (multiplier z) when it is the weaker of the two;
        a round without secure members is the open participants' Gaussian alone."""
        from fedcollab.privacy.ddg_accounting import ddg_round

        if members < 1:
            return 1.0 / self.noise_multiplier, 0.0, 1
        l2, tau, dim = ddg_round(self._ddg_plan(sampled), members)
        return (max(l2, 1.0 / self.noise_multiplier) if open_updates else l2), tau, dim

    def _ddg_worst(self, sampled: int, open_updates: bool) -> tuple[float, float, int]:
        """An event that dominates the round whatever number of ``sampled`` members
        survives down to the threshold: the ``l2`` of the fewest survivors with the
        ``tau`` of the most (``l2`` falls and ``tau`` grows with the survivors)."""
        from fedcollab.privacy.ddg_accounting import ddg_round

        if sampled < 1:
            return self._ddg_round(0, 0, open_updates)
        fewest = max(1, math.floor(self.min_survivor_fraction * sampled + 1e-9))
        l2, _, dim = self._ddg_round(fewest, sampled, open_updates)
        return l2, ddg_round(self._ddg_plan(sampled), sampled)[1], dim

    def _ddg_query(self, event: tuple[float, float, int]) -> Any:
        """The round's query for the per-observer accountant (a registered zCDP kind)."""
        from fedcollab.privacy.ddg_accounting import DDG_QUERY_KIND
        from fedcollab.privacy.observers import Query

        l2, tau, dim = event
        return Query(kind=DDG_QUERY_KIND, params={"l2": float(l2), "tau": float(tau),
                                                  "dim": int(dim)})

    def _ddg_solve(self, target: float, rounds: int) -> float:
        """The least ``z`` (0.1% relative) whose known-sample figure after ``rounds``
        rounds of one member's full noise stays within ``target`` (what the observers
        compose: zCDP, ``replace_one`` at four times rho), raised for dropouts down to
        the threshold; bisection, on the safe side."""
        import dp_accounting

        from fedcollab.privacy.ddg_accounting import ddg_round, ddg_zcdp
        from fedcollab.privacy.observers import epsilon_of_event

        scale = 4.0 if self.adjacency == "replace_one" else 1.0

        def eps(z: float) -> float:
            l2, tau, dim = ddg_round(self._ddg_plan(1, z), 1)
            rho, xi = ddg_zcdp({"l2": l2, "tau": tau, "dim": dim})
            event = dp_accounting.ZCDpEvent(scale * rho * rounds, xi * rounds)
            return epsilon_of_event(event, delta=self.spec.delta)

        if rounds < 1:
            return float(self.spec.noise_multiplier or 1.0)
        least = least_noise(
            eps, target, unreachable=lambda _: (
                f"target_epsilon={target:g} is out of reach for the distributed discrete "
                f"Gaussian over {rounds} round(s); raise the budget or delta"))
        return least / math.sqrt(self.min_survivor_fraction)

    def _record_ddg(self, sampled: Sequence[int], event: tuple[float, float, int]) -> None:
        from fedcollab.privacy.observers import RoundSpend

        l2, tau, dim = event
        self.ledger = self.ledger.record(l2, tau, dim, sampling_rate=self.sampling_rate)
        if self.observers is not None:
            self.observers.record(RoundSpend(tuple(sampled), (self._ddg_query(event),)))

    def _account_ddg(self, sampled: Sequence[int], open_updates: bool, secure_count: int,
                     secure_sampled: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        event = self._ddg_round(secure_count, secure_sampled, open_updates)
        if 0 < secure_count < secure_sampled:
            out["noise_shortfall"] = {"survivors": secure_count, "sampled": secure_sampled}
        self._record_ddg(sampled, event)
        out.update(self._line(1.0 / event[0]))
        out["mechanism"] = DDG_MODE
        return out

    def account_aborted(self, sampled: Sequence[int] = (), *,
                        participants: int = 0) -> dict[str, Any]:
        """An aborted round (or one that sampled nobody): its updates were computed and,
        if open, seen; recorded at the plain multiplier (and the count query's). Under
        the distributed discrete Gaussian, as if one member's share had carried all the
        noise."""
        if self.mode == DDG_MODE:
            event = self._ddg_round(1, 1, True)
            self._record_ddg(sampled, event)
            return self._line(1.0 / event[0])
        z = self.noise_multiplier
        sigma_b = self.count_noise_std(participants)
        if sigma_b > 0:
            z = (z ** -2 + sigma_b ** -2) ** -0.5
        self._record(sampled, participants, 1.0, z)
        return self._line(z)

    def account_lost(self, sampled: Optional[Sequence[int]] = None,
                     accounted_multiplier: Optional[float] = None) -> None:
        """A round that ran before a crash and was not committed: it runs again, and both
        runs are spent. ``sampled``: who it sampled (its journal entry); None when lost,
        and then everyone is counted in it. Its multiplier is the least its journal entry
        or metrics line records, else the plain ``z`` with the count query at one
        participant (the most it can have cost). Under the distributed discrete
        Gaussian: an event that dominates any number of those participants being secure
        members, down to the threshold (:meth:`_ddg_worst`)."""
        if sampled is None:
            sampled = range(self.observers.participants) if self.observers is not None else ()
        if self.mode == DDG_MODE:
            worst = [self._ddg_worst(s, True) for s in range(len(sampled) + 1)]
            self._record_ddg(sampled, (max(e[0] for e in worst), max(e[1] for e in worst),
                                       max(e[2] for e in worst)))
            return
        z = accounted_multiplier
        if z is None:
            z = self.noise_multiplier
            sigma_b = self.count_noise_std(1)
            if sigma_b > 0:
                z = (z ** -2 + sigma_b ** -2) ** -0.5
        from fedcollab.privacy.observers import Query, RoundSpend

        self.ledger = self.ledger.record(noise_multiplier=z, sampling_rate=self.sampling_rate)
        if self.observers is not None:
            exact = ("server",) if self.mode == "central" else ()
            self.observers.record(RoundSpend(tuple(sampled), (Query(z, exact),)))

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clip_norm": self.clip_norm, "ledger": self.ledger.to_dict()}
        if self.observers is not None:
            out["observers"] = self.observers.state()[1]
        if self.stopped is not None:
            out["budget_stop"] = self.stopped
        return out

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The observer ledger's per-participant arrays (for the checkpoint's npz)."""
        if self.observers is None:
            return {}
        return self.observers.state()[0]

    def restore(self, state: Mapping[str, Any],
                arrays: Optional[Mapping[str, np.ndarray]] = None) -> None:
        self.clip_norm = float(state.get("clip_norm", self.clip_norm))
        if state.get("ledger"):
            kind = DdgLedger if self.spec.mode == DDG_MODE else PrivacyLedger
            self.ledger = kind.from_dict(state["ledger"])
        if self.observers is not None and arrays and state.get("observers") is not None:
            self.observers.restore(arrays, state["observers"])
        self.stopped = state.get("budget_stop", self.stopped)


def _json_safe(value: Any) -> Any:
    """inf -> None (JSON has no infinity), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
