"""Tests for fedcollab.privacy.config.DpConfig."""
from __future__ import annotations

import dataclasses

import pytest

from fedcollab.privacy import DpConfig, DpConfigError, epsilon


def test_dp_config_defaults_are_off() -> None:
    config = DpConfig()
    assert config.mode == "none" and not config.enabled and config.delta == 1e-5


def test_dp_config_central_with_noise_multiplier_ok() -> None:
    config = DpConfig(mode="central", noise_multiplier=1.1, clip_norm=0.5)
    assert config.enabled
    assert config.resolve_noise_multiplier(sampling_rate=0.1, rounds=10) == 1.1


def test_dp_config_target_epsilon_resolves_to_meeting_noise() -> None:
    config = DpConfig(mode="distributed", target_epsilon=8.0)
    z = config.resolve_noise_multiplier(sampling_rate=1.0, rounds=20)
    assert epsilon(noise_multiplier=z, sampling_rate=1.0, rounds=20, delta=1e-5) <= 8.0


def test_dp_config_both_noise_and_target_raises() -> None:
    with pytest.raises(DpConfigError, match="noise_multiplier or target_epsilon, not both"):
        DpConfig(mode="central", noise_multiplier=1.0, target_epsilon=3.0)


def test_dp_config_mode_without_noise_raises() -> None:
    with pytest.raises(DpConfigError, match="mode 'local' needs noise_multiplier or "
                                            "target_epsilon"):
        DpConfig(mode="local")


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "global"}, r"privacy.dp.mode: got 'global', expected one of none"),
    ({"clip_norm": 0.0}, "privacy.dp.clip_norm: got 0.0, expected a number > 0"),
    ({"delta": 1.0}, r"privacy.dp.delta: got 1.0, expected a number in \(0, 1\)"),
    ({"noise_multiplier": -1.0}, "privacy.dp.noise_multiplier: got -1.0"),
    ({"target_epsilon": -2.0}, "privacy.dp.target_epsilon: got -2.0"),
    ({"target_quantile": 1.2}, "privacy.dp.target_quantile: got 1.2"),
    ({"clip_learning_rate": 0.0}, "privacy.dp.clip_learning_rate: got 0.0"),
    ({"adaptive_clipping": "yes"}, "privacy.dp.adaptive_clipping: got 'yes'"),
])
def test_dp_config_bad_values_raise_naming_field(kwargs: dict, match: str) -> None:
    with pytest.raises(DpConfigError, match=match):
        DpConfig(**kwargs)


def test_dp_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DpConfig().mode = "central"  # type: ignore[misc]


def test_dp_config_field_names_match_spec_dp_section() -> None:
    from fedcollab import spec

    assert [f.name for f in dataclasses.fields(DpConfig)] == \
        [f.name for f in dataclasses.fields(spec.DpSpec)]
