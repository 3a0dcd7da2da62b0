"""Tests for fedcollab.privacy.adaptive (Andrew et al. 2021)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fedcollab.privacy import (
    PrivacyError,
    adaptive_clip_step,
    default_count_noise_std,
    update_noise_multiplier,
)


def test_adaptive_clip_step_known_value_without_noise() -> None:
    # 3 of 4 norms <= C = 1: b_bar = 0.75; C' = exp(-0.2 * (0.75 - 0.5)).
    new = adaptive_clip_step(1.0, [0.5, 0.9, 1.0, 3.0], target_quantile=0.5,
                             learning_rate=0.2, count_noise_std=0.0,
                             rng=np.random.default_rng(0))
    assert new == pytest.approx(math.exp(-0.05))


@pytest.mark.parametrize("start", [0.01, 100.0])
def test_adaptive_clip_step_moves_clip_towards_target_quantile(start: float) -> None:
    rng = np.random.default_rng(0)
    norms_rng = np.random.default_rng(1)
    clip = start
    for _ in range(300):
        norms = norms_rng.lognormal(mean=0.0, sigma=0.5, size=50)   # median norm = 1
        clip = adaptive_clip_step(clip, norms, target_quantile=0.5, learning_rate=0.2,
                                  count_noise_std=50 / 20, rng=rng)
    assert clip == pytest.approx(1.0, rel=0.25)


def test_adaptive_clip_step_higher_quantile_gives_larger_clip() -> None:
    rng, norms_rng = np.random.default_rng(0), np.random.default_rng(1)
    clips = {}
    for quantile in (0.2, 0.8):
        clip = 1.0
        for _ in range(200):
            clip = adaptive_clip_step(clip, norms_rng.uniform(0, 2, size=40),
                                      target_quantile=quantile, learning_rate=0.2,
                                      count_noise_std=0.0, rng=rng)
        clips[quantile] = clip
    assert clips[0.2] == pytest.approx(0.4, rel=0.2)
    assert clips[0.8] == pytest.approx(1.6, rel=0.2)


def test_adaptive_clip_step_seeded_noise_is_reproducible() -> None:
    args = dict(target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    a = adaptive_clip_step(1.0, [0.5, 2.0], rng=np.random.default_rng(3), **args)
    b = adaptive_clip_step(1.0, [0.5, 2.0], rng=np.random.default_rng(3), **args)
    assert a == b


def test_adaptive_clip_step_no_norms_raises() -> None:
    with pytest.raises(PrivacyError, match="got 0 norms"):
        adaptive_clip_step(1.0, [], target_quantile=0.5, learning_rate=0.2,
                           count_noise_std=0.0, rng=np.random.default_rng(0))


@pytest.mark.parametrize("kwargs,match", [
    ({"target_quantile": 1.5}, "target_quantile=1.5"),
    ({"learning_rate": 0.0}, "learning_rate=0.0"),
    ({"count_noise_std": -1.0}, "count_noise_std=-1.0"),
])
def test_adaptive_clip_step_out_of_range_raises(kwargs: dict, match: str) -> None:
    args = {"target_quantile": 0.5, "learning_rate": 0.2, "count_noise_std": 0.0, **kwargs}
    with pytest.raises(PrivacyError, match=match):
        adaptive_clip_step(1.0, [1.0], rng=np.random.default_rng(0), **args)


def test_update_noise_multiplier_known_value() -> None:
    # z = 1, sigma_b = 5: z_delta = (1 - 1/100)^(-1/2)
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx((1 - 0.01) ** -0.5)


def test_update_noise_multiplier_count_noise_too_small_raises() -> None:
    with pytest.raises(PrivacyError, match="must exceed noise_multiplier / 2"):
        update_noise_multiplier(2.0, 1.0)


def test_default_count_noise_std_is_m_over_20() -> None:
    assert default_count_noise_std(100) == 5.0
