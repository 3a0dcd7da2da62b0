"""Every observer's epsilon under the distributed discrete Gaussian, recomputed.

The round loop's privacy path is driven with the job's own Poisson sampler, secure
dropouts and aborted rounds; each round's event is recomputed here from the mechanism's
public plan with the paper's formulas (l2 = Delta / sqrt(k sigma^2), tau = 10 sum_k
exp(-2 pi^2 sigma^2 k / (k+1)), d = the padded length), then:

* server and outputs reader: per participant, dp_accounting's ``ZCDpEvent(l2^2/2,
  tau d)`` of each round it took part in, composed by dp_accounting (replace-one: the
  sensitivity doubled, 4 rho), the worst participant;
* the vendor as an organisation: ``ZCDpEvent((k_r l2)^2/2, tau d)`` for the ``k_r`` of
  its sites in round r (the sum's sensitivity for k sites; not generic group privacy);
* release reader: the ddg helper's Zhu-Wang ledger (:class:`DdgLedger`) of every round
  at the largest group rate, never above the known-sample figure; under replace-one
  no amplification is claimed (the known-sample figure).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.job.sampling import Sampler, dp_accounting_plan
from fedcollab.privacy.ddg import plan
from fedcollab.privacy.ddg_accounting import DdgLedger
from fedcollab.privacy.server import DpServer
from fedcollab.spec import spec_from_dict
from fedcollab.spec.roster import expected_participants, group_sampling_rates, roster

DDG = "distributed_discrete_gaussian"
DIM = 300


def _spec(
    *, fraction: float = 0.5, community: int = 6, vendor: int = 4, rounds: int = 8, **dp: Any
) -> Any:
    return spec_from_dict(
        {
            "name": "ddg-observers",
            "rounds": rounds,
            "fraction": fraction,
            "participants": [
                {"name": "community", "count": community},
                {
                    "name": "vendor",
                    "role": "vendor",
                    "count": vendor,
                    "sharing": "secure",
                    "data_fraction": 0.25,
                },
            ],
            "privacy": {"dp": {"mode": DDG, **dp}},
        }
    )


def _server(spec: Any) -> DpServer:
    rates = group_sampling_rates(spec)
    return DpServer(
        spec.privacy.dp,
        sampling_rate=max(rates.values()),
        rounds=spec.rounds,
        group_rates=rates,
        participants_per_round=expected_participants(spec),
        dim=DIM,
        **dp_accounting_plan(spec),
    )


def _event(
    z: float, secure_sampled: int, survivors: int, open_seen: bool
) -> tuple[float, float, int]:
    """A round's (l2, tau, d) from the mechanism's plan, by the paper's formulas."""
    if survivors == 0:
        return 1.0 / z, 0.0, 1
    p = plan(noise_multiplier=z, clip_norm=1.0, members=secure_sampled, dim=DIM, modulus_bits=64)
    l2 = p.l2_bound / math.sqrt(survivors * p.sigma2)
    tau = 10.0 * sum(
        math.exp(-2 * math.pi**2 * p.sigma2 * k / (k + 1)) for k in range(1, survivors)
    )
    return (max(l2, 1.0 / z) if open_seen else l2), tau, p.padded


def _drive(
    spec: Any, seed: int, dropouts: float, abort_every: int = 0
) -> tuple[DpServer, list[tuple[list[int], tuple[float, float, int]]]]:
    """Sample, ask the guard, account; the log of each round's sample and event."""
    server = _server(spec)
    people = roster(spec)
    sampler = Sampler(spec, people, secret=True)
    rng = np.random.default_rng(seed)
    z = server.noise_multiplier
    log: list[tuple[list[int], tuple[float, float, int]]] = []
    for r in range(1, spec.rounds + 1):
        chosen = sampler.sample(r)
        secure = [p for p in chosen if people[p].policy.in_secure_sum]
        if server.admits(chosen, secure_sampled=len(secure)) is not None:
            break
        if not chosen or (abort_every and r % abort_every == 0):
            server.account_aborted(chosen, participants=len(chosen))
            log.append((chosen, _event(z, 1, 1, True)))  # one member's share, open seen
            continue
        survivors = len(secure)
        if secure and dropouts:  # down to the protocol's threshold at worst
            floor = math.ceil(spec.secure.threshold * len(secure))
            survivors = max(floor, int(rng.binomial(len(secure), 1 - dropouts)))
        open_seen = len(chosen) > len(secure)
        server.account(
            [0.0] * (len(chosen) - len(secure)),
            participants=len(chosen),
            secure_count=survivors,
            secure_sampled=len(secure),
            sampled=chosen,
        )
        log.append((chosen, _event(z, len(secure), survivors, open_seen)))
    return server, log


