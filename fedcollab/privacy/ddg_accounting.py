"""Epsilon of the distributed discrete Gaussian (:mod:`fedcollab.privacy.ddg`).

One round releases ``x + sum_j Y_j`` with ``Y_j ~ N_Z(0, sigma^2)^d`` from ``m``
members, where one participant changes ``x`` by at most the *rounded* sensitivity
``Delta`` (the conditional rounding's bound, not ``C / gamma``). Kairouz, Liu,
Steinke (ICML 2021), Theorem 1 / Proposition 14: for every order ``alpha > 1`` it is
``(alpha, eps(alpha))``-RDP with

    eps(alpha) = min(alpha/2 * l2^2 + tau d,  alpha/2 * (l2 + sqrt(d) tau)^2),
    l2 = Delta / (sqrt(m) sigma),  tau = 10 sum_{k=1}^{m-1} exp(-2 pi^2 sigma^2 k/(k+1)),

that is ``(xi = tau d, rho = l2^2/2)``-zCDP (``dp_accounting.ZCDpEvent``) or
``(l2 + sqrt(d) tau)^2/2``-zCDP, whichever is smaller at that order. Without
sampling (``q = 1``, e.g. against an observer who knows the sample) rounds compose
by adding RDP. With Poisson sampling at rate ``q`` secret from the observer, each
round's RDP is amplified by the general bound of Zhu and Wang, "Poisson Subsampled
Rényi Differential Privacy", ICML 2019, Theorem 5 (valid for any mechanism, integer
orders), as in the paper's own accounting code. The RDP curve is converted to
``(epsilon, delta)`` by ``dp_accounting``'s conversion (Canonne-Kamath-Steinke /
Asoodeh et al.). Adjacency: add/remove one participant.

:func:`ddg_epsilon` takes what the continuous accountant takes (``z, C, m``, rounds,
sampling rate) plus the update's dimension and modulus; :class:`DdgLedger` records
rounds as they happen (members that drop out take their noise with them).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcollab.privacy.accounting import least_noise
from fedcollab.privacy.ddg import DdgPlan, plan
from fedcollab.privacy.errors import PrivacyError

__all__ = ["DDG_ORDERS", "round_rdp", "subsampled_rdp", "rdp_epsilon", "ddg_round",
           "ddg_epsilon", "ddg_noise_multiplier_for_target", "DdgLedger", "DDG_QUERY_KIND",
           "ddg_zcdp"]

#: RDP orders: fractional ones below 2 (large epsilons need them; Zhu and Wang's bound
#: needs integers, so there a sampled round counts as unsampled), then integers.
DDG_ORDERS: tuple[float, ...] = (tuple(1 + x / 20 for x in range(1, 20))
                                 + tuple(range(2, 129)) + (160, 192, 256, 512))


def _tau(sigma2: float, members: int) -> float:
    return 10.0 * sum(math.exp(-2.0 * math.pi ** 2 * sigma2 * k / (k + 1))
                      for k in range(1, members))


def ddg_round(the_plan: DdgPlan, members: int) -> tuple[float, float, int]:
    """One round's ``(l2, tau, d)`` when ``members`` of the plan's shares are summed."""
    if members < 1:
        raise PrivacyError(f"ddg accounting: got members={members}, expected >= 1")
    l2 = the_plan.l2_bound / math.sqrt(members * the_plan.sigma2)
    return l2, _tau(the_plan.sigma2, members), the_plan.padded


def round_rdp(l2: float, tau: float, dim: int, orders: Sequence[float] = DDG_ORDERS
              ) -> np.ndarray:
    """Proposition 14: ``eps(alpha)`` of one round, without sampling."""
    a = np.asarray(orders, dtype=np.float64)
    return np.minimum(a / 2 * l2 ** 2 + tau * dim, a / 2 * (l2 + math.sqrt(dim) * tau) ** 2)


def subsampled_rdp(rdp: np.ndarray, q: float, orders: Sequence[float] = DDG_ORDERS
                   ) -> np.ndarray:
    """Zhu and Wang (2019), Theorem 5: RDP at integer ``orders`` of the mechanism with
    RDP ``rdp`` (at the same orders, which must include 2, 3, ...: the bound reads
    ``eps(l)`` for ``l <= alpha``; a missing one is taken from the next larger order)
    under Poisson sampling at rate ``q``, capped by the unsampled ``rdp``; at a
    fractional order, the unsampled ``rdp`` itself."""
    if q >= 1:
        return np.asarray(rdp, dtype=np.float64)
    from scipy.special import gammaln, logsumexp

    by_order = {int(o): float(v) for o, v in zip(orders, rdp) if float(o).is_integer()}
    out = []
    for order, eps_alpha in zip(orders, rdp):
        if not float(order).is_integer():
            out.append(float(eps_alpha))
            continue
        alpha = int(order)
        ls = np.arange(3, alpha + 1)
        missing = [int(j) for j in ls if int(j) not in by_order]
        if missing:  # orders between the grid points: the rdp grows with the order
            hi = {j: min(v for o, v in by_order.items() if o >= j) for j in missing}
            by_order.update(hi)
        eps_l = np.array([by_order[int(j)] for j in ls])
        log_comb = gammaln(alpha + 1) - gammaln(ls + 1) - gammaln(alpha - ls + 1)
        a = np.concatenate([[0.0, by_order[2]],
                            (ls - 1) * eps_l + log_comb + (alpha - ls) * math.log1p(-q)
                            + ls * math.log(q)])
        b = np.concatenate([[(1 - q) ** (alpha - 1) * (alpha * q - q + 1),
                             math.comb(alpha, 2) * q ** 2 * (1 - q) ** (alpha - 2)],
                            np.full(ls.size, 3.0)])
        out.append(min(float(logsumexp(a, b=b)) / (alpha - 1), float(eps_alpha)))
    return np.asarray(out)


def rdp_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = DDG_ORDERS
                ) -> float:
    """``(epsilon, delta)`` from an RDP curve, by ``dp_accounting``'s conversion."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    eps, _ = compute_epsilon(np.asarray(orders, dtype=np.float64), np.asarray(rdp), delta)
    return float(eps)


