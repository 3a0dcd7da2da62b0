"""What the server sees in one round of a mix, replayed in process, checked against
the run, and the measurements made on it (inversion, differencing, federated
evaluation).

The replay runs a round exactly as a worker does: the participants the server heard
from that round (the run's log: the open updates' ``update_sha256`` keys and the
secure sum's ``survivors``), the same data slice, LocalTrainer and per-participant
seed ``[seed, round, pid]``, and what leaves each participant decided by the workers'
own :func:`fedcollab.worker.outgoing.outgoing` under the round's
:class:`~fedcollab.worker.messages.RoundConfig` (clipping, DP noise of the right
scale: local for open participants, ``1/sqrt(m)`` shares inside the sum). The
replayed round is then aggregated by the job's own
:class:`~fedcollab.aggregation.Aggregator` and compared with the run's checkpoint of
that round (:func:`verify_replay`): exact without DP; under DP (whose noise comes
from fresh entropy in both) the distance to the checkpoint must be what a second,
independent noise draw gives, so a replay with too little or too much noise, or
missing a participant's update, does not pass.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Optional, Sequence

import numpy as np

from fedcollab.grading.differencing import DifferencingResult, vendor_by_differencing
from fedcollab.grading.inversion import psnr
from fedcollab.job.records import update_sha256
from fedcollab.spec.roster import Role
from fedcollab.worker.messages import RoundConfig

__all__ = ["RoundView", "replay_round", "round_config", "heard_from", "verify_replay",
           "Verification", "inversion_on_view", "differencing_on_view", "observed_secure_sum",
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
    # what the server received, as the job's aggregator takes it
    updates: list[Any] = field(default_factory=list)           # open Update messages
    secure_vectors: dict[int, np.ndarray] = field(default_factory=dict)
    config: Optional[RoundConfig] = None
    again: Optional[dict[int, Any]] = None  # a second, independent noise draw (DP check)

    def vector(self, pid: int, shapes: Sequence[tuple[int, ...]], *,
               clean: bool = False) -> np.ndarray:
        """The weighted update as the sum takes it (``clean``: without DP noise, i.e.
        what the participant wants hidden)."""
        source = self.clean if clean else self.deltas
        parts = [np.zeros(int(np.prod(s))) if d is None else
                 np.asarray(d, np.float64).ravel() * self.weights[pid]
                 for d, s in zip(source[pid], shapes)]
        return np.concatenate(parts)


def round_config(spec: Any, line: Mapping[str, Any], *, weight_scale: float,
                 noise_multiplier: float) -> RoundConfig:
    """The round's :class:`RoundConfig` as the driver built it (``RoundLoop.configure``),
    from the spec and the round's metrics line: its clip norm (adaptive clipping moves
    it) and the secure members sampled (each adds ``1/sqrt(m)`` of the noise)."""
    dp = spec.privacy.dp
    on = dp.mode != "none" and noise_multiplier > 0
    secure = line.get("secure") or {}
    sampled = sum(len(secure.get(k) or ()) for k in ("survivors", "dropped", "unresponsive"))
    sampled += len(secure.get("rejected") or {})
    clip = float(line.get("clip_norm") or dp.clip_norm)
    return RoundConfig(dp.mode if on else "none", clip, noise_multiplier if on else 0.0,
                       max(sampled, 1), 1.0 if on else float(weight_scale),
                       bool(getattr(dp, "adaptive", False)) and on, 0.0,
                       secure_clip=0.0 if on else float(spec.secure.clip))


def heard_from(spec: Any, line: Mapping[str, Any], *, dp: bool, seed: int) -> list[int]:
    """The participants whose update reached the server in a round, from its log line:
    the open updates' hash keys and the secure survivors. Under DP the log names no open
    participant (Poisson sampling from OS entropy; naming them would reveal the secret
    sample), only how many took part: as many open participants are drawn (from
    ``seed``), which is what the server's view looks like to an attack, not who it was."""
    from fedcollab.spec.roster import roster

    people = list(roster(spec))
    secure = [int(p) for p in (line.get("secure") or {}).get("survivors", ())]
    if not dp:
        return sorted({int(k) for k in line.get("update_sha256", {})} | set(secure))
    open_pids = [p.pid for p in people if p.policy.in_clear]
    sampled_secure = sum(len((line.get("secure") or {}).get(k) or ())
                         for k in ("survivors", "dropped", "unresponsive"))
    k = max(0, min(int(line.get("participants", 0)) - sampled_secure, len(open_pids)))
    rng = np.random.default_rng([seed, int(line.get("round", 1)), 53])
    drawn = rng.choice(open_pids, size=k, replace=False).tolist() if k else []
    return sorted(set(int(p) for p in drawn) | set(secure))


