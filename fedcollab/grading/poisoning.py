"""Backdoor and Byzantine experiments as a small in-process federated simulation.

The server's rules are fedcollab's own (:func:`fedcollab.aggregation.aggregate`,
:func:`fedcollab.privacy.central_dp_mean`) and local training is the same
:class:`fedcollab.worker.training.LocalTrainer` the workers run, so what is measured is the
rules' real behaviour on the task's real data, without Ray. Every participant is
treated as open (the robust rules need individual updates; under secure
aggregation they cannot run at all, Bagdasaryan et al. 2020).

* **Backdoor** (Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS
  2020): one malicious community participant trains on its data plus copies stamped
  with a pixel trigger and relabelled to a target class, then does *model
  replacement*: it sends ``gamma * (X - G)`` with ``gamma = W / w_m`` (the total
  weight over its own, ``n / eta`` in the paper) so the average lands on its model
  ``X``. The attack comes after some honest rounds (near convergence, as in the
  paper); success is the share of triggered test inputs of other classes classified
  as the target, right after the attacked round.
* **Byzantine** (sign flip, e.g. Karimireddy et al., ICML 2021; Gaussian updates,
  Blanchard et al., NeurIPS 2017): a fraction of participants send ``-c * update``
  or ``N(0, sigma^2)`` noise every round; accuracy after the rounds, per rule.

Why not ART's poisoning attacks: ART poisons a training set (``PoisoningAttackBackdoor``)
but has no federated round, boosting or server rule; the trigger here is the same
idea in two lines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fedcollab.types import Weights

__all__ = ["Defence", "DEFENCES", "apply_trigger", "Simulation", "backdoor_experiment",
           "byzantine_experiment"]


@dataclass(frozen=True)
class Defence:
    """A server rule: an aggregation rule, or DP-FedAvg (clip + noise) when dp_z is set."""

    name: str
    rule: str = "fedavg"
    options: Mapping[str, Any] = field(default_factory=dict)
    dp_z: Optional[float] = None        # noise multiplier; clip norm is the bound


def _defences(bound: float, n: int) -> list[Defence]:
    """The rules compared; Krum assumes one attacker (f = 1, the backdoor's count)."""
    f = 1
    return [Defence("fedavg", "fedavg", {}),
            Defence("median", "median", {}),
            Defence("trimmed_mean", "trimmed_mean", {"beta": 0.2}),
            Defence("krum", "krum", {"f": f}),
            Defence("norm_bounding", "norm_bounded", {"bound": bound}),
            Defence("dp", "fedavg", {"bound": bound}, dp_z=1.0)]


DEFENCES = ("fedavg", "median", "trimmed_mean", "krum", "norm_bounding", "dp")


def apply_trigger(x: np.ndarray, *, value: float = 1.0, size: int = 2) -> np.ndarray:
    """Stamp a ``size`` x ``size`` bright patch in the bottom-right corner.

    Flat inputs are treated as square images (8x8 digits -> the last two pixels of
    the last two rows); others get their last ``size * size`` features set.
    """
    out = np.array(x, dtype=np.float32, copy=True)
    flat = out.reshape(len(out), -1)
    side = int(math.isqrt(flat.shape[1]))
    if side * side == flat.shape[1] and side >= size:
        img = flat.reshape(len(out), side, side)
        img[:, side - size:, side - size:] = value
    else:
        flat[:, -size * size:] = value
    return flat.reshape(out.shape)


class Simulation:
    """Participants' data, a trainer and the global weights; rounds run in process.

    Args:
        trainer: a LocalTrainer for the task's model.
        weights: the starting global weights.
        parts: each participant's (x, y).
        x_test, y_test: the held-out set.
        seed: randomness of local shuffles (one stream per participant and round).
    """

    def __init__(self, trainer: Any, weights: Weights,
                 parts: Sequence[tuple[np.ndarray, np.ndarray]], x_test: np.ndarray,
                 y_test: np.ndarray, *, seed: int) -> None:
        self.trainer = trainer
        self.weights = [np.asarray(w) for w in weights]
        self.parts = list(parts)
        self.x_test, self.y_test = x_test, y_test
        self.seed = seed

    def honest_updates(self, weights: Weights, round_id: int) -> list[Weights]:
        feed = self.trainer.feed(weights)
        out = []
        for pid, (x, y) in enumerate(self.parts):
            rng = np.random.default_rng([self.seed, round_id, pid])
            new = self.trainer.train(feed, x, y, rng=rng).weights
            out.append([(a - b).astype(np.float32) for a, b in zip(new, weights)])
        return out

    def step(self, weights: Weights, updates: Sequence[Weights], counts: Sequence[float],
             defence: Defence, rng: np.random.Generator) -> Weights:
        from fedcollab.aggregation import aggregate
        from fedcollab.privacy import central_dp_mean

        if defence.dp_z is not None:
            bound = float(dict(defence.options)["bound"])
            delta = central_dp_mean(updates, noise_multiplier=defence.dp_z, clip_norm=bound,
                                    rng=rng)
        else:
            from fedcollab.aggregation import NotEnoughUpdatesError

            try:
                delta = aggregate(defence.rule, updates, counts, **dict(defence.options))
            except NotEnoughUpdatesError:
                # as in a real job: too few updates for the rule skips the round
                return list(weights)
        return [(w + np.asarray(d, dtype=np.float64)).astype(w.dtype)
                for w, d in zip(weights, delta)]

    def accuracy(self, weights: Weights, x: Optional[np.ndarray] = None,
                 y: Optional[np.ndarray] = None) -> float:
        _, acc = self.trainer.evaluate(weights, self.x_test if x is None else x,
                                       self.y_test if y is None else y)
        return acc if math.isfinite(acc) else 0.0

    def pretrain(self, rounds: int) -> Weights:
        """Honest FedAvg rounds from the starting weights (the attack comes later)."""
        from fedcollab.aggregation import aggregate

        w = self.weights
        counts = [float(len(x)) for x, _ in self.parts]
        for r in range(1, rounds + 1):
            ups = self.honest_updates(w, r)
            delta = aggregate("fedavg", ups, counts)
            w = [(a + np.asarray(d, np.float64)).astype(a.dtype) for a, d in zip(w, delta)]
        return w


def _norm(update: Weights) -> float:
    return float(math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update)))


