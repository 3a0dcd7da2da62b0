"""The output contracts users and outside tools rely on (docs/outputs.md, docs/bench.md,
docs/grading.md): the keys and types of ``scripts/bench`` JSON lines, ``summary.json``
and ``scorecard.json``. Tests check real outputs against them, so a clean clone always
runs the check. Extra keys are fine; missing or mistyped ones are not."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NUM = (int, float)
BENCH: dict[str, dict[str, Any]] = {
    "fedavg_vs_reference": {"clients": int, "rounds": int, "fedcollab_rounds_seconds": NUM,
                            "reference_rounds_seconds": NUM, "ratio": NUM,
                            "fedcollab_accuracy": NUM, "reference_accuracy": NUM},
    "memory": {"clients": int, "rounds": int, "peak_rss_gib": NUM},
    "secure_round": {"clients": int, "protocol": str, "rounds_seconds": NUM,
                     "ratio_to_plain": NUM},
    "secure_scaling": {"protocol": str, "n": list, "seconds": list, "exponent": NUM},
    "secure_dropout": {"clients": int, "dropout": NUM, "ratio_to_no_dropout": NUM},
    "dp": {"clients": int, "sampling_rate": NUM, "rounds": int, "noise_multiplier": NUM,
           "epsilon": NUM, "delta": NUM, "accuracy": NUM},
    "optimizers": {"rounds_to_0_90": dict},
    "grade": {"budget": str, "seconds": NUM, "per_attack_seconds": dict},
    "service_load": {"clients": int, "seconds": NUM, "requests_per_second": NUM,
                     "p50_ms": NUM, "p99_ms": NUM, "errors": int, "jobs_lost": int},
    "worker_scaling": {"workers": list, "seconds": list, "speedup": NUM},
    "service_latency": {"rounds": int, "warm_seconds": NUM, "cold_seconds": NUM, "ratio": NUM},
    "cold_start": {"job_wall_seconds": NUM, "tf_import_seconds": NUM, "ratio": NUM,
                   "phases_seconds": dict},
    "scale": {"registered": list, "sampled_fraction": NUM,
              "seconds_per_sampled_participant": list, "peak_rss_gib": list, "ratio": NUM},
    "secure_floor": {"clients": int, "neighbours": int, "floor_ms": NUM, "overhead_ms": NUM,
                     "ratio": NUM},
    "service_burst": {"jobs_together": int, "submit_to_done_seconds": list,
                      "ratio_last_to_first": NUM},
    "cross_silo": {"rounds": int, "remote_seconds_per_round": NUM,
                   "embedded_seconds_per_round": NUM, "ratio": NUM, "bytes_per_stage": dict},
}
SUMMARY = {"rounds_completed": int, "wall_seconds": NUM, "rounds_seconds": NUM,
           "participants": (int, list, dict), "bytes_up": int, "bytes_down": int}
MIX = {"name": str, "policy": dict, "utility": dict, "attacks": dict, "privacy": dict,
       "cost": dict, "grades": dict}
ATTACKS = {"membership": ("auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"),
           "inversion": ("psnr_db", "relative_error", "exact"),
           "differencing": ("relative_error", "exact"),
           "lying_server": ("recovered",),
           "backdoor": (), "byzantine": ()}


def _keys(obj: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> list[str]:
    problems = []
    for key, kind in spec.items():
        if key not in obj:
            problems.append(f"{where}: missing '{key}'")
        elif not isinstance(obj[key], kind) or (isinstance(obj[key], bool) and kind is not bool):
            problems.append(f"{where}: '{key}' is {type(obj[key]).__name__}, expected {kind}")
    return problems


def bench_problems(text: str) -> list[str]:
    """Problems of ``scripts/bench`` output (its JSON lines; other lines are ignored)."""
    problems: list[str] = []
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip().startswith("{"):
            continue
        data = json.loads(line)
        seen += 1
        name = data.get("bench")
        if name in BENCH:
            problems += _keys(data, BENCH[name], f"line {number} ({name})")
    return problems if seen else ["no JSON lines"]


def summary_problems(path: Path) -> list[str]:
    """Problems of a job's ``summary.json``."""
    data = json.loads(Path(path).read_text())
    problems = _keys(data, SUMMARY, "summary.json")
    if "final_accuracy" not in data and "final_loss" not in data:
        problems.append("summary.json: needs final_accuracy (classification) or final_loss")
    return problems


def scorecard_problems(path: Path) -> list[str]:
    """Problems of ``scorecard.json``."""
    data = json.loads(Path(path).read_text())
    problems = _keys(data, {"mixes": list, "pareto_front": list, "recommendation": dict},
                     "scorecard")
    for mix in data.get("mixes", []):
        where = f"mix {mix.get('name')}"
        problems += _keys(mix, MIX, where)
        for attack, fields in ATTACKS.items():
            found = mix.get("attacks", {}).get(attack)
            if found is None:
                problems.append(f"{where}: no '{attack}' attack")
                continue
            problems += [f"{where}: {attack} lacks '{f}'" for f in fields if f not in found]
    return problems