def replay_round(spec: Any, trainer: Any, global_weights: Sequence[np.ndarray],
                 parts: Sequence[tuple[np.ndarray, np.ndarray]], private_index: Sequence[int],
                 *, pids: Sequence[int], config: RoundConfig, round_id: int = 1,
                 logged: Optional[Mapping[str, str]] = None,
                 rng: Optional[np.random.Generator] = None) -> RoundView:
    """Round ``round_id`` of the participants ``pids`` from ``global_weights``, each
    update what :func:`~fedcollab.worker.outgoing.outgoing` makes of it under ``config``
    (DP noise from ``rng``, fresh entropy by default, as on a worker)."""
    from fedcollab.secure.layout import split_secure_sum
    from fedcollab.spec.roster import roster
    from fedcollab.worker.outgoing import outgoing

    wanted = set(int(p) for p in pids)
    people = [p for p in roster(spec) if p.pid in wanted]
    dp = config.dp_on
    rng = rng if rng is not None else np.random.default_rng()
    again_rng = np.random.default_rng(rng.integers(2**63))
    quiet = dataclasses.replace(config, noise_multiplier=0.0) if dp else config
    shapes = [tuple(np.shape(w)) for w in global_weights]
    feed = trainer.feed(global_weights)
    deltas: dict[int, list[Optional[np.ndarray]]] = {}
    clean: dict[int, list[Optional[np.ndarray]]] = {}
    weights: dict[int, float] = {}
    updates: list[Any] = []
    vectors: dict[int, np.ndarray] = {}
    again: dict[int, Any] = {}
    matches: list[bool] = []
    for p in people:
        x, y = parts[p.pid]
        group = spec.participants[p.group]
        result = trainer.train(feed, x, y, rng=np.random.default_rng([spec.seed, round_id, p.pid]))
        new = result.weights
        private = set(private_index) if p.private_layers else set()
        shared = [i for i in range(len(new)) if i not in private]
        raw = [(new[i] - global_weights[i]).astype(np.float32) for i in shared]
        send = functools.partial(outgoing, raw, pid=p.pid, shared=shared, shapes=shapes,
                                 num_samples=len(x), loss=float(result.loss), sharing=p.sharing,
                                 behaviour=group.behaviour, attack_scale=group.attack_scale)
        sent, plain = send(config=config, rng=rng), send(config=quiet, rng=rng)
        weight = 1.0 if dp else float(len(x))
        if sent.update is not None and plain.update is not None:
            updates.append(sent.update)
            deltas[p.pid] = list(sent.update.delta)
            clean[p.pid] = list(plain.update.delta)
        elif sent.secure_vector is not None and plain.secure_vector is not None:
            vectors[p.pid] = sent.secure_vector
            for target, vector in ((deltas, sent.secure_vector), (clean, plain.secure_vector)):
                arrays = split_secure_sum(vector, shapes, scale=config.weight_scale,
                                          clip_bit=config.clip_bit,
                                          saturation=config.secure_clip > 0).arrays
                target[p.pid] = [None if i not in shared else
                                 (np.asarray(a, np.float64) / weight).astype(np.float32)
                                 for i, a in enumerate(arrays)]
        if dp:
            again[p.pid] = send(config=config, rng=again_rng)
        weights[p.pid] = weight
        if logged is not None and sent.update is not None and not dp and str(p.pid) in logged:
            matches.append(logged[str(p.pid)] == update_sha256(sent.update.delta))
    return RoundView(deltas, clean, weights, [p.pid for p in people if p.policy.in_clear],
                     [p.pid for p in people if p.policy.in_secure_sum],
                     [p.pid for p in people if p.role == Role.VENDOR], dp,
                     all(matches) if matches else None, updates, vectors, config,
                     again if dp else None)


@dataclass(frozen=True)
class Verification:
    """Whether a replayed round is the round the run aggregated."""

    verified: Optional[bool]   # None: nothing to check against
    method: str                # "exact" | "noise scale" | "none"
    relative_error: Optional[float] = None  # replayed vs checkpoint step (exact method)
    noise_ratio: Optional[float] = None     # |ckpt - replay|^2 / |replay' - replay|^2 (DP)
    hashes_match: Optional[bool] = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Without DP, the replayed step may differ from the checkpoint's by float32 rounding and
#: the secure sum's fixed-point encoding only.
EXACT_TOLERANCE = 1e-3
#: Under DP, ``|checkpoint - replay|^2 / |replay' - replay|^2`` is a ratio of two
#: independent chi-squares with d degrees of freedom each (d = the model's size: ~5000
#: on the default task, so the ratio's spread is ~sqrt(4/d) = 3%); outside these bounds
#: the noise or the participants are not the run's.
NOISE_RATIO_BOUNDS = (0.7, 1.43)


