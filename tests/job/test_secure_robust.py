"""A secure group under a robust rule: what one member can do to the aggregate.

A robust rule cannot see a secure member's update, only the group's sum. Each member
caps its weight at one participant's share and clips its update to the rule's norm
bound before masking (:func:`fedcollab.worker.outgoing.outgoing`); the server refuses
a decoded sum that exceeds what that many bounded members can send
(:meth:`fedcollab.aggregation.Aggregator.check_secure`). The path below is the real
one minus the masks (which cancel exactly): each member's vector is encoded into the
ring, the encodings summed modulo the ring and decoded, as the server unmasks them.

The oracle: adding one member with weight ``w <= cap`` and update ``d`` with
``||d|| <= B`` to an aggregate ``a0 = (W r + S) / (W + C)`` gives
``a1 - a0 = w (d - a0) / (W + C + w)``, so ``||a1 - a0|| <= cap (B + ||a0||) / (W + C +
cap)``: one member's bounded share, whatever weight it declares.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.aggregation import Aggregator, SecureSum
from fedcollab.arrays import global_norm
from fedcollab.secure.encoding import FixedPointCodec
from fedcollab.secure.layout import secure_vector, split_secure_sum
from fedcollab.types import Update
from fedcollab.worker.messages import RoundConfig
from fedcollab.worker.outgoing import outgoing

SHAPES = [(4,), (2, 3)]
SCALE = 50.0        # the public bound on a participant's dataset size (weight_scale)
BOUND = 0.5         # aggregation.norm_bound: the rule's bound, open and secure alike
SCALE_BITS = 20


def _weights() -> list[np.ndarray]:
    return [np.zeros(s, np.float32) for s in SHAPES]


def _delta(rng: np.random.Generator, std: float) -> list[np.ndarray]:
    return [rng.normal(0.0, std, s).astype(np.float32) for s in SHAPES]


def _member_vector(delta: list[np.ndarray], samples: int, config: RoundConfig) -> np.ndarray:
    sent = outgoing(delta, pid=0, shared=[0, 1], shapes=SHAPES, num_samples=samples, loss=0.0,
                    sharing="secure", behaviour="honest", attack_scale=1.0, config=config,
                    rng=np.random.default_rng(0))
    assert sent.secure_vector is not None
    return sent.secure_vector


def _unmasked_sum(vectors: list[np.ndarray], *, checked: bool) -> SecureSum:
    """Encode each member's vector, add the encodings in the ring, decode the sum."""
    codec = FixedPointCodec(clip=8.0, scale_bits=SCALE_BITS, group_size=max(len(vectors), 1))
    total = np.zeros(len(vectors[0]), codec.dtype)
    for v in vectors:
        total += codec.encode(v)  # wraps modulo the ring, as the masked sum does
    parts = split_secure_sum(codec.decode_sum(total), SHAPES, scale=SCALE, clip_bit=False)
    return SecureSum(parts.arrays, parts.counts, members=len(vectors) if checked else 0,
                     weight_cap=SCALE, quantum=SCALE * 2.0 ** -SCALE_BITS)


def _open(rng: np.random.Generator, n: int) -> list[Update]:
    return [Update(100 + i, _delta(rng, 0.01), int(rng.integers(1, int(SCALE) + 1)), 0.0)
            for i in range(n)]


def _aggregate(open_updates: list[Update], secure: Optional[SecureSum],
               ) -> tuple[list[np.ndarray], str]:
    agg = Aggregator(SHAPES, rule="median", norm_bound=BOUND, max_samples=SCALE)
    step = agg.step(_weights(), open_updates, secure)
    return step.weights, step.secure_rejected


def _flat(ws: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in ws])


@settings(deadline=None, max_examples=120)
@given(seed=st.integers(0, 2**32 - 1), n_open=st.integers(3, 9), n_secure=st.integers(3, 6),
       inflate=st.sampled_from([1.0, 2.0, 8.0, 100.0]), push=st.floats(0.01, 1e3))
