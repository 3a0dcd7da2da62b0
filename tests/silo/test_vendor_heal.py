"""A vendor's sites lost with their node (``silo serve --worker-per-site`` on the
vendor's own 2-node Ray): the RoundStart's heal fits in the round's deadline, the
sites that cannot be placed again sit out at once (said on stderr), and come back
once a node can host them. VendorHost is driven frame by frame, as its gateway does."""
from __future__ import annotations

import datetime
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab._proto.fedcollab.v1 import silo_pb2
from fedcollab.silo.terms import config_to_proto, shared_sha256, tensor_to_proto
from fedcollab.silo.vendor import HEAL_MAX, HEAL_MIN, heal_timeout
from fedcollab.silo.wire import from_message
from fedcollab.spec import spec_from_dict
from fedcollab.worker.messages import RoundConfig

#: the vendor group's two sites (pinned to the vendor_site node) and the lab's one
PINNED, LAB = [2, 3], [4]


def test_heal_timeout_is_a_share_of_the_time_left_within_its_bounds() -> None:
    now = 1_000_000.0
    assert heal_timeout(now + 30, now) == 15.0
    assert heal_timeout(now + 1, now) == heal_timeout(now - 5, now) == HEAL_MIN
    assert heal_timeout(now + 3600, now) == heal_timeout(0.0, now) == HEAL_MAX
    assert heal_timeout(float("inf"), now) == heal_timeout(float("nan"), now) == HEAL_MAX


def _spec() -> Any:
    return spec_from_dict({
        "name": "vendor-heal", "rounds": 3, "task": {"dataset": "digits", "model": "mlp"},
        "resources": {"cpus_per_worker": 0.5},
        "secure": {"min_group": 3},
        "participants": [
            {"name": "community", "count": 2, "sharing": "open"},
            {"name": "vendor", "role": "vendor", "count": 2, "sharing": "secure",
             "resources": {"vendor_site": 0.5}},
            {"name": "lab", "role": "vendor", "count": 1, "sharing": "secure"}]})


def _act(host: Any, round_id: int, **body: Any) -> tuple[Any, float]:
    """``host.act`` on one coordinator frame; its reply body and the seconds it took."""
    message = silo_pb2.CoordinatorFrame(sender="coordinator", seq=round_id, **body)
    inbound = from_message(message, trusted_cas={},
                           now=datetime.datetime.now(datetime.timezone.utc))

    def no_egress(frame: Any, data: bytes) -> Any:
        raise AssertionError("no masked input may leave: the test's mask requests are bogus")

    t0 = time.monotonic()
    reply, _ = host.act(message, inbound, no_egress)
    return reply, time.monotonic() - t0


def _round(host: Any, round_id: int, deadline_in: float) -> tuple[Any, float, float]:
    """RoundStart (due ``deadline_in`` s from now), then its train stage with a mask
    request for every site; the stage's reply and the seconds each frame took."""
    arrays = [(host.layers[i], np.asarray(host.initial[i])) for i in host.shared]
    _, started = _act(host, round_id, round_start=silo_pb2.RoundStart(
        job_id="job-1", round_id=round_id, global_model_sha256=shared_sha256(arrays),
        weights=[tensor_to_proto(n, a) for n, a in arrays],
        deadline_unix=time.time() + deadline_in, config=config_to_proto(RoundConfig()),
        participants=sorted(host.pids)))
    body, trained = _act(host, round_id, stage=silo_pb2.StageRequest(
        job_id="job-1", round_id=round_id, stage="train",
        messages=[silo_pb2.SecAggMessage(job_id="job-1", round_id=round_id, participant=p,
                                         payload=b"not a mask request")
                  for p in sorted(host.pids)]))
    return body["stage_reply"], started, trained


@pytest.mark.ray
@pytest.mark.slow
def test_vendor_sites_whose_node_is_gone_sit_out_at_once_and_return_with_a_node(
        ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    from fedcollab.silo.vendor import VendorHost

    host = VendorHost(_spec(), party="vendor", work_dir=tmp_path, ray=ray,
                      worker_per_site=True)
    try:
        assert sorted(host.pids) == PINNED + LAB and len(host.pool.workers) == 3
        node = next(iter(ray_cluster.worker_nodes))
        ray_cluster.remove_node(node, allow_graceful=False)
        for where in host.pool.placement:  # its workers go with it
            if where["node_id"] == node.node_id:
                os.kill(where["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
            assert time.monotonic() < deadline, "the removed node is still alive"
            time.sleep(0.2)

        # round 1: the pinned sites' workers are found lost while it trains
        first, _, _ = _round(host, 1, 120)
        assert list(first.seconds) == LAB and host.pool.needs_heal, first

        # round 2 (due in 8 s): the heal takes at most half of that; the pinned sites
        # cannot be placed again, so they sit out, the lab's site trains
        second, started, trained = _round(host, 2, 8)
        assert started < 5 and trained < 30, (started, trained)
        assert host.lost == PINNED and sorted(host.pool.unplaced) == [0, 1]
        assert list(second.seconds) == LAB and not second.replies
        assert set(second.failed) == set(LAB)  # its bogus mask request: said, not dropped
        said = capsys.readouterr().err.splitlines()
        assert [x for x in said if x.startswith("fedcollab: silo:")] == [
            f"fedcollab: silo: vendor site(s) {PINNED} stay out: {host.pool.unplaced[0]}"]
        assert "worker 0 was lost and cannot be placed again" in said[-1]

        # a vendor_site node again: round 3's heal places both sites, which train
        ray_cluster.add_node(num_cpus=1, resources={"vendor_site": 1})
        ray_cluster.wait_for_nodes()
        third, _, _ = _round(host, 3, 300)
        assert host.lost == [] and not host.pool.needs_heal
        assert sorted(third.seconds) == PINNED + LAB
        said = capsys.readouterr().err.splitlines()
        assert f"fedcollab: silo: vendor site(s) {PINNED} placed again" in said
    finally:
        host.close()
