"""Canary clients in the run: the spec of a mix's audit run, and its empirical epsilon.

Each graded mix is run a second time with ``k`` canary clients added to its population
(:func:`canary_spec`): one more group of ``behaviour: canary``, which holds no data,
trains nothing and sends its fixed random direction at the clip norm every round it is
sampled, through the real participant path (:func:`fedcollab.worker.outgoing.outgoing`:
clipping, DP noise, the secure sum's masks, the aggregation rule). The real participants
keep their data, seeds and sampling (the canary group comes last, so the per-group draws
before it are unchanged). :func:`audit_run` reads the run's checkpoints and measures the
canaries' cosines (:mod:`fedcollab.grading.audit`).

Why a second run and not the graded one: the default task has 11 participants, and
enough canaries to estimate a spread (100) would be nine in ten of each round's sum, so
the graded model would be mostly canaries. The audit run's model is not graded.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from fedcollab.spec.roster import Role, Sharing, policy

__all__ = ["canary_spec", "audit_run", "no_audit", "CANARY_GROUP", "HELD_OUT",
           "AUDITED_OBSERVERS"]

#: The canaries' group name in an audit run's spec.
CANARY_GROUP = "canaries"
#: Held-out directions (never sent): they cost numpy only, so many, for a precise null.
HELD_OUT = 1000
#: Who the audit speaks for, and which statistic speaks for them.
AUDITED_OBSERVERS = {"release_reader": "cosine with the release's total change w_T - w_0",
                     "outputs_reader": "largest cosine with any round's change "
                                       "w_t - w_(t-1)"}

#: DP modes whose noise is split over the secure sum's members: a canary outside the sum
#: would add the full noise itself and make the run noisier than the graded one.
_SPLIT_NOISE = ("distributed", "distributed_discrete_gaussian")


def canary_spec(mspec: Any, count: int) -> tuple[Any, str]:
    """The mix's spec with ``count`` canary clients as one more group, and their sharing.

    They join the secure sum where the mix's DP noise is split over its members (each
    member adds ``z C / sqrt(m)``, so the sum's noise stays what the graded run had);
    otherwise they are open (without DP, or with central noise, the release is the same
    function of the updates either way, and open costs no masking).
    """
    from fedcollab.spec.schema import GroupSpec

    secure = any(policy(g.sharing).in_secure_sum for g in mspec.participants)
    sharing = Sharing.SECURE if secure and mspec.privacy.dp.mode in _SPLIT_NOISE \
        else Sharing.OPEN
    names = {g.name for g in mspec.participants}
    name = CANARY_GROUP
    while name in names:
        name += "_"
    group = GroupSpec(name=name, role=Role.COMMUNITY.value, count=count,
                      sharing=sharing.value, behaviour="canary")
    return dataclasses.replace(mspec, participants=(*mspec.participants, group)), sharing.value


def _models(result: Any, initial: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """The flat global model before round 1 and after every round the run checkpointed."""
    from fedcollab.io import load_npz

    flat = [np.concatenate([np.asarray(w, np.float64).ravel() for w in initial])]
    rounds = []
    folder = Path(result.out_dir) / "checkpoints"
    for path in sorted(folder.glob("round-*.npz")):
        arrays, _ = load_npz(path)
        flat.append(np.concatenate([np.asarray(arrays[f"w{i}"], np.float64).ravel()
                                    for i in range(len(initial))]))
        rounds.append(int(path.stem.split("-")[1]))
    return flat, rounds


def audit_run(cspec: Any, result: Any, *, initial: list[np.ndarray], delta: float,
              accountant: Mapping[str, Any], sharing: str, seed: int,
              held_out: int = HELD_OUT) -> dict[str, Any]:
    """The empirical epsilon of an audit run, per observer, beside the accountant's.

    Args:
        cspec: the audit run's spec (:func:`canary_spec`).
        result: its JobResult (checkpoints of every round kept).
        initial: the global weights before round 1 (the graded run's).
        delta: the card's delta.
        accountant: the graded run's epsilon per observer (None: unbounded).
        sharing: how the canaries shared (open or secure).
        seed: the job seed (the canaries' directions are drawn from it).
    """
    from fedcollab.grading.audit import canary_statistics, empirical_epsilon
    from fedcollab.spec.roster import Roster
    from fedcollab.worker.outgoing import canary_direction

    t0 = time.perf_counter()
    people = Roster(cspec)
    g = next(i for i, grp in enumerate(cspec.participants) if grp.behaviour == "canary")
    inserted = list(people.group_range(g))
    shapes = [tuple(np.shape(w)) for w in initial]
    models, rounds = _models(result, initial)
    base: dict[str, Any] = {
        "method": "canary clients in the run (Andrew et al., ICLR 2024)",
        "canaries": len(inserted), "held_out": held_out, "sharing": sharing,
        "clip_norm": float(cspec.privacy.dp.clip_norm), "delta": delta,
        "rounds": len(rounds), "run_seconds": result.summary.get("wall_seconds")}
    if len(models) < 2:
        return dict(base, value=None, ci=[None, None], note="the audit run kept no round",
                    seconds=time.perf_counter() - t0)

    def flat(index: int, *, out: bool) -> np.ndarray:
        return np.concatenate([d.ravel() for d in
                               canary_direction(seed, index, shapes, held_out=out)])

    ins = canary_statistics(lambda i: flat(inserted[i], out=False), len(inserted), models)
    outs = canary_statistics(lambda i: flat(i, out=True), held_out, models)
    rng = np.random.default_rng([seed, 61])
    by: dict[str, Any] = {}
    for k, observer in enumerate(AUDITED_OBSERVERS):
        got = empirical_epsilon(ins[k], outs[k], delta=delta, rng=rng).to_json()
        eps = accountant.get(observer)
        got.update(statistic=AUDITED_OBSERVERS[observer],
                   accountant=eps if isinstance(eps, (int, float)) and math.isfinite(eps)
                   else None)
        by[observer] = got
    release = by["release_reader"]
    analysis = time.perf_counter() - t0
    run = float(result.summary.get("wall_seconds") or 0.0)
    return dict(base, value=release["value"], ci=release["ci"], mu=release["mu"],
                by_observer=by, analysis_seconds=analysis, seconds=run + analysis,
                note="k canary clients in a second run of this mix (same spec, seed and "
                     "real participants); the graded run has none")


def no_audit(note: str, *, seconds: Optional[float] = None) -> dict[str, Any]:
    """The audit's block when its run failed or never ran."""
    return {"value": None, "ci": [None, None], "method": "canary clients in the run "
            "(Andrew et al., ICLR 2024)", "by_observer": {}, "note": note, "seconds": seconds}
