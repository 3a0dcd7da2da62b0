"""The policy check's rules for what a remote job asks of the vendor's participants:
a stage (setup, key sharing, training, unmask) and the secure group's setup."""
from __future__ import annotations

import hashlib
import math

import pytest

from fedcollab.silo import Allow, Refuse, SiloState, check
from fedcollab.silo.errors import PolicyError
from fedcollab.silo.frames import GroupSetup, Stage

from .conftest import JOB, make_offer, make_policy, make_roster, make_start, make_unmask

POLICY = make_policy()


def _through(*frames: object) -> SiloState:
    state = SiloState()
    for frame in frames:
        decision = check(POLICY, state, frame)
        assert isinstance(decision, Allow), decision
        state = decision.state
    return state


def _rule(decision: object) -> str:
    assert isinstance(decision, Refuse), decision
    return decision.rule


def test_check_stage_before_an_offer_refused() -> None:
    assert _rule(check(POLICY, SiloState(), Stage(JOB, 0, "identities", (1,)))) == "sequence"


def test_check_setup_stage_after_the_offer_allowed() -> None:
    state = _through(make_offer())

    assert isinstance(check(POLICY, state, Stage(JOB, 0, "identities", (1,))), Allow)


@pytest.mark.parametrize("stage", ["advertise", "share_keys", "train", "consistency"])
def test_check_round_stage_before_key_sharing_refused(stage: str) -> None:
    state = _through(make_offer(), make_start(1))

    assert _rule(check(POLICY, state, Stage(JOB, 1, stage, (1,)))) == "sequence"


@pytest.mark.parametrize("stage", ["advertise", "share_keys", "train", "consistency"])
def test_check_round_stage_after_key_sharing_allowed(stage: str) -> None:
    state = _through(make_offer(), make_start(1), make_roster(1))

    assert isinstance(check(POLICY, state, Stage(JOB, 1, stage, (1,))), Allow)


def test_check_stage_for_another_round_refused() -> None:
    state = _through(make_offer(), make_start(2), make_roster(2))

    assert _rule(check(POLICY, state, Stage(JOB, 1, "train", (1,)))) == "sequence"


def test_check_unmask_stage_needs_an_allowed_unmask_request() -> None:
    roster = make_roster(1)
    state = _through(make_offer(), make_start(1), roster)

    assert _rule(check(POLICY, state, Stage(JOB, 1, "unmask", (1,)))) == "sequence"
    after = _through(make_offer(), make_start(1), roster, make_unmask(roster))
    assert isinstance(check(POLICY, after, Stage(JOB, 1, "unmask", (1,))), Allow)


def test_check_unknown_stage_refused() -> None:
    state = _through(make_offer(), make_start(1), make_roster(1))

    assert _rule(check(POLICY, state, Stage(JOB, 1, "reveal_everything", (1,)))) == "unknown"


def test_check_setup_bound_to_this_job_allowed_another_refused() -> None:
    state = _through(make_offer())
    ours = hashlib.sha256(JOB.encode()).digest()[:16]

    assert isinstance(check(POLICY, state, GroupSetup(JOB, (1, 2, 3), ours)), Allow)
    assert _rule(check(POLICY, state, GroupSetup(JOB, (1, 2, 3), b"\0" * 16))) == "setup"


def test_policy_without_dp_says_so_in_both_keys_and_its_rounds_pass() -> None:
    policy = make_policy(dp={"min_noise_multiplier": 0, "max_clip_norm": math.inf,
                             "epsilon_budget": math.inf, "delta": 1e-5})
    offer = make_offer(dp=make_offer().dp.__class__("none", 0.0, math.inf))

    assert isinstance(check(policy, SiloState(), offer), Allow)
    with pytest.raises(PolicyError, match="epsilon_budget: .inf"):
        make_policy(dp={"min_noise_multiplier": 0, "max_clip_norm": 1.0,
                        "epsilon_budget": 8.0, "delta": 1e-5})
