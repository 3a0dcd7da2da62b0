"""The same job on the in-process pool and on Ray: the Pool protocol is the only seam
between the job and where its participants run, so the weights and the release are
the same to the bit."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab.job.run import RunOptions, run_job
from fedcollab.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec() -> Any:
    # the default job (open community, a secure vendor with a private head) made short
    return load_spec(ROOT / "examples" / "community-vendor.yaml",
                     ["rounds=3", "resources.workers=2", "release.sign=false"])


def test_a_job_on_the_in_process_pool_matches_the_same_job_on_ray(ray_local: Any,
                                                                   tmp_path: Path) -> None:
    on_ray = run_job(_spec(), RunOptions(out_dir=tmp_path / "ray", quiet=True))
    here = run_job(_spec(), RunOptions(out_dir=tmp_path / "here", quiet=True,
                                       transport="inprocess"))
    for a, b in zip(on_ray.weights, here.weights):
        np.testing.assert_array_equal(a, b)

    def manifest(result: Any) -> dict[str, Any]:
        return dict(json.loads((result.out_dir / "release" / "manifest.json").read_text()))

    assert manifest(here)["weights_sha256"] == manifest(on_ray)["weights_sha256"]
    # the secure stages ran through the in-process pool: only open updates are hashed
    line = here.metrics[-1]
    assert line["secure"]["survivors"] == [8, 9, 10]
    assert sorted(line["update_sha256"]) == [str(p) for p in range(8)]
    assert [m["loss"] for m in here.metrics] == [m["loss"] for m in on_ray.metrics]