def ddg_epsilon(*, noise_multiplier: float, clip_norm: float, members: int, rounds: int,
                sampling_rate: float, delta: float, dim: int, modulus_bits: int = 23) -> float:
    """Epsilon after ``rounds`` rounds of the distributed discrete Gaussian in which
    ``members`` secure members each add their share (:func:`fedcollab.privacy.ddg.plan`
    with these values), Poisson-sampled at ``sampling_rate`` (1: no amplification).

    Raises:
        PrivacyError: A value out of range.
    """
    if not 0 < sampling_rate <= 1 or not 0 < delta < 1 or rounds < 0:
        raise PrivacyError(f"ddg accounting: got sampling_rate={sampling_rate!r}, "
                           f"delta={delta!r}, rounds={rounds!r}")
    if rounds == 0:
        return 0.0
    the_plan = plan(noise_multiplier=noise_multiplier, clip_norm=clip_norm, members=members,
                    dim=dim, modulus_bits=modulus_bits)
    return DdgLedger().record(*ddg_round(the_plan, members), sampling_rate=sampling_rate,
                              rounds=rounds).epsilon(delta=delta)


def ddg_noise_multiplier_for_target(*, target_epsilon: float, clip_norm: float, members: int,
                                    rounds: int, sampling_rate: float, delta: float, dim: int,
                                    modulus_bits: int = 23, tolerance: float = 1e-3) -> float:
    """The smallest ``z`` (within ``tolerance``, relative) whose :func:`ddg_epsilon` is
    at most ``target_epsilon``; bisection, on the safe side.

    Raises:
        UnreachableEpsilonError: Even ``z = 1e3`` spends more than the target.
    """
    def eps(z: float) -> float:
        return ddg_epsilon(noise_multiplier=z, clip_norm=clip_norm, members=members,
                           rounds=rounds, sampling_rate=sampling_rate, delta=delta, dim=dim,
                           modulus_bits=modulus_bits)

    return least_noise(
        eps, target_epsilon, ceiling=1e3, tolerance=tolerance,
        unreachable=lambda _: (f"target_epsilon={target_epsilon:g} is out of reach for the "
                               f"distributed discrete Gaussian over {rounds} round(s); raise "
                               "the budget or delta"))


