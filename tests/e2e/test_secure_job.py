"""Secure aggregation inside real Ray jobs: mixed rounds, a worker killed mid-round,
and an aborted round that leaves the global model unchanged."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from fedcollab.data import load_dataset, participant_indices
from fedcollab.job.run import RunOptions, run_job
from fedcollab.spec import spec_from_dict
from tests.faults import before_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def mixed_spec(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "mixed", "seed": 0, "rounds": 3,
        "task": {"dataset": "digits", "model": "mlp"},
        "participants": [
            {"name": "community", "count": 4, "partition": {"kind": "iid"}},
            {"name": "vendor", "role": "vendor", "count": 8, "sharing": "secure",
             "data_fraction": 0.4},
        ],
        "resources": {"workers": 4, "cpus_per_worker": 0.5},
        "release": {"sign": False},
    }
    data.update(changes)
    return spec_from_dict(data)


def kill_workers(monkeypatch: pytest.MonkeyPatch, round_id: int, indices: Sequence[int]) -> None:
    """Kill workers right after round ``round_id``'s key sharing, before it trains."""
    import ray

    def kill(pool: Any) -> None:
        for index in indices:
            ray.kill(pool.workers[index], no_restart=True)
    before_training(monkeypatch, round_id, kill)


def sizes(spec: Any) -> list[int]:
    labels = load_dataset(spec.task, seed=spec.seed).y_train
    return [len(i) for i in participant_indices(spec, labels)]


def test_secure_job_matches_open_job_within_quantisation(ray_local: Any, tmp_path: Path) -> None:
    secure = run_job(mixed_spec(), RunOptions(out_dir=tmp_path / "s", quiet=True, release=False))
    open_spec = mixed_spec(participants=[
        {"name": "community", "count": 4, "partition": {"kind": "iid"}},
        {"name": "vendor", "role": "vendor", "count": 8, "data_fraction": 0.4}])
    opened = run_job(open_spec, RunOptions(out_dir=tmp_path / "o", quiet=True, release=False))
    for a, b in zip(secure.weights, opened.weights):
        np.testing.assert_allclose(a, b, atol=1e-4)
    line = secure.metrics[0]
    assert line["secure"]["survivors"] == list(range(4, 12))
    assert sorted(line["update_sha256"]) == ["0", "1", "2", "3"]  # only open updates logged
    assert line["secure"]["bytes_up"]["masked_input"] > 0
    assert line["secure"]["weight_sum"] == pytest.approx(sum(sizes(mixed_spec())[4:]), abs=1e-3)
    # the offline phase ran on the workers between rounds: from round 2 on every secure
    # participant masked with precomputed masks (and the sums above are still exact)
    assert line["secure"]["precomputed"] == 0
    assert [m["secure"]["precomputed"] for m in secure.metrics[1:]] == [8, 8]
    # the fixed-point range held every coordinate (the share is summed inside the sum)
    assert [m["secure"]["saturation"] for m in secure.metrics] == [0.0, 0.0, 0.0]


def test_secure_job_worker_killed_after_share_keys_sums_survivors(
        ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = mixed_spec()
    kill_workers(monkeypatch, 2, [1])  # hosts 3 (open), 4, 5
    result = run_job(spec, RunOptions(out_dir=tmp_path / "k", quiet=True, release=False))

    line = result.metrics[1]
    assert line["secure"]["dropped"] == [4, 5]
    assert line["secure"]["survivors"] == [6, 7, 8, 9, 10, 11]
    assert line["dropped"] == [3, 4, 5]
    n = sizes(spec)
    assert line["secure"]["weight_sum"] == pytest.approx(sum(n[6:12]), abs=1e-3)
    assert result.summary["rounds_completed"] == 3
    last = result.metrics[2]["secure"]
    assert last["survivors"] == list(range(4, 12)) and last["key_setup"] >= 2  # rotated keys


def test_secure_job_too_few_survivors_aborts_round_and_keeps_model(
        ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # round 2 is the last: the job ends without recreating the killed workers
    kill_workers(monkeypatch, 2, [1, 2, 3])
    result = run_job(mixed_spec(rounds=2), RunOptions(out_dir=tmp_path / "a", quiet=True,
                                                      release=False))
    # 6 of 8 secure participants gone
    first, aborted = result.metrics[0], result.metrics[1]
    assert "aborted" in aborted and "round 2" in aborted["aborted"]
    assert aborted["accuracy"] == first["accuracy"] and aborted["loss"] == first["loss"]
    assert result.summary["rounds_completed"] == 2


def test_secure_job_distributed_dp_with_adaptive_clipping_runs(ray_local: Any,
                                                               tmp_path: Path) -> None:
    spec = mixed_spec(privacy={"dp": {"mode": "distributed", "noise_multiplier": 0.5,
                                      "clip_norm": 1.0, "adaptive_clipping": True}})
    result = run_job(spec, RunOptions(out_dir=tmp_path / "d", quiet=True, release=False))
    epsilons = [m["epsilon"] for m in result.metrics]
    assert all(e > 0 for e in epsilons) and epsilons == sorted(epsilons)
    assert result.metrics[-1]["clip_norm"] != result.metrics[0]["clip_norm"]  # adapted
    assert result.metrics[0]["secure"]["survivors"] == list(range(4, 12))
    # under DP no member reports its saturation; the bound from public parameters does
    bounds = [m["secure"]["saturation_bound"] for m in result.metrics]
    assert all(0 <= b < 1e-6 for b in bounds) and "saturation" not in result.metrics[0]["secure"]


@pytest.mark.parametrize("model", ["malicious", "honest_but_curious"])
def test_secure_job_lying_server_is_refused_round_aborted_model_kept(
        ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    # Issue 11, attack 1 inside a real Ray job: in round 2 the (in-driver) server tells
    # every holder that every participant but 4 dropped (honest-but-curious mode: too
    # few alive) or, subtler, only that 5 dropped while the survivor set every
    # participant confirmed says 5 survived (malicious mode: the consistency check).
    # The workers' participants refuse; the round aborts with the reason and the
    # model stays as it was.
    lie_about = (lambda p: p == 5) if model == "malicious" else (lambda p: p != 4)
    from fedcollab.secure.messages import SERVER, Kind, Reveal, UnmaskRequest, pack, unpack
    from fedcollab.secure.server import SecureServer

    honest = SecureServer._unmask_requests

    def lying(self: SecureServer, rs: Any, asked: set[int], tags: Any) -> dict[int, bytes]:
        out = honest(self, rs, asked, tags)
        if rs.round_id != 2:
            return out
        for v, data in out.items():
            msg = unpack(data, UnmaskRequest, round_id=2, sender=SERVER, recipient=v)
            reveals = tuple(Reveal(r.peer, Kind.RECOVERY, b"") if lie_about(r.peer) else r
                            for r in msg.reveals)
            out[v] = pack(UnmaskRequest(reveals, msg.signatures), round_id=2, sender=SERVER,
                          recipient=v)
        return out

    monkeypatch.setattr(SecureServer, "_unmask_requests", lying)
    spec = mixed_spec(secure={"server": model})
    result = run_job(spec, RunOptions(out_dir=tmp_path / model, quiet=True, release=False))
    first, aborted, third = result.metrics
    assert "aborted" in aborted and "refused" in aborted["aborted"]
    expected = "InconsistentViewError" if model == "malicious" else "TooFewAliveError"
    assert expected in aborted["aborted"]
    assert aborted["accuracy"] == first["accuracy"] and aborted["loss"] == first["loss"]
    assert "aborted" not in third and third["secure"]["survivors"] == list(range(4, 12))
