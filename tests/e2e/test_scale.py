"""Internet scale inside a real Ray job: tens of thousands registered, a sample trained,
secure aggregation over each round's sample of a large secure group."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedcollab.job.run import RunOptions, run_job
from fedcollab.spec import spec_from_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_large_roster_job_trains_each_rounds_sample_with_a_fresh_secure_graph(
        ray_local: Any, tmp_path: Path) -> None:
    spec = spec_from_dict({
        "name": "scale", "seed": 1, "rounds": 3, "fraction": 0.002,
        "task": {"dataset": "synthetic", "samples_per_participant": 16},
        "participants": [
            {"name": "community", "count": 30_000},
            {"name": "vendor", "role": "vendor", "count": 3_000, "sharing": "secure"}],
        "secure": {"server": "honest_but_curious"},
        "resources": {"workers": 2},
        "release": {"sign": False}})
    result = run_job(spec, RunOptions(out_dir=tmp_path / "s", quiet=True, release=False))

    assert result.summary["rounds_completed"] == 3
    assert result.summary["participants"]["total"] == 33_000
    members = []
    for line in result.metrics:
        assert line["participants"] == 60 + 6 and line["accepted"] == 66
        survivors = line["secure"]["survivors"]
        assert len(survivors) == 6 and all(30_000 <= p < 33_000 for p in survivors)
        members.append(tuple(survivors))
    assert len(set(members)) == 3  # each round's secure sum is over a new sample
    assert result.metrics[-1]["accuracy"] > 0.5  # 4 classes: chance is 0.25
