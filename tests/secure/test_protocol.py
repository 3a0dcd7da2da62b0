"""Masks cancel: the unmasked sum is exactly the sum of the survivors' encodings."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fedcollab.secure import (
    STAGES,
    NotEnoughSharesError,
    RoundAbortedError,
    SecAggParams,
    TooFewSurvivorsError,
    run_secure_round,
    weighted_vector,
)
from tests.secure._helpers import (
    clipped_sum,
    encoded_sum,
    feasible,
    make_group,
    make_vectors,
)

PROTOCOLS = st.sampled_from(["secagg", "secaggplus"])


@settings(max_examples=40, deadline=None)
@given(protocol=PROTOCOLS, amortise=st.booleans(), n=st.integers(3, 60),
       dim=st.integers(1, 40), warm=st.booleans(), seed=st.integers(0, 2**31),
       data=st.data())
def test_round_random_dropouts_sum_exact_or_abort_when_infeasible(
        protocol: str, amortise: bool, n: int, dim: int, warm: bool, seed: int,
        data: st.DataObject) -> None:
    params = SecAggParams(protocol=protocol, amortise_keys=amortise, expected_dropout=0.0)
    participants, server = make_group(n, params, rng_seed=seed)
    vectors = make_vectors(range(n), dim, seed=seed, scale=5.0)  # some beyond clip=4
    if warm:  # a previous round, so amortised packages come from the masked inputs
        run_secure_round(participants, vectors, params, 0, server=server)
    order = data.draw(st.permutations(range(n)))
    # Every size is possible; small ones (the tolerable ones) are drawn more often.
    n_early = data.draw(st.one_of(st.integers(0, n // 4), st.integers(0, n - 1)),
                        label="dropped before masked input")
    n_late = data.draw(st.one_of(st.integers(0, (n - n_early) // 5),
                                 st.integers(0, n - n_early)), label="dropped after masked input")
    early, late = set(order[:n_early]), set(order[n_early:n_early + n_late])
    alive = set(range(n)) - early
    try:
        result = run_secure_round(participants, vectors, params, 1,
                                  {"share_keys": early, "masked_input": late}, server=server)
    except RoundAbortedError:
        event("aborted")
        assert not feasible(server, alive, alive - late)
        return
    event("summed")
    assert feasible(server, alive, alive - late)
    codec = server.codec
    assert result.survivors == tuple(sorted(alive))
    assert result.dropped == tuple(sorted(early))
    assert result.unresponsive == tuple(sorted(late))
    assert np.array_equal(result.integer_sum, encoded_sum(codec, vectors, result.survivors))
    exact = clipped_sum(codec, vectors, result.survivors)
    assert np.all(np.abs(result.total - exact) <= codec.quantisation_bound(len(alive)))


@pytest.mark.parametrize("protocol", ["secagg", "secaggplus"])
@pytest.mark.parametrize("amortise", [True, False])
def test_round_no_dropouts_sum_matches_plain_sum(protocol: str, amortise: bool) -> None:
    params = SecAggParams(protocol=protocol, amortise_keys=amortise)
    participants, server = make_group(12, params)
    vectors = make_vectors(range(12), 30, seed=1)
    for round_id in range(3):
        result = run_secure_round(participants, vectors, params, round_id, server=server)
        assert np.allclose(result.total, sum(vectors.values()), atol=12 * 2.0 ** -21)
        assert result.rejected == {} and result.dropped == ()


def test_round_weighted_mean_hides_weights_but_averages_them() -> None:
    params = SecAggParams(protocol="secaggplus")
    participants, server = make_group(5, params)
    updates = make_vectors(range(5), 8, seed=2)
    weights = {i: (i + 1) / 5 for i in range(5)}
    vectors = {i: weighted_vector(updates[i], weights[i]) for i in range(5)}
    result = run_secure_round(participants, vectors, params, 0, server=server)
    mean, total_weight = result.weighted_mean()
    expected = sum(updates[i] * weights[i] for i in range(5)) / sum(weights.values())
    assert total_weight == pytest.approx(3.0, abs=1e-5)
    assert np.allclose(mean, expected, atol=1e-5)


def test_round_secagg_drop_before_input_removes_dangling_masks() -> None:
    params = SecAggParams(protocol="secagg", amortise_keys=True)
    participants, server = make_group(10, params)
    vectors = make_vectors(range(10), 16, seed=3)
    run_secure_round(participants, vectors, params, 0, server=server)
    result = run_secure_round(participants, vectors, params, 1, {"share_keys": {2, 7}},
                              server=server)
    survivors = [i for i in range(10) if i not in (2, 7)]
    assert result.dropped == (2, 7)
    assert np.array_equal(result.integer_sum, encoded_sum(server.codec, vectors, survivors))


def test_round_drop_after_input_still_counts_its_input() -> None:
    params = SecAggParams(protocol="secaggplus")
    participants, server = make_group(10, params)
    vectors = make_vectors(range(10), 16, seed=4)
    result = run_secure_round(participants, vectors, params, 0, {"masked_input": {4}},
                              server=server)
    assert result.unresponsive == (4,) and 4 in result.survivors
    assert np.array_equal(result.integer_sum, encoded_sum(server.codec, vectors, range(10)))


def test_round_fewer_than_t_holders_raises_not_enough_shares() -> None:
    params = SecAggParams(protocol="secagg", threshold=0.67)
    participants, server = make_group(6, params)  # t = ceil(0.67 * 5) = 4
    vectors = make_vectors(range(6), 4, seed=5)
    with pytest.raises(NotEnoughSharesError,
                       match=r"round 0: got 3 shares .* need 4 \(threshold\)"):
        run_secure_round(participants, vectors, params, 0, {"share_keys": {0, 1}}, server=server)


def test_round_fewer_than_min_group_inputs_raises_too_few_survivors() -> None:
    params = SecAggParams(protocol="secagg", threshold=0.6)
    participants, server = make_group(4, params)
    vectors = make_vectors(range(4), 4, seed=6)
    with pytest.raises(TooFewSurvivorsError, match="only 2 masked inputs, min_group is 3"):
        run_secure_round(participants, vectors, params, 0, {"share_keys": {0, 1}}, server=server)


def test_round_aborted_server_accepts_next_round() -> None:
    params = SecAggParams(protocol="secagg", threshold=0.6)
    participants, server = make_group(4, params)
    vectors = make_vectors(range(4), 4, seed=7)
    with pytest.raises(RoundAbortedError):
        run_secure_round(participants, vectors, params, 0, {"share_keys": {0, 1}}, server=server)
    result = run_secure_round(participants, vectors, params, 1, server=server)
    assert np.array_equal(result.integer_sum, encoded_sum(server.codec, vectors, range(4)))


def test_round_result_reports_bytes_and_seconds_per_stage() -> None:
    params = SecAggParams(protocol="secaggplus")
    participants, server = make_group(8, params)
    result = run_secure_round(participants, make_vectors(range(8), 10), params, 0, server=server)
    assert set(result.bytes_up) == set(STAGES) == set(result.seconds)
    assert all(result.bytes_up[s] > 0 and result.bytes_down.get(s, 1) >= 0 for s in STAGES)
    assert result.bytes_up["masked_input"] >= 8 * 10 * server.codec.item_bytes
    assert set(result.participant_seconds) == set(STAGES)
