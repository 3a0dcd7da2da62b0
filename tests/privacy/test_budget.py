"""A budget that is never overspent, and no un-noised statistic for an untrusted server.

The budget guard is driven as the round loop drives it (sample, ask, account) with the
job's own Poisson sampler; whatever Hypothesis picks, no observer's epsilon ever passes
target_epsilon, adaptive clipping's count query (realised cohort) included."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from fedcollab.job.sampling import Sampler, dp_accounting_plan
from fedcollab.privacy.errors import PrivacyError
from fedcollab.privacy.server import DpServer
from fedcollab.spec import SpecError, spec_from_dict
from fedcollab.spec.roster import expected_participants, group_sampling_rates, roster
from fedcollab.worker.messages import RoundConfig
from fedcollab.worker.outgoing import outgoing


def _spec(**dp: Any) -> Any:
    fraction = dp.pop("fraction", 0.5)
    community = dp.pop("community", 8)
    vendor = dp.pop("vendor", 3)
    rounds = dp.pop("rounds", 20)
    secure = dp.pop("secure", {})
    return spec_from_dict({
        "name": "budget", "rounds": rounds, "fraction": fraction, "secure": secure,
        "participants": [{"name": "community", "count": community},
                         {"name": "vendor", "role": "vendor", "count": vendor,
                          "sharing": "secure", "data_fraction": 0.25}],
        "privacy": {"dp": {"mode": "distributed", **dp}}})


def _server(spec: Any) -> DpServer:
    rates = group_sampling_rates(spec)
    return DpServer(spec.privacy.dp, sampling_rate=max(rates.values()), rounds=spec.rounds,
                    group_rates=rates, participants_per_round=expected_participants(spec),
                    **dp_accounting_plan(spec))


def _drive(spec: Any, dropouts: float = 0.0, seed: int = 0) -> tuple[DpServer, list[float]]:
    """The round loop's privacy path: sample, ask the guard, account; stop when refused."""
    server = _server(spec)
    people = roster(spec)
    sampler = Sampler(spec, people, secret=True)
    rng = np.random.default_rng(seed)
    spent = []
    for r in range(1, spec.rounds + 1):
        chosen = sampler.sample(r)
        secure = [p for p in chosen if people[p].policy.in_secure_sum]
        if server.admits(chosen, secure_sampled=len(secure)) is not None:
            break
        if not chosen:
            server.account_aborted()
            continue
        survivors = len(secure)
        if secure and dropouts:  # members drop, down to the protocol's threshold at worst
            floor = int(np.ceil(spec.secure.threshold * len(secure)))
            survivors = max(floor, int(rng.binomial(len(secure), 1 - dropouts)))
        open_bits = [float(rng.random() < 0.5) for p in chosen if p not in secure]
        line = server.account(open_bits, participants=len(chosen), secure_bits=1.0,
                              secure_count=survivors, secure_sampled=len(secure),
                              sampled=chosen)
        spent.append(line["epsilon"])
    return server, spent


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(target=st.sampled_from([2.0, 5.0, 10.0]), fraction=st.sampled_from([0.3, 1.0]),
       adaptive=st.booleans(), dropouts=st.sampled_from([0.0, 0.3]),
       adjacency=st.sampled_from(["add_remove", "replace_one"]), seed=st.integers(0, 99))
def test_no_observer_ever_spends_past_the_target(target: float, fraction: float,
                                                 adaptive: bool, dropouts: float,
                                                 adjacency: str, seed: int) -> None:
    spec = _spec(target_epsilon=target, adaptive_clipping=adaptive, fraction=fraction,
                 rounds=12, community=40, vendor=6, adjacency=adjacency,
                 secure={"clip": 64.0})
    try:
        server, spent = _drive(spec, dropouts, seed)
    except PrivacyError as err:  # preflight refuses it: the count query alone is too much
        assert "cannot be met with adaptive clipping" in str(err)
        reject()
    figures = server.figures()
    assert figures is not None and figures["adjacency"] == adjacency
    assert all(e <= target for e in spent)
    assert all(v is not None and v <= target for v in figures["by_observer"].values())
    assert server.epsilon is not None and server.epsilon <= target


