"""Membership inference: was this example in the training set?

Two attacks over a model's predicted probabilities (black box):

* **Loss threshold** (Yeom et al., "Privacy Risk in Machine Learning: Analyzing the
  Connection to Overfitting", CSF 2018): score = -cross-entropy; members have lower
  loss.
* **LiRA** (Carlini et al., "Membership Inference Attacks From First Principles",
  IEEE S&P 2022): train shadow models on random halves of the attacker's data, fit
  Gaussians to the logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` of each
  example over the shadows that saw it (IN) and did not (OUT), and score by the
  likelihood ratio. With few shadows the variance is global (one per side), as
  Carlini et al. recommend below ~64 shadows.

Metrics: ROC AUC (scikit-learn) and TPR at 1% and 0.1% FPR (Carlini et al.'s
point: an attack that is right about a few examples with near-certainty matters
more than average-case AUC), each with a 95% interval: Clopper-Pearson (exact
binomial, Beta quantiles) for a TPR, DeLong's variance (DeLong et al. 1988,
in Sun and Xu's 2014 rank form) for the AUC. The grader pre-registers one attack
(:data:`GRADED_ATTACK`) instead of keeping the better of several, which would bias
the figure upwards with every attack added.

Why not the Adversarial Robustness Toolbox: ART 1.20.1 imports under TensorFlow
2.21 / Keras 3 (once ``tqdm`` is added) and its TensorFlowV2Classifier runs, but it
has no LiRA, its black-box attacks return labels or scores without the low-FPR
operating points, and it would add two dependencies for a loss threshold that is
one line. The attacks here are plain numpy over probabilities, so any model works.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["MembershipResult", "attack_metrics", "loss_scores", "logit_confidence",
           "lira_scores", "train_shadows", "ShadowTrainer", "best_of", "chance_tpr",
           "fresh_weights", "trainer_shadows", "predictor", "clopper_pearson",
           "auc_interval", "CONFIDENCE", "GRADED_ATTACK", "MEMBERSHIP_ATTACKS",
           "MembershipAttack", "Shadows", "run_attacks", "sample_note", "WANTED_PER_SIDE"]

#: Two-sided confidence of every interval on the card.
CONFIDENCE = 0.95
#: The one membership attack the grade is taken on, fixed before any run (the loss
#: threshold needs no shadow models, so it is not miscalibrated against a federated or DP
#: target the way centrally trained shadows are; LiRA is reported beside it, not graded).
GRADED_ATTACK = "loss_threshold"

# A shadow trainer: (x, y, seed) -> a function from inputs to class probabilities.
ShadowTrainer = Callable[[np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class MembershipResult:
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_0_1pct_fpr: float
    fpr: list[float] = field(default_factory=list, repr=False)  # ROC curve, for plots
    tpr: list[float] = field(default_factory=list, repr=False)
    auc_ci: tuple[float, float] = (0.0, 1.0)
    tpr_at_1pct_fpr_ci: tuple[float, float] = (0.0, 1.0)
    tpr_at_0_1pct_fpr_ci: tuple[float, float] = (0.0, 1.0)
    n_members: int = 0
    n_nonmembers: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"auc": self.auc, "auc_ci": list(self.auc_ci),
                "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
                "tpr_at_1pct_fpr_ci": list(self.tpr_at_1pct_fpr_ci),
                "tpr_at_0_1pct_fpr": self.tpr_at_0_1pct_fpr,
                "tpr_at_0_1pct_fpr_ci": list(self.tpr_at_0_1pct_fpr_ci),
                "n_members": self.n_members, "n_nonmembers": self.n_nonmembers,
                "confidence": CONFIDENCE}


def clopper_pearson(k: int, n: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion k/n: its
    ends are Beta quantiles (scipy's ``beta.ppf``; ``binomtest(...).proportion_ci(method=
    "exact")`` gives the same by root-finding, ~50x slower)."""
    from scipy.stats import beta

    if n <= 0:
        return (0.0, 1.0)
    k, n = int(k), int(n)
    tail = (1.0 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def auc_interval(scores: np.ndarray, is_member: np.ndarray, *,
                 confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(AUC, low, high): the AUC with DeLong's variance (Sun and Xu 2014's rank form:
    each example's placement among the other class), normal interval, clipped to [0, 1]."""
    from scipy.stats import norm, rankdata

    s = np.asarray(scores, np.float64)
    m = np.asarray(is_member, bool)
    pos, neg = s[m], s[~m]
    n_pos, n_neg = len(pos), len(neg)
    if n_pos == 0 or n_neg == 0:
        return float("nan"), 0.0, 1.0
    ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:n_pos] - rankdata(pos)) / n_neg        # share of non-members below each member
    v01 = 1.0 - (ranks[n_pos:] - rankdata(neg)) / n_pos  # share of members above each non-member
    auc = float(np.mean(v10))
    var = (np.var(v10, ddof=1) / n_pos if n_pos > 1 else 0.0) + \
        (np.var(v01, ddof=1) / n_neg if n_neg > 1 else 0.0)
    half = float(norm.ppf(0.5 + confidence / 2)) * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR among ROC points with FPR <= target (0 when none)."""
    ok = fpr <= target + 1e-12
    return float(np.max(tpr[ok])) if np.any(ok) else 0.0


def attack_metrics(scores: np.ndarray, is_member: np.ndarray, *,
                   max_curve_points: int = 400) -> MembershipResult:
    """AUC and low-FPR TPRs of an attack's scores (higher = more likely a member), each
    with its :data:`CONFIDENCE` interval.

    A TPR's interval is Clopper-Pearson over the members at the threshold that keeps
    the empirical FPR at or below the target; with fewer than ``1 / target``
    non-members that threshold admits no false positive at all.
    """
    from sklearn.metrics import roc_curve

    s = np.asarray(scores, np.float64)
    m = np.asarray(is_member, bool)
    s = np.where(np.isfinite(s), s, np.where(s > 0, 1e300, -1e300))
    fpr, tpr, _ = roc_curve(m, s)
    auc, lo, hi = auc_interval(s, m)
    if len(fpr) > max_curve_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_curve_points).astype(int))
        curve_f, curve_t = fpr[keep], tpr[keep]
    else:
        curve_f, curve_t = fpr, tpr
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    at1, at01 = _tpr_at(fpr, tpr, 0.01), _tpr_at(fpr, tpr, 0.001)
    return MembershipResult(auc, at1, at01,
                            [float(v) for v in curve_f], [float(v) for v in curve_t],
                            auc_ci=(lo, hi),
                            tpr_at_1pct_fpr_ci=clopper_pearson(round(at1 * n_pos), n_pos),
                            tpr_at_0_1pct_fpr_ci=clopper_pearson(round(at01 * n_pos), n_pos),
                            n_members=n_pos, n_nonmembers=n_neg)


def _true_class_prob(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, np.float64)
    return p[np.arange(len(p)), np.asarray(labels, np.int64)]


def loss_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Negative cross-entropy per example (the loss-threshold attack's score)."""
    return np.log(np.clip(_true_class_prob(probs, labels), 1e-300, 1.0))