def _step(spec: Any, view: RoundView, global_weights: Sequence[np.ndarray], *,
          weight_scale: float, updates: Sequence[Any], vectors: Mapping[int, np.ndarray],
          rng: np.random.Generator) -> np.ndarray:
    """The new global weights the job's aggregator makes of a replayed round, flat."""
    from fedcollab.aggregation import Aggregator
    from fedcollab.aggregation.aggregator import SecureSum
    from fedcollab.secure.layout import split_secure_sum

    config = view.config or RoundConfig()
    shapes = [tuple(np.shape(w)) for w in global_weights]
    secure = None
    if vectors:
        total = np.sum(list(vectors.values()), axis=0)
        split = split_secure_sum(total, shapes, scale=config.weight_scale,
                                 clip_bit=config.clip_bit, saturation=config.secure_clip > 0)
        secure = SecureSum(split.arrays, split.counts)
    noise = None
    if config.dp_mode == "central":
        std = config.noise_multiplier * config.clip_norm
        noise = [rng.normal(0.0, std, s) for s in shapes]
    step = Aggregator.from_spec(spec, shapes, max_samples=weight_scale).step(
        list(global_weights), list(updates), secure, count_once=config.dp_on,
        clip_norm=config.clip_norm if config.dp_mode == "central" else None, noise=noise)
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in step.weights])


def verify_replay(spec: Any, view: RoundView, global_weights: Sequence[np.ndarray],
                  checkpoint: Optional[Sequence[np.ndarray]], *, weight_scale: float,
                  rng: Optional[np.random.Generator] = None) -> Verification:
    """Compare a replayed round, aggregated by the job's own aggregator, with the run's
    checkpoint of that round (the global weights it produced)."""
    if checkpoint is None:
        return Verification(None, "none", hashes_match=view.verified,
                            note="no checkpoint of the replayed round")
    rng = rng if rng is not None else np.random.default_rng()
    start = np.concatenate([np.asarray(w, np.float64).ravel() for w in global_weights])
    real = np.concatenate([np.asarray(w, np.float64).ravel() for w in checkpoint]) - start
    mine = _step(spec, view, global_weights, weight_scale=weight_scale, updates=view.updates,
                 vectors=view.secure_vectors, rng=rng) - start
    if not view.dp:
        err = float(np.linalg.norm(mine - real) / max(np.linalg.norm(real), 1e-30))
        ok = err < EXACT_TOLERANCE and view.verified is not False
        return Verification(ok, "exact", relative_error=err, hashes_match=view.verified,
                            note="" if ok else "the replayed step is not the run's")
    again = view.again or {}
    other = _step(spec, view, global_weights, weight_scale=weight_scale,
                  updates=[again[u.pid].update for u in view.updates],
                  vectors={p: again[p].secure_vector for p in view.secure_vectors},
                  rng=rng) - start
    ratio = float(np.sum((real - mine) ** 2) / max(float(np.sum((other - mine) ** 2)), 1e-300))
    lo, hi = NOISE_RATIO_BOUNDS
    ok = lo <= ratio <= hi
    return Verification(ok, "noise scale", noise_ratio=ratio,
                        relative_error=float(np.linalg.norm(mine - real)
                                             / max(np.linalg.norm(real), 1e-30)),
                        note="DP noise is fresh entropy in the run and in the replay: the "
                             "distance to the checkpoint is checked against a second noise "
                             "draw's" + ("" if ok else "; it does not match"))


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
                      *, max_open: int = 3,
                      parties: Optional[Mapping[str, Collection[int]]] = None,
                      attacks: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Every registered inversion attack (:data:`~fedcollab.grading.inversion.
    INVERSION_ATTACKS` unless ``attacks`` is given) on open updates (up to `max_open` per
    party) and on the secure sum; the worst case for the participants under the graded
    attack is reported (each attack's under ``by_attack``), and with ``parties`` (name ->
    its participants) the graded attack's worst case for each party under ``"parties"``:
    a reconstruction counts for a party when it recovers one of that party's examples."""
    from fedcollab.grading.inversion import GRADED_INVERSION, INVERSION_ATTACKS

    chosen_attacks = INVERSION_ATTACKS if attacks is None else attacks
    if GRADED_INVERSION not in chosen_attacks:
        raise KeyError(f"inversion: the graded attack {GRADED_INVERSION!r} is not registered")
    k, b = dense
    groups = {name: set(pids) for name, pids in (parties or {}).items()}
    chosen: list[int] = []
    for members in (groups.values() or [set(view.open_pids)]):
        chosen += [p for p in view.open_pids if p in members and p not in chosen][:max_open]
    targets: list[tuple[str, list[int], np.ndarray, np.ndarray]] = []
    for pid in chosen:
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
    everyone = set(view.deltas)
    base_cache: dict[tuple[int, ...], float] = {}

    def worst_of(attack: Any) -> dict[str, dict[str, Any]]:
        worst: dict[str, dict[str, Any]] = {}
        for label, pids, kern, bias in targets:
            cands = np.asarray(attack(kern, bias), np.float64).reshape(-1, kern.shape[0])
            cands = cands[np.all(np.isfinite(cands), axis=1)]
            if len(cands) == 0:
                continue
            for name, members in [("", everyone), *groups.items()]:
                who = tuple(p for p in pids if p in members)
                if not who:
                    continue
                truths = np.concatenate([parts[p][0] for p in who]).reshape(-1, kern.shape[0])
                rel, best_psnr = _score(cands, truths)
                if who not in base_cache:
                    base_cache[who] = _score(np.asarray(mean_image, np.float64).reshape(1, -1),
                                             truths)[1]
                row: dict[str, Any] = {"psnr_db": best_psnr, "relative_error": rel,
                                       "exact": rel < 1e-3, "target": label,
                                       "baseline_psnr_db": base_cache[who],
                                       "gain_db": best_psnr - base_cache[who],
                                       "contributors": len(pids)}
                if name not in worst or row["gain_db"] > worst[name]["gain_db"]:
                    worst[name] = row
        return worst

    results = {name: worst_of(attack) for name, attack in chosen_attacks.items()}
    none = {"psnr_db": None, "relative_error": None, "exact": False, "target": "none",
            "note": "no dense update visible to the server"}
    graded = results[GRADED_INVERSION]
    out = dict(graded.get("", none))
    out["attack"] = GRADED_INVERSION
    out["by_attack"] = {name: dict(r.get("", none)) for name, r in results.items()}
    if parties is not None:
        out["parties"] = {name: graded.get(name, dict(none)) for name in groups}
    return out


