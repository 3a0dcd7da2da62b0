"""What both ends of the link compute the same way (fedcollab.silo.terms)."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.silo.terms import (
    architecture_sha256,
    config_from_proto,
    config_to_proto,
    secure_job_id,
    shared_sha256,
    tensor_from_proto,
    tensor_to_proto,
)
from fedcollab.worker.messages import RoundConfig


def test_architecture_hash_names_model_layers_shapes_and_dtypes() -> None:
    base = architecture_sha256("mlp", ["hidden", "hidden", "head", "head"],
                               [(64, 64), (64,), (64, 10), (10,)], ["float32"] * 4)

    assert base == architecture_sha256("mlp", ["hidden", "hidden", "head", "head"],
                                       [[64, 64], [64], [64, 10], [10]], ["float32"] * 4)
    assert base != architecture_sha256("cnn", ["hidden", "hidden", "head", "head"],
                                       [(64, 64), (64,), (64, 10), (10,)], ["float32"] * 4)
    assert base != architecture_sha256("mlp", ["hidden", "hidden", "out", "out"],
                                       [(64, 64), (64,), (64, 10), (10,)], ["float32"] * 4)
    assert base != architecture_sha256("mlp", ["hidden", "hidden", "head", "head"],
                                       [(64, 64), (64,), (64, 9), (9,)], ["float32"] * 4)


def test_shared_hash_changes_with_any_bit_of_the_weights() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = a.copy()
    b.view(np.uint32)[1, 2] ^= 1

    assert shared_sha256([("hidden", a)]) == shared_sha256([("hidden", a.copy())])
    assert shared_sha256([("hidden", a)]) != shared_sha256([("hidden", b)])
    assert shared_sha256([("hidden", a)]) != shared_sha256([("other", a)])


def test_tensor_round_trips_and_refuses_another_shape_or_length() -> None:
    a = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    message = tensor_to_proto("hidden", a)

    assert np.array_equal(tensor_from_proto(message, (3, 4)), a)
    with pytest.raises(ValueError, match="expected float32"):
        tensor_from_proto(message, (4, 3))
    message.data = message.data[:-4]
    with pytest.raises(ValueError, match="bytes, expected 48"):
        tensor_from_proto(message, (3, 4))


def test_round_config_crosses_field_for_field() -> None:
    config = RoundConfig(dp_mode="distributed", clip_norm=0.5, noise_multiplier=1.2,
                         noisy_participants=3, weight_scale=120.0, clip_bit=True,
                         count_noise_std=2.0, secure_clip=3.0, secure_norm_bound=1.5,
                         ddg_seed=2**40 + 3, ddg_bits=20, ddg_embed_bits=8)

    assert config_from_proto(config_to_proto(config)) == config


def test_secure_job_id_is_derived_from_the_job_id() -> None:
    assert secure_job_id("job-1") == secure_job_id("job-1")
    assert secure_job_id("job-1") != secure_job_id("job-2") and len(secure_job_id("x")) == 16
