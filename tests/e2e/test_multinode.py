"""Vendor pinning on a real 2-node ``ray.cluster_utils.Cluster``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedcollab.job.run import RunOptions, run_job
from fedcollab.spec import spec_from_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_run_job_vendor_group_runs_only_on_vendor_node(ray_cluster: Any, tmp_path: Path) -> None:
    import ray

    spec = spec_from_dict({
        "name": "pinned", "rounds": 2, "task": {"dataset": "digits", "model": "mlp"},
        "participants": [
            {"name": "community", "count": 4, "partition": {"kind": "iid"}},
            {"name": "vendor", "role": "vendor", "count": 3, "data_fraction": 0.25,
             "private_layers": ["head"], "resources": {"vendor_site": 1}},
        ],
    })
    vendor_nodes = {n["NodeID"] for n in ray.nodes()
                    if n["Alive"] and n["Resources"].get("vendor_site")}
    assert len(vendor_nodes) == 1

    result = run_job(spec, RunOptions(out_dir=tmp_path / "out", quiet=True, release=False))

    assert result.summary["rounds_completed"] == 2
    for worker in result.summary["workers"]:
        vendor_hosted = [p for p in worker["participants"] if p >= 4]
        community_hosted = [p for p in worker["participants"] if p < 4]
        if vendor_hosted:
            assert worker["node_id"] in vendor_nodes and not community_hosted
        else:
            assert worker["node_id"] not in vendor_nodes
    assert sorted(p for w in result.summary["workers"] for p in w["participants"]) == \
        list(range(7))


def test_run_job_missing_custom_resource_is_clear_error(ray_local: Any, tmp_path: Path) -> None:
    from fedcollab.cluster.placement import ClusterError

    spec = spec_from_dict({
        "name": "unplaceable", "rounds": 1,
        "participants": [{"name": "c", "count": 3},
                         {"name": "v", "role": "vendor", "count": 3,
                          "resources": {"gpu_vendor_site": 1}}]})
    with pytest.raises(ClusterError, match="gpu_vendor_site"):
        run_job(spec, RunOptions(out_dir=tmp_path / "x", quiet=True, release=False))
