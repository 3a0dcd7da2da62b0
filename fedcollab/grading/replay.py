"""What the server sees in one round of a mix, replayed in process, and the
measurements made on it (inversion, differencing, federated evaluation).

The replay runs the first round exactly as a worker does (same data slice, same
LocalTrainer, same per-participant seed ``[seed, round, pid]``, same DP
privatisation), so for open participants without DP the replayed updates hash to
the ``update_sha256`` the real run logged in ``metrics.jsonl`` (checked, and
reported as ``replay_verified``). DP noise comes from fresh entropy in both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Mapping, Optional, Sequence

import numpy as np

from fedcollab.grading.differencing import DifferencingResult, vendor_by_differencing
from fedcollab.grading.inversion import invert_per_neuron, invert_single, psnr
from fedcollab.job.records import update_sha256
from fedcollab.spec.roster import Role

__all__ = ["RoundView", "replay_round", "inversion_on_view", "differencing_on_view",
           "federated_evaluation", "held_out_for"]


@dataclass
class RoundView:
    """One round as the server sees it."""

    deltas: dict[int, list[Optional[np.ndarray]]]   # every participant's (privatised) update
    clean: dict[int, list[Optional[np.ndarray]]]    # the same before DP noise (clipped only)
    weights: dict[int, float]                       # the weight it enters the sum with
    open_pids: list[int]
    secure_pids: list[int]
    vendor_pids: list[int]
    dp: bool
    verified: Optional[bool]                        # replay matches the run's logged hashes

    def vector(self, pid: int, shapes: Sequence[tuple[int, ...]], *,
               clean: bool = False) -> np.ndarray:
        """The weighted update as the sum takes it (``clean``: without DP noise, i.e.
        what the participant wants hidden)."""
        source = self.clean if clean else self.deltas
        parts = [np.zeros(int(np.prod(s))) if d is None else
                 np.asarray(d, np.float64).ravel() * self.weights[pid]
                 for d, s in zip(source[pid], shapes)]
        return np.concatenate(parts)


def replay_round(spec: Any, trainer: Any, global_weights: Sequence[np.ndarray],
                 parts: Sequence[tuple[np.ndarray, np.ndarray]], private_index: Sequence[int],
                 *, round_id: int = 1, logged: Optional[Mapping[str, str]] = None,
                 noise_multiplier: float = 0.0,
                 only: Optional[Collection[int]] = None) -> RoundView:
    """Every participant's round-`round_id` update from `global_weights` (``only``:
    just those participants, e.g. the members of that round's secure sum)."""
    from fedcollab.privacy import privatize_update
    from fedcollab.spec.roster import roster

    people = [p for p in roster(spec) if only is None or p.pid in only]
    dp = spec.privacy.dp.mode != "none" and noise_multiplier > 0
    feed = trainer.feed(global_weights)
    deltas: dict[int, list[Optional[np.ndarray]]] = {}
    clean: dict[int, list[Optional[np.ndarray]]] = {}
    weights: dict[int, float] = {}
    matches: list[bool] = []
    for p in people:
        x, y = parts[p.pid]
        rng = np.random.default_rng([spec.seed, round_id, p.pid])
        new = trainer.train(feed, x, y, rng=rng).weights
        private = set(private_index) if p.private_layers else set()
        shared = [i for i in range(len(new)) if i not in private]
        raw = [(new[i] - global_weights[i]).astype(np.float32) for i in shared]
        signal = raw
        if dp:
            mode = spec.privacy.dp.mode
            clip = spec.privacy.dp.clip_norm
            signal, _ = privatize_update(raw, mode="central", noise_multiplier=noise_multiplier,
                                         clip_norm=clip, rng=np.random.default_rng(0))
            raw, _ = privatize_update(raw, mode=mode, noise_multiplier=noise_multiplier,
                                      clip_norm=clip, rng=np.random.default_rng(),
                                      group_size=max(len(people), 1))
            raw = [np.asarray(a, np.float32) for a in raw]
        delta: list[Optional[np.ndarray]] = [None] * len(new)
        plain: list[Optional[np.ndarray]] = [None] * len(new)
        for i, d, c in zip(shared, raw, signal):
            delta[i], plain[i] = d, np.asarray(c, np.float32)
        deltas[p.pid] = delta
        clean[p.pid] = plain
        weights[p.pid] = 1.0 if dp else float(len(x))
        if logged is not None and p.policy.in_clear and not dp and str(p.pid) in logged:
            matches.append(logged[str(p.pid)] == update_sha256(delta))
    return RoundView(deltas, clean, weights, [p.pid for p in people if p.policy.in_clear],
                     [p.pid for p in people if p.policy.in_secure_sum],
                     [p.pid for p in people if p.role == Role.VENDOR], dp,
                     all(matches) if matches else None)


