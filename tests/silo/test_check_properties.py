"""Properties of the policy check, searched by Hypothesis: a coordinator that sends any
sequence of frames (some inside the policy, most not), with vendor restarts between
them, never gets an update out that the policy forbids."""
from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcollab.silo import (
    MASKED,
    Allow,
    Egress,
    Member,
    Offer,
    Pending,
    Roster,
    RoundStart,
    SiloState,
    UnmaskRequest,
    check,
    epsilon_spent,
)
from fedcollab.silo.frames import SECURE_PROTOCOLS

from .conftest import OTHER_CA, TRUSTED_CA, make_offer, make_policy, model_hash

POLICY = make_policy()
LAYERS = ("dense", "dense_1", "head", "conv")
JOBS = ("job-1", "job-2")
PARTIES = ("a", "b", "c", "d", "e")
RESTART = "restart"

jobs = st.sampled_from(JOBS)
round_ids = st.integers(0, 6)
hashes = st.builds(model_hash, st.integers(0, 6), jobs)
layer_sets = st.lists(st.sampled_from(LAYERS), max_size=4, unique=True).map(tuple)

offers = st.builds(
    lambda job, rounds, z, approved, protocol, threshold: make_offer(
        job_id=job, rounds=rounds, dp=replace(make_offer().dp, noise_multiplier=z),
        secagg=replace(make_offer().secagg, protocol=protocol, threshold=threshold),
        **({} if approved else {"model_sha256": model_hash(99)})),
    jobs, st.integers(1, 12), st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]), st.booleans(),
    st.sampled_from(["secaggplus", "secaggplus", "secagg", "none", ""]),
    st.sampled_from([0.67, 0.67, 0.5, 1.0, 0.2]))
starts = st.builds(RoundStart, jobs, round_ids, hashes,
                   st.one_of(st.just(("dense", "dense_1")), layer_sets))
members = st.builds(Member, st.sampled_from(PARTIES), st.sampled_from([TRUSTED_CA, OTHER_CA, ""]),
                    st.booleans())
rosters = st.builds(Roster, jobs, round_ids, st.lists(members, max_size=5).map(tuple))
subsets = st.lists(st.sampled_from(PARTIES), max_size=5).map(tuple)
unmasks = st.builds(UnmaskRequest, jobs, round_ids, subsets, subsets)
egresses = st.builds(
    Egress, jobs, round_ids, hashes, st.sampled_from([MASKED, MASKED, "plaintext", "raw", ""]),
    st.one_of(st.just(("dense", "dense_1")), layer_sets),
    st.sampled_from([0.0, 0.9, 1.0, 2.0]), st.sampled_from([0.5, 1.0, 2.0]),
    st.sampled_from([0.0, 0.5, 1.0, 3.0]))
frames = st.lists(st.one_of(offers, starts, rosters, unmasks, egresses,
                            st.just(RESTART), st.binary(max_size=8)), max_size=40)

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _restart(state: SiloState) -> SiloState:
    """What the gateway does across a restart: persist, then load."""
    return SiloState.from_json(json.loads(json.dumps(state.to_json())))


def _run(sequence: list) -> list[tuple[object, SiloState, SiloState]]:
    """Apply each frame; return (frame, state before, state after) for every Allow."""
    state, allowed = SiloState(), []
    for frame in sequence:
        if frame == RESTART:
            state = _restart(state)
            continue
        decision = check(POLICY, state, frame)
        if isinstance(decision, Allow):
            allowed.append((frame, state, decision.state))
            state = decision.state
        elif isinstance(decision, Pending) and decision.state is not None:
            state = decision.state  # the gateway persists the offer as pending
    return allowed


@SETTINGS
@given(frames)
def test_no_sequence_allows_plaintext_or_unlisted_egress(sequence: list) -> None:
    for frame, _, _ in _run(sequence):
        if isinstance(frame, Egress):
            assert frame.encoding == MASKED
            assert set(frame.layers) <= POLICY.share_only


@SETTINGS
@given(frames)
def test_round_ids_strictly_increase_across_restarts(sequence: list) -> None:
    last: dict[str, int] = {}
    for frame, before, _ in _run(sequence):
        if isinstance(frame, RoundStart) and before.job(frame.job_id).last_round != \
                frame.round_id:
            assert frame.round_id > last.get(frame.job_id, 0)
            last[frame.job_id] = frame.round_id


@SETTINGS
@given(frames)
def test_every_allowed_egress_is_one_per_model_in_a_trusted_group_within_budget(
        sequence: list) -> None:
    seen: set[tuple[str, str]] = set()
    for frame, before, after in _run(sequence):
        if not isinstance(frame, Egress):
            continue
        key = (frame.job_id, frame.global_model_sha256)
        assert key not in seen
        seen.add(key)
        assert len(before.job(frame.job_id).trusted) >= POLICY.min_group
        assert frame.noise_multiplier >= POLICY.dp.min_noise_multiplier
        assert epsilon_spent(POLICY, after) <= POLICY.dp.epsilon_budget


@SETTINGS
@given(frames)
def test_every_allowed_unmask_keeps_min_group_trusted_survivors(sequence: list) -> None:
    for frame, before, _ in _run(sequence):
        if isinstance(frame, UnmaskRequest):
            trusted = set(before.job(frame.job_id).trusted)
            assert len(set(frame.survivors) & trusted) >= POLICY.min_group


@SETTINGS
@given(frames)
def test_state_survives_a_restart_unchanged(sequence: list) -> None:
    for _, _, after in _run(sequence):
        assert _restart(after) == after


@SETTINGS
@given(frames)
def test_no_job_contributes_more_rounds_than_its_offer(sequence: list) -> None:
    for _, _, after in _run(sequence):
        for job in after.jobs.values():
            if job.offer is not None:
                assert len(job.contributed) <= job.offer.rounds


@SETTINGS
@given(frames)
def test_what_accepted_offers_may_still_spend_stays_within_the_budget(sequence: list) -> None:
    from fedcollab.silo.check import _epsilon, _reserved

    for frame, _, after in _run(sequence):
        if isinstance(frame, Offer):
            assert _epsilon(_reserved(after), POLICY.dp.delta) <= POLICY.dp.epsilon_budget


@SETTINGS
@given(frames)
def test_every_accepted_offer_is_masked_inside_secure_aggregation(sequence: list) -> None:
    for frame, _, _ in _run(sequence):
        if isinstance(frame, Offer):
            assert frame.secagg.protocol in SECURE_PROTOCOLS
            assert 0.5 < frame.secagg.threshold <= 1
