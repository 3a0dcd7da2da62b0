#!/usr/bin/env python3
"""Check that fedcollab's workers use this machine's NVIDIA GPU(s); print JSON.

Runs the benchmark workload (scripts/bench.py, N=100) and a CNN job
(``task.model: cnn``), each once with GPU workers (``resources.gpus_per_worker``)
and once with CPU workers, and prints one JSON object per run: where a worker
with those resources lands (node, TensorFlow device, Ray GPU ids) and seconds
per round. On a machine without an NVIDIA GPU it says so in one line, exit 0.
Usage: scripts/gpu-check [--rounds R] [--gpus-per-worker F] [--workers W]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
DEADLINE_SECONDS = 300.0


def nvidia_gpus() -> tuple[list[str], str]:
    """The GPUs ``nvidia-smi -L`` lists, or why there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "nvidia-smi not found"
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"nvidia-smi failed ({err.__class__.__name__})"
    gpus = [line.strip() for line in listing.stdout.splitlines() if line.startswith("GPU ")]
    return gpus, "" if gpus else "nvidia-smi lists no GPU"


def probe_placement(ray: Any, gpus_per_worker: float) -> dict[str, Any]:
    """Where a worker with these resources lands and what TensorFlow sees there."""
    from fedcollab.cluster.connect import node_info
    from fedcollab.worker.training import device_info, enable_gpu_memory_growth

    @ray.remote(num_cpus=1, num_gpus=gpus_per_worker)
    def probe() -> dict[str, Any]:
        growth = enable_gpu_memory_growth()
        return {**device_info(), **node_info(), "memory_growth_on": growth}

    return dict(ray.get(probe.remote(), timeout=120))


def run_one(ray: Any, name: str, spec: Any, gpus_per_worker: float) -> dict[str, Any]:
    from bench import run_fedcollab

    placement = probe_placement(ray, gpus_per_worker)
    t0 = time.perf_counter()
    summary = run_fedcollab(spec)
    return {"check": name, "gpus_per_worker": gpus_per_worker,
            "workers": len(summary["workers"]), "rounds": summary["rounds_completed"],
            "seconds_per_round": summary["seconds_per_round"],
            "wall_seconds": time.perf_counter() - t0,
            "final_accuracy": summary.get("final_accuracy"),
            "device": placement["device"], "gpu_ids": placement["gpu_ids"],
            "node_id": placement["node_id"], "host": placement["host"]}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=float, default=0.5)
    parser.add_argument("--cpu-only", action="store_true",
                        help="run the CPU-worker checks only (works without a GPU)")
    args = parser.parse_args(argv)
    gpus, why = nvidia_gpus()
    if not gpus and not args.cpu_only:
        print(f"gpu-check: no NVIDIA GPU on this machine ({why}); nothing to check")
        return 0
    from bench import workload_spec

    from fedcollab.cluster.connect import connect

    start = time.perf_counter()
    modes = [0.0] if args.cpu_only else [args.gpus_per_worker, 0.0]
    with connect(None, num_gpus=len(gpus) or None) as ray:
        visible = probe_placement(ray, 1.0 if gpus else 0.0) if not args.cpu_only else None
        if visible is not None and not visible["memory_growth_on"]:
            print(json.dumps({"check": "tensorflow", "ok": False, "gpus": gpus,
                              "error": "an NVIDIA GPU is present but TensorFlow in the worker "
                                       "sees none; install tensorflow[and-cuda]"}), flush=True)
            return 1
        print(json.dumps({"check": "machine", "gpus": gpus, "cpus": os.cpu_count(),
                          "worker_tf_gpus": visible["memory_growth_on"] if visible else []}),
              flush=True)
        for gpw in modes:
            kind = "gpu" if gpw else "cpu"
            resources = {"workers": args.workers, "cpus_per_worker": 1, "gpus_per_worker": gpw}
            bench_spec = workload_spec(100, rounds=args.rounds, name=f"gpu-check-bench-{kind}",
                                       resources=resources)
            cnn_spec = workload_spec(100, rounds=args.rounds, name=f"gpu-check-cnn-{kind}",
                                     resources=resources, task__model="cnn")
            for name, spec in ((f"bench_{kind}_workers", bench_spec),
                               (f"cnn_{kind}_workers", cnn_spec)):
                print(json.dumps(run_one(ray, name, spec, gpw)), flush=True)
    elapsed = time.perf_counter() - start
    print(json.dumps({"check": "total", "seconds": elapsed,
                      "within_deadline": elapsed <= DEADLINE_SECONDS}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
