"""The in-process driver and the aggregation-cost benchmark helper."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.secure import SecAggParams, run_secure_round
from tests.bench_script import load_secure_cost
from tests.secure._helpers import encoded_sum, make_group, make_vectors


def test_driver_unknown_drop_point_rejected() -> None:
    params = SecAggParams()
    participants, _ = make_group(4, params)
    with pytest.raises(ValueError, match="drop_after keys"):
        run_secure_round(participants, make_vectors(range(4), 3), params, 0, {"train": {1}})


def test_driver_drop_at_begin_excludes_participant() -> None:
    params = SecAggParams(protocol="secagg")
    participants, server = make_group(6, params)
    vectors = make_vectors(range(6), 5)
    result = run_secure_round(participants, vectors, params, 0, {"begin": {2}}, server=server)
    assert 2 in result.excluded and 2 not in result.survivors
    assert np.array_equal(result.integer_sum, encoded_sum(server.codec, vectors, result.survivors))


def test_driver_builds_fresh_server_when_none_given() -> None:
    params = SecAggParams()
    participants, _ = make_group(5, params)
    vectors = make_vectors(range(5), 5)
    result = run_secure_round(participants, vectors, params, 0, rng_seed=3)
    assert result.survivors == tuple(range(5))
    with pytest.raises(ValueError, match="'begin', 'advertise', .* 'unmask'"):
        run_secure_round(participants, vectors, params, 1, {"nowhere": {0}})


def test_driver_skipped_round_ids_reshare_with_new_keys() -> None:
    """No package for round 5 (one was shared for round 1): a re-share needs fresh keys."""
    params = SecAggParams(amortise_keys=True)
    participants, server = make_group(6, params)
    vectors = make_vectors(range(6), 5)
    run_secure_round(participants, vectors, params, 0, server=server)
    result = run_secure_round(participants, vectors, params, 5, server=server)
    assert result.key_setup == tuple(range(6)) and result.bytes_up["share_keys"] > 0
    assert np.array_equal(result.integer_sum, encoded_sum(server.codec, vectors, range(6)))


@pytest.mark.parametrize("protocol", ["secagg", "secaggplus"])
def test_bench_aggregation_cost_positive_seconds(protocol: str) -> None:
    seconds = load_secure_cost().aggregation_cost(8, 20, protocol, dropout=0.25, repeats=1)
    assert 0.0 < seconds < 5.0


def test_bench_signature_cost_counts_setup_and_rounds() -> None:
    signature_cost = load_secure_cost().signature_cost

    cost = signature_cost(16, 11, rotation_rounds=10, repeats=5)
    assert cost["key_setup_ms"] >= cost["ed25519_sign_ms"] + 16 * cost["ed25519_verify_ms"] - 1e-9
    assert 0.0 < cost["consistency_ms"] < cost["per_round_ms"]


@pytest.mark.parametrize("server", ["honest_but_curious", "malicious"])
def test_bench_aggregation_cost_for_each_server_model(server: str) -> None:
    cost = load_secure_cost().aggregation_cost(8, 20, "secaggplus", repeats=1, server=server)
    assert 0.0 < cost < 5.0
