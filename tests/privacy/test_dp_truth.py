"""The epsilon reported is the epsilon spent: true group rates, dropouts, the count query,
noise calibrated to what each observer sees, nothing in the clear that DP should cover."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedcollab.privacy import epsilon
from fedcollab.privacy.server import DpServer
from fedcollab.secure.layout import secure_vector
from fedcollab.spec import SpecError, spec_from_dict
from fedcollab.spec.roster import group_sampling_rates
from fedcollab.worker.messages import RoundConfig
from fedcollab.worker.outgoing import outgoing


def _spec(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "dp", "rounds": 20, "fraction": 0.5,
        "participants": [{"name": "community", "count": 8},
                         {"name": "vendor", "role": "vendor", "count": 3, "sharing": "secure",
                          "data_fraction": 0.25}],
        "privacy": {"dp": {"mode": "distributed", "noise_multiplier": 1.0}}}
    data.update(changes)
    return spec_from_dict(data)


def test_group_rates_show_the_vendor_takes_part_every_round() -> None:
    rates = group_sampling_rates(_spec())
    assert rates == {"community": 0.5, "vendor": 1.0}


def test_epsilon_is_dp_accounting_at_the_most_exposed_groups_rate() -> None:
    spec = _spec()
    rates = group_sampling_rates(spec)
    server = DpServer(spec.privacy.dp, sampling_rate=max(rates.values()), rounds=3,
                      group_rates=rates)
    for _ in range(3):
        line = server.account([], participants=7, secure_count=3, secure_sampled=3)
    expected = epsilon(noise_multiplier=1.0, sampling_rate=1.0, rounds=3, delta=1e-5)
    assert line["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert line["sampling_rate"] == 1.0
    assert expected > epsilon(noise_multiplier=1.0, sampling_rate=0.5, rounds=3, delta=1e-5)


def test_dropouts_lower_the_accounted_multiplier() -> None:
    spec = _spec()
    server = DpServer(spec.privacy.dp, sampling_rate=1.0, rounds=1)
    line = server.account([], participants=7, secure_count=2, secure_sampled=4)
    assert line["accounted_multiplier"] == pytest.approx(1.0 * np.sqrt(0.5))
    assert line["noise_shortfall"] == {"survivors": 2, "sampled": 4}


def test_adaptive_clipping_with_a_secure_site_above_c_completes_and_counts_the_query() -> None:
    spec = _spec(privacy={"dp": {"mode": "distributed", "noise_multiplier": 1.0,
                                 "clip_norm": 0.001, "adaptive_clipping": True}})
    server = DpServer(spec.privacy.dp, sampling_rate=1.0, rounds=20)
    line = server.account([False, True], participants=11, secure_bits=0.0, secure_count=3,
                          secure_sampled=3)
    sigma_b = 11 / 20
    assert line["accounted_multiplier"] == pytest.approx((1.0 + sigma_b ** -2) ** -0.5)
    assert server.clip_norm != 0.001
    for _ in range(19):
        server.account([], participants=11, secure_bits=3.0, secure_count=3, secure_sampled=3)
    plain = epsilon(noise_multiplier=1.0, sampling_rate=1.0, rounds=20, delta=1e-5)
    assert server.epsilon is not None and server.epsilon > 2 * plain


def test_aborted_rounds_are_accounted() -> None:
    server = DpServer(_spec().privacy.dp, sampling_rate=1.0, rounds=2)
    server.account_aborted()
    assert server.ledger.rounds == 1 and server.epsilon is not None and server.epsilon > 0


def _noised(sharing: str, m: int, draws: int = 4000) -> np.ndarray:
    config = RoundConfig("distributed", 1.0, 1.0, m, 1.0)
    rng = np.random.default_rng(1)
    zero = [np.zeros(64, np.float32)]
    values = []
    for _ in range(draws // 64):
        sent = outgoing(zero, pid=0, shared=[0], shapes=[(64,)], num_samples=5, loss=0.0,
                        sharing=sharing, behaviour="honest", attack_scale=1.0, config=config,
                        rng=rng)
        values.append(sent.update.delta[0] if sent.update else sent.secure_vector[:64])
    return np.concatenate(values)


def test_open_update_under_distributed_dp_carries_the_full_noise() -> None:
    # the server reads an open update alone: its noise must be z*C, not z*C/sqrt(m)
    assert np.var(_noised("open", m=3)) == pytest.approx(1.0, rel=0.1)


def test_secure_members_noise_adds_up_to_the_full_noise_in_the_sum() -> None:
    m = 4
    per_member = np.var(_noised("secure", m=m))
    assert m * per_member == pytest.approx(1.0, rel=0.1)


def test_open_update_under_dp_sends_no_norm_or_loss() -> None:
    config = RoundConfig("central", 1.0, 1.0, 1, 1.0, clip_bit=True)
    sent = outgoing([np.full(4, 3.0, np.float32)], pid=0, shared=[0], shapes=[(4,)],
                    num_samples=5, loss=0.7, sharing="open", behaviour="honest",
                    attack_scale=1.0, config=config, rng=np.random.default_rng(0))
    assert sent.update is not None
    assert sent.update.norm == 0.0 and sent.update.loss == 0.0 and sent.update.clip_bit is False


def test_secure_clip_too_small_for_the_noise_is_refused() -> None:
    from fedcollab.job.preflight import _check_secure_room_for_noise

    with pytest.raises(SpecError, match="secure.clip: got 1.5"):
        _check_secure_room_for_noise(_spec(secure={"clip": 1.5}))
    _check_secure_room_for_noise(_spec())  # clip 8 holds C + 4 * 1/sqrt(3)


def test_secure_vector_layout_unchanged_by_dp_helpers() -> None:
    vector = secure_vector([np.ones(2)], [(2,)], 1.0, clip_bit=True)
    assert vector.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_dp_sampling_is_poisson_at_the_accounted_group_rates() -> None:
    """The accountant composes PoissonSampledDpEvent(q): each participant is drawn
    independently with its group's rate, so sample sizes vary round to round."""
    from fedcollab.job.sampling import Sampler
    from fedcollab.spec.roster import roster

    spec = _spec(participants=[{"name": "community", "count": 40},
                               {"name": "vendor", "role": "vendor", "count": 12,
                                "sharing": "secure", "data_fraction": 0.25}],
                 fraction=0.25)
    people = roster(spec)
    sampler = Sampler(spec, people, secret=True)
    draws = 2000
    hits = np.zeros(len(people))
    sizes = set()
    for r in range(draws):
        chosen = sampler.sample(r)
        hits[chosen] += 1
        sizes.add(sum(1 for p in chosen if people[p].group == 0))
    community = hits[:40] / draws
    # every community member at rate 0.25 (binomial std over 2000 draws ~ 0.01)
    assert np.all(np.abs(community - 0.25) < 0.05)
    assert abs(community.mean() - 0.25) < 0.01
    assert len(sizes) > 5  # not a fixed-size sample
    # the vendor (rate 0.25, min_group 3) sits out when its draw is below 3, so its
    # members take part at most at the accounted rate
    vendor = hits[40:] / draws
    assert np.all(vendor <= 0.25 + 0.05)


