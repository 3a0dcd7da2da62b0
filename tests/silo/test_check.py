"""The vendor's pure policy check, rule by rule, without Ray, sockets or files."""
from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from fedcollab.silo import (
    Allow,
    Decision,
    Egress,
    Member,
    Pending,
    Refuse,
    Roster,
    SiloState,
    approve,
    check,
    epsilon_spent,
)
from fedcollab.silo.frames import SecAggTerms

from .conftest import (
    JOB,
    OTHER_CA,
    TRUSTED_CA,
    make_egress,
    make_offer,
    make_policy,
    make_roster,
    make_start,
    make_unmask,
    model_hash,
)

POLICY = make_policy()


def allowed(decision: Decision) -> SiloState:
    assert isinstance(decision, Allow), decision
    return decision.state


def refused(decision: Decision, rule: str) -> str:
    assert isinstance(decision, Refuse), decision
    assert decision.rule == rule, decision
    return decision.reason


def through(*frames: object, state: SiloState | None = None) -> SiloState:
    state = SiloState() if state is None else state
    for frame in frames:
        state = allowed(check(POLICY, state, frame))
    return state


def at_key_sharing(round_id: int = 1) -> SiloState:
    return through(make_offer(), make_start(round_id), make_roster(round_id))


# ---- a whole round inside the policy ----

def test_check_round_inside_policy_is_allowed_and_spends_once() -> None:
    roster = make_roster(1, trusted=4)
    state = through(make_offer(), make_start(1), roster, make_egress(1),
                    make_unmask(roster, dropped=("t3",)))

    assert state.job(JOB).contributed == {model_hash(1)}
    assert state.spent == ((2.0, 1),)
    assert 0 < epsilon_spent(POLICY, state) <= POLICY.dp.epsilon_budget


# ---- offers ----

def test_check_offer_unapproved_model_is_pending_until_approved() -> None:
    other = hashlib.sha256(b"another model").hexdigest()
    offer = make_offer(model_sha256=other)

    pending = check(POLICY, SiloState(), offer)
    state = allowed(check(POLICY, approve(SiloState(), other), offer))

    assert isinstance(pending, Pending) and "silo approve job-1" in pending.reason
    assert state.job(JOB).offer == offer


def test_check_offer_noise_below_floor_refused() -> None:
    offer = make_offer(dp=replace(make_offer().dp, noise_multiplier=0.5))

    assert "below the policy's floor 1.0" in refused(check(POLICY, SiloState(), offer),
                                                     "dp_floor")


def test_check_offer_without_dp_refused() -> None:
    offer = make_offer(dp=replace(make_offer().dp, mode="none", noise_multiplier=0.0))

    refused(check(POLICY, SiloState(), offer), "dp_floor")


def test_check_offer_clip_above_maximum_refused() -> None:
    offer = make_offer(dp=replace(make_offer().dp, clip_norm=5.0))

    refused(check(POLICY, SiloState(), offer), "dp_floor")


def test_check_offer_rounds_past_the_budget_refused() -> None:
    reason = refused(check(POLICY, SiloState(), make_offer(rounds=10_000)), "budget")

    assert "over the budget 8" in reason


@pytest.mark.parametrize("secagg, words", [
    (dict(ring_bits=16), "only 32 or 64"),
    (dict(scale_bits=30), "allows at most 24"),
    (dict(max_group=1_000_000), "overflows the 32-bit ring"),
    (dict(clip=float("nan")), "finite clip"),
])
def test_check_offer_fixed_point_out_of_bounds_refused(secagg: dict, words: str) -> None:
    offer = make_offer(secagg=replace(make_offer().secagg, **secagg))

    assert words in refused(check(POLICY, SiloState(), offer), "fixed_point")


def test_check_offer_fits_in_64_bits_when_not_32() -> None:
    wide = SecAggTerms("secaggplus", 0.67, 3, 1_000_000, 64, 16, 1.0)

    allowed(check(POLICY, SiloState(), make_offer(secagg=wide)))


def test_check_offer_with_no_shared_layer_refused() -> None:
    refused(check(POLICY, SiloState(), make_offer(layers=("head",))), "share_only")


def test_check_offer_changed_after_acceptance_refused_same_one_allowed() -> None:
    state = through(make_offer())

    assert check(POLICY, state, make_offer()) == Allow(state)
    refused(check(POLICY, state, make_offer(rounds=6)), "offer")


# ---- round starts ----

def test_check_round_start_without_offer_refused() -> None:
    refused(check(POLICY, SiloState(), make_start(1)), "sequence")


def test_check_round_start_with_inbound_unlisted_layer_refused() -> None:
    state = through(make_offer())

    reason = refused(check(POLICY, state, make_start(1, layers=("dense", "head"))), "share_only")

    assert "'head'" in reason


@pytest.mark.parametrize("next_round", [1, 0])
def test_check_round_id_not_increasing_refused(next_round: int) -> None:
    state = through(make_offer(), make_start(1))

    refused(check(POLICY, state, make_start(next_round, global_model_sha256=model_hash(9))),
            "round_order")