def logit_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log(p_y) - log(1 - p_y)``, computed stably from all classes' probabilities."""
    p = np.clip(np.asarray(probs, np.float64), 1e-300, 1.0)
    y = np.asarray(labels, np.int64)
    py = p[np.arange(len(p)), y]
    rest = p.sum(axis=1) - py
    return np.log(py) - np.log(np.clip(rest, 1e-300, None))


def lira_scores(target_phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray, *,
                online: bool = True, global_variance: bool = True) -> np.ndarray:
    """LiRA's per-example log likelihood ratio.

    Args:
        target_phi: (n,) logit-scaled confidence of the attacked model.
        shadow_phi: (k, n) the same for k shadow models.
        shadow_in: (k, n) bool: whether shadow j trained on example i.
        online: use IN and OUT Gaussians (else OUT only, a one-sided test).
        global_variance: one variance per side over all examples (few shadows).

    Returns:
        (n,) scores; higher means more likely a member.
    """
    phi = np.asarray(shadow_phi, np.float64)
    inside = np.asarray(shadow_in, bool)
    t = np.asarray(target_phi, np.float64)

    def stats(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = mask.sum(axis=0)
        sums = np.where(mask, phi, 0.0).sum(axis=0)
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        dev = np.where(mask, (phi - np.nan_to_num(mean)) ** 2, 0.0)
        if global_variance:
            var = np.full(phi.shape[1], dev.sum() / max(int(mask.sum()) - 1, 1))
        else:
            var = dev.sum(axis=0) / np.maximum(counts - 1, 1)
        return mean, np.maximum(var, 1e-6)

    mean_out, var_out = stats(~inside)
    fallback = float(np.nanmean(mean_out)) if np.any(np.isfinite(mean_out)) else 0.0
    mean_out = np.where(np.isfinite(mean_out), mean_out, fallback)
    log_out = -0.5 * ((t - mean_out) ** 2 / var_out + np.log(var_out))
    if not online:
        # one-sided: how far above the OUT distribution the target's confidence sits
        return (t - mean_out) / np.sqrt(var_out)
    mean_in, var_in = stats(inside)
    fallback_in = float(np.nanmean(mean_in)) if np.any(np.isfinite(mean_in)) else fallback
    mean_in = np.where(np.isfinite(mean_in), mean_in, fallback_in)
    log_in = -0.5 * ((t - mean_in) ** 2 / var_in + np.log(var_in))
    return log_in - log_out


def train_shadows(train: ShadowTrainer, x: np.ndarray, y: np.ndarray, *, shadows: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train `shadows` models on random halves of (x, y) and score every example.

    Each example is IN for exactly half the shadows (paired halves), as in Carlini
    et al.'s online attack.

    Returns:
        (phi, inside): (shadows, n) logit-scaled confidences and IN masks.
    """
    n = len(x)
    if shadows < 2:
        raise ValueError(f"train_shadows: got {shadows} shadows, need at least 2")
    phis: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for j in range(shadows):
        if j % 2 == 0:
            mask = np.zeros(n, bool)
            mask[rng.permutation(n)[: n // 2]] = True
        else:
            mask = ~masks[-1]
        predict = train(x[mask], y[mask], int(rng.integers(2**31)))
        phis.append(logit_confidence(predict(x), y))
        masks.append(mask)
    return np.stack(phis), np.stack(masks)


def chance_tpr(fpr: float) -> float:
    """A random guesser's TPR at a given FPR (the bar for low-FPR figures)."""
    return fpr if math.isfinite(fpr) else 0.0


def best_of(results: Sequence[MembershipResult]) -> MembershipResult:
    """The strongest attack: highest TPR at 0.1% FPR, then highest AUC (for exploration
    only: a grade taken on the best of several attacks is biased upwards)."""
    return max(results, key=lambda r: (r.tpr_at_0_1pct_fpr, r.auc))


#: Shadow models' logit-scaled confidences on the attacked examples and which of them
#: each shadow trained on, both ``(shadows, examples)`` (:func:`train_shadows`).
Shadows = tuple[np.ndarray, np.ndarray]
#: A membership attack: ``f(probs, labels, shadows) -> scores`` (higher: more likely a
#: member) on the target's class probabilities; ``shadows`` is None where none were
#: trained (an attack that needs them raises ``ValueError``).
MembershipAttack = Callable[[np.ndarray, np.ndarray, Optional[Shadows]], np.ndarray]


def _loss_threshold(probs: np.ndarray, labels: np.ndarray,
                    shadows: Optional[Shadows]) -> np.ndarray:
    return loss_scores(probs, labels)


def _lira(probs: np.ndarray, labels: np.ndarray, shadows: Optional[Shadows]) -> np.ndarray:
    if shadows is None:
        raise ValueError("lira: needs shadow models of the attacked examples")
    phi, inside = shadows
    return lira_scores(logit_confidence(probs, labels), phi, inside)


#: Membership attacks by name, one function plus one entry each. The grader runs every
#: entry and reports each beside the graded one; the grade is taken on
#: :data:`GRADED_ATTACK` alone, fixed before any run (the best of several would be
#: biased upwards with every entry added).
MEMBERSHIP_ATTACKS: dict[str, MembershipAttack] = {
    "loss_threshold": _loss_threshold,
    "lira": _lira,
}


def run_attacks(probs: np.ndarray, labels: np.ndarray, is_member: np.ndarray, *,
                shadows: Optional[Shadows] = None,
                attacks: Optional[Mapping[str, MembershipAttack]] = None
                ) -> dict[str, MembershipResult]:
    """Every registered attack's metrics on one target (:data:`MEMBERSHIP_ATTACKS` unless
    ``attacks`` is given); an attack that needs shadows is left out when there are none.

    Raises:
        KeyError: the registry lacks :data:`GRADED_ATTACK` (the grade needs it).
    """
    chosen = MEMBERSHIP_ATTACKS if attacks is None else attacks
    if GRADED_ATTACK not in chosen:
        raise KeyError(f"membership: the graded attack {GRADED_ATTACK!r} is not registered")
    out: dict[str, MembershipResult] = {}
    for name, attack in chosen.items():
        try:
            scores = attack(probs, labels, shadows)
        except ValueError:
            if name == GRADED_ATTACK:
                raise
            continue
        out[name] = attack_metrics(scores, is_member)
    return out


#: Members and non-members wanted on each side: 1000 non-members resolve 0.1% FPR (one
#: false positive), and the TPR intervals narrow with the members.
WANTED_PER_SIDE = 1000


def sample_note(*, members: int, non_members: int, members_available: int,
                non_members_available: int, cap: int, train_rows: int,
                test_rows: int) -> str:
    """One sentence for the card: how many members and non-members were attacked, and,
    where fewer than :data:`WANTED_PER_SIDE` on a side, why (the data, or the budget).

    Members are every training example some participant holds, non-members the whole
    test split, each up to the budget's ``cap``.
    """
    text = f"{members} members and {non_members} non-members"
    short, by_data = [], False
    for side, used, available, where, rows in (
            ("members", members, members_available, "training examples the participants "
             "hold", train_rows),
            ("non-members", non_members, non_members_available, "test split", test_rows)):
        if used >= WANTED_PER_SIDE:
            continue
        if used < available:
            short.append(f"{side}: {used} of {available} (the budget's cap of {cap})")
        else:
            short.append(f"{side}: every one the data allow (the {where}: {rows} rows)")
            by_data = True
    if not short:
        capped = [s for s, u, a in (("members", members, members_available),
                                    ("non-members", non_members, non_members_available))
                  if u < a]
        return text + (f" (at least {WANTED_PER_SIDE} each; {', '.join(capped)} capped at "
                       f"the budget's {cap})" if capped else
                       f" (at least {WANTED_PER_SIDE} each: every one the data allow)")
    return (text + f": fewer than {WANTED_PER_SIDE} " + "; ".join(short) + (
        ". A larger dataset or test split gives more (0.1% FPR needs >= 1000 non-members "
        "to resolve)" if by_data else ""))


def fresh_weights(template: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Glorot-uniform kernels and zero biases shaped like `template` (a new shadow's start)."""
    out = []
    for w in template:
        w = np.asarray(w)
        if w.ndim >= 2:
            fan_in = int(np.prod(w.shape[:-1]))
            fan_out = int(w.shape[-1])
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            out.append(rng.uniform(-limit, limit, w.shape).astype(w.dtype))
        else:
            out.append(np.zeros_like(w))
    return out


def trainer_shadows(trainer: object, template: Sequence[np.ndarray], *,
                    epochs: int) -> ShadowTrainer:
    """A :data:`ShadowTrainer` over a :class:`fedcollab.worker.training.LocalTrainer` (one trace,
    fresh weights per shadow): the attacker trains like the target was trained."""

    def train(x: np.ndarray, y: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        rng = np.random.default_rng(seed)
        result = trainer.train(fresh_weights(template, rng), x, y,  # type: ignore[attr-defined]
                               rng=rng, epochs=epochs)
        return predictor(trainer, result.weights)

    return train


def predictor(trainer: object, weights: Sequence[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Class probabilities of `weights` through the trainer's model."""

    def predict(x: np.ndarray) -> np.ndarray:
        model = trainer.model  # type: ignore[attr-defined]
        for var, value in zip(model.weights, weights):
            var.assign(value)
        return np.asarray(model(np.asarray(x, np.float32), training=False))

    return predict
