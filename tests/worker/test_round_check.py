"""Finding 6 of issue 27: a participant takes its DP settings from its own spec and
refuses a round config that names others (pure: no TensorFlow)."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fedcollab.secure.errors import ParameterMismatchError
from fedcollab.spec import spec_from_dict
from fedcollab.worker.messages import RoundConfig
from fedcollab.worker.round_check import check_round_config, own_dp


def _spec(**dp: Any) -> Any:
    return spec_from_dict({
        "name": "t", "task": {"dataset": "digits", "model": "mlp"}, "rounds": 3,
        "participants": [{"name": "c", "count": 6},
                         {"name": "v", "role": "vendor", "count": 4, "sharing": "secure"}],
        "privacy": {"dp": {"mode": "distributed", "noise_multiplier": 1.2, "clip_norm": 0.5,
                           **dp}}})


def _honest(spec: Any) -> RoundConfig:
    own = own_dp(spec)
    return RoundConfig(own.mode, own.clip_norm, own.noise_multiplier, own.secure_members)


def test_the_honest_round_config_is_accepted() -> None:
    spec = _spec()
    own = own_dp(spec)
    assert (own.mode, own.noise_multiplier, own.clip_norm, own.secure_members) == \
        ("distributed", 1.2, 0.5, 4)
    check_round_config(_honest(spec), own)
    check_round_config(dataclasses.replace(_honest(spec), noisy_participants=3), own)


@pytest.mark.parametrize("change, match", [
    ({"noisy_participants": 10**12}, "split over"),  # noise std 0.304 -> 1e-6
    ({"noisy_participants": 0}, "split over"),
    ({"dp_mode": "none"}, "mode"),
    ({"dp_mode": "local"}, "mode"),
    ({"noise_multiplier": 0.01}, "noise multiplier"),
    ({"clip_norm": 0.05}, "clip norm"),
    ({"clip_norm": float("nan")}, "clip norm"),
])
def test_finding6_a_server_chosen_dp_setting_is_refused(change: dict, match: str) -> None:
    spec = _spec()
    with pytest.raises(ParameterMismatchError, match=match):
        check_round_config(dataclasses.replace(_honest(spec), **change), own_dp(spec))


@pytest.mark.parametrize("m", [0, 5, 10**12])
def test_the_discrete_gaussian_members_bound_m_too(m: int) -> None:
    """Each distributed-discrete-Gaussian member adds sigma^2 / m of the noise: a claimed
    m beyond the secure group (4 here) would shrink every share."""
    spec = _spec(mode="distributed_discrete_gaussian")
    own = own_dp(spec, dim=100)
    check_round_config(dataclasses.replace(_honest(spec), noisy_participants=4), own)
    with pytest.raises(ParameterMismatchError, match="split over"):
        check_round_config(dataclasses.replace(_honest(spec), noisy_participants=m), own)


def test_adaptive_clipping_lets_the_server_move_c_but_not_z() -> None:
    spec = _adaptive()
    own = own_dp(spec)
    check_round_config(dataclasses.replace(_honest_adaptive(spec, 10), clip_norm=0.05), own)
    with pytest.raises(ParameterMismatchError):
        check_round_config(dataclasses.replace(_honest_adaptive(spec, 10), noise_multiplier=0.1),
                           own)


def test_no_dp_spec_refuses_a_round_that_turns_dp_on() -> None:
    spec = spec_from_dict({"name": "t", "task": {"dataset": "digits", "model": "mlp"},
                           "rounds": 3, "participants": [{"name": "c", "count": 4}]})
    check_round_config(RoundConfig(), own_dp(spec))
    with pytest.raises(ParameterMismatchError):
        check_round_config(RoundConfig(dp_mode="central"), own_dp(spec))


# -- finding 5: private layers shrink a sum ---------------------------------------------------
def _private_spec(others: int, **top: Any) -> Any:
    return spec_from_dict({
        "name": "t", "task": {"dataset": "digits", "model": "mlp"}, "rounds": 2,
        "participants": [
            {"name": "vendor", "role": "vendor", "count": 3, "sharing": "secure",
             "private_layers": ["head"]},
            {"name": "c", "count": others, "sharing": "secure"}], **top})


def test_finding5_validate_refuses_a_layer_shared_by_fewer_than_min_group() -> None:
    from fedcollab.spec import SpecError

    with pytest.raises(SpecError, match="'head' .* 1 secure member"):
        _private_spec(1)
    _private_spec(3)  # three share the head: a sum of three


def test_finding5_a_sampled_round_with_too_few_sharers_is_refused() -> None:
    from fedcollab.secure.errors import UnsafeRosterError
    from fedcollab.spec.roster import roster
    from fedcollab.worker.round_check import check_layer_sharers

    spec = _private_spec(4, fraction=0.5)
    people = roster(spec)  # vendor 0-2, community 3-6
    check_layer_sharers(spec, people, 3, [0, 1, 2, 3, 4, 5], round_id=1)
    with pytest.raises(UnsafeRosterError, match="'head' is shared by 2"):
        check_layer_sharers(spec, people, 3, [0, 1, 2, 3, 4], round_id=1)
    # the vendor shares no head: it is not in that sum, so it masks the rest
    check_layer_sharers(spec, people, 0, [0, 1, 2, 3, 4], round_id=1)


# -- the clip bit and its noise (adaptive clipping) -------------------------------------------
def _adaptive(mode: str = "distributed", **top: Any) -> Any:
    return spec_from_dict({
        "name": "t", "task": {"dataset": "digits", "model": "mlp"}, "rounds": 3,
        "participants": [{"name": "c", "count": 6},
                         {"name": "v", "role": "vendor", "count": 4, "sharing": "secure"}],
        "privacy": {"dp": {"mode": mode, "noise_multiplier": 1.2, "clip_norm": 0.5,
                           "adaptive_clipping": True}}, **top})


def _honest_adaptive(spec: Any, chosen: int) -> RoundConfig:
    from fedcollab.privacy.server import DpServer

    dp = DpServer.from_spec(spec, dim=0)
    own = own_dp(spec)
    return RoundConfig(own.mode, own.clip_norm, own.noise_multiplier, own.secure_members,
                       clip_bit=True, count_noise_std=dp.count_noise_std(chosen))


@pytest.mark.parametrize("mode", ["distributed", "local"])
def test_a_server_cannot_strip_the_clip_bits_noise(mode: str) -> None:
    """The server names the clip-bit noise std in each round config; a participant that
    took it would send its bit bare (count_noise_std 0): one exact bit a round about
    its data, which the accountant charges as a Gaussian query of std m / 20."""
    spec = _adaptive(mode)
    own = own_dp(spec)
    assert own.count_noise_floor == pytest.approx(10 / 20)  # all 10 sampled every round
    check_round_config(_honest_adaptive(spec, 10), own)
    for std in (0.0, 1e-6, 0.49, float("nan")):
        with pytest.raises(ParameterMismatchError, match="clip-bit noise"):
            check_round_config(dataclasses.replace(_honest_adaptive(spec, 10),
                                                   count_noise_std=std), own)


def test_under_sampling_the_floor_is_what_every_round_samples() -> None:
    """A Poisson-sampled round can be small, and its honest noise with it (m / 20 for
    the m it drew): the participant can only insist on the noise of a round of the
    groups sampled every time (the secure vendor's 4 here: its min_group keeps it in)."""
    spec = _adaptive(fraction=0.5, secure={"min_group": 4})
    own = own_dp(spec)
    assert own.count_noise_floor == pytest.approx(4 / 20)
    check_round_config(_honest_adaptive(spec, 4), own)
    with pytest.raises(ParameterMismatchError, match="clip-bit noise"):
        check_round_config(_honest_adaptive(spec, 3), own)


def test_the_clip_bit_follows_the_participants_own_spec() -> None:
    """A server that asks for clip bits the spec never clips adaptively for would read
    one bit per update (whether it fits under C) with no noise accounted for it."""
    spec = _spec()
    with pytest.raises(ParameterMismatchError, match="clip bit on"):
        check_round_config(dataclasses.replace(_honest(spec), clip_bit=True), own_dp(spec))
    adaptive = _adaptive()
    with pytest.raises(ParameterMismatchError, match="clip bit off"):
        check_round_config(dataclasses.replace(_honest_adaptive(adaptive, 10), clip_bit=False),
                           own_dp(adaptive))
