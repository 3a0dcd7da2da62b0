"""Expand 32-byte seeds into uniform mask vectors over Z_(2^32) / Z_(2^64).

The PRG is AES-256 in counter mode, from ``cryptography`` (``Cipher(algorithms.AES
(seed), modes.CTR(FIRST_COUNTER))``, AES-NI on every modern CPU): the seed is the
key, the initial counter block is all zeros, and the mask is the keystream (the
encryption of zeros), read with ``np.frombuffer``: no Python loop over elements.
Each seed is used for exactly one keystream (self-mask seeds are fresh per round,
pairwise seeds are HKDF-Expand outputs bound to the round), so key/counter pairs
never repeat across different masks, and a vector of ``dim`` elements uses far
fewer than the 2^128 counter blocks one key allows.

(An earlier version took the same keystream through AES-GCM with an all-zero
nonce, a trick that saved Python call overhead; the explicit CTR mode is the
textbook construction and ``scripts/bench`` shows the difference is small.)

Security assumption: AES-256 is a PRF, so a mask is computationally
indistinguishable from uniform to anyone without the seed, and the masked vector
``x + mask (mod 2^bits)`` is then uniform whatever ``x`` is.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SEED_BYTES", "FIRST_COUNTER", "keystream", "expand", "accumulate_masks"]

#: Bytes in a mask seed (an AES-256 key).
SEED_BYTES = 32
#: The initial 128-bit counter block of every mask keystream.
FIRST_COUNTER = bytes(16)
_CTR = modes.CTR(FIRST_COUNTER)
#: Keystream bytes :func:`accumulate_masks` holds at once (rows of one buffer).
_BATCH_BYTES = 1 << 20


def keystream(seed: bytes, nbytes: int, zeros: bytes | None = None, *,
              counter: bytes = FIRST_COUNTER) -> bytes:
    """``nbytes`` of the AES-256-CTR keystream of ``seed`` from ``counter``.

    Args:
        seed: The 32-byte AES-256 key.
        nbytes: Keystream length.
        zeros: A reusable ``bytes(nbytes)`` (saves an allocation per call).
        counter: Initial counter block (known-answer tests only; masks use the default).

    Raises:
        ValueError: A seed that is not 32 bytes.
    """
    if zeros is None or len(zeros) != nbytes:
        zeros = bytes(nbytes)
    return _encryptor(seed, _CTR if counter == FIRST_COUNTER else modes.CTR(counter)
                      ).update(zeros)


def _encryptor(seed: bytes, mode: modes.CTR = _CTR) -> Any:
    """AES-256-CTR under ``seed`` (checked: 32 bytes), whose output is the keystream."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    return Cipher(algorithms.AES(seed), mode).encryptor()


def expand(seed: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """Expand ``seed`` into ``length`` uniform ring elements of unsigned ``dtype``."""
    dt = np.dtype(dtype)
    return np.frombuffer(keystream(seed, length * dt.itemsize), dtype=dt, count=length)


def accumulate_masks(
    acc: np.ndarray, plus: Iterable[bytes], minus: Iterable[bytes] = ()
) -> np.ndarray:
    """Add ``PRG(s)`` for seeds in ``plus`` and subtract it for ``minus``, in place.

    Arithmetic wraps modulo ``2**bits`` of ``acc``'s unsigned dtype. The keystreams
    are written straight into rows of one buffer (``update_into``: no bytes object
    per mask) and each side is summed in one reduction, not one add per seed; the
    buffer holds at most about ``_BATCH_BYTES`` of keystream (rows are summed batch
    by batch), whatever the neighbourhood and the vector size.

    Args:
        acc: Unsigned 1-D accumulator, modified in place.
        plus: Seeds whose masks are added.
        minus: Seeds whose masks are subtracted.

    Returns:
        ``acc``.

    Raises:
        ValueError: A seed that is not 32 bytes.
    """
    nbytes = acc.size * acc.dtype.itemsize
    if nbytes == 0:
        return acc
    sides = ((list(plus), np.add), (list(minus), np.subtract))
    rows = max(1, min(_BATCH_BYTES // nbytes, max(len(seeds) for seeds, _ in sides)))
    zeros = bytes(nbytes)
    # a block's worth of slack after the last row: update_into may ask for it
    flat = np.empty(rows * nbytes + 16, dtype=np.uint8)
    table = flat[:rows * nbytes].view(acc.dtype).reshape(rows, acc.size)
    out = flat.data  # a writable memoryview of the bytes
    for seeds, op in sides:
        for start in range(0, len(seeds), rows):
            batch = seeds[start:start + rows]
            for i, seed in enumerate(batch):
                _encryptor(seed).update_into(zeros, out[i * nbytes:])
            op(acc, table[:len(batch)].sum(axis=0, dtype=acc.dtype), out=acc)
    return acc