def _score(candidates: np.ndarray, truths: np.ndarray) -> tuple[float, float]:
    """Best (relative error, PSNR) of any candidate against any truth (vectorised)."""
    c = np.clip(candidates, 0.0, 1.0)
    t = truths.reshape(len(truths), -1).astype(np.float64)
    diff = np.sqrt(((c[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    rel = diff / np.maximum(np.linalg.norm(t, axis=1)[None, :], 1e-12)
    i, j = np.unravel_index(int(np.argmin(rel)), rel.shape)
    return float(rel[i, j]), psnr(c[i], t[j])


def inversion_on_view(view: RoundView, dense: tuple[int, int],
                      parts: Sequence[tuple[np.ndarray, np.ndarray]], mean_image: np.ndarray,
                      *, max_open: int = 3) -> dict[str, Any]:
    """Analytic and per-neuron recovery on every open update (up to `max_open`) and on
    the secure sum; the worst case for the participants is reported."""
    k, b = dense
    targets: list[tuple[str, list[int], np.ndarray, np.ndarray]] = []
    for pid in view.open_pids[:max_open]:
        d = view.deltas[pid]
        if d[k] is not None and d[b] is not None:
            targets.append(("dp update" if view.dp else "open update", [pid],
                            np.asarray(d[k], np.float64), np.asarray(d[b], np.float64)))
    sharing = [p for p in view.secure_pids if view.deltas[p][k] is not None]
    if sharing:
        kern = np.sum([np.asarray(view.deltas[p][k], np.float64) * view.weights[p]
                       for p in sharing], axis=0)
        bias = np.sum([np.asarray(view.deltas[p][b], np.float64) * view.weights[p]
                       for p in sharing], axis=0)
        targets.append(("dp sum" if view.dp else "secure sum", sharing, kern, bias))
    worst: Optional[dict[str, Any]] = None
    for label, pids, kern, bias in targets:
        truths = np.concatenate([parts[p][0] for p in pids]).reshape(-1, kern.shape[0])
        cands = np.concatenate([invert_single(kern, bias)[None, :],
                                invert_per_neuron(kern, bias)])
        cands = cands[np.all(np.isfinite(cands), axis=1)]
        if len(cands) == 0:
            continue
        rel, best_psnr = _score(cands, truths)
        _, base_psnr = _score(np.asarray(mean_image, np.float64).reshape(1, -1), truths)
        row: dict[str, Any] = {"psnr_db": best_psnr, "relative_error": rel, "exact": rel < 1e-3,
               "target": label, "baseline_psnr_db": base_psnr, "contributors": len(pids)}
        if worst is None or row["psnr_db"] - row["baseline_psnr_db"] > \
                worst["psnr_db"] - worst["baseline_psnr_db"]:
            worst = row
    return worst or {"psnr_db": None, "relative_error": None, "exact": False,
                     "target": "none", "note": "no dense update visible to the server"}


def differencing_on_view(view: RoundView, shapes: Sequence[tuple[int, ...]]
                         ) -> DifferencingResult:
    """The vendor's aggregate from the open updates and the secure sum of this round."""
    vendor = frozenset(view.vendor_pids)
    open_updates = {p: view.vector(p, shapes) for p in view.open_pids}
    secure = [(frozenset(view.secure_pids),
               np.sum([view.vector(p, shapes) for p in view.secure_pids], axis=0))
              ] if view.secure_pids else []
    truth = np.sum([view.vector(p, shapes, clean=True) for p in view.vendor_pids], axis=0)
    return vendor_by_differencing(open_updates, secure, truth, vendor)


def held_out_for(labels: np.ndarray, y_test: np.ndarray, *, size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Test-set indices drawn with the participant's own label distribution: its
    held-out split (never trained on), sized `size`."""
    classes, counts = np.unique(labels, return_counts=True)
    share = dict(zip(classes.tolist(), (counts / counts.sum()).tolist()))
    p = np.array([share.get(int(v), 0.0) for v in y_test], np.float64)
    if p.sum() == 0:
        p = np.ones(len(y_test))
    per_class = np.array([np.sum(y_test == v) for v in y_test], np.float64)
    p = p / per_class
    p = p / p.sum()
    return rng.choice(len(y_test), size=min(size, len(y_test)), replace=False, p=p)


def federated_evaluation(spec: Any, trainer: Any, weights: Sequence[np.ndarray],
                         parts: Sequence[tuple[np.ndarray, np.ndarray]], x_test: np.ndarray,
                         y_test: np.ndarray, *, own: Mapping[int, Sequence[np.ndarray]],
                         size: int = 60) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Every participant evaluates the global model on its own held-out split.

    Returns:
        (per group {"mean", "min"}, vendor {"public_accuracy", "vendor_accuracy"}):
        the vendor's own model (with its private layers, `own`) against the public
        release, on the vendor's held-out splits.
    """
    from fedcollab.spec.roster import roster

    per_group: dict[str, list[float]] = {}
    public, private = [], []
    for p in roster(spec):
        idx = held_out_for(parts[p.pid][1], y_test, size=size,
                           rng=np.random.default_rng([spec.seed, p.pid, 17]))
        _, acc = trainer.evaluate(list(weights), x_test[idx], y_test[idx])
        per_group.setdefault(p.group_name, []).append(acc)
        if p.role == Role.VENDOR:
            public.append(acc)
            mine = own.get(p.pid)
            private.append(trainer.evaluate(list(mine), x_test[idx], y_test[idx])[1]
                           if mine is not None else acc)
    groups = {g: {"mean": float(np.mean(v)), "min": float(np.min(v))}
              for g, v in per_group.items()}
    vendor = {"public_accuracy": float(np.mean(public)) if public else None,
              "vendor_accuracy": float(np.mean(private)) if private else None}
    return groups, vendor  # type: ignore[return-value]