def test_one_secure_member_declaring_more_weight_moves_median_by_at_most_its_share(
        seed: int, n_open: int, n_secure: int, inflate: float, push: float) -> None:
    rng = np.random.default_rng(seed)
    config = RoundConfig(weight_scale=SCALE, secure_norm_bound=BOUND)
    open_updates = _open(rng, n_open)
    honest = [_member_vector(_delta(rng, 0.01), int(rng.integers(1, int(SCALE) + 1)), config)
              for _ in range(n_secure)]
    # the liar: a dataset size `inflate` times the public bound, an update pushed far out
    liar = _member_vector([np.full(s, push, np.float32) for s in SHAPES],
                          int(inflate * SCALE), config)

    base_sum = _unmasked_sum(honest, checked=True)
    before, why_before = _aggregate(open_updates, base_sum)
    after, why_after = _aggregate(open_updates, _unmasked_sum(honest + [liar], checked=True))

    assert why_before == "" and why_after == ""  # members that clip pass the server's check
    a0 = _flat(before)
    moved = float(np.linalg.norm(_flat(after) - a0))
    open_weight = sum(u.num_samples for u in open_updates)
    share = SCALE * (BOUND + float(np.linalg.norm(a0))) / (open_weight + base_sum.counts[0]
                                                            + SCALE)
    assert moved <= share + 1e-5


def test_secure_member_declaring_8x_weight_finding_reproduced_and_bounded() -> None:
    """Finding: with the secure sum added unfiltered, one member declaring 8x the
    weight scale moved a median aggregate from about -0.006 to +0.61."""
    rng = np.random.default_rng(7)
    open_updates = _open(rng, 8)
    deltas = [_delta(rng, 0.01) for _ in range(3)]
    push = [np.full(s, 1.0, np.float32) for s in SHAPES]
    honest_raw = [secure_vector(d, SHAPES, 20 / SCALE) for d in deltas]

    # before: no cap, no clip, no check (what a member could always send)
    unbounded = _unmasked_sum(honest_raw + [secure_vector(push, SHAPES, 8.0)], checked=False)
    old, _ = _aggregate(open_updates, unbounded)
    clean, _ = _aggregate(open_updates, _unmasked_sum(honest_raw, checked=False))
    assert abs(float(np.mean(_flat(clean)))) < 0.01 and float(np.mean(_flat(old))) > 0.5

    # now: the member's own code caps the weight and clips the update
    config = RoundConfig(weight_scale=SCALE, secure_norm_bound=BOUND)
    honest = [_member_vector(d, 20, config) for d in deltas]
    liar = _member_vector(push, int(8 * SCALE), config)
    new, why = _aggregate(open_updates, _unmasked_sum(honest + [liar], checked=True))
    base = _flat(clean)
    share = SCALE * (BOUND + float(np.linalg.norm(base))) / (
        sum(u.num_samples for u in open_updates) + 3 * 20 + SCALE)
    assert why == "" and float(np.linalg.norm(_flat(new) - base)) <= share + 1e-5
    assert float(np.max(np.abs(_flat(new)))) < 0.1


@pytest.mark.parametrize("weight, scale, kind", [(8.0, 0.01, "weight"), (1.0, 100.0, "norm"),
                                                 (-5.0, 0.01, "weight")])
def test_secure_sum_beyond_what_bounded_members_can_send_is_left_out(
        weight: float, scale: float, kind: str) -> None:
    """A member that bypasses its own cap or clip (writes its vector itself) breaks the
    bound for the whole sum: the server cannot tell who, so the sum is left out and
    the round goes on with the open updates."""
    rng = np.random.default_rng(3)
    open_updates = _open(rng, 5)
    config = RoundConfig(weight_scale=SCALE, secure_norm_bound=BOUND)
    honest = [_member_vector(_delta(rng, 0.01), 30, config) for _ in range(3)]
    rogue = secure_vector([np.full(s, scale, np.float32) for s in SHAPES], SHAPES, weight)
    got, why = _aggregate(open_updates, _unmasked_sum(honest + [rogue], checked=True))
    open_only, _ = _aggregate(open_updates, None)
    assert why.startswith(f"{kind}:") and "member" in why
    np.testing.assert_array_equal(_flat(got), _flat(open_only))


def test_secure_member_weight_capped_and_update_clipped_before_masking() -> None:
    config = RoundConfig(weight_scale=SCALE, secure_norm_bound=BOUND)
    vector = _member_vector([np.full(s, 3.0, np.float32) for s in SHAPES], int(8 * SCALE),
                            config)
    size = sum(math.prod(s) for s in SHAPES)
    assert vector[size:size + 2].tolist() == [1.0, 1.0]  # weight: one share, not 8
    assert global_norm([vector[:size]]) == pytest.approx(BOUND, rel=1e-6)
    plain = RoundConfig(weight_scale=SCALE)  # fedavg: no norm bound
    unclipped = _member_vector([np.full(s, 3.0, np.float32) for s in SHAPES], 25, plain)
    assert unclipped[0] == pytest.approx(1.5) and unclipped[size] == pytest.approx(0.5)
