"""Aggregation-only cost of one secure round (called by ``scripts/bench``).

``python scripts/secure_cost.py`` prints a small table.
"""
from __future__ import annotations

import dataclasses
import math
import random
import statistics

import numpy as np

from fedcollab.secure.driver import provision_identities, run_secure_round
from fedcollab.secure.params import SecAggParams
from fedcollab.secure.participant import SecureParticipant
from fedcollab.secure.server import SecureServer

__all__ = ["aggregation_cost", "signature_cost"]


def aggregation_cost(
    n: int,
    dim: int,
    protocol: str,
    dropout: float = 0.0,
    repeats: int = 3,
    *,
    amortise_keys: bool = True,
    expected_dropout: float | None = None,
    seed: int = 0,
    server: str = "honest_but_curious",
    key_rotation_rounds: int | None = 10,
) -> float:
    """Median seconds of one round's secure-aggregation compute, all parties summed.

    One group per call: a warm-up round (key setup), then ``repeats`` timed rounds.
    A timed round counts every participant's compute (key setup if any, masking,
    unmasking) plus the server's (routing, reconstruction, unmasking). In it
    ``round(dropout * n)`` random participants drop after key setup, before sending
    their masked input; an untimed round without dropouts then lets them rejoin with
    fresh keys, so every timed round starts from the same steady state.

    Args:
        n: Participants in the secure group.
        dim: Vector length (update + weight coordinate), e.g. 4811.
        protocol: ``"secagg"`` or ``"secaggplus"``.
        dropout: Fraction that drops before masked input in each timed round.
        repeats: Timed rounds; the median is returned.
        amortise_keys: Amortised keys (the default) or fresh keys every round.
        expected_dropout: What the SecAgg+ degree is sized for (``None``: the default);
            measure a dropout rate with a graph sized for at least that rate.
        seed: Seed for vectors, dropout choice and the graph (not for secrets).
        server: Server model (``"honest_but_curious"`` or ``"malicious"``).
        key_rotation_rounds: Forward-secrecy window (the timed rounds stay inside it
            unless it is shorter than ``repeats``).
    """
    params = SecAggParams(protocol=protocol, amortise_keys=amortise_keys, server=server,
                          key_rotation_rounds=key_rotation_rounds)
    if expected_dropout is not None:
        params = dataclasses.replace(params, expected_dropout=expected_dropout)
    rng = np.random.default_rng(seed)
    vectors = {i: rng.uniform(-1.0, 1.0, dim) for i in range(n)}
    picker = random.Random(f"dropouts-{seed}")  # independent of the graph's shuffle
    participants = {i: SecureParticipant(i, params) for i in range(n)}
    provision_identities(participants, rng_seed=seed)  # the graph seed the server uses
    group = SecureServer(list(participants), params, rng_seed=seed)
    run_secure_round(participants, vectors, params, 0, server=group)
    round_id, times = 1, []
    for _ in range(repeats):
        dropped = set(picker.sample(range(n), round(dropout * n)))
        result = run_secure_round(participants, vectors, params, round_id,
                                  {"share_keys": dropped}, server=group)
        times.append(sum(result.seconds.values()) + sum(result.participant_seconds.values()))
        round_id += 1
        if dropped:
            run_secure_round(participants, vectors, params, round_id, server=group)
            round_id += 1
    return statistics.median(times)


def signature_cost(degree: int, threshold: int, *, rotation_rounds: int | None = 10,
                   repeats: int = 200) -> dict[str, float]:
    """Per-participant milliseconds of the malicious-server model's authentication.

    Times the real calls: at key setup one Ed25519 advert signature and ``degree``
    verifications (every neighbour's new keys); every round ``degree`` HMAC
    confirmations of the survivor set and ``threshold`` checks (plus the set's digest).
    ``per_round_ms`` spreads key setup over ``rotation_rounds`` rounds.
    """
    import time

    from fedcollab.secure import identity as ID
    from fedcollab.secure import keys as K

    key = ID.generate_identity()
    pub = key.public_key()
    c_pk = s_pk = bytes(32)
    sig = ID.sign_advert(key, 1, 0, c_pk, s_pk)
    mac_key = bytes(range(32))
    survivors = list(range(100))

    def best(fn: object, n: int) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()  # type: ignore[operator]
            times.append((time.perf_counter() - t0) / n)
        return min(times) * 1e3

    sign_ms = best(lambda: ID.sign_advert(key, 1, 0, c_pk, s_pk), repeats)
    verify_ms = best(lambda: ID.verify_advert(pub, sig, 1, 0, c_pk, s_pk), repeats)
    digest_ms = best(lambda: K.survivors_digest(3, survivors), repeats)
    digest = K.survivors_digest(3, survivors)
    mac_ms = best(lambda: K.confirm_tag(mac_key, 1, 2, digest), repeats)
    setup = sign_ms + degree * verify_ms
    per_round = 2 * digest_ms + (degree + threshold) * mac_ms
    return {"ed25519_sign_ms": sign_ms, "ed25519_verify_ms": verify_ms, "hmac_ms": mac_ms,
            "key_setup_ms": setup, "consistency_ms": per_round,
            "per_round_ms": per_round + setup / (rotation_rounds or 1)}


def _main() -> None:
    dim = 4811
    for protocol in ("secaggplus", "secagg"):
        costs = []
        for n in (50, 100, 200, 400):
            base = aggregation_cost(n, dim, protocol, 0.0, 3, expected_dropout=0.1)
            drop = aggregation_cost(n, dim, protocol, 0.1, 3, expected_dropout=0.1)
            costs.append(base)
            print(f"{protocol:10s} n={n:3d}  {base * 1e3:8.1f} ms  ({base / n * 1e3:.3f} ms per "
                  f"participant)  10% dropout {drop * 1e3:8.1f} ms  ratio {drop / base:.2f}",
                  flush=True)
        exponent = math.log(costs[-1] / costs[0]) / math.log(400 / 50)
        print(f"{protocol}: fitted exponent n^{exponent:.2f}")
    fresh = aggregation_cost(100, dim, "secaggplus", 0.0, 3, amortise_keys=False)
    print(f"secaggplus n=100 fresh keys every round: {fresh * 1e3:.1f} ms "
          f"({fresh / 100 * 1e3:.3f} ms per participant)")


if __name__ == "__main__":
    _main()
