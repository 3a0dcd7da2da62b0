"""The malicious-model row: round 1 replayed with the model a malicious server sends.

Beside the passive inversion (an honest model, :func:`~fedcollab.grading.replay.inversion_on_view`)
the server here crafts what it sends (:mod:`~fedcollab.grading.malicious_model`) and the
participants train on it exactly as in the replay (their data, seeds, the round's
``RoundConfig`` with its clipping and DP noise, the secure encoding): the imprint sent
to everyone (recovery from each open update and from the secure sum), and model
inconsistency against one secure member (the others get a model whose imprint neurons
never fire, so the sum's imprint rows are the target's alone). Each row reports the best
reconstruction of one of the target's examples and how many of them were recovered
(relative error below 0.1) or exactly (below 1e-3).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

__all__ = ["malicious_model_rows", "RECOVERED_BELOW"]

RECOVERED_BELOW = 0.1  # a reconstruction within 10% relative error counts as recovered


def _score(cands: np.ndarray, truths: np.ndarray, mean_image: np.ndarray) -> dict[str, Any]:
    from fedcollab.grading.inversion import psnr

    cands = np.clip(cands[np.all(np.isfinite(cands), axis=1)], 0.0, 1.0)
    t = truths.reshape(len(truths), -1).astype(np.float64)
    base = float(np.max([psnr(mean_image, x) for x in t]))
    if len(cands) == 0:
        return {"psnr_db": None, "relative_error": None, "exact": False, "recovered": 0,
                "exact_count": 0, "examples": int(len(t)), "baseline_psnr_db": base}
    diff = np.sqrt(((cands[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    rel = diff / np.maximum(np.linalg.norm(t, axis=1)[None, :], 1e-12)
    best_per_example = rel.min(axis=0)
    i, j = np.unravel_index(int(np.argmin(rel)), rel.shape)
    best_psnr = min(psnr(cands[i], t[j]), 200.0)  # exact: a finite ceiling (strict JSON)
    return {"psnr_db": best_psnr, "relative_error": float(rel[i, j]),
            "exact": bool(rel[i, j] < 1e-3),
            "recovered": int(np.sum(best_per_example < RECOVERED_BELOW)),
            "exact_count": int(np.sum(best_per_example < 1e-3)),
            "examples": int(len(t)), "baseline_psnr_db": base,
            "gain_db": best_psnr - base}


def _sum(view: Any, pids: Sequence[int], index: int) -> np.ndarray:
    return np.sum([np.asarray(view.deltas[p][index], np.float64) * view.weights[p]
                   for p in pids], axis=0)


def malicious_model_rows(spec: Any, trainer: Any, start: Sequence[np.ndarray],
                         parts: Sequence[tuple[np.ndarray, np.ndarray]],
                         private_index: Sequence[int], view: Any, *,
                         dense: Optional[tuple[int, int]], reference: np.ndarray,
                         parties: Mapping[str, Sequence[int]], max_open: int = 1,
                         seed: int = 0) -> dict[str, Any]:
    """The imprint and model-inconsistency rows for one mix (see the module docstring).

    Args:
        start: the round's global model (the server overwrites the imprint layers).
        view: the honest replay of the round (who took part, its ``RoundConfig``).
        dense: (kernel, bias) indices of the first dense layer, None when there is none.
        reference: flat inputs the server holds (the thresholds' quantiles).
        parties: party name -> its participants; each target's row names its party.

    Returns:
        {"imprint": [rows], "model_inconsistency": row or None, "parties": {party: the
        worst row (most examples recovered) against it}}.
    """
    from fedcollab.grading.malicious_model import dead_weights, imprint_weights
    from fedcollab.grading.replay import replay_round

    if dense is None:
        return {"note": "the model has no dense layer on its input: the imprint does not apply"}
    k, b = dense
    private_next = b + 1 in set(private_index) and bool(view.vendor_pids)
    imp = imprint_weights(start, kernel=k, bias=b, reference=reference,
                          rng=np.random.default_rng([seed, 71]))
    party_of = {p: name for name, pids in parties.items() for p in pids}
    flat = np.asarray(reference, np.float64).reshape(len(reference), -1)
    mean_image = flat.mean(axis=0)
    chosen: list[int] = []
    for pids in parties.values():
        chosen += [p for p in view.open_pids if p in set(pids)][:max_open]
    secure = list(view.secure_pids)
    config = view.config
    crafted = replay_round(spec, trainer, imp.weights, parts, private_index,
                           pids=sorted(set(chosen) | set(secure)), config=config,
                           rng=np.random.default_rng([seed, 72]))

    def row(label: str, target: list[int], contributors: int, kern: np.ndarray,
            bias: np.ndarray) -> dict[str, Any]:
        from fedcollab.grading.malicious_model import recover_imprint

        truths = np.concatenate([parts[p][0] for p in target]).reshape(-1, kern.shape[0])
        out = _score(recover_imprint(kern, bias, thresholds=imp.thresholds), truths, mean_image)
        out.update(target=label, party=party_of.get(target[0], ""), contributors=contributors)
        return out

    rows = []
    for p in chosen:
        d = crafted.deltas[p]
        if d[k] is not None and d[b] is not None:
            rows.append(row("dp update" if crafted.dp else "open update", [p], 1,
                            _sum(crafted, [p], k), _sum(crafted, [p], b)))
    sharing = [p for p in secure if crafted.deltas[p][k] is not None]
    by_party: dict[str, list[int]] = {}
    for p in sharing:
        by_party.setdefault(party_of.get(p, ""), []).append(p)
    for members in by_party.values():
        # the secure sum, scored against one party's examples at a time
        r = row("dp sum" if crafted.dp else "secure sum", members, len(sharing),
                _sum(crafted, sharing, k), _sum(crafted, sharing, b))
        rows.append(r)
    inconsistency: Optional[dict[str, Any]] = None
    if len(sharing) >= 2:
        target = next((p for p in sharing if p in set(view.vendor_pids)), sharing[0])
        others = [p for p in sharing if p != target]
        dead = replay_round(spec, trainer, dead_weights(imp), parts, private_index,
                            pids=others, config=config, rng=np.random.default_rng([seed, 73]))
        kern = _sum(crafted, [target], k) + _sum(dead, others, k)
        bias = _sum(crafted, [target], b) + _sum(dead, others, b)
        inconsistency = row(("dp sum" if crafted.dp else "secure sum")
                            + ", only one member sent the imprint", [target],
                            len(sharing), kern, bias)
        inconsistency["defended"] = False
        inconsistency["note"] = ("fedcollab's participants do not check that every member "
                                 "of the secure sum received the same global model")
    worst: dict[str, dict[str, Any]] = {}
    for r in [*rows, *([inconsistency] if inconsistency else [])]:
        name = str(r.get("party", ""))
        if name not in worst or r["recovered"] > worst[name]["recovered"]:
            worst[name] = r
    out: dict[str, Any] = {"imprint": rows, "model_inconsistency": inconsistency,
                           "parties": worst, "method": "imprint (Fowl et al. 2022); model "
                           "inconsistency (Pasquini et al. 2022)"}
    if private_next:
        out["note"] = ("the vendor keeps the layer after the imprint private, so its sites "
                       "train their own head there, not the server's: its rows here assume "
                       "the server's head and overstate the attack on the vendor")
    return out
