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
  as the target, right after the attacked round and after each of the honest rounds
  that follow (durability). **Constrain-and-scale** (the same paper, in its projected
  form) trains the backdoor inside the honest updates' norm and sends it at exactly that
  norm, so norm bounding and DP clipping let it through whole.
* **Byzantine**: a fraction of participants send, every round, one of the attacks in
  :data:`BYZANTINE_ATTACKS` (one pure function plus one entry each): sign flip
  (``-c * update``, e.g. Karimireddy et al., ICML 2021), Gaussian noise (Blanchard et
  al., NeurIPS 2017), and two adaptive attacks built to pass robust rules from the
  honest updates' statistics: **ALIE** ("A Little Is Enough", Baruch et al., NeurIPS
  2019: the coordinate-wise mean shifted by ``z`` standard deviations, ``z`` the most
  the honest majority's spread hides) and **IPM** (inner-product manipulation, Xie et
  al., UAI 2019: ``-eps`` times the honest mean, small enough to look honest to a
  distance-based rule), and Fang et al.'s full-knowledge attacks (USENIX Security
  2020) on trimmed mean/median (values just past the honest extremes, against the honest
  direction) and on Krum (``-lambda * sign(mean)``, the largest ``lambda`` Krum still
  picks); accuracy after the rounds, per rule, the worst attack counting.

Both experiments take ``start`` weights: the grader passes a run's final checkpoint, so
the attacks hit a model near convergence rather than one a few rounds from scratch.

Why not ART's poisoning attacks: ART poisons a training set (``PoisoningAttackBackdoor``)
but has no federated round, boosting or server rule; the trigger here is the same
idea in two lines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from fedcollab.types import Weights

__all__ = ["Defence", "DEFENCES", "apply_trigger", "Simulation", "backdoor_experiment",
           "byzantine_experiment", "BYZANTINE_ATTACKS", "BACKDOOR_ATTACKS", "BackdoorRound",
           "BackdoorAttack", "alie_z",
           "ByzantineAttack", "constrain_and_scale", "fang_krum_lambda"]


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


def constrain_and_scale(delta: Weights, *, bound: float) -> Weights:
    """Bagdasaryan et al.'s constrain-and-scale, its projected form (Wang et al.,
    NeurIPS 2020, "Attack of the Tails"; Sun et al. 2019): the malicious update is kept
    inside the honest updates' norm (projected onto the L2 ball of radius ``bound``)
    and then scaled up to exactly that norm, the most a norm bound lets through. Pure."""
    norm = _norm(delta)
    if norm == 0.0 or not math.isfinite(norm):
        return [np.zeros_like(u) for u in delta]
    return [(u * (bound / norm)).astype(np.float32) for u in delta]


def _train_constrained(sim: Simulation, g: Weights, x: np.ndarray, y: np.ndarray, *,
                       bound: float, epochs: int, rng: np.random.Generator) -> Weights:
    """Poisoned training with projection onto the norm ball after every epoch (the
    constraint during training, so the backdoor is learnt inside the ball rather than
    shrunk afterwards)."""
    w = list(g)
    for _ in range(epochs):
        new = sim.trainer.train(sim.trainer.feed(w), x, y, rng=rng, epochs=1).weights
        step = [(a - b).astype(np.float32) for a, b in zip(new, g)]
        if _norm(step) > bound:
            step = constrain_and_scale(step, bound=bound)
        w = [(b + s).astype(b.dtype) for b, s in zip(g, step)]
    return [(a - b).astype(np.float32) for a, b in zip(w, g)]


@dataclass(frozen=True)
class BackdoorRound:
    """What the backdoor attacker has in its ``k``-th attack round (0-based)."""

    sim: Simulation
    weights: Weights             # this round's global model
    x: np.ndarray                # its poisoned training data (clean + triggered copies)
    y: np.ndarray
    counts: Sequence[float]      # every participant's weight in the mean
    attacker: int
    defence: Defence
    bound: float                 # the honest updates' median norm in the attacked round
    epochs: int
    k: int
    attack_rounds: int           # how many rounds an attack that stays hidden may go on
    seed: Sequence[int]          # [seed, round]: its training's randomness


#: ``f(round) -> the update it sends, or None when it stops``: one function plus one entry
BackdoorAttack = Callable[[BackdoorRound], Optional[Weights]]