def _zcdp_epsilon(events: list[tuple[float, float]], delta: float) -> float:
    import dp_accounting
    from dp_accounting import rdp

    if not events:
        return 0.0
    acc = rdp.RdpAccountant()
    acc.compose(
        dp_accounting.ComposedDpEvent([dp_accounting.ZCDpEvent(rho, xi) for rho, xi in events])
    )
    return float(acc.get_epsilon(delta))


def _expected(
    spec: Any, log: list[tuple[list[int], tuple[float, float, int]]], adjacency: str
) -> dict[str, Any]:
    delta = spec.privacy.dp.delta
    scale = 2.0 if adjacency == "replace_one" else 1.0
    people = roster(spec)
    vendor = set(people.pids_where(in_secure_sum=True))
    known = 0.0
    for pid in range(len(people)):
        mine = [((scale * l2) ** 2 / 2, tau * d) for chosen, (l2, tau, d) in log if pid in chosen]
        known = max(known, _zcdp_epsilon(mine, delta))
    org = _zcdp_epsilon(
        [
            ((scale * k * l2) ** 2 / 2, tau * d)
            for chosen, (l2, tau, d) in log
            if (k := len(vendor & set(chosen)))
        ],
        delta,
    )
    rate = max(group_sampling_rates(spec).values())
    release = known
    if adjacency == "add_remove" and rate < 1:
        ledger = DdgLedger()
        for _, (l2, tau, d) in log:
            ledger = ledger.record(l2, tau, d, sampling_rate=rate)
        release = min(ledger.epsilon(delta=delta), known)
    return {"server": known, "outputs_reader": known, "release_reader": release, "vendor": org}


@given(
    seed=st.integers(0, 2**16),
    fraction=st.sampled_from([0.4, 1.0]),
    dropouts=st.sampled_from([0.0, 0.4]),
    abort_every=st.sampled_from([0, 3]),
    adjacency=st.sampled_from(["add_remove", "replace_one"]),
)
@settings(max_examples=12, deadline=None)
def test_every_observer_is_the_independent_recomputation(
    seed: int, fraction: float, dropouts: float, abort_every: int, adjacency: str
) -> None:
    spec = _spec(fraction=fraction, noise_multiplier=0.8, adjacency=adjacency)
    server, log = _drive(spec, seed, dropouts, abort_every)
    want = _expected(spec, log, adjacency)
    got = server.figures()
    assert got is not None and got["adjacency"] == adjacency
    for observer in ("server", "outputs_reader", "release_reader"):
        assert got["by_observer"][observer] == pytest.approx(want[observer], rel=1e-6, abs=1e-9), (
            observer
        )
    assert got["organisation"]["vendor"] == pytest.approx(want["vendor"], rel=1e-6, abs=1e-9)
    assert got["epsilon"] == pytest.approx(
        max(want[o] for o in ("server", "outputs_reader", "release_reader"))
    )
    assert server.epsilon == pytest.approx(got["epsilon"])


@pytest.mark.slow
def test_the_release_reader_is_amplified_and_the_server_is_not() -> None:
    """100 open + 30 secure at fraction 0.1 (the issue's t23 setting, 30 rounds): the
    sample is secret only from the release reader."""
    spec = _spec(fraction=0.1, community=100, vendor=30, rounds=30, noise_multiplier=1.0)
    server, log = _drive(spec, seed=7, dropouts=0.0)
    got = server.figures()
    assert got is not None
    by = got["by_observer"]
    assert by["release_reader"] < 0.5 * by["server"]
    want = _expected(spec, log, "add_remove")
    assert by["release_reader"] == pytest.approx(want["release_reader"], rel=1e-9)
    assert by["server"] == pytest.approx(want["server"], rel=1e-6)
    # the old ledger (ddg's own, amplified) is the release reader's figure
    assert server.ledger.epsilon(delta=1e-5) == pytest.approx(by["release_reader"], rel=1e-9)


