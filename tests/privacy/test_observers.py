"""Epsilon per observer, recomputed from first principles with dp_accounting.

The ledger folds a participant's Gaussian rounds into one ``mu``; the oracles here
compose each round's event one by one (RDP), or use the exact Gaussian-DP formula
(Balle & Wang, ICML 2018), and take the worst participant themselves.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fedcollab.privacy.observers import (
    JobRecord,
    ObserverLedger,
    Query,
    RoundSpend,
    job_epsilons,
)

DELTA = 1e-5


def _rdp(event: Any) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(DELTA))


def _exact_gaussian_epsilon(mu: float, delta: float = DELTA) -> float:
    """The tight epsilon of a Gaussian mechanism with mu = sensitivity / std (Balle &
    Wang 2018, Theorem 8): delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu)."""

    def d(eps: float) -> float:
        return float(norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu))

    low, high = 0.0, 1.0
    while d(high) > delta:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if d(mid) > delta else (low, mid)
    return high


def _oracle_known_sample(rounds: list[tuple[list[int], float]], participants: int) -> float:
    """Compose, for each participant, the Gaussian events of the rounds it took part in."""
    worst = 0.0
    for p in range(participants):
        mine = [dp_accounting.GaussianDpEvent(z) for chosen, z in rounds if p in chosen]
        if mine:
            worst = max(worst, _rdp(dp_accounting.ComposedDpEvent(mine)))
    return worst


def _oracle_release(rounds: list[tuple[list[int], float]], rate: float) -> float:
    """Every round, Poisson-sampled at ``rate`` (no amplification at rate 1)."""
    counts = Counter(z for _, z in rounds)
    return _rdp(
        dp_accounting.ComposedDpEvent(
            [
                dp_accounting.SelfComposedDpEvent(
                    dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(z)), n
                )
                for z, n in counts.items()
            ]
        )
    )


def _record(
    rounds: list[tuple[list[int], float]],
    groups: dict[str, list[int]],
    rates: dict[str, float],
    **kw: Any,
) -> JobRecord:
    return JobRecord(
        tuple(RoundSpend(tuple(c), (Query(z),)) for c, z in rounds),
        groups,
        rates,
        delta=DELTA,
        **kw,
    )


@st.composite
def _jobs(draw: Any) -> tuple[list[tuple[list[int], float]], int, float]:
    n = draw(st.integers(2, 8))
    rate = draw(st.sampled_from([0.2, 1.0]))
    rounds = []
    for _ in range(draw(st.integers(1, 8))):
        chosen = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
        rounds.append((chosen, draw(st.sampled_from([0.7, 1.0, 1.5, 3.0]))))
    return rounds, n, rate


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(_jobs())
def test_each_observer_matches_an_event_by_event_recomputation(job: Any) -> None:
    rounds, n, rate = job
    rec = _record(rounds, {"all": list(range(n))}, {"all": rate})
    out = job_epsilons(rec, mode="distributed")
    by = out["by_observer"]
    known = _oracle_known_sample(rounds, n)
    assert by["server"] == pytest.approx(known, rel=0.02, abs=1e-9)
    assert by["server"] >= known * (1 - 1e-9)
    assert by["outputs_reader"] == by["server"]
    release = min(_oracle_release(rounds, rate), known)
    assert by["release_reader"] == pytest.approx(release, rel=0.02, abs=1e-9)
    assert by["release_reader"] >= release * (1 - 1e-9)
    assert out["epsilon"] == max(by.values())
    # central mode trusts the server: it adds the noise, so it sees the updates exact
    central = job_epsilons(rec, mode="central")
    assert math.isinf(central["by_observer"]["server"]) and central["trusted"] == ["server"]
    assert central["epsilon"] == pytest.approx(by["outputs_reader"])


@settings(max_examples=25, deadline=None)
@given(_jobs())
def test_replace_one_is_at_least_the_exact_gaussian_figure(job: Any) -> None:
    rounds, n, _ = job
    rec = _record(rounds, {"all": list(range(n))}, {"all": 1.0}, adjacency="replace_one")
    out = job_epsilons(rec)
    mu2 = [sum(z**-2 for c, z in rounds if p in c) for p in range(n)]
    if max(mu2) == 0:
        assert out["by_observer"]["server"] == 0
        return
    exact = _exact_gaussian_epsilon(2 * math.sqrt(max(mu2)))  # replacing: twice C
    assert exact <= out["by_observer"]["server"] <= 1.3 * exact + 0.05
    assert out["adjacency"] == "replace_one"
    plain = job_epsilons(_record(rounds, {"all": list(range(n))}, {"all": 1.0}))
    assert out["by_observer"]["server"] > plain["by_observer"]["server"]


@settings(max_examples=25, deadline=None)
@given(_jobs())
def test_an_organisation_is_accounted_with_all_its_sites(job: Any) -> None:
    rounds, n, rate = job
    org = list(range(n // 2, n))
    rec = _record(
        rounds,
        {"community": list(range(n // 2)), "vendor": org},
        {"community": rate, "vendor": rate},
        organisations=("vendor",),
    )
    out = job_epsilons(rec)
    events = []
    for chosen, z in rounds:
        k = len(set(chosen) & set(org))
        if k:  # all k sites at once: sensitivity k C
            events.append(dp_accounting.GaussianDpEvent(z / k))
    expected = _rdp(dp_accounting.ComposedDpEvent(events)) if events else 0.0
    assert out["organisation"]["vendor"] == pytest.approx(expected, rel=0.02, abs=1e-9)
    per_site = _oracle_known_sample([(list(set(c) & set(org)), z) for c, z in rounds], n)
    assert out["organisation"]["vendor"] >= per_site * (1 - 1e-9)


def test_t23_setting_amplification_does_not_hold_against_the_server() -> None:
    """100 open + a 30-site secure vendor, fraction 0.1, z = 1, 100 rounds, with the
    job's own Poisson sampler: the release reader's 7.90 is not what the server gets."""
    from fedcollab.job.sampling import Sampler
    from fedcollab.spec import spec_from_dict
    from fedcollab.spec.roster import Roster, group_sampling_rates, roster

    spec = spec_from_dict(
        {
            "name": "t23",
            "rounds": 100,
            "fraction": 0.1,
            "participants": [
                {"name": "community", "count": 100},
                {
                    "name": "vendor",
                    "role": "vendor",
                    "count": 30,
                    "sharing": "secure",
                    "data_fraction": 0.25,
                },
            ],
            "privacy": {"dp": {"mode": "distributed", "noise_multiplier": 1.0}},
        }
    )
    people = roster(spec)
    sampler = Sampler(spec, people, secret=True)
    rounds = [(sampler.sample(r), 1.0) for r in range(1, 101)]
    everyone = Roster(spec)
    groups = {g.name: list(everyone.group_range(i)) for i, g in enumerate(spec.participants)}
    rates = group_sampling_rates(spec)
    out = job_epsilons(_record(rounds, groups, rates, organisations=("vendor",)))
    by = out["by_observer"]
    assert by["release_reader"] == pytest.approx(7.90, abs=0.01)  # the figure
    counts = np.bincount([p for c, _ in rounds for p in c], minlength=len(people))
    most = int(counts.max())
    oracle = _rdp(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), most))
    assert by["server"] == pytest.approx(oracle, rel=0.02) and by["server"] >= oracle * 0.9999
    assert by["server"] > 2 * by["release_reader"]
    assert out["worst_participant"] is not None and counts[out["worst_participant"]] == most
    assert out["organisation"]["vendor"] > by["server"]


def test_exact_query_is_infinite_and_an_empty_round_costs_the_server_nothing() -> None:
    ledger = ObserverLedger(3, {"all": [0, 1, 2]}, {"all": 0.5})
    ledger.record(RoundSpend((), (Query(1.0),)))
    assert ledger.figures(delta=DELTA)["by_observer"]["server"] == 0.0
    assert ledger.figures(delta=DELTA)["by_observer"]["release_reader"] == 0.0  # nobody in it
    ledger.record(RoundSpend((1,), (Query(1.0), Query(0.5, exact_for=("server",)))))
    out = ledger.figures(delta=DELTA)
    assert math.isinf(out["by_observer"]["server"]) and math.isfinite(out["epsilon"]) is False
    assert math.isfinite(out["by_observer"]["outputs_reader"])


def test_ledger_state_round_trips() -> None:
    ledger = ObserverLedger(4, {"a": [0, 1], "v": [2, 3]}, {"a": 0.5, "v": 1.0}, ("v",))
    for chosen in ([0, 2, 3], [1, 2], [2, 3]):
        ledger.record(RoundSpend(tuple(chosen), (Query(1.2), Query(5.0))))
    arrays, meta = ledger.state()
    again = ObserverLedger(4, {"a": [0, 1], "v": [2, 3]}, {"a": 0.5, "v": 1.0}, ("v",))
    again.restore(arrays, meta)
    assert again.figures(delta=DELTA) == ledger.figures(delta=DELTA)