def test_the_issues_adaptive_job_stays_within_its_target() -> None:
    """target_epsilon 10 with adaptive clipping reported 13.84 (count noise at the
    realised cohort); now every round is accounted as it happens and none passes 10.
    Against the server, who knows the sample, m / 20 count noise on 11 participants is
    too little for any target: that job is refused before it starts."""
    with pytest.raises(PrivacyError, match="cannot be met with adaptive clipping"):
        _drive(_spec(target_epsilon=10.0, adaptive_clipping=True, fraction=1.0))
    spec = _spec(target_epsilon=10.0, adaptive_clipping=True, fraction=0.5, rounds=20,
                 community=400, secure={"clip": 64.0})
    server, spent = _drive(spec)
    assert spent and max(spent) <= 10.0
    assert server.stopped is None or "privacy budget" in server.stopped


def test_the_guard_refuses_before_the_round_and_says_why() -> None:
    spec = _spec(noise_multiplier=1.0, rounds=50, fraction=1.0, target_epsilon=None)
    server = _server(spec)
    assert server.admits(list(range(11))) is None  # no target: no guard
    spec = _spec(target_epsilon=3.0, rounds=5, fraction=1.0)
    server = _server(spec)
    admitted = 0
    while (reason := server.admits(list(range(11)), secure_sampled=3)) is None:
        admitted += 1
        server.account([], participants=11, secure_count=3, secure_sampled=3,
                       sampled=list(range(11)))
        assert server.epsilon is not None and server.epsilon <= 3.0
    # the planned 5 rounds fit even with dropouts to the threshold; without dropouts
    # a round or two more fit, never one that would pass the target
    assert 5 <= admitted < 10
    assert "target_epsilon 3" in reason and "server" in reason


def test_target_is_planned_against_the_server_not_the_release_reader() -> None:
    spec = _spec(target_epsilon=8.0, fraction=0.1, community=100, vendor=30, rounds=100)
    server = _server(spec)
    assert server.planned_rounds is not None and 10 < server.planned_rounds < 40
    from fedcollab.privacy import epsilon

    per_round = server.noise_multiplier / np.sqrt(spec.secure.threshold)
    assert epsilon(noise_multiplier=per_round, sampling_rate=1.0,
                   rounds=server.planned_rounds, delta=1e-5) <= 8.0 * 1.001


def _bit(mode: str, sharing: str, std: float, draws: int = 3000) -> np.ndarray:
    config = RoundConfig(mode, 1.0, 1.0, 4, 1.0, clip_bit=True, count_noise_std=std)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(draws):
        sent = outgoing([np.full(4, 0.01, np.float32)], pid=0, shared=[0], shapes=[(4,)],
                        num_samples=5, loss=0.0, sharing=sharing, behaviour="honest",
                        attack_scale=1.0, config=config, rng=rng)
        out.append(sent.update.clip_bit if sent.update else sent.secure_vector[-1])
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("mode", ["distributed", "local"])
def test_open_clip_bits_reach_an_untrusted_server_only_noised(mode: str) -> None:
    bits = _bit(mode, "open", std=2.0)
    assert np.var(bits) == pytest.approx(4.0, rel=0.1)  # the count query's whole noise
    assert np.mean(bits) == pytest.approx(1.0, abs=0.15)  # [norm <= C], unbiased
    secure = _bit(mode, "secure", std=2.0)
    expected = 4.0 if mode == "local" else 4.0 / 4  # local: all of it; else split over m
    assert np.var(secure) == pytest.approx(expected, rel=0.1)


def test_central_clip_bits_go_to_the_trusted_server_exact() -> None:
    assert set(_bit("central", "open", std=0.0, draws=20).tolist()) == {1.0}


def test_count_noise_that_would_saturate_the_fixed_point_range_is_refused() -> None:
    from fedcollab.job.preflight import _check_secure_room_for_noise

    big = _spec(noise_multiplier=1.0, adaptive_clipping=True, fraction=1.0, community=400)
    with pytest.raises(SpecError, match="count noise on each secure member's clip bit"):
        _check_secure_room_for_noise(big)
    _check_secure_room_for_noise(_spec(noise_multiplier=1.0, adaptive_clipping=True))