def test_secure_group_below_min_group_sits_out_and_empty_rounds_are_accounted() -> None:
    from fedcollab.job.sampling import poisson_sample
    from fedcollab.spec.roster import roster

    spec = _spec(participants=[{"name": "community", "count": 2},
                               {"name": "vendor", "role": "vendor", "count": 6,
                                "sharing": "secure", "data_fraction": 0.25}],
                 fraction=0.5)
    people = roster(spec)
    rng = np.random.default_rng(3)
    for _ in range(500):
        chosen = poisson_sample(people, spec, rng)
        secure = [p for p in chosen if people[p].sharing == "secure"]
        assert secure == [] or len(secure) >= spec.secure.min_group
    server = DpServer(spec.privacy.dp, sampling_rate=0.5, rounds=2)
    server.account_aborted()  # a round that drew nobody still composes its event
    expected = epsilon(noise_multiplier=1.0, sampling_rate=0.5, rounds=1, delta=1e-5)
    assert server.epsilon == pytest.approx(expected, rel=1e-9)


def test_saturation_bound_matches_the_gaussian_tail() -> None:
    from fedcollab.job.secure import saturation_bound

    # room clip - C = 2 std: P(|N| > 2 std) = 0.0455
    assert saturation_bound(3.0, 1.0, 1.0) == pytest.approx(0.0455, abs=1e-4)
    assert saturation_bound(1.0, 1.0, 1.0) == 1.0
    assert saturation_bound(8.0, 1.0, 0.0) == 0.0
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, 200_000) + rng.normal(0.0, 1.0, 200_000)
    assert np.mean(np.abs(x) > 3.0) <= saturation_bound(3.0, 1.0, 1.0)


def test_target_epsilon_is_solved_with_adaptive_clippings_count_query() -> None:
    """The reported epsilon after all rounds is the target, count query included."""
    from fedcollab.privacy.server import solve_noise_multiplier

    spec = _spec(rounds=10, fraction=1.0,
                 participants=[{"name": "community", "count": 200}],
                 privacy={"dp": {"mode": "central", "target_epsilon": 4.0,
                                 "adaptive_clipping": True}})
    z = solve_noise_multiplier(spec.privacy.dp, sampling_rate=1.0, rounds=10,
                               participants_per_round=200)
    plain = solve_noise_multiplier(spec.privacy.dp, sampling_rate=1.0, rounds=10)
    assert z > plain  # more noise on the update, to pay for the count query
    server = DpServer(spec.privacy.dp, sampling_rate=1.0, rounds=10,
                      participants_per_round=200)
    for _ in range(10):
        line = server.account([True] * 200, participants=200)
    assert line["epsilon"] == pytest.approx(4.0, rel=0.02)


def test_target_epsilon_unreachable_with_adaptive_clipping_is_a_spec_error() -> None:
    from fedcollab.job.preflight import preflight

    spec = _spec(rounds=20, fraction=1.0,
                 participants=[{"name": "community", "count": 4}],
                 privacy={"dp": {"mode": "central", "target_epsilon": 50.0,
                                 "adaptive_clipping": True}})
    with pytest.raises(SpecError, match="cannot be met with adaptive clipping"):
        preflight(spec)
