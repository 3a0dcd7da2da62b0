"""Expand 32-byte seeds into uniform mask vectors over Z_(2^32) / Z_(2^64).

The PRG is the AES-256-CTR keystream of ``cryptography`` (AES-NI on every modern
CPU): the seed is the key, the counter block starts at zero. Each seed is used for
exactly one keystream per round (self-mask seeds are fresh per round, pairwise
seeds are HKDF outputs salted with the round id), so key/counter pairs never repeat
across different masks. One keystream call per seed, read with ``np.frombuffer``:
no Python loop over elements.

Security assumption: AES-256 is a PRF, so a mask is computationally
indistinguishable from uniform to anyone without the seed, and the masked vector
``x + mask (mod 2^bits)`` is then uniform whatever ``x`` is.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SEED_BYTES", "expand", "accumulate_masks"]

#: Bytes in a mask seed (an AES-256 key).
SEED_BYTES = 32
_ZERO_COUNTER = bytes(16)


def _keystream(seed: bytes, nbytes: int) -> bytes:
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    return encryptor.update(bytes(nbytes))


def expand(seed: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """Expand ``seed`` into ``length`` uniform ring elements of unsigned ``dtype``."""
    dt = np.dtype(dtype)
    return np.frombuffer(_keystream(seed, length * dt.itemsize), dtype=dt)


def accumulate_masks(
    acc: np.ndarray, plus: Iterable[bytes], minus: Iterable[bytes] = ()
) -> np.ndarray:
    """Add ``PRG(s)`` for seeds in ``plus`` and subtract it for ``minus``, in place.

    Arithmetic wraps modulo ``2**bits`` of ``acc``'s unsigned dtype.

    Args:
        acc: Unsigned 1-D accumulator, modified in place.
        plus: Seeds whose masks are added.
        minus: Seeds whose masks are subtracted.

    Returns:
        ``acc``.
    """
    nbytes = acc.size * acc.dtype.itemsize
    zeros = bytes(nbytes)
    buf = bytearray(nbytes + 15)  # update_into wants block_size - 1 bytes of slack
    stream = np.frombuffer(buf, dtype=acc.dtype, count=acc.size)
    for seeds, op in ((plus, np.add), (minus, np.subtract)):
        for seed in seeds:
            if len(seed) != SEED_BYTES:
                raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
            Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor().update_into(
                zeros, buf)
            op(acc, stream, out=acc)
    return acc
