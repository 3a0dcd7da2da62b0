"""Letter grades A-F per axis from measured figures, the Pareto front and the
recommendation.

Every threshold here is documented in docs/grading.md with its reason and source;
change both together. A grade is only given where a measurement exists: a missing
figure is ``"N/A"``, never an implicit A. Confidentiality is graded from what the
differencing and lying-server attacks recovered, never from the protocol's name.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

__all__ = ["GRADES", "GRADED_DIFFERENCING", "NA", "UNKNOWN", "grade_membership", "grade_inversion",
           "grade_confidentiality",
           "grade_backdoor", "grade_byzantine", "grade_lying_server", "grade_privacy_budget",
           "grade_cost", "grade_parties",
           "grade_utility", "grade_mix", "privacy_score", "pareto_front", "recommend",
           "PRIORITIES", "frontier_points", "audit_exceeds", "audit_excess"]

GRADES = ("A", "B", "C", "D", "F")
NA = "N/A"
#: An axis measured on a replay that does not match the run (or could not be checked):
#: not evidence either way, so never an A and never dropped from the privacy score.
UNKNOWN = "unknown"
PRIORITIES = ("privacy", "utility", "cost", "balanced")


def _band(value: float, limits: Sequence[float]) -> str:
    """The first grade whose upper limit ``value`` does not exceed (F beyond all four)."""
    for grade, limit in zip(GRADES, limits):
        if value <= limit:
            return grade
    return "F"


def _worse(*grades: str) -> str:
    real = [g for g in grades if g in GRADES]
    if not real:
        return NA
    return max(real, key=GRADES.index)


def _num(value: Any) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if not math.isnan(out) else None


# membership: TPR/FPR lift at the lowest FPR the data resolves, and AUC
LIFT_LIMITS = (math.e, 10.0, 30.0, 50.0)
AUC_LIMITS = (0.55, 0.60, 0.65, 0.75)


def _low(m: Mapping[str, Any], key: str) -> Optional[float]:
    """The lower end of ``key``'s interval (``key + "_ci"``), else the point figure."""
    ci = m.get(key + "_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and _num(ci[0]) is not None:
        return _num(ci[0])
    return _num(m.get(key))


def grade_membership(m: Mapping[str, Any], *, non_members: int) -> str:
    """Worse of the low-FPR lift band and the AUC band (Carlini et al. 2022), each taken
    on its interval's bound: the lift on the TPR interval's lower end, the AUC on how far
    the whole interval lies from chance (0.5 inside it is no distance). A grade worse than
    A is what the data show at the card's confidence, not what one draw of the test set
    happened to give."""
    auc = _num(m.get("auc"))
    if auc is None:
        return NA
    fpr, key = (0.001, "tpr_at_0_1pct_fpr") if non_members >= 1000 else (0.01, "tpr_at_1pct_fpr")
    tpr = _low(m, key)
    lift_grade = _band(tpr / fpr, LIFT_LIMITS) if tpr is not None else NA
    ci = m.get("auc_ci")
    lo, hi = (_num(ci[0]), _num(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 \
        else (auc, auc)
    lo = auc if lo is None else lo
    hi = auc if hi is None else hi
    distance = max(lo - 0.5, 0.5 - hi, 0.0)
    return _worse(_band(0.5 + distance, AUC_LIMITS), lift_grade)


# inversion: dB the best reconstruction gains over guessing the mean image
INVERSION_GAIN_LIMITS = (1.0, 3.0, 6.0, 10.0)


def grade_inversion(inv: Mapping[str, Any]) -> str:
    psnr = _num(inv.get("psnr_db"))
    if psnr is None:
        return NA
    if inv.get("exact"):
        return "F"
    base = _num(inv.get("baseline_psnr_db"))
    return _band(psnr - (base if base is not None else 0.0), INVERSION_GAIN_LIMITS)


#: Cosine gain of a recovered vector over the round's whole aggregate (which isolates
#: nothing, yet points roughly where every update of the round points): the share of the
#: remaining angle to the true update that the recovery closes. D, C, B from these up.
COSINE_LIMITS = (0.9, 0.5, 0.2)


def _recovery_grade(err: Optional[float], cos: Optional[float],
                    base: Optional[float] = None) -> Optional[str]:
    """The grade of a recovered vector by the worse of its relative-error and cosine bands
    (D: error < 0.1 or cosine gain >= 0.9; C: error < 0.5 or gain >= 0.5; B: gain >= 0.2);
    None when it recovered nothing beyond the round's aggregate. A large relative error
    alone is no all-clear: a vector off in scale (or noised) can still point where the
    update points."""
    from fedcollab.grading.differencing import cosine_gain

    c = cosine_gain(_num(cos), _num(base))
    if (err is not None and err < 0.1) or c >= COSINE_LIMITS[0]:
        return "D"
    if (err is not None and err < 0.5) or c >= COSINE_LIMITS[1]:
        return "C"
    if c >= COSINE_LIMITS[2]:
        return "B"
    return None


def grade_confidentiality(diff: Mapping[str, Any], lying: Mapping[str, Any]) -> str:
    """The vendor's confidentiality against the server model the spec declares.

    F when differencing recovers the vendor's aggregate exactly, or when the spec
    declares a malicious server model and the lying-server replay still recovers
    the target (the protocol fails its own claim). Against an honest-but-curious
    model the lying server has its own axis (:func:`grade_lying_server`). Otherwise the
    recovery's relative error and cosine to the truth (:func:`_recovery_grade`), and
    when it recovers nothing, the smallest group the vendor hides in. Where secure sums
    across rounds isolate fewer vendor sites than a sum (``diff["across_rounds"]
    ["vendor"]``), that recovery is graded on the same bands and the worse counts.
    """
    err = _num(diff.get("relative_error"))
    if err is None:
        return NA
    if diff.get("exact") or (lying.get("recovered") and lying.get("server") == "malicious"):
        return "F"
    rows = [diff.get(name) for name in GRADED_DIFFERENCING]
    cross = [_cross_round_grade(row.get("vendor") if isinstance(row, Mapping) else None)
             for row in rows]
    one = _recovery_grade(err, diff.get("cosine"), diff.get("baseline_cosine")) or NA
    group = int(diff.get("min_group_seen") or 0)
    return _worse("A" if group >= 10 else ("B" if group >= 5 else "C"), one, *cross)


#: The differencing attacks (``fedcollab.grading.measure.DIFFERENCING_ATTACKS`` rows,
#: each under ``diff[name]["vendor"]``) whose recovery the confidentiality grade takes,
#: besides the within-round figure: pre-registered, the worst counts. Other rows are
#: reported beside them, not graded.
GRADED_DIFFERENCING: tuple[str, ...] = ("across_rounds",)


def _cross_round_grade(cross: Any) -> str:
    """F exact; otherwise :func:`_recovery_grade`'s bands on the isolated vendor sites'
    recovery; N/A when it recovers nothing or isolates no vendor site."""
    if not isinstance(cross, Mapping) or cross.get("target") != "vendor sites":
        return NA
    err = _num(cross.get("relative_error"))
    if err is None or not cross.get("isolated"):
        return NA
    if cross.get("exact"):
        return "F"
    return _recovery_grade(err, cross.get("cosine"), cross.get("baseline_cosine")) or NA


def grade_lying_server(lying: Mapping[str, Any], confidentiality: str) -> str:
    """F when a server deviating from the protocol reads a participant's input; A when
    the replay failed against the participants' real code. Without a secure group
    there is nothing more for a lying server to learn than for an honest one."""
    if lying.get("recovered") is None:
        return confidentiality
    return "F" if lying["recovered"] else "A"


BACKDOOR_LIMITS = (0.20, 0.50, 0.80)


def grade_backdoor(row: Optional[Mapping[str, Any]], clean: Optional[Mapping[str, Any]]) -> str:
    if not row or _num(row.get("success_rate")) is None:
        return NA
    asr = float(row["success_rate"])
    base = _num((clean or {}).get("success_rate")) or 0.0
    mta_drop = (_num((clean or {}).get("main_accuracy")) or 0.0) - \
        (_num(row.get("main_accuracy")) or 0.0)
    if asr <= base + 0.05 and mta_drop <= 0.01:
        return "A"
    for grade, limit in zip(("B", "C", "D"), BACKDOOR_LIMITS):
        if asr <= limit:
            return grade
    return "F"


BYZANTINE_DROP_LIMITS = (0.01, 0.03, 0.10, 0.25)


def grade_byzantine(row: Optional[Mapping[str, Any]], baseline: Optional[float]) -> str:
    if not row or baseline is None or _num(row.get("accuracy")) is None:
        return NA
    return _band(max(0.0, baseline - float(row["accuracy"])), BYZANTINE_DROP_LIMITS)


EPSILON_LIMITS = (1.0, 8.0, 10.0, 100.0)


def grade_privacy_budget(epsilon: Optional[float], *, measured: bool = True) -> str:
    """No DP is an unbounded epsilon: F (an epsilon is a claim; none was made)."""
    if not measured:
        return NA
    if epsilon is None or not math.isfinite(epsilon):
        return "F"
    return _band(epsilon, EPSILON_LIMITS)


COST_TIME_LIMITS = (1.1, 1.5, 3.0, 10.0)
COST_BYTES_LIMITS = (1.2, 2.0, 4.0, 10.0)


def grade_cost(cost: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """Bytes up per participant-round against the all-open mix.

    Bytes are a function of the spec and the protocol, so two identical grading runs give
    the same grade. Seconds per round are on the card beside it but not graded: runs side
    by side on a shared machine moved the time ratio across a band between identical
    runs. (``COST_TIME_LIMITS`` stay for a caller that wants the time band.)
    """
    b = _num(cost.get("bytes_up_per_participant_round"))
    b0 = _num(reference.get("bytes_up_per_participant_round"))
    if b is None or not b0:
        return NA
    return _band(b / b0, COST_BYTES_LIMITS)


UTILITY_DROP_LIMITS = (0.01, 0.02, 0.05, 0.10)


def grade_utility(accuracy: Optional[float], best: Optional[float]) -> str:
    if accuracy is None or best is None:
        return NA
    return _band(max(0.0, best - accuracy), UTILITY_DROP_LIMITS)


def audit_excess(privacy: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Observers for whom the canary audit's interval lies wholly above the accountant's
    epsilon: the run leaks more than its accountant claims (a bug in the noise, the
    clipping or the accounting). Each audited observer (release reader: the final
    model; outputs reader: every round's) is held against the accountant's figure for
    that observer, else the headline figure. Returns ``{observer: (audit's lower bound,
    accountant's epsilon)}``."""
    by = privacy.get("by_observer")
    by = by if isinstance(by, Mapping) else {}
    audit = privacy.get("empirical_epsilon") or {}
    audited = audit.get("by_observer")
    if not isinstance(audited, Mapping) or not audited:  # a single figure: the release's
        audited = {"release_reader": audit}
    out: dict[str, tuple[float, float]] = {}
    for observer, row in audited.items():
        if not isinstance(row, Mapping):
            continue
        eps = _num(by.get(observer))
        eps = eps if eps is not None else _num(privacy.get("epsilon"))
        ci = row.get("ci") or [None, None]
        low = _num(ci[0]) if isinstance(ci, (list, tuple)) and ci else None
        if eps is not None and low is not None and low > eps:
            out[str(observer)] = (low, eps)
    return out


def audit_exceeds(privacy: Mapping[str, Any]) -> bool:
    """Whether the canary audit contradicts the accountant for any observer
    (:func:`audit_excess`)."""
    return bool(audit_excess(privacy))


def _audited(grade: str, privacy: Mapping[str, Any]) -> str:
    """F, whatever the accountant says, when the audit contradicts it."""
    return "F" if audit_exceeds(privacy) else grade


def grade_mix(mix: Mapping[str, Any], *, reference_cost: Mapping[str, Any],
              best_accuracy: Optional[float], baseline_accuracy: Optional[float],
              non_members: int) -> dict[str, str]:
    """Every axis's grade. The axes measured on the replayed round (inversion,
    confidentiality, and the lying server where it takes confidentiality's grade) are
    :data:`UNKNOWN` unless ``replay_verified`` is true: a replay that is not the run's
    round says nothing about the run."""
    attacks = mix["attacks"]
    own = mix.get("defence", "fedavg")
    backdoor = attacks.get("backdoor", {})
    replayed = mix.get("replay_verified") is True
    confidentiality = grade_confidentiality(attacks.get("differencing", {}),
                                            attacks.get("lying_server", {})) \
        if replayed else UNKNOWN
    return {
        "membership": grade_membership(attacks.get("membership", {}), non_members=non_members),
        "inversion": grade_inversion(attacks.get("inversion", {})) if replayed else UNKNOWN,
        "confidentiality": confidentiality,
        "lying_server": grade_lying_server(attacks.get("lying_server", {}), confidentiality),
        "backdoor": grade_backdoor(backdoor.get(own), backdoor.get("clean")),
        "byzantine": grade_byzantine(attacks.get("byzantine", {}).get(own), baseline_accuracy),
        "privacy_budget": _audited(grade_privacy_budget(mix["privacy"].get("epsilon")),
                                   mix["privacy"]),
        "cost": grade_cost(mix["cost"], reference_cost),
        "utility": grade_utility(mix["utility"].get("accuracy"), best_accuracy),
    }


def grade_parties(mix: Mapping[str, Any], *, non_members: int) -> dict[str, dict[str, str]]:
    """Per party (``mix["parties"]``): membership, inversion and differencing on the same
    bands as the mix's axes; for the vendor also per observer (the server alone, the server
    with every community participant colluding). Replay-based axes are ``unknown`` unless
    the replay was verified."""
    replayed = mix.get("replay_verified") is True
    out: dict[str, dict[str, str]] = {}
    for party, row in (mix.get("parties") or {}).items():
        att = row.get("attacks", {})
        diff = att.get("differencing") or {}
        grades = {"membership": grade_membership(att.get("membership") or {},
                                                 non_members=non_members),
                  "inversion": grade_inversion(att.get("inversion") or {}) if replayed
                  else UNKNOWN,
                  "differencing": grade_confidentiality(diff, {}) if replayed else UNKNOWN}
        if isinstance(att.get("malicious_model"), Mapping) and \
                "psnr_db" in att["malicious_model"]:
            # a malicious server's model (imprint, model inconsistency): the inversion bands
            grades["inversion:malicious_model"] = grade_inversion(att["malicious_model"]) \
                if replayed else UNKNOWN
        for name, seen in (diff.get("observers") or {}).items():
            if isinstance(seen, Mapping) and "relative_error" in seen:
                grades[f"differencing:{name}"] = grade_confidentiality(seen, {}) \
                    if replayed else UNKNOWN
        out[party] = grades
    return out


PRIVACY_AXES = ("membership", "inversion", "confidentiality", "lying_server", "privacy_budget")
_POINTS = {"A": 4.0, "B": 3.0, "C": 2.0, "D": 1.0, "F": 0.0}


def privacy_score(grades: Mapping[str, str]) -> Optional[float]:
    """Mean grade points (A=4 ... F=0) over every privacy axis. An axis without a grade
    (``N/A``: the attack does not apply, e.g. analytic inversion on a CNN; ``unknown``:
    the replay did not match the run) counts 0, like F: leaving it out would raise the
    mean of a mix whose missing axis might be its worst, and no evidence of protection is
    no protection. ``None`` only when no privacy axis was graded at all."""
    if not any(grades.get(a) in _POINTS for a in PRIVACY_AXES):
        return None
    return sum(_POINTS.get(grades.get(a, NA), 0.0) for a in PRIVACY_AXES) / len(PRIVACY_AXES)


def frontier_points(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The sweep's points (mixes named ``<mix>@eps=<e>``): epsilon (the accountant's), the
    accuracy per party, and the measured attack success (membership TPR at 1% FPR with its
    upper bound); ``pareto`` marks the points no other point beats on epsilon (lower) and
    every party's accuracy (higher) at once."""
    from fedcollab.grading.mixes import frontier_point

    points: list[dict[str, Any]] = []
    for r in rows:
        where = frontier_point(str(r["name"]))
        if where is None:
            continue
        mem = r["attacks"].get("membership", {})
        ci = mem.get("tpr_at_1pct_fpr_ci") or [None, None]
        accuracy = {party: (row.get("utility") or {}).get("accuracy")
                    for party, row in (r.get("parties") or {}).items()}
        vendor = (r.get("parties") or {}).get("vendor", {}).get("utility", {})
        if vendor.get("vendor_accuracy") is not None:
            accuracy["vendor_own_model"] = vendor["vendor_accuracy"]
        points.append({"mix": r["name"], "base": where[0], "target_epsilon": where[1],
                       "epsilon": r["privacy"].get("epsilon"),
                       "noise_multiplier": r["privacy"].get("noise_multiplier"),
                       "accuracy": dict(accuracy, overall=r["utility"].get("accuracy")),
                       "attack_success": {"membership_tpr_at_1pct_fpr":
                                          mem.get("tpr_at_1pct_fpr"),
                                          "membership_tpr_at_1pct_fpr_upper": ci[1],
                                          "membership_auc": mem.get("auc")}})

    def key(p: Mapping[str, Any]) -> tuple[float, ...]:
        eps = _num(p["epsilon"])
        accs = [_num(v) for k, v in p["accuracy"].items() if k in ("community", "vendor")]
        return (-(eps if eps is not None else math.inf),
                *[a if a is not None else -math.inf for a in accs])

    for p in points:
        mine = key(p)
        p["pareto"] = not any(
            all(a >= b for a, b in zip(key(q), mine)) and key(q) != mine
            for q in points if q is not p and len(key(q)) == len(mine))
    return points


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names not dominated in (privacy, utility), both higher-is-better."""
    front = []
    for name, (p, u) in points.items():
        dominated = any((p2 >= p and u2 >= u) and (p2 > p or u2 > u)
                        for other, (p2, u2) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return front


def _score(mix: Mapping[str, Any], priority: str) -> float:
    g = mix["grades"]
    pts = {k: _POINTS.get(v, 2.0) for k, v in g.items()}
    privacy = privacy_score(g) or 0.0
    security = (pts["backdoor"] + pts["byzantine"]) / 2
    # (privacy, utility, security, cost); balanced counts cost half: seconds per round of
    # short runs on a shared machine are the noisiest figure on the card
    weights = {"privacy": (3, 1, 1, 1), "utility": (1, 3, 1, 1), "cost": (1, 1, 1, 3),
               "balanced": (1, 1, 1, 0.5)}[priority]
    return (weights[0] * privacy + weights[1] * pts["utility"] + weights[2] * security
            + weights[3] * pts["cost"])


def recommend(mixes: Sequence[Mapping[str, Any]], front: Sequence[str], priority: str,
              *, scenario: str) -> dict[str, str]:
    """Pick the best-scoring Pareto mix for the priority and explain it from the figures."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority: got {priority!r}, expected one of {', '.join(PRIORITIES)}")
    pool = [m for m in mixes if m["name"] in front] or list(mixes)
    # a model with less than half the best accuracy (e.g. a sweep point at epsilon 1, near
    # chance) is no recommendation, whatever its privacy, while any other is left
    best_acc = max((_num(m["utility"].get("accuracy")) or 0.0 for m in mixes), default=0.0)

    def usable(m: Mapping[str, Any]) -> bool:
        return (_num(m["utility"].get("accuracy")) or 0.0) >= best_acc / 2

    pool = [m for m in pool if usable(m)] or [m for m in mixes if usable(m)] or pool
    best = max(pool, key=lambda m: (_score(m, priority), m["name"] == pool[0]["name"]))
    g, u, c = best["grades"], best["utility"], best["cost"]
    att = best["attacks"]
    acc = u.get("accuracy")
    others = [m for m in mixes if m["name"] != best["name"]]
    top_acc = max((m["utility"].get("accuracy") or 0.0 for m in mixes), default=0.0)
    eps = best["privacy"].get("epsilon")
    parts = [
        f"For a {priority} priority in this scenario ({scenario}), fedcollab recommends "
        f"'{best['name']}'.",
        f"Performance: accuracy {acc:.3f} against {top_acc:.3f} for the most accurate mix "
        f"(utility {g['utility']}); per group " + ", ".join(
            f"{k} mean {v['mean']:.3f} (worst {v['min']:.3f})"
            for k, v in u.get("per_group", {}).items()) + "." if acc is not None else
        "Performance: not measured.",
        f"Privacy: membership AUC {att['membership'].get('auc', float('nan')):.3f} "
        f"({g['membership']}), best update inversion {att['inversion'].get('psnr_db') or 0:.1f} dB "
        f"on the {att['inversion'].get('target', 'update')} ({g['inversion']}), the vendor's "
        f"aggregate {'recovered exactly' if att['differencing'].get('exact') else 'not isolated'} "
        f"by differencing (relative error {att['differencing'].get('relative_error') or 0:.3g}, "
        f"confidentiality {g['confidentiality']}), a server that lies "
        f"{'reads' if att['lying_server'].get('recovered') else 'does not read'} a secure "
        f"participant's input (lying server {g['lying_server']}), epsilon "
        f"{'unbounded (no DP)' if eps is None else f'{eps:.2f}'} ({g['privacy_budget']}).",
        f"Security: backdoor {g['backdoor']}, Byzantine {g['byzantine']} under its rule "
        f"'{best.get('defence', 'fedavg')}'.",
        f"Cost: {c.get('seconds_per_round', 0):.3f} s per round, "
        f"{int(c.get('bytes_up_per_participant_round') or 0)} bytes up per participant-round "
        f"({g['cost']}).",
        "Interpretability: " + ("the vendor keeps private layers, so the public release is "
                                "not the model the vendor serves; explanations must use both."
                                if best.get("private_layers") else
                                "one shared model, released as open weights, is what everyone "
                                "serves, so it can be inspected directly."),
    ]
    if others:
        parts.append("Pareto front: " + ", ".join(front) + ".")
    return {"mix": str(best["name"]), "text": " ".join(parts)}
