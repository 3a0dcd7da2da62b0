"""End to end on a real local Ray: a small community + vendor job, its outputs,
reproducibility of the released weights, and the CLI around it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab.job.release import verify_release
from fedcollab.job.run import RunOptions, run_job
from fedcollab.spec import spec_from_dict
from tests.contracts import summary_problems

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def small_spec(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "small", "seed": 0, "rounds": 3,
        "task": {"dataset": "digits", "model": "mlp"},
        "participants": [
            {"name": "community", "role": "community", "count": 4, "sharing": "open",
             "partition": {"kind": "dirichlet", "alpha": 0.5}},
            {"name": "vendor", "role": "vendor", "count": 2, "sharing": "open",
             "data_fraction": 0.25, "private_layers": ["head"]},
        ],
        "resources": {"workers": 2},
    }
    data.update(changes)
    return spec_from_dict(data)


@pytest.fixture(scope="module")
def finished(ray_local: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("run")
    return run_job(small_spec(), RunOptions(out_dir=out, quiet=True))


def test_run_job_small_spec_writes_every_output(finished: Any) -> None:
    out = finished.out_dir
    for name in ("spec.yaml", "metrics.jsonl", "summary.json", "plots/accuracy.png",
                 "plots/loss.png", "release/model.keras", "release/manifest.json",
                 "release/manifest.sig", "checkpoints/latest.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())


def test_run_job_metrics_one_line_per_round_with_hashes(finished: Any) -> None:
    lines = [json.loads(x) for x in (finished.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2, 3]
    assert all(len(m["update_sha256"]) == 6 for m in lines)
    assert all(0 <= m["accuracy"] <= 1 and "vendor_accuracy" in m for m in lines)


def test_run_job_summary_meets_contract(finished: Any) -> None:
    summary = finished.out_dir / "summary.json"
    data = json.loads(summary.read_text())
    assert data["rounds_completed"] == 3 and data["participants"]["total"] == 6
    assert data["bytes_up"] > 0 and data["bytes_down"] > 0
    assert summary_problems(summary) == []


def test_run_job_release_verifies_and_holds_no_private_weights(finished: Any) -> None:
    out = finished.out_dir
    verify_release(out / "release")
    import keras

    released = keras.saving.load_model(out / "release" / "model.keras").get_weights()
    private = list((out / "checkpoints" / "private").glob("*-round-00003.npz"))
    assert len(private) == 2  # the vendor's two sites after the last round, by their worker
    for path in private:
        with np.load(path) as archive:
            for key in archive.files:
                if key.startswith("w"):
                    assert not any(r.shape == archive[key].shape and np.array_equal(r, archive[key])
                                   for r in released)


def test_run_job_vendor_placement_recorded(finished: Any) -> None:
    hosted = sorted(p for w in finished.summary["workers"] for p in w["participants"])
    assert hosted == list(range(6))


def test_run_job_same_seed_gives_bit_identical_release(finished: Any, tmp_path: Path) -> None:
    again = run_job(small_spec(), RunOptions(out_dir=tmp_path / "again", quiet=True))
    first = json.loads((finished.out_dir / "release" / "manifest.json").read_text())
    second = json.loads((again.out_dir / "release" / "manifest.json").read_text())
    assert first["weights_sha256"] == second["weights_sha256"]
    assert all(np.array_equal(a, b) for a, b in zip(finished.weights, again.weights))


def test_a_job_on_workers_a_finished_job_left_matches_one_on_new_workers(
        ray_local: Any, tmp_path: Path) -> None:
    """Inside worker_reuse (the ray_local fixture's, as a grade's), the next job takes
    the processes the last job left, and gives what new processes give: the same
    weights, the same release, the same metrics but for timings."""
    # half-CPU workers: no earlier job of this module parked any, so the first job
    # starts new ones (and any parked one-CPU workers are killed to free their CPUs)
    def spec(**changes: Any) -> Any:
        return small_spec(resources={"workers": 2, "cpus_per_worker": 0.5}, **changes)

    def pids(result: Any) -> list[int]:
        return sorted(w["pid"] for w in result.summary["workers"])

    def metrics(result: Any) -> list[dict[str, Any]]:
        timing = {"seconds", "train_seconds", "phase_seconds", "placement"}
        return [{k: v for k, v in m.items() if k not in timing} for m in result.metrics]

    fresh = run_job(spec(), RunOptions(out_dir=tmp_path / "fresh", quiet=True))
    other = run_job(spec(seed=1), RunOptions(out_dir=tmp_path / "other", quiet=True,
                                             release=False))
    again = run_job(spec(), RunOptions(out_dir=tmp_path / "again", quiet=True))

    assert pids(fresh) == pids(other) == pids(again)  # the same two processes, three jobs
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.weights, other.weights))
    assert all(np.array_equal(a, b) for a, b in zip(fresh.weights, again.weights))
    manifests = [json.loads((r.out_dir / "release" / "manifest.json").read_text())
                 for r in (fresh, again)]
    assert manifests[0]["weights_sha256"] == manifests[1]["weights_sha256"]
    assert metrics(fresh) == metrics(again)


def test_run_job_other_seed_gives_other_weights(finished: Any, tmp_path: Path) -> None:
    other = run_job(small_spec(seed=1), RunOptions(out_dir=tmp_path / "other", quiet=True,
                                                   release=False))
    assert not all(np.array_equal(a, b) for a, b in zip(finished.weights, other.weights))


def test_run_job_resume_continues_from_checkpoint(ray_local: Any, tmp_path: Path) -> None:
    out = tmp_path / "resumable"
    run_job(small_spec(rounds=2), RunOptions(out_dir=out, quiet=True, release=False))
    resumed = run_job(small_spec(rounds=3), RunOptions(out_dir=out, quiet=True, resume=True,
                                                       release=False))
    straight = run_job(small_spec(rounds=3), RunOptions(out_dir=tmp_path / "straight",
                                                        quiet=True, release=False))
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]
    assert all(np.array_equal(a, b) for a, b in zip(resumed.weights, straight.weights))


def test_run_job_regression_example_learns(ray_local: Any, tmp_path: Path) -> None:
    from fedcollab.spec import load_spec

    spec = load_spec(ROOT / "examples" / "regression.yaml", ["rounds=15"])
    result = run_job(spec, RunOptions(out_dir=tmp_path / "reg", quiet=True, release=False))
    from fedcollab.data import load_dataset

    y = load_dataset(spec.task, seed=spec.seed).y_test
    assert result.summary["final_loss"] < 0.25 * float(np.var(y))
    assert "final_accuracy" not in result.summary


def test_run_job_metrics_are_what_the_driver_would_have_evaluated(finished: Any) -> None:
    """Evaluation moved to a worker: the logged loss and accuracy are still exactly
    those of the global weights on the held-out set, evaluated in this process."""
    from fedcollab.job.run import _Driver

    last = [json.loads(x) for x in (finished.out_dir / "metrics.jsonl").read_text()
            .splitlines()][-1]
    loss, acc = _Driver.build(small_spec()).evaluate(finished.weights)
    assert (last["loss"], last["accuracy"]) == (loss, acc)


def test_run_job_tensorboard_events_are_readable(finished: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished.out_dir / "tensorboard"))
    events.Reload()
    accuracy = events.Scalars("accuracy")
    lines = [json.loads(x) for x in (finished.out_dir / "metrics.jsonl").read_text()
             .splitlines()]
    assert [e.step for e in accuracy] == [1, 2, 3]
    assert [e.value for e in accuracy] == pytest.approx([m["accuracy"] for m in lines],
                                                        rel=1e-6)
    assert "loss" in events.Tags()["scalars"]


def test_a_job_driver_never_loads_tensorflow(tmp_path: Path) -> None:
    """The workers build, evaluate and export the model: the driver's 4-6 s of
    TensorFlow import would only contend with Ray's start and theirs. A job without
    a secure group does not load the protocol either (it cost round 1 ~30 ms)."""
    code = ("import json, sys; from pathlib import Path\n"
            "from fedcollab.job.run import RunOptions, run_job\n"
            "from tests.e2e.test_run_job import small_spec\n"
            f"r = run_job(small_spec(rounds=1), RunOptions(out_dir=Path({str(tmp_path)!r}) / 'j',"
            " quiet=True))\n"
            "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules,"
            " 'secure': 'fedcollab.secure' in sys.modules,"
            " 'phases': r.summary['phases_seconds'], 'release': r.summary['release']}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert not seen["tf"] and not seen["keras"] and not seen["secure"]
    assert set(seen["phases"]) == {"checks", "ray_start", "workers_ready", "setup", "rounds",
                                   "release", "shutdown"}
    verify_release(seen["release"])
