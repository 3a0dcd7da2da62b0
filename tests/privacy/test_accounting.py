"""Tests for fedcollab.privacy.accounting against dp_accounting and published values."""
from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.privacy import (
    PrivacyError,
    PrivacyLedger,
    UnreachableEpsilonError,
    dp_fedavg_event,
    epsilon,
    noise_multiplier_for_target,
)

FAST = settings(deadline=None, max_examples=15)


def _direct(q: float, z: float, rounds: int, delta: float) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("q,z,rounds,delta", [
    (0.01, 1.0, 1000, 1e-5), (1.0, 5.0, 100, 1e-5), (0.2, 0.8, 30, 1e-6)])
def test_epsilon_equals_dp_accounting_called_directly(q: float, z: float, rounds: int,
                                                      delta: float) -> None:
    assert epsilon(noise_multiplier=z, sampling_rate=q, rounds=rounds, delta=delta) == \
        _direct(q, z, rounds, delta)


def test_epsilon_pld_equals_dp_accounting_pld() -> None:
    accountant = pld.PLDAccountant(value_discretization_interval=1e-3)
    accountant.compose(dp_fedavg_event(noise_multiplier=5.0, sampling_rate=1.0, rounds=100))
    ours = epsilon(noise_multiplier=5.0, sampling_rate=1.0, rounds=100, delta=1e-5,
                   accountant="pld")
    assert ours == accountant.get_epsilon(1e-5)
    assert ours < epsilon(noise_multiplier=5.0, sampling_rate=1.0, rounds=100, delta=1e-5)


def test_epsilon_published_tf_privacy_example_reproduced() -> None:
    # TF Privacy's compute_dp_sgd_privacy docstring: N=60000, batch 256, z=1.12, 60 epochs,
    # delta=1e-5 "satisfies (2.92, 1e-5)-DP" (RDP orders 1.1..10.9 and 12..63, classic
    # conversion eps = min_a rdp(a) + log(1/delta) / (a - 1)). Same RDP curve here:
    q, steps = 256 / 60000, math.ceil(60 * 60000 / 256)
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    accountant = rdp.RdpAccountant(orders)
    accountant.compose(dp_fedavg_event(noise_multiplier=1.12, sampling_rate=q, rounds=steps))
    classic = min(r + math.log(1 / 1e-5) / (a - 1) for a, r in zip(orders, accountant.rdp))
    assert classic == pytest.approx(2.92, abs=0.005)
    # dp_accounting's improved conversion is tighter than the published figure.
    ours = epsilon(noise_multiplier=1.12, sampling_rate=q, rounds=steps, delta=1e-5)
    assert 2.4 < ours < 2.92


@pytest.mark.parametrize("q,z,rounds,expected", [
    (0.01, 1.0, 1000, 2.10),        # cross-device, 1% per round
    (1.0, 1.0, 100, 96.1),          # cross-silo, everyone every round
    (0.00512, 1.1, 11718, 2.88),    # DP-SGD CIFAR-10 style, 60 epochs
])
def test_epsilon_matches_reference_notes_table(q: float, z: float, rounds: int,
                                               expected: float) -> None:
    # /work/shared/reference/privacy-and-security-anchors.md section 6.3 (dp-accounting 0.6.0).
    got = epsilon(noise_multiplier=z, sampling_rate=q, rounds=rounds, delta=1e-5)
    assert got == pytest.approx(expected, abs=0.01 * max(1.0, expected / 10))


@FAST
@given(z=st.floats(0.5, 5.0), q=st.floats(0.01, 1.0), rounds=st.integers(1, 200))
def test_epsilon_increases_with_rounds_decreases_with_noise(z: float, q: float,
                                                            rounds: int) -> None:
    base = epsilon(noise_multiplier=z, sampling_rate=q, rounds=rounds, delta=1e-5)
    assert epsilon(noise_multiplier=z, sampling_rate=q, rounds=rounds + 10, delta=1e-5) >= base
    assert epsilon(noise_multiplier=z * 1.5, sampling_rate=q, rounds=rounds, delta=1e-5) <= base


def test_epsilon_zero_noise_is_infinite() -> None:
    assert epsilon(noise_multiplier=0.0, sampling_rate=0.1, rounds=5, delta=1e-5) == math.inf


def test_epsilon_zero_rounds_is_zero() -> None:
    assert epsilon(noise_multiplier=1.0, sampling_rate=0.1, rounds=0, delta=1e-5) == 0.0


@pytest.mark.parametrize("kwargs,match", [
    ({"sampling_rate": 0.0}, "sampling_rate=0.0"),
    ({"sampling_rate": 1.5}, "sampling_rate=1.5"),
    ({"delta": 1.0}, "delta=1.0"),
    ({"rounds": -1}, "rounds=-1"),
    ({"noise_multiplier": -0.5}, "noise_multiplier=-0.5"),
])
def test_epsilon_out_of_range_raises(kwargs: dict, match: str) -> None:
    args = {"noise_multiplier": 1.0, "sampling_rate": 0.1, "rounds": 10, "delta": 1e-5, **kwargs}
    with pytest.raises(PrivacyError, match=match):
        epsilon(**args)


