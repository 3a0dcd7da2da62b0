"""Tests for fedcollab.privacy.noise: std per mode, empirical noise, who adds what."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fedcollab.aggregation import global_norm
from fedcollab.privacy import (
    PrivacyError,
    add_central_noise,
    aggregate_noise_std,
    central_dp_mean,
    gaussian_noise_like,
    noise_std_for,
    privatize_update,
)


def test_gaussian_noise_like_empirical_std_matches() -> None:
    rng = np.random.default_rng(0)
    noise = gaussian_noise_like([np.zeros((200, 100)), np.zeros(50_000)], 0.7, rng)
    flat = np.concatenate([n.ravel() for n in noise])
    assert flat.std() == pytest.approx(0.7, rel=0.01)
    assert abs(flat.mean()) < 0.01


def test_gaussian_noise_like_seeded_is_reproducible_and_typed() -> None:
    weights = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32)]
    a = gaussian_noise_like(weights, 1.0, np.random.default_rng(5))
    b = gaussian_noise_like(weights, 1.0, np.random.default_rng(5))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert [x.dtype for x in a] == [np.float32, np.float32]
    assert [x.shape for x in a] == [(3, 2), (4,)]


def test_gaussian_noise_like_zero_std_is_zeros() -> None:
    noise = gaussian_noise_like([np.ones(3)], 0.0, np.random.default_rng(0))
    assert not noise[0].any()


def test_gaussian_noise_like_negative_std_raises() -> None:
    with pytest.raises(PrivacyError, match="std=-1"):
        gaussian_noise_like([np.ones(3)], -1, np.random.default_rng(0))


@pytest.mark.parametrize("mode,expected", [
    ("none", 0.0), ("central", 2.0), ("distributed", 1.0), ("local", 2.0)])
def test_noise_std_for_each_mode(mode: str, expected: float) -> None:
    # z = 1, C = 2, m = 4: distributed shares the z*C std over sqrt(4) adders.
    assert noise_std_for(mode, 1.0, 2.0, 4) == pytest.approx(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode,expected", [
    ("none", 0.0), ("central", 2.0), ("distributed", 2.0), ("local", 4.0)])
def test_aggregate_noise_std_each_mode(mode: str, expected: float) -> None:
    assert aggregate_noise_std(mode, 1.0, 2.0, 4) == pytest.approx(expected)  # type: ignore


def test_noise_std_for_unknown_mode_raises() -> None:
    with pytest.raises(PrivacyError, match="got 'global', expected one of none, central"):
        noise_std_for("global", 1.0, 1.0)  # type: ignore[arg-type]


def test_noise_std_for_bad_group_size_raises() -> None:
    with pytest.raises(PrivacyError, match="group_size=0"):
        noise_std_for("distributed", 1.0, 1.0, 0)


def test_privatize_update_distributed_sum_carries_full_noise() -> None:
    # m participants each add N(0, (zC)^2 / m); their sum has std zC (empirically).
    z, clip, m, size = 1.5, 0.5, 8, 20_000
    rng = np.random.default_rng(1)
    total = np.zeros(size)
    for _ in range(m):
        sent, _ = privatize_update([np.zeros(size)], mode="distributed", noise_multiplier=z,
                                   clip_norm=clip, group_size=m, rng=rng)
        total += sent[0]
    assert total.std() == pytest.approx(z * clip, rel=0.02)


def test_privatize_update_local_noise_std_is_z_times_c() -> None:
    sent, _ = privatize_update([np.zeros(50_000)], mode="local", noise_multiplier=2.0,
                               clip_norm=0.25, rng=np.random.default_rng(2))
    assert sent[0].std() == pytest.approx(0.5, rel=0.02)


def test_privatize_update_central_only_clips() -> None:
    sent, norm = privatize_update([np.array([3.0, 4.0])], mode="central", noise_multiplier=1.0,
                                  clip_norm=1.0, rng=np.random.default_rng(0))
    assert norm == 5.0
    np.testing.assert_allclose(sent[0], [0.6, 0.8])


def test_privatize_update_none_returns_copy_unclipped() -> None:
    update = [np.array([3.0, 4.0])]
    sent, norm = privatize_update(update, mode="none", noise_multiplier=0.0, clip_norm=1.0,
                                  rng=np.random.default_rng(0))
    np.testing.assert_array_equal(sent[0], update[0])
    assert sent[0] is not update[0] and norm == 5.0


def test_add_central_noise_empirical_std_is_z_times_c() -> None:
    noised = add_central_noise([np.full(50_000, 3.0)], noise_multiplier=0.8, clip_norm=2.0,
                               rng=np.random.default_rng(3))
    assert noised[0].std() == pytest.approx(1.6, rel=0.02)
    assert noised[0].mean() == pytest.approx(3.0, abs=0.03)


def test_central_dp_mean_zero_noise_is_mean_of_clipped() -> None:
    updates = [[np.array([3.0, 4.0])], [np.array([0.3, 0.4])]]
    result = central_dp_mean(updates, noise_multiplier=0.0, clip_norm=1.0,
                             rng=np.random.default_rng(0))
    np.testing.assert_allclose(result[0], [0.45, 0.6])


def test_central_dp_mean_noise_std_is_zc_over_denominator() -> None:
    updates = [[np.zeros(40_000)] for _ in range(4)]
    result = central_dp_mean(updates, noise_multiplier=1.0, clip_norm=2.0,
                             rng=np.random.default_rng(4), denominator=10)
    assert result[0].std() == pytest.approx(0.2, rel=0.02)


def test_central_dp_mean_one_participant_moves_result_at_most_c_over_n() -> None:
    # The sensitivity DP-FedAvg relies on: swapping one update changes the sum by <= C.
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    base = [[np.full(5, 0.1)] for _ in range(5)]
    changed = base[:4] + [[np.full(5, 1e6)]]
    a = central_dp_mean(base, noise_multiplier=1.0, clip_norm=1.0, rng=rng_a)
    b = central_dp_mean(changed, noise_multiplier=1.0, clip_norm=1.0, rng=rng_b)
    assert global_norm([a[0] - b[0]]) <= (1.0 + math.sqrt(5 * 0.01)) / 5 + 1e-12


def test_central_dp_mean_no_updates_raises() -> None:
    with pytest.raises(PrivacyError, match="got 0 updates"):
        central_dp_mean([], noise_multiplier=1.0, clip_norm=1.0, rng=np.random.default_rng(0))
