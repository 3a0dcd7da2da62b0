"""Summary: the frozen record behind summary.json writes exactly the dict jobs wrote
before it existed (the same keys, in the same order, optional keys only when present)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fedcollab.io import atomic_write_json
from fedcollab.job.records import Summary
from tests.contracts import summary_problems

GROUPS = [{"name": "community", "role": "community", "count": 4, "sharing": "open",
           "private_layers": []},
          {"name": "vendor", "role": "vendor", "count": 2, "sharing": "open",
           "private_layers": ["head"]}]
WORKERS = [{"worker": 0, "pid": 1, "host": "vm", "node_id": "", "device": "/device:CPU:0",
            "gpu_ids": [], "roles": ["community"], "participants": [0, 1, 2]}]
PRIVACY = {"mode": "none", "noise_multiplier": 0.0, "delta": 1e-05, "epsilon": None,
           "clip_norm": None, "sampling_rate": None, "group_sampling_rates": None}
PHASES = {"checks": 0.02, "ray_start": 0.0, "workers_ready": 6.2, "setup": 0.01,
          "rounds": 0.17, "release": 0.04, "shutdown": 0.0}

# A classification job's summary.json as run_job wrote it before Summary existed, in
# the order of its keys (the file sorts them; JobResult.summary keeps this order).
KNOWN: dict[str, Any] = {
    "name": "small", "out_dir": "/runs/small", "rounds": 2, "rounds_completed": 2,
    "wall_seconds": 6.7, "rounds_seconds": 0.17, "seconds_per_round": 0.085,
    "participants": {"total": 6, "groups": GROUPS}, "workers": WORKERS,
    "workers_replaced": 0, "bytes_up": 220672, "bytes_down": 230880, "rejected_updates": 0,
    "final_loss": 1.65, "seed": 0, "final_accuracy": 0.66, "vendor_accuracy": 0.62,
    "privacy": PRIVACY, "aggregation": {"rule": "fedavg", "server_optimizer": "none"},
    "rejected_by_reason": {}, "status": "succeeded", "release": "/runs/small/release",
    "phases_seconds": PHASES,
}


def _summary(**changes: Any) -> Summary:
    return dataclasses.replace(Summary(**KNOWN), **changes)


def test_summary_to_json_is_the_known_dict_in_its_order() -> None:
    written = Summary(**KNOWN).to_json()
    assert list(written.items()) == list(KNOWN.items())  # the order too


def test_summary_fields_are_the_keys_in_their_order() -> None:
    keys = list(KNOWN)
    keys.insert(keys.index("status") + 1, "failure")  # a failed job's, after its status
    assert [f.name for f in dataclasses.fields(Summary)] == keys


@pytest.mark.parametrize("absent", [
    # a regression task: no accuracy, and no vendor's accuracy either
    ("final_accuracy", "vendor_accuracy"),
    # release: false
    ("release",),
    # a job that learned nothing: failure, never a release or phases_seconds
    ("release", "phases_seconds"),
])
def test_summary_optional_keys_are_written_only_when_present(absent: tuple[str, ...]) -> None:
    written = _summary(**{key: None for key in absent}).to_json()
    assert list(written) == [k for k in KNOWN if k not in absent]


def test_summary_of_a_failed_job_carries_the_failure_after_its_status() -> None:
    written = _summary(status="failed", failure="no round accepted an update",
                       release=None, phases_seconds=None).to_json()
    assert list(written)[-2:] == ["status", "failure"]
    assert written["failure"] == "no round accepted an update"


def test_summary_final_loss_is_written_even_when_none() -> None:
    assert _summary(final_loss=None).to_json()["final_loss"] is None


def test_summary_stages_replace_it_and_to_json_hands_out_copies() -> None:
    first = Summary(**{**KNOWN, "release": None, "phases_seconds": None})
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = "failed"  # type: ignore[misc]
    later = dataclasses.replace(first, release="/r", phases_seconds={"rounds": 1.0})
    assert "release" not in first.to_json() and later.to_json()["release"] == "/r"
    written = later.to_json()
    written["phases_seconds"]["shutdown"] = 1.0
    written["privacy"]["epsilon"] = 9.0
    assert later.to_json()["phases_seconds"] == {"rounds": 1.0}
    assert later.to_json()["privacy"]["epsilon"] is None


def test_summary_written_meets_the_summary_json_contract(tmp_path: Path) -> None:
    for summary in (Summary(**KNOWN), _summary(final_accuracy=None, vendor_accuracy=None)):
        atomic_write_json(tmp_path / "summary.json", summary.to_json())
        assert summary_problems(tmp_path / "summary.json") == []