def _model_replacement(a: BackdoorRound) -> Optional[Weights]:
    """Bagdasaryan et al. 2020: ``gamma * (X - G)``, ``gamma`` the total weight over its own
    (``n`` under DP's uniform weights), so the mean lands on its model; once."""
    if a.k > 0:
        return None
    new = a.sim.trainer.train(a.sim.trainer.feed(a.weights), a.x, a.y,
                              rng=np.random.default_rng([*a.seed, 99]), epochs=a.epochs).weights
    gamma = (len(a.sim.parts) if a.defence.dp_z is not None
             else sum(a.counts) / a.counts[a.attacker])
    return [(gamma * (n - w)).astype(np.float32) for n, w in zip(new, a.weights)]


def _constrain_and_scale(a: BackdoorRound) -> Optional[Weights]:
    """Trained inside the norm ball and sent at its edge (:func:`constrain_and_scale`);
    it passes the rules, so it comes back in each of ``attack_rounds`` rounds (Sun et al.
    2019's repeated attacker). Scaling it further is exactly what the rules clip."""
    if a.k >= a.attack_rounds:
        return None
    return constrain_and_scale(_train_constrained(
        a.sim, a.weights, a.x, a.y, bound=a.bound, epochs=a.epochs,
        rng=np.random.default_rng([*a.seed, 98])), bound=a.bound)


#: the backdoor attacks run against every defence; the graded figure is the strongest
BACKDOOR_ATTACKS: Mapping[str, BackdoorAttack] = {
    "model_replacement": _model_replacement, "constrain_and_scale": _constrain_and_scale}