def observed_secure_sum(spec: Any, view: RoundView, start: Sequence[np.ndarray],
                        checkpoint: Optional[Sequence[np.ndarray]]) -> Optional[np.ndarray]:
    """The secure sum as the server reads it off the run itself (flat, weighted as the sum
    weighs it): FedAvg's step times the total weight, less the open updates it saw.

    This is the differencing attack on the run's own output, not on the replay's secure
    vectors: only the open updates (each checked against its logged hash) and the weights
    come from the replay. None where the step is not FedAvg's plain mean (a robust rule,
    a server optimizer or learning rate), or without the round's checkpoint.
    """
    agg = spec.aggregation
    if (checkpoint is None or agg.rule != "fedavg" or agg.server_optimizer != "none"
            or agg.server_learning_rate is not None):
        return None
    parts = []
    for j, w in enumerate(start):
        step = np.asarray(checkpoint[j], np.float64) - np.asarray(w, np.float64)
        sharers = [p for p in view.deltas if view.deltas[p][j] is not None]
        total = step * sum(view.weights[p] for p in sharers)
        for p in view.open_pids:
            d = view.deltas[p][j]
            if d is not None:
                total = total - view.weights[p] * np.asarray(d, np.float64)
        parts.append(total.ravel())
    return np.concatenate(parts)


def differencing_on_view(view: RoundView, shapes: Sequence[tuple[int, ...]], *,
                         observed: Optional[np.ndarray] = None,
                         colluders: Sequence[int] = ()) -> DifferencingResult:
    """The vendor's aggregate from the open updates and the secure sum of this round.

    ``observed``: the secure sum read off the run (:func:`observed_secure_sum`); without
    it the replay's own secure vectors stand in, and the estimate is built from the same
    arrays as the truth (it cannot fail, which is why the grader passes ``observed``).
    ``colluders``: participants who tell the server what they put into the sum.
    """
    from fedcollab.grading.differencing import EXACT, EXACT_FROM_RUN

    vendor = frozenset(view.vendor_pids)
    open_updates = {p: view.vector(p, shapes) for p in view.open_pids}
    total = observed if observed is not None else \
        np.sum([view.vector(p, shapes) for p in view.secure_pids], axis=0)
    secure = [(frozenset(view.secure_pids), total)] if view.secure_pids else []
    truth = np.sum([view.vector(p, shapes, clean=True) for p in view.vendor_pids], axis=0)
    known = {p: view.vector(p, shapes) for p in colluders if p in view.deltas}
    return vendor_by_differencing(open_updates, secure, truth, vendor,
                                  exact_below=EXACT if observed is None else EXACT_FROM_RUN,
                                  known=known)


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