def test_check_replayed_global_model_with_new_round_id_refused() -> None:
    state = through(make_egress(1), state=at_key_sharing(1))

    reason = refused(check(POLICY, state, make_start(2, global_model_sha256=model_hash(1))),
                     "replay")

    assert "already contributed" in reason


def test_check_a_fresh_job_id_buys_no_second_contribution_to_one_model() -> None:
    """The coordinator names job ids: the same offer under a new id, then a round on a
    global model the vendor already contributed to (with another sample of its sites),
    would give two sums that differ by a site's update. Refused at the round start
    (the update's own check asks the same helper), whatever job it claims."""
    state = through(make_egress(1), state=at_key_sharing(1))
    fresh = through(make_offer(job_id="job-2", rounds=1), state=state)

    reason = refused(check(POLICY, fresh, make_start(1, job_id="job-2")), "replay")
    assert "already contributed" in reason and "job-1" in reason
    assert isinstance(check(POLICY, fresh, make_start(
        1, job_id="job-2", global_model_sha256=model_hash(7))), Allow)  # a new model: fine


# ---- key sharing: min_group over trusted identities ----

@pytest.mark.parametrize("trusted, simulated, untrusted", [(2, 0, 0), (2, 5, 0), (2, 0, 5),
                                                           (0, 10, 10)])
def test_check_roster_short_of_trusted_identities_refused(trusted: int, simulated: int,
                                                          untrusted: int) -> None:
    state = through(make_offer(), make_start(1))
    roster = make_roster(1, trusted=trusted, simulated=simulated, untrusted=untrusted)

    reason = refused(check(POLICY, state, roster), "min_group")

    assert f"has {trusted} trusted identities" in reason


def test_check_roster_forged_member_counts_zero() -> None:
    state = through(make_offer(), make_start(1))  # a bad signature: the edge leaves ca ""
    roster = Roster(JOB, 1, make_roster(1, trusted=2).members + (Member("forged", ""),))

    refused(check(POLICY, state, roster), "min_group")


def test_check_roster_naming_a_party_twice_refused() -> None:
    state = through(make_offer(), make_start(1))
    roster = Roster(JOB, 1, (Member("a", TRUSTED_CA),) * 3)

    refused(check(POLICY, state, roster), "min_group")


def test_check_second_different_roster_refused() -> None:
    state = at_key_sharing(1)

    assert check(POLICY, state, make_roster(1)) == Allow(state)
    refused(check(POLICY, state, make_roster(1, trusted=4)), "sequence")


def test_check_roster_for_another_round_refused() -> None:
    state = through(make_offer(), make_start(2))

    refused(check(POLICY, state, make_roster(1)), "sequence")


# ---- unmask ----

def test_check_unmask_with_too_few_trusted_survivors_refused() -> None:
    roster = Roster(JOB, 1, make_roster(1, trusted=3).members + (Member("x", OTHER_CA),))
    state = through(make_offer(), make_start(1), roster)

    reason = refused(check(POLICY, state, make_unmask(roster, dropped=("t0",))), "min_group")

    assert "2 trusted survivors" in reason


@pytest.mark.parametrize("survivors, dropped", [
    (("t0", "t1", "t2"), ("t2",)),           # both survivor and dropped
    (("t0", "t1"), ()),                      # t2 unaccounted for
    (("t0", "t1", "t2", "zz"), ()),          # someone not in the roster
    (("t0", "t0", "t1", "t2"), ()),          # a survivor twice
])
def test_check_inconsistent_unmask_refused(survivors: tuple, dropped: tuple) -> None:
    state = at_key_sharing(1)
    request = replace(make_unmask(make_roster(1)), survivors=survivors, dropped=dropped)

    refused(check(POLICY, state, request), "unmask")


def test_check_second_unmask_in_a_round_refused() -> None:
    roster = make_roster(1, trusted=4)
    state = through(make_offer(), make_start(1), roster, make_unmask(roster))

    refused(check(POLICY, state, make_unmask(roster, dropped=("t3",))), "sequence")


def test_check_unmask_before_key_sharing_refused() -> None:
    state = through(make_offer(), make_start(1))

    refused(check(POLICY, state, make_unmask(make_roster(1))), "sequence")


# ---- egress ----

@pytest.mark.parametrize("encoding", ["plaintext", "", "MASKED", "masked "])
def test_check_unmasked_egress_refused(encoding: str) -> None:
    refused(check(POLICY, at_key_sharing(1), make_egress(1, encoding=encoding)), "egress")


def test_check_egress_of_unlisted_layer_refused() -> None:
    reason = refused(check(POLICY, at_key_sharing(1), make_egress(1, layers=("dense", "head"))),
                     "share_only")

    assert "'head' is not in share_only" in reason


def test_check_egress_before_key_sharing_refused() -> None:
    state = through(make_offer(), make_start(1))

    refused(check(POLICY, state, make_egress(1)), "sequence")