@given(
    target=st.sampled_from([1.0, 4.0]),
    fraction=st.sampled_from([0.4, 1.0]),
    dropouts=st.sampled_from([0.0, 0.4]),
    seed=st.integers(0, 99),
    adjacency=st.sampled_from(["add_remove", "replace_one"]),
)
@settings(max_examples=8, deadline=None)
def test_a_ddg_budget_is_never_overspent(
    target: float, fraction: float, dropouts: float, seed: int, adjacency: str
) -> None:
    spec = _spec(fraction=fraction, rounds=10, target_epsilon=target, adjacency=adjacency)
    server, log = _drive(spec, seed, dropouts)
    got = server.figures()
    assert got is not None
    assert all(v is not None and v <= target for v in got["by_observer"].values())
    want = _expected(spec, log, adjacency)
    assert want["server"] <= target  # the independent figure too


def test_the_guard_stops_a_ddg_job_before_the_round_that_would_overspend() -> None:
    spec = _spec(fraction=1.0, rounds=4, target_epsilon=2.0)
    server = _server(spec)
    everyone = list(range(10))
    admitted = 0
    while (reason := server.admits(everyone, secure_sampled=4)) is None:
        admitted += 1
        server.account(
            [0.0] * 6, participants=10, secure_count=4, secure_sampled=4, sampled=everyone
        )
        assert server.epsilon is not None and server.epsilon <= 2.0
    assert 4 <= admitted < 8  # the planned rounds fit, never one past the target
    assert "target_epsilon 2" in reason


def test_resume_restores_and_a_lost_round_costs_at_least_what_it_can_have() -> None:
    spec = _spec(fraction=0.5, noise_multiplier=0.8)
    server, _ = _drive(spec, seed=3, dropouts=0.4, abort_every=3)
    again = _server(spec)
    again.restore(server.state(), server.state_arrays())
    assert again.figures() == server.figures()
    chosen = [0, 1, 6, 7, 8]  # 3 of them secure members, as it happens
    lost = _server(spec)
    lost.restore(server.state(), server.state_arrays())
    lost.account_lost(chosen, 1.25)
    for survivors in (2, 3):  # whatever the round did, the charge is at least that
        ran = _server(spec)
        ran.restore(server.state(), server.state_arrays())
        ran.account(
            [0.0, 0.0], participants=5, secure_count=survivors, secure_sampled=3, sampled=chosen
        )
        for observer, eps in ran.figures()["by_observer"].items():  # type: ignore[index]
            assert lost.figures()["by_observer"][observer] >= eps - 1e-12  # type: ignore


def test_preflight_solves_a_ddg_target_before_the_model_exists() -> None:
    from fedcollab.job.preflight import _noise_multiplier

    spec = _spec(fraction=1.0, rounds=5, target_epsilon=4.0)
    assert 0 < _noise_multiplier(spec) <= _server(spec).noise_multiplier * 1.01


def test_a_kind_without_zcdp_gives_a_multi_site_organisation_no_figure() -> None:
    """k sites in one round of a kind with no sensitivity scaling: the k-fold
    composition is not a group bound, so the organisation figure is inf, not a guess."""
    import dp_accounting

    from fedcollab.privacy.observers import (
        JobRecord,
        Query,
        RoundSpend,
        job_epsilons,
        register_query_kind,
    )

    register_query_kind("test_laplace", lambda p: dp_accounting.LaplaceDpEvent(p["b"]))
    query = Query(kind="test_laplace", params={"b": 4.0})

    def org(sampled: tuple[int, ...]) -> float:
        rec = JobRecord(
            rounds=(RoundSpend(sampled, (query,)),) * 3,
            groups={"community": [0, 1], "vendor": [2, 3]},
            group_rates={"community": 1.0, "vendor": 1.0},
            organisations=("vendor",),
        )
        return float(job_epsilons(rec)["organisation"]["vendor"])

    assert math.isfinite(org((0, 2))) and math.isinf(org((0, 2, 3)))