@dataclass(frozen=True)
class DdgLedger:
    """Rounds of the distributed discrete Gaussian spent so far, as immutable state.

    Attributes:
        entries: ``(l2, tau, dim, sampling_rate, rounds)`` runs, oldest first (a round
            with no secure member, only open participants' own continuous noise at
            multiplier ``z``, is recorded as ``l2 = 1/z, tau = 0``: the Gaussian's RDP).
    """

    entries: tuple[tuple[float, float, int, float, int], ...] = ()

    @property
    def rounds(self) -> int:
        return sum(e[4] for e in self.entries)

    def record(self, l2: float, tau: float, dim: int, *, sampling_rate: float,
               rounds: int = 1) -> DdgLedger:
        """A new ledger with ``rounds`` more rounds of this kind."""
        if not (math.isfinite(l2) and l2 >= 0 and tau >= 0 and 0 < sampling_rate <= 1):
            raise PrivacyError(f"ddg ledger: got l2={l2!r}, tau={tau!r}, "
                               f"sampling_rate={sampling_rate!r}")
        if rounds == 0:
            return self
        key = (float(l2), float(tau), int(dim), float(sampling_rate))
        if self.entries and self.entries[-1][:4] == key:
            last = self.entries[-1]
            return DdgLedger(self.entries[:-1] + ((*key, last[4] + rounds),))
        return DdgLedger(self.entries + ((*key, rounds),))

    def rdp(self) -> np.ndarray:
        total = np.zeros(len(DDG_ORDERS))
        for l2, tau, dim, q, count in self.entries:
            total += count * subsampled_rdp(round_rdp(l2, tau, dim), q)
        return total

    def epsilon(self, *, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any round)."""
        if not 0 < delta < 1:
            raise PrivacyError(f"ddg ledger: got delta={delta!r}, expected (0, 1)")
        if self.rounds == 0:
            return 0.0
        return rdp_epsilon(self.rdp(), delta)

    def to_dict(self) -> dict[str, Any]:
        return {"accountant": "ddg_rdp", "entries": [list(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DdgLedger:
        try:
            return cls(tuple((float(a), float(b), int(c), float(d), int(e))
                             for a, b, c, d, e in data["entries"]))
        except (KeyError, TypeError, ValueError):
            raise PrivacyError("ddg ledger: expected {'entries': [[l2, tau, dim, "
                               "sampling_rate, rounds], ...]}") from None


# ----------------------------------------------------------------------------- per observer

#: The query kind one round of the distributed discrete Gaussian is recorded as in the
#: per-observer accountant (:mod:`fedcollab.privacy.observers`); its params are the
#: round's ``{"l2", "tau", "dim"}`` (:func:`ddg_round`).
DDG_QUERY_KIND = "distributed_discrete_gaussian"


def ddg_zcdp(params: Mapping[str, Any]) -> tuple[float, float]:
    """A round's ``(rho, xi)``-zCDP bound (Theorem 1's first form): ``rho = l2^2 / 2``,
    ``xi = tau d``. ``rho`` grows as the square of the sensitivity and ``xi`` not at all
    (the bound for a sensitivity ``k Delta`` is ``k^2 rho`` with the same ``xi``)."""
    l2 = float(params["l2"])
    return l2 * l2 / 2.0, float(params["tau"]) * int(params["dim"])


def _ddg_event(params: Mapping[str, Any]) -> Any:
    import dp_accounting

    rho, xi = ddg_zcdp(params)
    return dp_accounting.ZCDpEvent(rho, xi)


def _ddg_sampled_rdp(params: Mapping[str, Any], q: float, orders: Sequence[float]) -> np.ndarray:
    """A round's RDP at ``orders`` under Poisson sampling at ``q`` (Zhu and Wang), as
    :class:`DdgLedger` composes it (``orders`` must hold the integers it reads)."""
    rdp = round_rdp(float(params["l2"]), float(params["tau"]), int(params["dim"]), orders)
    return subsampled_rdp(rdp, q, orders)


def _register() -> None:
    from fedcollab.privacy.observers import register_query_kind

    register_query_kind(DDG_QUERY_KIND, _ddg_event, zcdp=ddg_zcdp,
                        sampled_rdp=_ddg_sampled_rdp, orders=DDG_ORDERS)


_register()