def test_check_second_egress_for_the_same_model_refused() -> None:
    state = through(make_egress(1), state=at_key_sharing(1))

    refused(check(POLICY, state, make_egress(1)), "replay")


def test_check_egress_for_another_model_than_the_round_refused() -> None:
    egress = make_egress(1, global_model_sha256=model_hash(7))

    refused(check(POLICY, at_key_sharing(1), egress), "replay")


@pytest.mark.parametrize("changes", [dict(noise_multiplier=0.9), dict(clip_norm=1.5),
                                     dict(clip_norm=0.0), dict(noise_multiplier=float("nan"))])
def test_check_egress_below_the_dp_floor_refused(changes: dict) -> None:
    refused(check(POLICY, at_key_sharing(1), make_egress(1, **changes)), "dp_floor")


@pytest.mark.parametrize("max_abs", [1.5, float("inf"), float("nan"), -1.0])
def test_check_egress_outside_fixed_point_clip_refused(max_abs: float) -> None:
    refused(check(POLICY, at_key_sharing(1), make_egress(1, max_abs=max_abs)), "fixed_point")


def test_check_egress_past_the_budget_refused_once_spent() -> None:
    state = at_key_sharing(1)
    spent = replace(state, spent=((2.0, 10_000),))

    assert epsilon_spent(POLICY, spent) > POLICY.dp.epsilon_budget
    refused(check(POLICY, spent, make_egress(1)), "budget")


def test_check_budget_counts_every_job() -> None:
    heavy = SiloState(spent=((2.0, 5),))  # 5 rounds contributed elsewhere (epsilon ~5.4)
    offer = make_offer(job_id="job-2", rounds=5)  # 5 more alone: ~5.4; together ~8.1 > 8

    allowed(check(POLICY, SiloState(), offer))
    refused(check(POLICY, heavy, offer), "budget")


def test_check_budget_reserves_what_accepted_offers_may_still_spend() -> None:
    first = through(make_offer(rounds=5))          # accepted, nothing spent yet
    offer = make_offer(job_id="job-2", rounds=5)   # alone it fits; with job-1's 5 it does not

    reason = refused(check(POLICY, first, offer), "budget")
    allowed(check(POLICY, first, make_offer(job_id="job-2", rounds=1)))

    assert "reserved by accepted offers" in reason


def test_check_rounds_past_the_offer_refused() -> None:
    state = through(make_offer(rounds=1), make_start(1), make_roster(1), make_egress(1))

    reason = refused(check(POLICY, state, make_start(2)), "budget")

    assert "all 1 offered rounds were contributed" in reason


@pytest.mark.parametrize("protocol", ["", "none", "plaintext", "fedavg"])
def test_check_offer_asking_for_plaintext_updates_refused(protocol: str) -> None:
    offer = make_offer(secagg=replace(make_offer().secagg, protocol=protocol))

    assert "leave only masked" in refused(check(POLICY, SiloState(), offer), "egress")


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.5, float("nan")])
def test_check_offer_threshold_a_minority_could_unmask_refused(threshold: float) -> None:
    offer = make_offer(secagg=replace(make_offer().secagg, threshold=threshold))

    refused(check(POLICY, SiloState(), offer), "secagg")


def test_check_pending_offer_carries_the_state_with_it_pending() -> None:
    offer = make_offer(model_sha256=hashlib.sha256(b"another model").hexdigest())

    pending = check(POLICY, SiloState(), offer)

    assert isinstance(pending, Pending) and pending.state is not None
    assert pending.state.pending == {JOB: offer} and not pending.state.jobs


def test_check_approval_binds_the_exact_offer() -> None:
    from fedcollab.silo.frames import offer_sha256

    offer = make_offer(model_sha256=hashlib.sha256(b"another model").hexdigest())
    approved = replace(SiloState(), approved_offers=frozenset({offer_sha256(offer)}))

    state = allowed(check(POLICY, approved, offer))
    changed = check(POLICY, approved, replace(offer, rounds=4))

    assert state.job(JOB).offer == offer and not state.pending
    assert isinstance(changed, Pending)


@pytest.mark.parametrize("frame", [object(), "offer", None, b"\x80\x04pickle",
                                   Egress.__mro__])
def test_check_unknown_frame_refused(frame: object) -> None:
    refused(check(POLICY, at_key_sharing(1), frame), "unknown")


def test_check_pending_offers_are_capped() -> None:
    from fedcollab.silo.limits import MAX_PENDING

    state = SiloState()
    for i in range(MAX_PENDING):
        decision = check(POLICY, state, make_offer(job_id=f"j{i}", rounds=1,
                                                   model_sha256=model_hash(99)))
        assert isinstance(decision, Pending) and decision.state is not None
        state = decision.state

    refused(check(POLICY, state, make_offer(job_id="one-more", rounds=1,
                                            model_sha256=model_hash(99))), "offer")
    assert isinstance(check(POLICY, state, make_offer(job_id="j0", rounds=2,
                                                      model_sha256=model_hash(99))), Pending)
