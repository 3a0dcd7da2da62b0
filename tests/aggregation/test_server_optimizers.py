"""Tests for fedcollab.aggregation.server_optimizers: known-answer steps by hand."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings

from fedcollab.aggregation import (
    DEFAULT_SERVER_LEARNING_RATES,
    AggregationError,
    ServerOptimizer,
    ServerOptimizerError,
    ServerState,
    init_server_state,
    server_step,
    state_from_arrays,
    state_to_arrays,
)

from ._strategies import assert_weights_close, update

FAST = settings(deadline=None, max_examples=40)


def _w(*values: float) -> list[np.ndarray]:
    return [np.array(values, dtype=np.float64)]


def test_server_step_none_equals_plain_sum() -> None:
    weights = [np.array([1.0, 2.0]), np.array([[3.0]])]
    delta = [np.array([0.5, -1.0]), np.array([[0.25]])]
    new, state = server_step(ServerOptimizer("none"), None, weights, delta)
    assert_weights_close(new, [np.array([1.5, 1.0]), np.array([[3.25]])], rtol=0, atol=0)
    assert state.round == 1 and state.momentum is None and state.second_moment is None


def test_server_step_none_with_learning_rate_scales_delta() -> None:
    new, _ = server_step(ServerOptimizer("none", learning_rate=0.5), None, _w(1.0), _w(2.0))
    np.testing.assert_array_equal(new[0], [2.0])


def test_server_step_fedavgm_two_steps_match_hand_computation() -> None:
    opt = ServerOptimizer("fedavgm", learning_rate=1.0, momentum=0.9)
    w1, s1 = server_step(opt, None, _w(1.0, 2.0), _w(0.1, -0.2))
    np.testing.assert_allclose(w1[0], [1.1, 1.8])           # v1 = d1
    w2, s2 = server_step(opt, s1, w1, _w(0.3, 0.0))
    np.testing.assert_allclose(s2.momentum[0], [0.39, -0.18])  # v2 = 0.9 d1 + d2
    np.testing.assert_allclose(w2[0], [1.49, 1.62])
    assert s2.round == 2


def test_server_step_fedadam_one_step_matches_hand_computation() -> None:
    opt = ServerOptimizer("fedadam", learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    new, state = server_step(opt, None, _w(0.0), _w(0.5))
    # m = 0.1 * 0.5 = 0.05; v = 0.99 * 1e-6 + 0.01 * 0.25 = 0.00250099
    np.testing.assert_allclose(state.momentum[0], [0.05])
    np.testing.assert_allclose(state.second_moment[0], [0.00250099])
    expected = 0.1 * 0.05 / (math.sqrt(0.00250099) + 1e-3)   # = 0.0980202...
    np.testing.assert_allclose(new[0], [expected], rtol=1e-12)
    np.testing.assert_allclose(new[0], [0.0980202], rtol=1e-6)


def test_server_step_fedyogi_second_step_differs_from_adam_as_by_hand() -> None:
    yogi = ServerOptimizer("fedyogi", learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    adam = ServerOptimizer("fedadam", learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    _, y1 = server_step(yogi, None, _w(0.0), _w(0.5))
    # step 1: v0 = tau^2 = 1e-6 < d^2, sign = -1: v1 = 1e-6 + 0.01 * 0.25 = 0.002501
    np.testing.assert_allclose(y1.second_moment[0], [0.002501])
    _, y2 = server_step(yogi, y1, _w(0.0), _w(0.01))
    # step 2: v1 > d^2 = 1e-4, sign = +1: v2 = 0.002501 - 0.01 * 1e-4 = 0.0025
    np.testing.assert_allclose(y2.second_moment[0], [0.0025])
    _, a1 = server_step(adam, None, _w(0.0), _w(0.5))
    _, a2 = server_step(adam, a1, _w(0.0), _w(0.01))
    np.testing.assert_allclose(a2.second_moment[0], [0.99 * 0.00250099 + 0.01 * 1e-4])


@FAST
@given(weights=update(), delta=update())
def test_server_step_fedavgm_zero_momentum_equals_none(weights: list, delta: list) -> None:
    plain, _ = server_step(ServerOptimizer("none"), None, weights, delta)
    momentum0, _ = server_step(ServerOptimizer("fedavgm", momentum=0.0), None, weights, delta)
    assert_weights_close(momentum0, plain)


def test_server_step_keeps_float32_weights() -> None:
    weights = [np.ones(3, np.float32)]
    new, state = server_step(ServerOptimizer("fedadam"), None, weights,
                             [np.full(3, 0.1, np.float32)])
    assert new[0].dtype == np.float32 and state.momentum[0].dtype == np.float64


def test_server_step_does_not_modify_inputs() -> None:
    opt = ServerOptimizer("fedavgm")
    weights, delta = _w(1.0), _w(1.0)
    _, state = server_step(opt, None, weights, delta)
    before = state.momentum[0].copy()
    server_step(opt, state, weights, delta)
    np.testing.assert_array_equal(state.momentum[0], before)
    np.testing.assert_array_equal(weights[0], [1.0])


def test_server_step_none_state_equals_initial_state() -> None:
    opt = ServerOptimizer("fedyogi")
    weights, delta = _w(1.0, 2.0), _w(0.3, -0.1)
    from_none, _ = server_step(opt, None, weights, delta)
    from_init, _ = server_step(opt, init_server_state(opt, weights), weights, delta)
    assert_weights_close(from_none, from_init, rtol=0, atol=0)


def test_server_step_shape_mismatch_raises() -> None:
    with pytest.raises(AggregationError, match="array 0 has shape"):
        server_step(ServerOptimizer(), None, _w(1.0, 2.0), _w(1.0))


def test_server_step_state_missing_slot_raises() -> None:
    with pytest.raises(ServerOptimizerError, match="no momentum; start from init_server_state"):
        server_step(ServerOptimizer("fedadam"), ServerState(), _w(1.0), _w(1.0))


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_state_round_trips_through_npz(name: str) -> None:
    opt = ServerOptimizer(name)  # type: ignore[arg-type]
    weights = [np.ones((2, 2)), np.zeros(3)]
    delta = [np.full((2, 2), 0.1), np.full(3, -0.2)]
    _, state = server_step(opt, None, weights, delta)
    buffer = io.BytesIO()
    np.savez(buffer, **state_to_arrays(state))
    buffer.seek(0)
    with np.load(buffer) as loaded:
        restored = state_from_arrays(loaded)
    next_a, _ = server_step(opt, state, weights, delta)
    next_b, _ = server_step(opt, restored, weights, delta)
    assert restored.round == 1
    assert_weights_close(next_a, next_b, rtol=0, atol=0)


def test_state_from_arrays_missing_round_raises() -> None:
    with pytest.raises(ServerOptimizerError, match="no 'round' entry"):
        state_from_arrays({"momentum.0": np.zeros(2)})


def test_state_from_arrays_gap_in_indices_raises() -> None:
    with pytest.raises(ServerOptimizerError, match="without gaps"):
        state_from_arrays({"round": np.asarray(1), "momentum.1": np.zeros(2)})


def test_server_optimizer_default_learning_rates() -> None:
    assert ServerOptimizer("none").lr == 1.0
    assert ServerOptimizer("fedavgm").lr == 1.0
    assert ServerOptimizer("fedadam").lr == DEFAULT_SERVER_LEARNING_RATES["fedadam"] == 0.03
    assert ServerOptimizer("fedadam", learning_rate=0.1).lr == 0.1


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "sgd"}, "got 'sgd', expected one of none, fedavgm"),
    ({"learning_rate": 0.0}, "learning_rate=0.0, expected a number > 0"),
    ({"momentum": 1.0}, r"momentum=1.0, expected a number in \[0, 1\)"),
    ({"beta2": -0.1}, r"beta2=-0.1"),
    ({"tau": 0.0}, "tau=0.0, expected a number > 0"),
])
def test_server_optimizer_bad_values_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ServerOptimizerError, match=match):
        ServerOptimizer(**kwargs)


def test_server_optimizer_spec_takes_the_registry_names() -> None:
    from fedcollab.aggregation import SERVER_OPTIMIZERS
    from fedcollab.spec import SpecError, spec_from_dict

    base = {"name": "x", "participants": [{"name": "c", "count": 3}]}
    for name in SERVER_OPTIMIZERS:
        spec_from_dict({**base, "aggregation": {"server_optimizer": name}})
    with pytest.raises(SpecError, match="server_optimizer: got 'sgd', expected one of 'none'"):
        spec_from_dict({**base, "aggregation": {"server_optimizer": "sgd"}})
