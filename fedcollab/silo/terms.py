"""What both ends of the cross-silo link compute the same way: the model's
architecture hash, the hash of a round's inbound (shared) weights, the secure
group's job id, participant names, and the round settings as protobuf.

Each side computes these from its own installed fedcollab and its own model, so a
coordinator cannot name a hash the vendor did not derive itself.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from fedcollab.secure.model import model_sha256
from fedcollab.silo.frames import secure_job_id  # re-exported: terms of the link

__all__ = ["architecture_sha256", "weights_architecture_sha256", "shared_indices",
           "shared_sha256", "secure_job_id", "site_name",
           "config_to_proto", "config_from_proto", "tensor_to_proto", "tensor_from_proto"]


def architecture_sha256(model_name: str, layers: Sequence[str],
                        shapes: Sequence[Sequence[int]], dtypes: Sequence[str]) -> str:
    """sha256 of the model's name and its layer manifest (per weight: layer, shape,
    dtype): what a vendor approves (``approved_models``)."""
    manifest = [[name, [int(d) for d in shape], str(dtype)]
                for name, shape, dtype in zip(layers, shapes, dtypes)]
    text = json.dumps({"model": model_name, "weights": manifest}, separators=(",", ":"),
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_architecture_sha256(model_name: str, layers: Sequence[str],
                                weights: Sequence[np.ndarray]) -> str:
    """:func:`architecture_sha256` of a model's weights (their shapes and dtypes)."""
    return architecture_sha256(model_name, layers, [w.shape for w in weights],
                               [str(w.dtype) for w in weights])


def shared_indices(spec: Any, pids: Collection[int], private_arrays: Mapping[int, Any],
                   count: int) -> list[int]:
    """The model's array indices that come into a silo each round and whose (masked)
    update leaves it: all ``count`` but the private layers (``private_arrays``: group
    index -> its private array indices) of the groups the silo hosts (any of ``pids``)."""
    from fedcollab.spec.roster import roster

    everyone = roster(spec)
    hosted = set(pids)
    private = {i for g, arrays in private_arrays.items()
               if hosted.intersection(everyone.group_range(g)) for i in arrays}
    return [i for i in range(count) if i not in private]


def shared_sha256(arrays: Sequence[tuple[str, np.ndarray]]) -> str:
    """sha256 over a round's inbound weights (layer name, shape, float32 bytes, in
    order): the global model a vendor contributes to at most once. The vendor
    recomputes it from what it received; the coordinator cannot name another. The
    same function (:func:`fedcollab.secure.model.model_sha256`) gives the model hash a
    secure share's associated data binds."""
    return model_sha256(arrays).hex()


def site_name(party: str, pid: int) -> str:
    """A roster member's name for a participant hosted by ``party``."""
    return f"{party}/{pid}"


_CONFIG_FIELDS = ("dp_mode", "clip_norm", "noise_multiplier", "noisy_participants",
                  "weight_scale", "clip_bit", "count_noise_std", "secure_clip",
                  "secure_norm_bound", "ddg_seed", "ddg_bits", "ddg_embed_bits")


def config_to_proto(config: Any) -> Any:
    """A :class:`~fedcollab.worker.messages.RoundConfig` as ``silo.proto``'s."""
    from fedcollab._proto.fedcollab.v1 import silo_pb2

    return silo_pb2.RoundConfig(**{k: getattr(config, k) for k in _CONFIG_FIELDS})


def config_from_proto(message: Any) -> Any:
    """``silo.proto``'s RoundConfig as the worker's (numbers, never code)."""
    from fedcollab.worker.messages import RoundConfig

    return RoundConfig(**{k: getattr(message, k) for k in _CONFIG_FIELDS})


def tensor_to_proto(layer: str, array: np.ndarray) -> Any:
    from fedcollab._proto.fedcollab.v1 import silo_pb2

    a = np.ascontiguousarray(array, dtype="<f4")
    return silo_pb2.Tensor(layer=layer, shape=list(a.shape), dtype="float32", data=a.tobytes())


def tensor_from_proto(message: Any, shape: Sequence[int]) -> np.ndarray:
    """A Tensor's array, checked against the shape the receiver expects.

    Raises:
        ValueError: another dtype, shape or byte count.
    """
    if message.dtype != "float32" or tuple(message.shape) != tuple(shape):
        raise ValueError(f"layer {message.layer}: {message.dtype}{list(message.shape)}, "
                         f"expected float32{list(shape)}")
    expected = int(np.prod(shape)) * 4
    if len(message.data) != expected:
        raise ValueError(f"layer {message.layer}: {len(message.data)} bytes, expected "
                         f"{expected}")
    return np.frombuffer(message.data, dtype="<f4").reshape(tuple(shape)).astype(np.float32)
