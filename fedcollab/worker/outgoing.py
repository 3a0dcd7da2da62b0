"""What leaves a participant each round, decided by one pure function.

After local training a participant holds ``delta = w_local - w_global`` over the
arrays it shares. :func:`outgoing` turns that into what the server receives:

* a simulated attacker (a group's ``behaviour``) sends its attack instead, chosen
  from the :data:`ATTACKS` registry (an unknown kind raises);
* a probe (a behaviour of the :data:`PROBES` registry: the grader's canary clients)
  replaces its update and then goes the honest way, clipped, noised and masked like
  anyone's, so what the mechanism does to it is what it does to a real participant;
* an honest participant under DP clips (and, in distributed or local mode, noises)
  its own update before it leaves, so the server never sees it unclipped;
* an ``open`` participant's update goes out in the clear as an :class:`Update`;
* a ``secure`` participant's update becomes the vector it masks
  (:func:`secure_vector`); the server only ever learns the sum of those vectors.
  Under the distributed discrete Gaussian that vector is integers: the member's
  share of the mechanism (:func:`ddg_vector`).

Nothing here touches Ray, TensorFlow or the network; randomness (DP noise) comes in
as an argument.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional

import numpy as np

from fedcollab.errors import FedcollabError
from fedcollab.spec.roster import policy
from fedcollab.types import ParticipantId, Update
from fedcollab.worker.messages import RoundConfig

__all__ = ["RoundConfig", "Outgoing", "ATTACKS", "BEHAVIOURS", "UnknownAttackError",
           "attack", "outgoing", "ddg_vector", "PROBES", "Probe", "canary_direction",
           "CANARY"]


# ----------------------------------------------------------------------------- attacks

Attack = Callable[[list[np.ndarray], float], list[np.ndarray]]


def _sign_flip(raw: list[np.ndarray], scale: float) -> list[np.ndarray]:
    return [-scale * d for d in raw]


def _scale(raw: list[np.ndarray], scale: float) -> list[np.ndarray]:
    return [scale * d for d in raw]


def _nan(raw: list[np.ndarray], scale: float) -> list[np.ndarray]:
    return [np.full_like(d, np.nan) for d in raw]


def _wrong_shape(raw: list[np.ndarray], scale: float) -> list[np.ndarray]:
    return [np.zeros(d.size + 1, dtype=d.dtype) for d in raw]


def _huge_norm(raw: list[np.ndarray], scale: float) -> list[np.ndarray]:
    return [1e6 * d for d in raw]


def _zero(raw: list[np.ndarray], scale: float) -> list[np.ndarray]:
    return [np.zeros_like(d) for d in raw]


#: Simulated misbehaviour by name (the spec's ``behaviour``): ``f(update, attack_scale)``.
ATTACKS: Mapping[str, Attack] = MappingProxyType({
    "sign_flip": _sign_flip,    # -scale x update
    "scale": _scale,            # scale x update (model replacement, boosted)
    "nan": _nan,                # every coordinate NaN
    "wrong_shape": _wrong_shape,  # arrays one element too long
    "huge_norm": _huge_norm,    # 1e6 x update
    "zero": _zero,              # a free rider: no change
})


# ----------------------------------------------------------------------------- probes

#: A probe's update: ``f(raw, pid, seed, clip_norm) -> what it sends`` before the honest
#: path (clipping, DP noise, masking) takes over.
Probe = Callable[[list[np.ndarray], int, int, float], list[np.ndarray]]

CANARY = "canary"
_CANARY_STREAM = 0xCA7A


def canary_direction(seed: int, index: int, shapes: Sequence[tuple[int, ...]], *,
                     held_out: bool = False) -> list[np.ndarray]:
    """Canary ``index``'s fixed random unit direction over arrays of ``shapes``
    (isotropic: a normal vector over its norm), from the job seed.

    Inserted canaries are indexed by participant id; held-out ones (``held_out``, the
    grader's, never sent) by their own count, from a separate stream, so the two never
    coincide. Andrew et al., "One-shot Empirical Privacy Estimation for Federated
    Learning" (ICLR 2024): in high dimension such directions are nearly orthogonal to
    each other and to anything the model learns.
    """
    rng = np.random.default_rng([int(seed), _CANARY_STREAM, int(held_out), int(index)])
    sizes = [int(np.prod(s)) for s in shapes]
    flat = rng.standard_normal(sum(sizes))
    flat /= np.linalg.norm(flat)
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[start:start + size].reshape(shape).astype(np.float32))
        start += size
    return out


def _canary(raw: list[np.ndarray], pid: int, seed: int, clip_norm: float) -> list[np.ndarray]:
    # the most one clipped participant can send: its direction at the clip norm
    return [clip_norm * d for d in canary_direction(seed, pid, [r.shape for r in raw])]


#: Behaviours that replace a participant's update and then go the honest way (clip,
#: noise, mask): ``canary`` sends :func:`canary_direction` at the clip norm each round
#: it is sampled. A probe trains nothing and holds no data (the spec's roster gives its
#: group none, :data:`fedcollab.spec.roster.DATALESS_BEHAVIOURS`).
PROBES: Mapping[str, Probe] = MappingProxyType({
    CANARY: _canary,
})

#: Every value of a group's ``behaviour``: honest, one of :data:`ATTACKS` or of
#: :data:`PROBES`.
BEHAVIOURS: tuple[str, ...] = ("honest", *ATTACKS, *PROBES)


class UnknownAttackError(FedcollabError):
    """A ``behaviour`` that is not in :data:`ATTACKS`."""

    exit_code = 2


def attack(kind: str, update: list[np.ndarray], scale: float) -> list[np.ndarray]:
    """What a participant behaving as ``kind`` sends instead of ``update``.

    Raises:
        UnknownAttackError: ``kind`` is not a key of :data:`ATTACKS`.
    """
    try:
        fn = ATTACKS[kind]
    except KeyError:
        raise UnknownAttackError(f"behaviour: got {kind!r}, expected one of "
                                 f"{', '.join(repr(b) for b in BEHAVIOURS)}") from None
    return fn(update, scale)


# ----------------------------------------------------------------------------- the decision

@dataclass(frozen=True)
class Outgoing:
    """What one participant sends: an open update, or the vector it will mask."""

    update: Optional[Update] = None
    secure_vector: Optional[np.ndarray] = None


_DDG = "distributed_discrete_gaussian"


def ddg_vector(delta: Sequence[Optional[np.ndarray]], shapes: Sequence[tuple[int, ...]],
               config: RoundConfig, rng: np.random.Generator) -> np.ndarray:
    """A secure member's vector under the distributed discrete Gaussian: its share
    (clipped, rotated, rounded, noised, modulo ``2**ddg_bits``;
    :func:`fedcollab.privacy.ddg.encode`), then one count per array (1 if shared),
    as integers divided by ``2**ddg_embed_bits`` so the fixed-point codec puts exactly
    these integers into the ring. A non-finite update gives a NaN vector, which the
    codec refuses as it refuses any other."""
    from fedcollab.privacy.ddg import encode, plan

    dim = sum(int(np.prod(s)) for s in shapes)
    the_plan = plan(noise_multiplier=config.noise_multiplier, clip_norm=config.clip_norm,
                    members=max(config.noisy_participants, 1), dim=dim,
                    modulus_bits=config.ddg_bits)
    counts = np.array([0 if d is None else 1 for d in delta], dtype=np.int64)
    if not all(d is None or np.all(np.isfinite(d)) for d in delta):
        return np.full(the_plan.padded + counts.size, np.nan)
    share = encode(delta, shapes, the_plan, seed=config.ddg_seed, rng=rng)
    return np.concatenate([share, counts]).astype(np.float64) / 2.0 ** config.ddg_embed_bits


def _privatize(raw: list[np.ndarray], config: RoundConfig, rng: np.random.Generator, *,
               sharing: str) -> list[np.ndarray]:
    from fedcollab.privacy import privatize_update

    # Distributed noise hides a participant only inside the secure sum; an open
    # update reaches the server alone, so an open participant adds the full z*C.
    mode = "local" if config.dp_mode in ("distributed", _DDG) \
        and not policy(sharing).in_secure_sum else config.dp_mode
    sent, _ = privatize_update(raw, mode=mode,  # type: ignore[arg-type]
                               noise_multiplier=config.noise_multiplier,
                               clip_norm=config.clip_norm, rng=rng,
                               group_size=max(config.noisy_participants, 1))
    return [np.asarray(a, dtype=np.float32) for a in sent]


def outgoing(raw: Sequence[np.ndarray], *, pid: ParticipantId, shared: Sequence[int],
             shapes: Sequence[tuple[int, ...]], num_samples: int, loss: float, sharing: str,
             behaviour: str, attack_scale: float, config: RoundConfig,
             rng: np.random.Generator, seed: int = 0) -> Outgoing:
    """Turn a participant's raw update into what leaves it this round.

    Args:
        raw: ``w_local - w_global`` (float32) for each shared array, in model order.
        pid: The participant.
        shared: The model indices of ``raw``'s arrays (the rest are private).
        shapes: Every model array's shape (shared or not).
        num_samples: The participant's training examples.
        loss: Its training loss this round.
        sharing: A :class:`~fedcollab.spec.roster.Sharing` word; its policy decides.
        behaviour: ``honest`` or a key of :data:`ATTACKS` or :data:`PROBES`.
        attack_scale: The attack's strength (``sign_flip``, ``scale``).
        config: The round's settings from the server (DP mode, C, z, ...).
        rng: Fresh randomness for DP noise (OS entropy: the server must not predict it).
        seed: The job seed (a probe's fixed direction is drawn from it).

    Returns:
        An :class:`Outgoing` with ``update`` (in the clear) or ``secure_vector`` (into
        the secure sum).

    Raises:
        UnknownAttackError: An unknown ``behaviour``.
    """
    sent = list(raw)
    norm = float(np.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in sent)))
    if behaviour in PROBES:
        sent = PROBES[behaviour](sent, pid, seed, config.clip_norm)
        norm = config.clip_norm
    if behaviour != "honest" and behaviour not in PROBES:
        sent = attack(behaviour, sent, attack_scale)
    elif config.dp_on:
        sent = _privatize(sent, config, rng, sharing=sharing)
    delta: list[Optional[np.ndarray]] = [None] * len(shapes)
    for i, d in zip(shared, sent):
        delta[i] = d
    fits = norm <= config.clip_norm
    if policy(sharing).in_clear:
        if config.dp_on:  # under DP the server learns no norm or loss, only the clip bit
            bit: Optional[float] = fits if config.clip_bit else None
            if bit is not None and config.count_noise_std > 0:
                # an untrusted server (distributed, local) reads this bit alone: it
                # carries the count query's whole noise, as the update carries z*C
                bit = float(fits) + float(rng.normal(0.0, config.count_noise_std))
            return Outgoing(update=Update(pid, delta, num_samples, 0.0, 0.0, clip_bit=bit))
        return Outgoing(update=Update(pid, delta, num_samples, loss, norm))
    if config.dp_mode == _DDG:
        # every member's update, an attacker's too, is clipped to C and noised in its
        # worker (the DDG's own clip: no weight, so no weight cap or norm bound here)
        return Outgoing(secure_vector=ddg_vector(delta, shapes, config, rng))
    # A robust rule sees only the secure sum, so the member bounds its own part of
    # it: at most one participant's share of weight (weight_scale bounds a dataset's
    # size; the server checks the summed weights) and, under a robust rule, the
    # rule's norm bound
    weight = 1.0 if config.dp_on else min(num_samples / config.weight_scale, 1.0)
    if config.secure_norm_bound > 0:
        from fedcollab.privacy.clipping import clip_update

        clipped, _ = clip_update(sent, config.secure_norm_bound)
        for i, d in zip(shared, clipped):
            delta[i] = d
    from fedcollab.secure.layout import secure_vector  # a secure member's worker loads it

    vector = secure_vector(delta, shapes, weight, clip_bit=fits if config.clip_bit else None,
                           secure_clip=0.0 if config.dp_on else config.secure_clip)
    if config.clip_bit and config.count_noise_std > 0:
        # the summed bits carry their own noise, so the server never learns the exact
        # number of clipped members: split over the members (distributed DP), or whole
        # on each member's bit (local DP)
        share = 1 if config.dp_mode == "local" else max(config.noisy_participants, 1)
        vector[-1] += rng.normal(0.0, config.count_noise_std / np.sqrt(share))
    return Outgoing(secure_vector=vector)
