"""Shared helpers for the secure-aggregation tests (no fixtures with hidden state)."""
from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Optional, Sequence

import numpy as np

from fedcollab.secure import (
    LocalRound,
    SecAggParams,
    SecureParticipant,
    SecureServer,
    SecureSumResult,
)
from fedcollab.secure.driver import provision_identities
from fedcollab.secure.encoding import FixedPointCodec

FAST_PARAMS = dict(clip=4.0, scale_bits=20)


def make_group(n: int, params: SecAggParams, *, rng_seed: int = 0
               ) -> tuple[dict[int, SecureParticipant], SecureServer]:
    """``n`` participants with ids 0..n-1 and a server over them."""
    participants = {i: SecureParticipant(i, params) for i in range(n)}
    provision_identities(participants, rng_seed=rng_seed)
    return participants, SecureServer(list(participants), params, rng_seed=rng_seed)


def through_consistency(server: SecureServer, participants: Mapping[int, SecureParticipant],
                        round_id: int, requests: Mapping[int, bytes]) -> dict[int, bytes]:
    """After ``receive_masked_inputs``: run the consistency round if the model has one
    (malicious server) and return the unmask requests."""
    if not server.params.malicious:
        return dict(requests)
    return server.receive_consistency(
        {p: participants[p].confirm_survivors(round_id, requests[p]) for p in requests})


def make_vectors(ids: Sequence[int], dim: int, *, seed: int = 0, scale: float = 1.0
                 ) -> dict[int, np.ndarray]:
    """Uniform float vectors in ``[-scale, scale]``."""
    rng = np.random.default_rng(seed)
    return {i: rng.uniform(-scale, scale, dim) for i in ids}


def encoded_sum(codec: FixedPointCodec, vectors: Mapping[int, np.ndarray],
                ids: Sequence[int]) -> np.ndarray:
    """The exact ring sum of the encodings of ``vectors[ids]``."""
    total = np.zeros(len(next(iter(vectors.values()))), dtype=codec.dtype)
    for i in ids:
        total += codec.encode(vectors[i])
    return total


def clipped_sum(codec: FixedPointCodec, vectors: Mapping[int, np.ndarray],
                ids: Sequence[int]) -> np.ndarray:
    """The float sum of the clipped vectors (what the secure sum approximates)."""
    return sum(np.clip(vectors[i], -codec.clip, codec.clip) for i in ids)


def feasible(server: SecureServer, alive: set[int], answered: set[int]) -> bool:
    """Whether a first round with these survivors can be unmasked (mirrors the protocol).

    ``alive``: sent a masked input; ``answered``: also answered the unmask request.
    Every survivor needs ``t`` answering neighbours (self-mask seed); every dropped
    participant with a surviving neighbour needs ``t`` answering neighbours too.
    """
    graph = server.graph
    if len(alive) < server.params.min_group:
        return False
    for u, nbrs in graph.items():
        if u in alive or any(v in alive for v in nbrs):
            if sum(v in answered for v in nbrs) < server.threshold(u):
                return False
    return True


def chi_square_uniform_bytes(data: bytes) -> float:
    """Pearson's chi-square statistic of byte counts against the uniform distribution."""
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    expected = len(data) / 256
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_two_samples(a: bytes, b: bytes) -> float:
    """Chi-square homogeneity statistic of two equally long byte strings (255 dof)."""
    ca = np.bincount(np.frombuffer(a, dtype=np.uint8), minlength=256).astype(np.float64)
    cb = np.bincount(np.frombuffer(b, dtype=np.uint8), minlength=256).astype(np.float64)
    both = ca + cb
    return float(((ca - cb) ** 2 / np.where(both > 0, both, 1.0)).sum())


#: Chi-square critical value, 255 degrees of freedom, upper tail p = 1e-6 (so a
#: correct implementation fails a test about once in a million runs).
CHI2_255_P1E6 = 377.08


class _Intercepted(LocalRound):
    """A round whose upstream messages pass through ``intercept`` (a test's spy, a
    replaying or lossy network): it returns the bytes to deliver, or ``None``."""

    def __init__(self, participants: Mapping[int, SecureParticipant], params: SecAggParams,
                 intercept: Callable[[str, int, bytes], Optional[bytes]], **kwargs: Any) -> None:
        super().__init__(participants, params, **kwargs)
        self.intercept = intercept

    def _deliver(self, stage: str, pid: int, message: bytes) -> Optional[bytes]:
        return self.intercept(stage, pid, message)


def run_secure_round(participants: Mapping[int, SecureParticipant],
                     vectors: Mapping[int, np.ndarray], params: SecAggParams, round_id: int,
                     drop_after: Optional[Mapping[str, Collection[int]]] = None, *,
                     server: Optional[SecureServer] = None,
                     intercept: Optional[Callable[[str, int, bytes], Optional[bytes]]] = None,
                     rng_seed: Optional[int] = None) -> SecureSumResult:
    """:func:`fedcollab.secure.run_secure_round`, optionally with every upstream
    message passed through ``intercept`` first."""
    if intercept is None:
        return LocalRound(participants, params, server=server, rng_seed=rng_seed).run(
            round_id, vectors, drop_after)
    return _Intercepted(participants, params, intercept, server=server,
                        rng_seed=rng_seed).run(round_id, vectors, drop_after)
