"""Epsilon per observer, per adjacency and per party, from what a job really did.

An epsilon is a claim about an observer. Three observers matter for a job:

``server``
    Receives every open update and every secure sum, and draws (so knows) each round's
    sample. Amplification by sampling does not hold against it: a participant's figure
    composes only the rounds it took part in, each a Gaussian query without sampling.
    In ``central`` mode the server adds the noise itself, so against it nothing is
    private (``inf``): central DP trusts the server.
``outputs_reader``
    Reads the job's outputs (``metrics.jsonl``, checkpoints, ``summary.json``): every
    round's noised model, and each round's sample size. Under DP the outputs do not name
    who was sampled, but the per-round counts (and every participant, who knows when it
    was picked) make the sample no secret worth amplifying on, so this reader is accounted
    as one who knows the sample, on the noised rounds (the same as the server except in
    central mode).
``release_reader``
    Sees only the released model. The sample came from the operating system's entropy and
    is secret from it, so each round is a Poisson-sampled Gaussian at the largest group's
    true rate, composed over every round (``dp_accounting.PoissonSampledDpEvent``).

Each figure is for the most exposed participant, at the job's ``delta`` and adjacency:
``add_remove`` (one participant's data added or removed; sensitivity ``C``) or
``replace_one`` (one participant's data replaced by any other; ``dp_accounting``'s PLD
``REPLACE_ONE``, twice the sensitivity without sampling). A group accounted as one
organisation (a vendor's ``k`` sites) gets its figure with the sensitivity of all its
sites in a round: ``k_r * C`` when ``k_r`` of them took part (exact for Gaussian noise,
tighter than group privacy's generic bound), against an observer who knows the sample.

A job's record is a list of :class:`RoundSpend` (who took part, which noisy queries ran)
folded into an :class:`ObserverLedger`; :func:`job_epsilons` returns the figures as the
scorecard's ``privacy`` block. Query kinds other than the Gaussian register a
``dp_accounting`` event for themselves with :func:`register_query_kind`; a kind with a
zCDP bound ``(rho, xi)`` (the distributed discrete Gaussian's, Kairouz et al. 2021) is
composed per participant like the Gaussian (``rho`` and ``xi`` add up over the rounds it
took part in), scaled to ``k`` sites or to replace-one by the square of the sensitivity
(``k^2 rho``, ``4 rho``; ``xi`` does not grow with it), and may bring its own amplified
RDP curve for the release reader.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np

from fedcollab.privacy.errors import PrivacyError

if TYPE_CHECKING:
    import dp_accounting

__all__ = [
    "OBSERVERS",
    "ADJACENCIES",
    "Adjacency",
    "Query",
    "RoundSpend",
    "JobRecord",
    "ObserverLedger",
    "job_epsilons",
    "register_query_kind",
    "QueryKind",
    "epsilon_of_event",
    "headline_observers",
]

Adjacency = Literal["add_remove", "replace_one"]
ADJACENCIES: tuple[str, ...] = ("add_remove", "replace_one")
OBSERVERS: tuple[str, ...] = ("server", "outputs_reader", "release_reader")
#: Observers who know each round's sample (no amplification against them).
KNOW_THE_SAMPLE: tuple[str, ...] = ("server", "outputs_reader")


@dataclass(frozen=True)
class QueryKind:
    """How the accountant composes one kind of query (see :func:`register_query_kind`)."""

    to_event: Callable[[Mapping[str, Any]], Any]
    zcdp: Optional[Callable[[Mapping[str, Any]], tuple[float, float]]] = None
    sampled_rdp: Optional[Callable[[Mapping[str, Any], float, Sequence[float]], np.ndarray]] = None
    orders: tuple[float, ...] = ()


#: kind -> how to account it (events for one participant, unsampled)
_KINDS: dict[str, QueryKind] = {}


def register_query_kind(
    kind: str,
    to_event: Callable[[Mapping[str, Any]], Any],
    *,
    zcdp: Optional[Callable[[Mapping[str, Any]], tuple[float, float]]] = None,
    sampled_rdp: Optional[Callable[[Mapping[str, Any], float, Sequence[float]], np.ndarray]] = None,
    orders: Sequence[float] = (),
) -> None:
    """Teach the accountant a query that is not a plain Gaussian (e.g. the distributed
    discrete Gaussian): ``to_event(params)`` returns its unsampled ``dp_accounting`` event
    for one participant.

    Args:
        zcdp: ``params -> (rho, xi)``, the event as ``(xi, rho)``-zCDP with ``rho``
            growing as the square of the sensitivity and ``xi`` not at all (true of the
            Gaussian and of the distributed discrete Gaussian's bound). With it the
            known-sample observers compose per participant by adding ``rho`` and ``xi``;
            an organisation's ``k`` sites in one round count ``k^2 rho``, replace-one
            ``4 rho``. Without it an organisation with several sites in one round gets
            ``inf`` (no valid bound is known for the kind).
        sampled_rdp: ``(params, q, orders) -> RDP curve`` of the event Poisson-sampled at
            rate ``q`` (the release reader, add/remove). Without it the release reader
            composes ``PoissonSampledDpEvent(q, event)`` (dp_accounting must support it).
            With it, the release reader is amplified only under add/remove and RDP;
            otherwise it is given the known-sample figure (never below the truth).
        orders: The RDP orders ``sampled_rdp`` needs (its curve is evaluated there).
    """
    if kind == "gaussian":
        raise PrivacyError("privacy: the 'gaussian' query kind is built in")
    _KINDS[kind] = QueryKind(to_event, zcdp, sampled_rdp, tuple(orders))


@dataclass(frozen=True)
class Query:
    """One noisy query a round answers on its sampled participants' data.

    Attributes:
        noise_multiplier: Noise std over the query's sensitivity for one participant
            (``z`` for the update sum; ``sigma_b`` for adaptive clipping's count of bits).
        exact_for: Observers that see the answer without this noise (central DP's server;
            an un-noised clip bit): their epsilon is ``inf``.
        kind: ``"gaussian"`` or a kind registered with :func:`register_query_kind`.
        params: The kind's parameters (JSON-safe), for kinds other than Gaussian.
    """

    noise_multiplier: float = 0.0
    exact_for: tuple[str, ...] = ()
    kind: str = "gaussian"
    params: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """The query's accounting identity (same key, same event)."""
        return json.dumps({"kind": self.kind, "params": dict(self.params)}, sort_keys=True)


@dataclass(frozen=True)
class RoundSpend:
    """One round as the accountant sees it: who took part, which noisy queries ran.

    Attributes:
        sampled: Participant ids whose data the round used (everyone sampled, also those
            who dropped or were rejected: their updates were computed and may have been
            seen).
        queries: The noisy queries the round answered.
        organisation_sites: Per organisation (group name), how many of its sites took
            part (derived from ``sampled`` and the groups when not given).
    """

    sampled: tuple[int, ...] = ()
    queries: tuple[Query, ...] = ()


@dataclass(frozen=True)
class JobRecord:
    """What a job did, for the accountant (see :func:`job_epsilons`).

    Attributes:
        rounds: One :class:`RoundSpend` per round that ran (re-runs included).
        groups: Each group's participant ids, by group name.
        group_rates: Each group's true per-round sampling rate.
        delta: The target delta.
        adjacency: ``"add_remove"`` or ``"replace_one"``.
        organisations: Groups accounted as one unit (a vendor's sites).
        accountant: ``"rdp"`` or ``"pld"`` (``replace_one`` always uses PLD).
    """

    rounds: tuple[RoundSpend, ...]
    groups: Mapping[str, Sequence[int]]
    group_rates: Mapping[str, float]
    delta: float = 1e-5
    adjacency: str = "add_remove"
    organisations: tuple[str, ...] = ()
    accountant: str = "rdp"


def _check_adjacency(adjacency: str) -> None:
    if adjacency not in ADJACENCIES:
        raise PrivacyError(
            f"privacy: got adjacency={adjacency!r}, expected one of {', '.join(ADJACENCIES)}"
        )


def _relation(adjacency: str) -> Any:
    import dp_accounting

    rel = dp_accounting.NeighboringRelation
    return rel.REPLACE_ONE if adjacency == "replace_one" else rel.ADD_OR_REMOVE_ONE


def _accountant_for(adjacency: str, kind: str) -> Any:
    from dp_accounting import pld, rdp

    if adjacency == "replace_one" or kind == "pld":
        return pld.PLDAccountant(_relation(adjacency), value_discretization_interval=1e-3)
    return rdp.RdpAccountant()


def epsilon_of_event(
    event: dp_accounting.DpEvent,
    *,
    delta: float,
    adjacency: str = "add_remove",
    accountant: str = "rdp",
) -> float:
    """epsilon of ``event`` at ``delta`` under ``adjacency`` (PLD for ``replace_one``)."""
    _check_adjacency(adjacency)
    acc = _accountant_for(adjacency, accountant)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def _combined(multipliers: Iterable[float]) -> float:
    """Gaussian queries on the same participants' data as one: ``(sum z_i^-2)^(-1/2)``
    (exact: the joint answer is a Gaussian of that multiplier); 0 when any is noiseless."""
    inv = 0.0
    for z in multipliers:
        if z <= 0:
            return 0.0
        inv += z**-2
    return inv**-0.5 if inv > 0 else math.inf


class ObserverLedger:
    """Incremental per-observer accounting across a job's rounds.

    Gaussian queries fold into, per participant, ``mu^2 = sum 1 / z_r^2`` over the
    rounds it took part in (a composition of Gaussians is the Gaussian of that ``mu``):
    the worst participant is the one with the largest ``mu``. Other kinds keep per
    participant a count of each distinct event. The release reader's figure is the
    composition of every round's Poisson-sampled event at the largest group rate.
    Observers that see a query exact get ``inf``.

    Args:
        participants: Roster size.
        groups: Each group's participant ids.
        group_rates: Each group's true sampling rate.
        organisations: Group names accounted as one unit.
    """

    def __init__(
        self,
        participants: int,
        groups: Mapping[str, Sequence[int]],
        group_rates: Mapping[str, float],
        organisations: Sequence[str] = (),
    ) -> None:
        self.participants = int(participants)
        self.groups = {g: np.asarray(list(pids), dtype=np.int64) for g, pids in groups.items()}
        self.group_rates = {g: float(q) for g, q in group_rates.items()}
        self.rate = max(self.group_rates.values(), default=1.0)
        self.organisations = tuple(o for o in organisations if o in self.groups)
        self.mu2 = np.zeros(self.participants, dtype=np.float64)
        self.org_mu2 = {o: 0.0 for o in self.organisations}
        # zCDP kinds (register_query_kind(zcdp=...)): rho and xi summed per participant
        self.rho = np.zeros(self.participants, dtype=np.float64)
        self.xi = np.zeros(self.participants, dtype=np.float64)
        self.org_rho = {o: 0.0 for o in self.organisations}
        self.org_xi = {o: 0.0 for o in self.organisations}
        self.org_unbounded: set[str] = set()  # k > 1 sites in a kind without zCDP
        self.other: dict[str, np.ndarray] = {}  # event key -> per participant count
        self.org_other: dict[str, dict[str, int]] = {o: {} for o in self.organisations}
        self.exact: set[str] = set()  # observers that saw something exact
        self.released: dict[str, int] = {}  # event key -> rounds (release reader)
        self.rounds = 0

    # ----------------------------------------------------------------- recording
    def record(self, spend: RoundSpend) -> None:
        """Add one round."""
        sampled = np.asarray(sorted(set(int(p) for p in spend.sampled)), dtype=np.int64)
        if sampled.size and (sampled[0] < 0 or sampled[-1] >= self.participants):
            raise PrivacyError(
                f"privacy: round sampled participant ids outside 0..{self.participants - 1}"
            )
        gaussian = [q for q in spend.queries if q.kind == "gaussian"]
        for q in spend.queries:
            if not (math.isfinite(q.noise_multiplier) and q.noise_multiplier >= 0):
                raise PrivacyError(
                    f"privacy: got noise_multiplier={q.noise_multiplier!r}, "
                    "expected a finite number >= 0"
                )
            if q.kind != "gaussian" and q.kind not in _KINDS:
                raise PrivacyError(
                    f"privacy: unknown query kind {q.kind!r}; register it with register_query_kind"
                )
            if sampled.size:  # an observer that sees a participant's data exactly
                self.exact.update(q.exact_for)
        z = _combined(q.noise_multiplier for q in gaussian)
        key = self._round_key(z, [q for q in spend.queries if q.kind != "gaussian"])
        self.released[key] = self.released.get(key, 0) + 1
        self.rounds += 1
        if not sampled.size:
            return
        if z == 0:
            self.exact.update(OBSERVERS)
        elif math.isfinite(z):
            self.mu2[sampled] += z**-2
        zcdp: list[tuple[float, float]] = []
        for q in spend.queries:
            pair = None if q.kind == "gaussian" else _zcdp_of(q)
            if pair is not None:
                zcdp.append(pair)
        rho, xi = sum(r for r, _ in zcdp), sum(x for _, x in zcdp)
        if zcdp:
            self.rho[sampled] += rho
            self.xi[sampled] += xi
        plain = [q for q in spend.queries if q.kind != "gaussian" and _KINDS[q.kind].zcdp is None]
        for q in plain:
            counts = self.other.setdefault(q.key(), np.zeros(self.participants, np.int64))
            counts[sampled] += 1
        for org in self.organisations:
            k = int(np.isin(sampled, self.groups[org]).sum())
            if k == 0:
                continue
            if math.isfinite(z) and z > 0:
                self.org_mu2[org] += (k / z) ** 2
            if zcdp:  # k sites in one round: sensitivity k times one site's
                self.org_rho[org] += k * k * rho
                self.org_xi[org] += xi
            for q in plain:
                if k > 1:  # no sensitivity scaling known for the kind
                    self.org_unbounded.add(org)
                self.org_other[org][q.key()] = self.org_other[org].get(q.key(), 0) + 1

    @staticmethod
    def _round_key(z: float, others: Sequence[Query]) -> str:
        return json.dumps(
            {
                "z": _floor_multiplier(z) if math.isfinite(z) else None,
                "others": sorted(q.key() for q in others),
            }
        )

    # ----------------------------------------------------------------- figures
    def _profile_eps(
        self,
        mu2: float,
        others: Mapping[str, int],
        delta: float,
        adjacency: str,
        accountant: str,
        rho: float = 0.0,
        xi: float = 0.0,
    ) -> float:
        """epsilon of Gaussian queries of total ``mu^2`` (unsampled), zCDP queries of
        total ``(rho, xi)`` and ``others``."""
        import dp_accounting

        if rho > 0 or xi > 0:
            # zCDP composes by adding (the Gaussian is rho = mu^2 / 2, xi = 0); RDP, as
            # PLD takes no zCDP event; replace-one without sampling: twice the sensitivity
            scale = 4.0 if adjacency == "replace_one" else 1.0
            events: list[Any] = [dp_accounting.ZCDpEvent(scale * (rho + mu2 / 2.0), xi)]
            if any(others.values()) and adjacency == "replace_one":
                return math.inf  # no kind has both; RDP cannot compose a replace-one PLD
            if any(others.values()):
                events.append(self._profile_event(0.0, others))
            return self._eps(dp_accounting.ComposedDpEvent(events), delta, "add_remove", "rdp")
        if not any(others.values()) and accountant == "rdp":
            # Without sampling, replace-one is add/remove at twice the sensitivity
            # (dp_accounting's PLD documents the same); RDP stays fast for any mu,
            # where a PLD's support grows with mu^2.
            scale = 2.0 if adjacency == "replace_one" else 1.0
            return self._eps(
                dp_accounting.GaussianDpEvent(1.0 / (scale * mu2**0.5)), delta, "add_remove", "rdp"
            )
        return self._eps(self._profile_event(mu2, others), delta, adjacency, accountant)

    def _profile_event(self, mu2: float, others: Mapping[str, int]) -> Any:
        import dp_accounting

        events: list[Any] = []
        if mu2 > 0:
            events.append(dp_accounting.GaussianDpEvent(mu2**-0.5))
        for key, count in others.items():
            if count:
                events.append(dp_accounting.SelfComposedDpEvent(_event_of_key(key), count))
        return dp_accounting.ComposedDpEvent(events)

    def known_sample_epsilon(
        self, *, delta: float, adjacency: str = "add_remove", accountant: str = "rdp"
    ) -> tuple[float, Optional[int]]:
        """epsilon of the most exposed participant against an observer who knows the
        sample (noise as in the outputs), and that participant's id (None if nobody)."""
        if self.rounds == 0 or not self.mu2.size:
            return 0.0, None
        if not self.other and (self.rho.any() or self.xi.any()):
            return self._worst_zcdp(delta, adjacency, accountant)
        if not self.other:
            worst = int(np.argmax(self.mu2))
            if self.mu2[worst] == 0:
                return 0.0, None
            return self._profile_eps(
                float(self.mu2[worst]), {}, delta, adjacency, accountant
            ), worst
        keys = sorted(self.other)
        table = np.column_stack([self.mu2, self.rho, self.xi] + [self.other[k] for k in keys])
        rows, first = np.unique(table, axis=0, return_index=True)
        best, who = 0.0, None
        for row, pid in zip(rows, first):
            if not row.any():
                continue
            counts = dict(zip(keys, (int(c) for c in row[3:])))
            eps = self._profile_eps(
                float(row[0]),
                counts,
                delta,
                adjacency,
                accountant,
                rho=float(row[1]),
                xi=float(row[2]),
            )
            if eps >= best:
                best, who = eps, int(pid)
        return best, who

    def _worst_zcdp(
        self, delta: float, adjacency: str, accountant: str
    ) -> tuple[float, Optional[int]]:
        """The most exposed participant when every query is zCDP: epsilon grows with
        both ``rho`` and ``xi``, so only the Pareto-largest ``(rho, xi)`` pairs are
        candidates."""
        rho = self.rho + self.mu2 / 2.0
        order = np.lexsort((-self.xi, -rho))  # rho descending, then xi descending
        best, who, top_xi = 0.0, None, -1.0
        for pid in order:
            if self.xi[pid] <= top_xi or (rho[pid] == 0 and self.xi[pid] == 0):
                continue  # dominated by one already tried (or never sampled)
            top_xi = float(self.xi[pid])
            eps = self._profile_eps(
                0.0, {}, delta, adjacency, accountant, rho=float(rho[pid]), xi=float(self.xi[pid])
            )
            if eps >= best:
                best, who = eps, int(pid)
        return best, who

    def release_epsilon(
        self, *, delta: float, adjacency: str = "add_remove", accountant: str = "rdp"
    ) -> float:
        """epsilon against a reader of the release only: every round, Poisson-sampled at
        the largest group rate (the sample is secret from this reader)."""
        import dp_accounting

        if self.rounds == 0:
            return 0.0
        if self.rate >= 1:  # everyone every round: the sample is no secret to anyone
            return self.known_sample_epsilon(
                delta=delta, adjacency=adjacency, accountant=accountant
            )[0]
        own = [  # queries that bring their own amplified curve (the DDG's Zhu-Wang bound)
            json.loads(k)
            for key in self.released
            for k in json.loads(key)["others"]
            if _KINDS[json.loads(k)["kind"]].sampled_rdp is not None
        ]
        if own and not (adjacency == "add_remove" and accountant == "rdp"):
            # their curves are add/remove RDP: no amplification claimed otherwise
            return self.known_sample_epsilon(
                delta=delta, adjacency=adjacency, accountant=accountant
            )[0]
        events = []
        curves: list[tuple[str, int]] = []
        for key, count in self.released.items():
            data = json.loads(key)
            if data["z"] == 0:
                return math.inf
            inner: list[Any] = []
            if data["z"] is not None:
                inner.append(dp_accounting.GaussianDpEvent(data["z"]))
            for k in data["others"]:
                if _KINDS[json.loads(k)["kind"]].sampled_rdp is not None:
                    curves.append((k, count))
                else:
                    inner.append(_event_of_key(k))
            for event in inner:
                sampled = dp_accounting.PoissonSampledDpEvent(self.rate, event)
                events.append(dp_accounting.SelfComposedDpEvent(sampled, count))
        if not events and not curves:
            return 0.0
        if adjacency == "add_remove" and accountant == "rdp":
            # RDP composes by adding each event's curve: one curve per distinct event,
            # cached, so a figure after every round costs a sum, not a recomputation
            from dp_accounting.rdp.rdp_privacy_accountant import (
                DEFAULT_RDP_ORDERS,
                compute_epsilon,
            )

            orders = tuple(DEFAULT_RDP_ORDERS)
            if curves:  # every curve at the orders the kinds' own bounds need
                orders = tuple(
                    sorted({float(o) for k, _ in curves for o in _KINDS[_kind_of(k)].orders})
                )
            total = np.zeros(len(orders))
            for event in events:
                total += event.count * _rdp_curve(event.event, orders)
            for key, count in curves:
                total += count * _own_curve(key, self.rate, orders)
            return float(compute_epsilon(np.asarray(orders), total, delta)[0])
        return self._eps(dp_accounting.ComposedDpEvent(events), delta, adjacency, accountant)

    def organisation_epsilon(
        self, org: str, *, delta: float, adjacency: str = "add_remove", accountant: str = "rdp"
    ) -> float:
        """epsilon of organisation ``org`` (all its sites as one unit) against an observer
        who knows the sample: sensitivity ``k_r C`` in each round ``k_r`` sites took part."""
        if org in self.org_unbounded:
            return math.inf
        mu2 = self.org_mu2[org]
        others = self.org_other[org]
        rho, xi = self.org_rho[org], self.org_xi[org]
        if mu2 == 0 and rho == 0 and xi == 0 and not any(others.values()):
            return 0.0
        return self._profile_eps(mu2, others, delta, adjacency, accountant, rho=rho, xi=xi)

    def headline_epsilon(
        self,
        *,
        delta: float,
        adjacency: str = "add_remove",
        accountant: str = "rdp",
        mode: str = "distributed",
    ) -> float:
        """``figures(...)["epsilon"]`` without the release reader's composition: the
        release reader's figure never exceeds the known-sample one, so the largest over
        the headline observers is the known-sample figure (or inf where one saw data
        exact). What the budget guard asks every round."""
        if any(o in self.exact for o in headline_observers(mode)):
            return math.inf
        return self.known_sample_epsilon(delta=delta, adjacency=adjacency, accountant=accountant)[0]

    @staticmethod
    def _eps(event: Any, delta: float, adjacency: str, accountant: str) -> float:
        return epsilon_of_event(event, delta=delta, adjacency=adjacency, accountant=accountant)

    def figures(
        self,
        *,
        delta: float,
        adjacency: str = "add_remove",
        accountant: str = "rdp",
        mode: str = "distributed",
        release: bool = True,
    ) -> dict[str, Any]:
        """The scorecard's ``privacy`` block (``inf`` where an observer sees data exact):
        ``{"epsilon", "delta", "adjacency", "by_observer": {...}, "organisation": {...},
        "headline_observer", "trusted", "worst_participant"}``.

        ``epsilon`` is the largest figure over the observers the mode does not trust
        (:func:`headline_observers`): the job's claim.
        """
        _check_adjacency(adjacency)
        known, worst = self.known_sample_epsilon(
            delta=delta, adjacency=adjacency, accountant=accountant
        )
        # release=False: the release reader's figure is left out (PLD under replace_one
        # costs seconds per call; a job computes it once, for its summary)
        amplified = (
            self.release_epsilon(delta=delta, adjacency=adjacency, accountant=accountant)
            if release
            else math.nan
        )
        by: dict[str, float] = {
            "server": known,
            "outputs_reader": known,
            "release_reader": min(amplified, known),
        }
        for observer in self.exact:
            by[observer] = math.inf
        if mode == "central":
            by["server"] = math.inf  # the server adds the noise: it sees the updates exact
        if not release:
            del by["release_reader"]  # never above the known-sample figure: max unchanged
        trusted = [o for o in OBSERVERS if o not in headline_observers(mode)]
        epsilon = max(by[o] for o in headline_observers(mode) if o in by)
        orgs = {
            o: self.organisation_epsilon(o, delta=delta, adjacency=adjacency, accountant=accountant)
            for o in self.organisations
        }
        if math.isinf(by["outputs_reader"]):
            orgs = {o: math.inf for o in orgs}
        return {
            "epsilon": epsilon,
            "delta": delta,
            "adjacency": adjacency,
            "by_observer": by,
            "organisation": orgs,
            "trusted": trusted,
            "worst_participant": worst,
        }

    # ----------------------------------------------------------------- state
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON metadata for a checkpoint (see :meth:`restore`)."""
        arrays = {"mu2": self.mu2.copy(), "rho": self.rho.copy(), "xi": self.xi.copy()}
        arrays.update({f"other.{i}": v.copy() for i, v in enumerate(self.other.values())})
        meta = {
            "other_keys": list(self.other),
            "org_mu2": dict(self.org_mu2),
            "org_other": self.org_other,
            "org_rho": dict(self.org_rho),
            "org_xi": dict(self.org_xi),
            "org_unbounded": sorted(self.org_unbounded),
            "exact": sorted(self.exact),
            "released": dict(self.released),
            "rounds": self.rounds,
        }
        return arrays, meta

    def restore(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        mu2 = np.asarray(arrays["mu2"], dtype=np.float64)
        if mu2.shape != self.mu2.shape:
            raise PrivacyError("privacy: the checkpoint's observer ledger is for another roster")
        self.mu2 = mu2.copy()
        for name in ("rho", "xi"):  # absent from checkpoints before zCDP kinds: zeros
            value = arrays[name] if name in arrays else np.zeros_like(mu2)
            setattr(self, name, np.asarray(value, dtype=np.float64).copy())
        self.other = {
            k: np.asarray(arrays[f"other.{i}"], dtype=np.int64).copy()
            for i, k in enumerate(meta.get("other_keys", []))
        }
        self.org_mu2 = {o: float(meta.get("org_mu2", {}).get(o, 0.0)) for o in self.organisations}
        self.org_other = {o: dict(meta.get("org_other", {}).get(o, {})) for o in self.organisations}
        self.org_rho = {o: float(meta.get("org_rho", {}).get(o, 0.0)) for o in self.organisations}
        self.org_xi = {o: float(meta.get("org_xi", {}).get(o, 0.0)) for o in self.organisations}
        self.org_unbounded = set(meta.get("org_unbounded", ())) & set(self.organisations)
        self.exact = set(meta.get("exact", ()))
        self.released = {str(k): int(v) for k, v in meta.get("released", {}).items()}
        self.rounds = int(meta.get("rounds", 0))


@functools.lru_cache(maxsize=4096)
def _rdp_curve(event: Any, orders: tuple[float, ...]) -> np.ndarray:
    """One event's RDP curve at ``orders`` (events are hashable)."""
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(list(orders))
    acc.compose(event)
    curve: np.ndarray = acc.rdp
    curve.setflags(write=False)
    return curve


@functools.lru_cache(maxsize=4096)
def _own_curve(key: str, q: float, orders: tuple[float, ...]) -> np.ndarray:
    """A query kind's own Poisson-sampled RDP curve at ``orders`` (by its query key), so
    a figure after every round does not recompute the rounds before it."""
    data = json.loads(key)
    to_curve = _KINDS[data["kind"]].sampled_rdp
    if to_curve is None:
        raise PrivacyError(f"privacy: query kind {data['kind']!r} has no sampled RDP curve")
    curve = np.asarray(to_curve(data["params"], q, orders), dtype=np.float64)
    curve.setflags(write=False)
    return curve


def _kind_of(key: str) -> str:
    return str(json.loads(key)["kind"])


def _floor_multiplier(z: float) -> float:
    """``z`` rounded down to 4 significant digits: rounds that differ only in the last
    digits share one accounting event (a smaller multiplier only raises epsilon)."""
    if not math.isfinite(z) or z <= 0:
        return z
    scale = 10.0 ** (3 - math.floor(math.log10(z)))
    return math.floor(z * scale) / scale


def _zcdp_of(query: Query) -> Optional[tuple[float, float]]:
    """``(rho, xi)`` of a registered zCDP kind's query, else None."""
    to_zcdp = _KINDS[query.kind].zcdp
    return None if to_zcdp is None else to_zcdp(query.params)


def _event_of_key(key: str) -> Any:
    data = json.loads(key)
    try:
        return _KINDS[data["kind"]].to_event(data["params"])
    except KeyError:
        raise PrivacyError(f"privacy: unknown query kind {data['kind']!r}") from None


def headline_observers(mode: str) -> tuple[str, ...]:
    """The observers a DP mode claims to protect against: central trusts the server
    (it adds the noise); distributed and local do not."""
    return OBSERVERS[1:] if mode == "central" else OBSERVERS


def job_epsilons(record: JobRecord, *, mode: str = "distributed") -> dict[str, Any]:
    """Every observer's epsilon for a job's record, as the scorecard's ``privacy`` block.

    Example::

        from fedcollab.privacy.observers import JobRecord, Query, RoundSpend, job_epsilons
        rec = JobRecord(rounds=(RoundSpend(sampled=(0, 3), queries=(Query(1.0),)),) * 20,
                        groups={"community": range(8), "vendor": range(8, 11)},
                        group_rates={"community": 0.5, "vendor": 1.0},
                        delta=1e-5, adjacency="add_remove", organisations=("vendor",))
        job_epsilons(rec, mode="distributed")
        # {"epsilon": ..., "delta": 1e-5, "adjacency": "add_remove",
        #  "by_observer": {"server": ..., "outputs_reader": ..., "release_reader": ...},
        #  "organisation": {"vendor": ...}, "trusted": [], "worst_participant": 0}

    Args:
        record: The job's rounds, groups, rates, delta, adjacency and organisations.
        mode: The DP mode (``central`` trusts the server: its figure is ``inf``).

    Returns:
        Figures are floats (``inf`` where an observer sees data without noise).
    """
    _check_adjacency(record.adjacency)
    participants = 1 + max((max(p, default=-1) for p in record.groups.values()), default=-1)
    ledger = ObserverLedger(participants, record.groups, record.group_rates, record.organisations)
    for spend in record.rounds:
        ledger.record(spend)
    return ledger.figures(
        delta=record.delta, adjacency=record.adjacency, accountant=record.accountant, mode=mode
    )
