"""The mixes' runs side by side on one Ray: bounded by what the cluster can place, and
each run's result the same as alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab.grading.runner import parallel_slots


def test_slots_are_what_fits_for_the_largest_run() -> None:
    assert parallel_slots({"CPU": 2.0}, [{"CPU": 1.0}] * 6) == 2
    assert parallel_slots({"CPU": 8.0}, [{"CPU": 1.0}] * 3) == 3      # never more than runs
    assert parallel_slots({"CPU": 3.0}, [{"CPU": 1.0}, {"CPU": 2.0}]) == 1
    # a pinned group's custom resource bounds it too
    assert parallel_slots({"CPU": 4.0, "vendor_site": 1.0},
                          [{"CPU": 2.0, "vendor_site": 1.0}] * 4) == 1
    assert parallel_slots({"CPU": 0.5}, [{"CPU": 1.0}] * 2) == 1       # at least one
    assert parallel_slots({"CPU": 2.0}, [{"CPU": 0.5}] * 4) == 4


def _runs(spec: Any, names: list[str], slots: int, out: Path) -> dict[str, Any]:
    from fedcollab.grading.mixes import mix_spec, select_mixes
    from fedcollab.grading.runner import MixRuns, one_worker
    from fedcollab.spec import spec_to_dict

    data = spec_to_dict(spec)
    jobs = []
    for mix in select_mixes(data, spec, ",".join(names)):
        mspec, why = mix_spec(data, mix)
        assert mspec is not None, why
        jobs.append((mix, one_worker(mspec)))
    done: list[str] = []
    results: dict[str, Any] = {}
    with MixRuns(jobs, slots=slots, out_dir=out, address=None,
                 on_done=lambda mix: done.append(mix.name)) as runs:
        for _, mix, _, result, error in runs.as_finished():
            assert error is None, error
            results[mix.name] = result
    assert sorted(done) == sorted(names)
    return results


@pytest.mark.ray
@pytest.mark.slow
def test_parallel_runs_give_the_sequential_results(ray_local: Any, tmp_path: Path) -> None:
    from fedcollab.spec import load_spec

    spec = load_spec("examples/community-vendor.yaml", ["rounds=2"])
    names = ["open", "secure-vendor"]
    side_by_side = _runs(spec, names, 2, tmp_path / "parallel")
    one_by_one = _runs(spec, names, 1, tmp_path / "sequential")
    for name in names:
        a, b = side_by_side[name], one_by_one[name]
        assert len(a.weights) == len(b.weights)
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
        keys = ("round", "loss", "accuracy", "accepted", "update_sha256")
        assert [{k: m.get(k) for k in keys} for m in a.metrics] == \
            [{k: m.get(k) for k in keys} for m in b.metrics]