def backdoor_experiment(sim: Simulation, *, pretrain_rounds: int, target: int = 0,
                        attacker: int = 0, attacker_epochs: int = 5,
                        defences: Optional[Sequence[str]] = None,
                        durability_rounds: int = 0, attack_rounds: int = 1,
                        start: Optional[Weights] = None,
                        seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each backdoor attack of :data:`BACKDOOR_ATTACKS` by one participant, then each
    defence's outcome and how long the backdoor lasts.

    * ``model_replacement``: ``gamma * (X - G)`` with ``gamma = W / w_m`` (Bagdasaryan
      et al. 2020), so the FedAvg mean lands on the attacker's model ``X``;
    * ``constrain_and_scale``: poisoned training projected into the honest updates'
      median norm, sent scaled to exactly that norm (:func:`constrain_and_scale`): it
      passes norm bounding and DP clipping unclipped and looks like an honest update
      to median, trimmed mean and Krum.

    Args:
        pretrain_rounds: honest FedAvg rounds before the attack (from ``start``, or the
            simulation's weights).
        durability_rounds: honest rounds under the same defence after the attacked one
            (the attacker stops); the success after each is ``success_after``.
        attack_rounds: consecutive rounds the constrain-and-scale attacker attacks (it
            passes the rules, so nothing stops it from coming back); its
            ``success_rate`` is after the last of them. Model replacement attacks once.
        start: the weights the attack starts from, e.g. the final checkpoint of a run of
            the task (an attack near convergence, as the paper runs it).

    Returns:
        {defence: {"success_rate", "main_accuracy", "worst_attack", "success_after",
        "attacks": {attack: {"success_rate", "main_accuracy", "success_after"}}}}: the
        top-level figures are the strongest attack's (highest success right after the
        attacked round); plus {"clean": {...}} for the same round without the attack.
    """
    if start is not None:
        sim = Simulation(sim.trainer, start, sim.parts, sim.x_test, sim.y_test, seed=sim.seed)
    g = sim.pretrain(pretrain_rounds)
    r = pretrain_rounds + 1
    honest = sim.honest_updates(g, r)
    counts = [float(len(x)) for x, _ in sim.parts]
    x_m, y_m = sim.parts[attacker]
    x_poison = np.concatenate([x_m, apply_trigger(x_m)])
    y_poison = np.concatenate([y_m, np.full(len(y_m), target, dtype=y_m.dtype)])
    bound = float(np.median([_norm(u) for u in honest]))
    names = list(defences or DEFENCES)
    chosen = [d for d in _defences(bound, len(sim.parts)) if d.name in names]
    other = sim.y_test != target
    x_trig, y_trig = apply_trigger(sim.x_test[other]), np.full(int(other.sum()), target,
                                                              dtype=sim.y_test.dtype)

    def after(w: Weights, d: Defence, rng: np.random.Generator) -> list[float]:
        rates = []
        for k in range(1, durability_rounds + 1):
            w = sim.step(w, sim.honest_updates(w, r + k), counts, d, rng)
            rates.append(sim.accuracy(w, x_trig, y_trig))
        return rates

    out: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng([seed, r, 7])
    base = chosen[0] if chosen else _defences(bound, 1)[0]
    clean = sim.step(g, honest, counts, base, rng)
    out["clean"] = {"success_rate": sim.accuracy(clean, x_trig, y_trig),
                    "main_accuracy": sim.accuracy(clean),
                    "success_after": after(clean, base, rng)}
    for d in chosen:
        row: dict[str, Any] = {}
        for attack, craft in BACKDOOR_ATTACKS.items():
            w, k = g, 0
            while True:
                sent = craft(BackdoorRound(sim, w, x_poison, y_poison, counts, attacker, d,
                                           bound, attacker_epochs, k, attack_rounds,
                                           [seed, r + k]))
                if sent is None:
                    break
                ups = list(honest) if k == 0 else sim.honest_updates(w, r + 100 + k)
                ups[attacker] = sent
                w = sim.step(w, ups, counts, d, rng)
                k += 1
            row[attack] = {"success_rate": sim.accuracy(w, x_trig, y_trig),
                           "main_accuracy": sim.accuracy(w), "success_after": after(w, d, rng)}
        worst = max(BACKDOOR_ATTACKS, key=lambda a: row[a]["success_rate"])
        out[d.name] = {**row[worst], "worst_attack": worst, "attacks": row}
    return out


# ----------------------------------------------------------------- Byzantine attacks
#: ``f(honest updates, the attackers' indices, rng, scale, sigma) -> every update sent``:
#: pure numpy; an attacker may read every honest update of the round (the strongest,
#: omniscient model the robust-aggregation papers assume).
ByzantineAttack = Any


def _replace(updates: Sequence[Weights], bad: Sequence[int], make: Any) -> list[Weights]:
    bad_set = set(bad)
    return [make(i, u) if i in bad_set else list(u) for i, u in enumerate(updates)]


def _sign_flip(updates: Sequence[Weights], bad: Sequence[int], rng: np.random.Generator,
               scale: float, sigma: float) -> list[Weights]:
    return _replace(updates, bad, lambda i, u: [-scale * a for a in u])


def _gaussian(updates: Sequence[Weights], bad: Sequence[int], rng: np.random.Generator,
              scale: float, sigma: float) -> list[Weights]:
    return _replace(updates, bad, lambda i, u: [rng.normal(0, sigma, a.shape).astype(np.float32)
                                                for a in u])


def alie_z(n: int, f: int) -> float:
    """ALIE's shift in standard deviations (Baruch et al. 2019, Algorithm 3): with
    ``s = floor(n/2 + 1) - f`` honest participants the attackers must win over,
    ``z = Phi^-1((n - s) / n)``; 0 when that leaves no room."""
    from scipy.stats import norm

    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    return float(norm.ppf(p)) if 0.5 < p < 1 else 0.0


def _alie(updates: Sequence[Weights], bad: Sequence[int], rng: np.random.Generator,
          scale: float, sigma: float) -> list[Weights]:
    honest = [u for i, u in enumerate(updates) if i not in set(bad)]
    z = alie_z(len(updates), len(bad))
    mean = [np.mean([u[j] for u in honest], axis=0) for j in range(len(updates[0]))]
    std = [np.std([u[j] for u in honest], axis=0) for j in range(len(updates[0]))]
    sent = [(m - z * s).astype(np.float32) for m, s in zip(mean, std)]
    return _replace(updates, bad, lambda i, u: [a.copy() for a in sent])


IPM_EPSILON = 0.5  # Xie et al.'s small-epsilon regime, which beats median and Krum


def _ipm(updates: Sequence[Weights], bad: Sequence[int], rng: np.random.Generator,
         scale: float, sigma: float) -> list[Weights]:
    honest = [u for i, u in enumerate(updates) if i not in set(bad)]
    mean = [np.mean([u[j] for u in honest], axis=0) for j in range(len(updates[0]))]
    sent = [(-IPM_EPSILON * m).astype(np.float32) for m in mean]
    return _replace(updates, bad, lambda i, u: [a.copy() for a in sent])


FANG_B = 2.0  # Fang et al.'s b: how far past the honest extreme the crafted values go


def _honest_stats(updates: Sequence[Weights], bad: Sequence[int]) -> tuple[list[Weights], Weights]:
    honest = [u for i, u in enumerate(updates) if i not in set(bad)]
    mean = [np.mean([u[j] for u in honest], axis=0) for j in range(len(updates[0]))]
    return honest, mean


def _fang_trim(updates: Sequence[Weights], bad: Sequence[int], rng: np.random.Generator,
               scale: float, sigma: float) -> list[Weights]:
    """Fang et al., USENIX Security 2020, the full-knowledge attack on trimmed mean and
    median: where the honest updates push a coordinate up (``s_j > 0``) each attacker
    sends a value below their minimum (in ``[w_min / b, w_min]`` or ``[b w_min,
    w_min]``), where they push it down a value above their maximum, so the trimmed
    statistics move against the honest direction."""
    honest, mean = _honest_stats(updates, bad)
    lo = [np.min([u[j] for u in honest], axis=0) for j in range(len(mean))]
    hi = [np.max([u[j] for u in honest], axis=0) for j in range(len(mean))]

    def craft(i: int, u: Weights) -> Weights:
        out = []
        for m, a, b in zip(mean, lo, hi):
            t = rng.uniform(0.0, 1.0, m.shape)
            down = np.where(a > 0, a / FANG_B + t * (a - a / FANG_B),
                            FANG_B * a + t * (a - FANG_B * a))
            up = np.where(b > 0, b + t * (FANG_B * b - b), b / FANG_B + t * (b - b / FANG_B))
            out.append(np.where(m > 0, down, up).astype(np.float32))
        return out

    return _replace(updates, bad, craft)


def fang_krum_lambda(updates: Sequence[Weights], bad: Sequence[int], *,
                     tolerance: float = 1e-5) -> float:
    """The largest ``lambda`` (halving from twice the largest honest update's norm per
    coordinate) at which Krum picks the attackers' ``-lambda * sign(honest mean)``
    (Fang et al. 2020, the attack on Krum); ``tolerance`` when none is picked."""
    from fedcollab.aggregation.rules import krum_select

    honest, mean = _honest_stats(updates, bad)
    d = sum(int(m.size) for m in mean)
    lam = 2.0 * max(_norm(u) for u in honest) / math.sqrt(d)
    n, f = len(updates), len(bad)
    f_rule = max(0, min(f, (n - 3) // 2))
    bad_set = set(bad)
    while lam > tolerance:
        sent = [(-lam * np.sign(m)).astype(np.float32) for m in mean]
        trial = _replace(updates, bad, lambda i, u, sent=sent: [a.copy() for a in sent])
        if krum_select(trial, f=f_rule)[0] in bad_set:
            return lam
        lam /= 2.0
    return tolerance


def _fang_krum(updates: Sequence[Weights], bad: Sequence[int], rng: np.random.Generator,
               scale: float, sigma: float) -> list[Weights]:
    """Fang et al. 2020's attack on Krum: every attacker sends ``-lambda * s`` (``s`` the
    sign of the honest mean), ``lambda`` the largest Krum still selects."""
    _, mean = _honest_stats(updates, bad)
    lam = fang_krum_lambda(updates, bad)
    sent = [(-lam * np.sign(m)).astype(np.float32) for m in mean]
    return _replace(updates, bad, lambda i, u: [a.copy() for a in sent])


BYZANTINE_ATTACKS: Mapping[str, ByzantineAttack] = {
    "sign_flip": _sign_flip, "gaussian": _gaussian, "alie": _alie, "ipm": _ipm,
    "fang_trim": _fang_trim, "fang_krum": _fang_krum}


def byzantine_experiment(sim: Simulation, *, rounds: int, fraction: float = 0.2,
                         scale: float = 4.0, sigma: float = 1.0,
                         defences: Optional[Sequence[str]] = None,
                         start: Optional[Weights] = None,
                         seed: int = 0) -> dict[str, dict[str, float]]:
    """Every attack of :data:`BYZANTINE_ATTACKS` from ``fraction`` of participants.

    Args:
        start: the weights the rounds start from (e.g. a run's final checkpoint: attacks
            near convergence), else the simulation's.

    Returns:
        {defence: {"accuracy" (the worst attack), "worst_attack", one accuracy per attack,
        "baseline"}}, each an accuracy after ``rounds`` rounds from the starting weights.
    """
    if start is not None:
        sim = Simulation(sim.trainer, start, sim.parts, sim.x_test, sim.y_test, seed=sim.seed)
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
        row: dict[str, Any] = {}
        for attack in ("baseline", *BYZANTINE_ATTACKS):
            w = sim.weights
            rng = np.random.default_rng([seed, 11])
            for r in range(1, rounds + 1):
                ups = probe if r == 1 else sim.honest_updates(w, r)
                if attack != "baseline":
                    ups = BYZANTINE_ATTACKS[attack](ups, sorted(bad), rng, scale, sigma)
                w = sim.step(w, ups, counts, d, rng)
            row[attack] = sim.accuracy(w)
        worst = min(BYZANTINE_ATTACKS, key=lambda a: row[a])
        row["accuracy"], row["worst_attack"] = row[worst], worst
        out[d.name] = row
    return out