def backdoor_experiment(sim: Simulation, *, pretrain_rounds: int, target: int = 0,
                        attacker: int = 0, attacker_epochs: int = 5,
                        defences: Optional[Sequence[str]] = None,
                        seed: int = 0) -> dict[str, dict[str, float]]:
    """Model replacement by one participant, then each defence's outcome.

    Returns:
        {defence: {"success_rate", "main_accuracy"}} measured right after the attacked
        round, plus {"clean": {...}} for the same round without the attack.
    """
    g = sim.pretrain(pretrain_rounds)
    r = pretrain_rounds + 1
    honest = sim.honest_updates(g, r)
    counts = [float(len(x)) for x, _ in sim.parts]
    x_m, y_m = sim.parts[attacker]
    x_poison = np.concatenate([x_m, apply_trigger(x_m)])
    y_poison = np.concatenate([y_m, np.full(len(y_m), target, dtype=y_m.dtype)])
    new = sim.trainer.train(sim.trainer.feed(g), x_poison, y_poison,
                            rng=np.random.default_rng([seed, r, 99]),
                            epochs=attacker_epochs).weights
    x_delta = [(a - b).astype(np.float32) for a, b in zip(new, g)]
    bound = float(np.median([_norm(u) for u in honest]))
    names = list(defences or DEFENCES)
    chosen = [d for d in _defences(bound, len(sim.parts)) if d.name in names]
    other = sim.y_test != target
    x_trig, y_trig = apply_trigger(sim.x_test[other]), np.full(int(other.sum()), target,
                                                              dtype=sim.y_test.dtype)
    out: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng([seed, r, 7])
    clean = sim.step(g, honest, counts, chosen[0] if chosen else _defences(bound, 1)[0], rng)
    out["clean"] = {"success_rate": sim.accuracy(clean, x_trig, y_trig),
                    "main_accuracy": sim.accuracy(clean)}
    for d in chosen:
        gamma = (len(sim.parts) if d.dp_z is not None else sum(counts) / counts[attacker])
        ups = list(honest)
        ups[attacker] = [gamma * u for u in x_delta]
        w = sim.step(g, ups, counts, d, rng)
        out[d.name] = {"success_rate": sim.accuracy(w, x_trig, y_trig),
                       "main_accuracy": sim.accuracy(w)}
    return out


def byzantine_experiment(sim: Simulation, *, rounds: int, fraction: float = 0.2,
                         scale: float = 4.0, sigma: float = 1.0,
                         defences: Optional[Sequence[str]] = None,
                         seed: int = 0) -> dict[str, dict[str, float]]:
    """Sign-flip (``-scale x update``) and Gaussian updates from ``fraction`` of participants.

    Returns:
        {defence: {"accuracy" (the worse attack), "sign_flip", "gaussian", "baseline"}},
        each an accuracy after ``rounds`` rounds from the starting weights.
    """
    n = len(sim.parts)
    bad = set(range(max(1, int(round(fraction * n)))))
    counts = [float(len(x)) for x, _ in sim.parts]
    names = list(defences or DEFENCES)
    out: dict[str, dict[str, float]] = {}
    probe = sim.honest_updates(sim.weights, 1)
    bound = float(np.median([_norm(u) for u in probe]))
    for d in _defences(bound, n):
        if d.name not in names:
            continue
        row: dict[str, float] = {}
        for attack in ("baseline", "sign_flip", "gaussian"):
            w = sim.weights
            rng = np.random.default_rng([seed, 11])
            for r in range(1, rounds + 1):
                ups = probe if r == 1 else sim.honest_updates(w, r)
                if attack == "sign_flip":
                    ups = [[-scale * a for a in u] if i in bad else u for i, u in enumerate(ups)]
                elif attack == "gaussian":
                    ups = [[rng.normal(0, sigma, a.shape).astype(np.float32) for a in u]
                           if i in bad else u for i, u in enumerate(ups)]
                w = sim.step(w, ups, counts, d, rng)
            acc = sim.accuracy(w)
            row[attack] = acc
        row["accuracy"] = min(row["sign_flip"], row["gaussian"])
        out[d.name] = row
    return out