def test_noise_multiplier_for_target_matches_dp_accounting_calibration() -> None:
    # Reference notes 6.3: q = 0.01, T = 1000, eps = 1 at delta 1e-5 needs z ~ 1.513.
    z = noise_multiplier_for_target(target_epsilon=1.0, sampling_rate=0.01, rounds=1000,
                                    delta=1e-5)
    assert z == pytest.approx(1.513, rel=2e-3)


@pytest.mark.parametrize("target,q,rounds", [(1.0, 0.01, 1000), (8.0, 1.0, 20), (50.0, 1.0, 10)])
def test_noise_multiplier_for_target_round_trips(target: float, q: float, rounds: int) -> None:
    z = noise_multiplier_for_target(target_epsilon=target, sampling_rate=q, rounds=rounds,
                                    delta=1e-5)
    spent = epsilon(noise_multiplier=z, sampling_rate=q, rounds=rounds, delta=1e-5)
    assert spent <= target
    assert spent == pytest.approx(target, rel=0.01)
    slightly_less = epsilon(noise_multiplier=z * 0.99, sampling_rate=q, rounds=rounds,
                            delta=1e-5)
    assert slightly_less > target


def test_noise_multiplier_for_target_pld_round_trips() -> None:
    z = noise_multiplier_for_target(target_epsilon=10.0, sampling_rate=1.0, rounds=100,
                                    delta=1e-5, accountant="pld")
    spent = epsilon(noise_multiplier=z, sampling_rate=1.0, rounds=100, delta=1e-5,
                    accountant="pld")
    assert spent <= 10.0 and spent == pytest.approx(10.0, rel=0.01)


def test_noise_multiplier_for_target_unreachable_raises() -> None:
    with pytest.raises(UnreachableEpsilonError, match="target_epsilon=1e-05 is out of reach"):
        noise_multiplier_for_target(target_epsilon=1e-5, sampling_rate=1.0, rounds=10,
                                    delta=1e-5)


def test_noise_multiplier_for_target_bad_target_raises() -> None:
    with pytest.raises(PrivacyError, match="target_epsilon=0"):
        noise_multiplier_for_target(target_epsilon=0, sampling_rate=1.0, rounds=10, delta=1e-5)


# --------------------------------------------------------------------------- ledger

def test_ledger_after_each_round_matches_one_shot_epsilon() -> None:
    ledger = PrivacyLedger()
    for _ in range(25):
        ledger = ledger.record(noise_multiplier=1.0, sampling_rate=0.1)
    assert ledger.rounds == 25 and len(ledger.entries) == 1
    assert ledger.epsilon(delta=1e-5) == pytest.approx(
        epsilon(noise_multiplier=1.0, sampling_rate=0.1, rounds=25, delta=1e-5), rel=1e-9)


def test_ledger_is_immutable_state() -> None:
    empty = PrivacyLedger()
    one = empty.record(noise_multiplier=1.0, sampling_rate=1.0)
    assert empty.rounds == 0 and empty.epsilon(delta=1e-5) == 0.0
    assert one.rounds == 1


def test_ledger_mixed_rounds_match_composed_event() -> None:
    ledger = PrivacyLedger().record(noise_multiplier=2.0, sampling_rate=1.0, rounds=10) \
        .record(noise_multiplier=1.0, sampling_rate=0.5, rounds=5)
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_fedavg_event(noise_multiplier=2.0, sampling_rate=1.0, rounds=10))
    accountant.compose(dp_fedavg_event(noise_multiplier=1.0, sampling_rate=0.5, rounds=5))
    assert ledger.epsilon(delta=1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


def test_ledger_epsilon_grows_round_by_round() -> None:
    ledger, spent = PrivacyLedger(), []
    for _ in range(5):
        ledger = ledger.record(noise_multiplier=1.0, sampling_rate=0.5)
        spent.append(ledger.epsilon(delta=1e-5))
    assert np.all(np.diff(spent) > 0)


def test_ledger_noiseless_round_is_infinite() -> None:
    ledger = PrivacyLedger().record(noise_multiplier=1.0, sampling_rate=1.0) \
        .record(noise_multiplier=0.0, sampling_rate=1.0)
    assert ledger.epsilon(delta=1e-5) == math.inf


def test_ledger_round_trips_through_json() -> None:
    ledger = PrivacyLedger(accountant="pld").record(noise_multiplier=1.5, sampling_rate=0.2,
                                                    rounds=3)
    restored = PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored == ledger


def test_ledger_from_bad_dict_raises() -> None:
    with pytest.raises(PrivacyError, match="expected \\{'accountant'"):
        PrivacyLedger.from_dict({"entries": [[1.0]]})
