"""The hash of a round's global model, as every secure member of the round computes it.

A share's associated data binds it (:func:`fedcollab.secure._wire.share_aad`), so a
server that hands two members of one round different models cannot get them to open
each other's shares. Each member hashes the weights *it received*, never a hash the
server names.

What is hashed is what every member receives: the model's arrays that no group of the
job keeps private (a vendor's private layers never leave its sites, so a vendor's
gateway never receives them), in model order, each as its Keras layer name, its shape
and its little-endian float32 bytes. For a vendor whose groups are the job's only ones
with private layers that is exactly the hash of the weights its gateway receives
(``fedcollab.silo.terms.shared_sha256``, the same function).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["model_sha256", "MODEL_HASH_BYTES"]

MODEL_HASH_BYTES = 32


def model_sha256(arrays: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """SHA-256 over ``(layer name, array)`` pairs: per array its layer name and shape
    (as text, e.g. ``dense(64, 32)``) then its float32 little-endian bytes, in order."""
    digest = hashlib.sha256()
    for layer, array in arrays:
        a = np.ascontiguousarray(array, dtype="<f4")
        digest.update(f"{layer}{a.shape}".encode())
        digest.update(a.data)
    return digest.digest()
