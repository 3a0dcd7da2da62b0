"""The vendor's own checks before its policy's (fedcollab.silo.vendor.VendorHost.before):
what only its own copy of the job knows. The host is built in this process (TensorFlow)."""
from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab._proto.fedcollab.v1 import silo_pb2
from fedcollab.silo.check import Refuse
from fedcollab.silo.terms import shared_sha256, tensor_to_proto
from fedcollab.silo.wire import from_message

ROOT = Path(__file__).resolve().parents[2]
OWN_CA = hashlib.sha256(b"the vendor's CA").hexdigest()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fedcollab.silo.vendor import VendorHost
    from fedcollab.spec import load_spec

    spec = load_spec(ROOT / "examples" / "community-vendor.yaml")
    yield VendorHost(spec, party="vendor", work_dir=tmp_path_factory.mktemp("vendor"),
                     own_ca=OWN_CA)


def _before(host: Any, **body: Any) -> Any:
    message = silo_pb2.CoordinatorFrame(sender="coordinator", seq=1, **body)
    inbound = from_message(message, trusted_cas={}, now=datetime.datetime.now(
        datetime.timezone.utc))
    return host.before(message, inbound)


def _refused(result: Any, rule: str) -> str:
    assert isinstance(result, Refuse), result
    assert result.rule == rule, result
    return result.reason


def _offer(host: Any, **changes: Any) -> Any:
    fields = {"job_id": "job-1", "model_name": "mlp", "model_sha256": host.model_sha256,
              "rounds": 2, "participants": sorted(host.pids), **changes}
    return silo_pb2.Offer(**fields)


def _start(host: Any, weights: list[np.ndarray], **changes: Any) -> Any:
    arrays = [(host.layers[i], weights[i]) for i in host.shared]
    fields = {"job_id": "job-1", "round_id": 1, "global_model_sha256": shared_sha256(arrays),
              "weights": [tensor_to_proto(n, a) for n, a in arrays],
              "participants": sorted(host.pids), **changes}
    return silo_pb2.RoundStart(**fields)


def test_vendor_hosts_the_vendor_group_and_shares_no_private_layer(host: Any) -> None:
    assert sorted(host.pids) == [8, 9, 10]
    assert {host.layers[i] for i in host.shared} == {"hidden"}


def test_vendor_offer_for_other_participants_refused(host: Any) -> None:
    reason = _refused(_before(host, offer=_offer(host, participants=[7, 8, 9])), "offer")

    assert "are not the 3 this vendor's spec hosts" in reason


def test_vendor_offer_of_another_model_refused(host: Any) -> None:
    other = hashlib.sha256(b"the coordinator's model").hexdigest()

    reason = _refused(_before(host, offer=_offer(host, model_sha256=other)), "offer")

    assert "never the coordinator's" in reason


def test_vendor_offer_of_its_own_model_goes_to_the_policy(host: Any) -> None:
    assert not isinstance(_before(host, offer=_offer(host)), Refuse)


def test_vendor_weights_whose_hash_is_misnamed_refused(host: Any) -> None:
    start = _start(host, host.initial, global_model_sha256="0" * 64)

    _refused(_before(host, round_start=start), "replay")


def test_vendor_inbound_private_layer_refused(host: Any) -> None:
    start = _start(host, host.initial)
    start.weights.append(tensor_to_proto("head", host.initial[-1]))

    _refused(_before(host, round_start=start), "share_only")


def test_vendor_weights_of_another_shape_refused(host: Any) -> None:
    start = _start(host, host.initial)
    start.weights[0].shape[:] = [1, 1]

    _refused(_before(host, round_start=start), "malformed")


def test_vendor_roster_own_sites_carry_its_identity_idle_ones_refused(host: Any) -> None:
    from fedcollab.silo.vendor import _Round
    from fedcollab.worker.messages import RoundConfig

    host._round = _Round("job-1", 1, "0" * 64, host.initial, RoundConfig(), (8, 9))
    members = [silo_pb2.Identity(party=f"vendor/{p}") for p in (8, 9)]
    members.append(silo_pb2.Identity(party="participant/3", simulated=True))

    ok = _before(host, roster=silo_pb2.Roster(job_id="job-1", round_id=1, members=members))
    idle = _before(host, roster=silo_pb2.Roster(job_id="job-1", round_id=1, members=[
        *members, silo_pb2.Identity(party="vendor/10")]))

    assert {(m.party, m.ca_sha256, m.simulated) for m in ok.frame.members} == {
        ("vendor/8", OWN_CA, False), ("vendor/9", OWN_CA, False), ("participant/3", "", True)}
    assert "site 10, which this round did not sample" in _refused(idle, "min_group")


def test_vendor_unmask_naming_a_site_whose_input_never_left_refused(host: Any) -> None:
    from fedcollab.silo.vendor import _Round
    from fedcollab.worker.messages import RoundConfig

    host._round = _Round("job-1", 1, "0" * 64, host.initial, RoundConfig(), (8, 9),
                         masked=frozenset({8}))
    request = silo_pb2.UnmaskRequest(job_id="job-1", round_id=1, survivors=["vendor/8"],
                                     dropped=["vendor/9"])
    lying = silo_pb2.UnmaskRequest(job_id="job-1", round_id=1,
                                   survivors=["vendor/8", "vendor/9"])

    assert not isinstance(_before(host, unmask=request), Refuse)
    _refused(_before(host, unmask=lying), "unmask")


def test_vendor_setup_its_participants_cannot_pin_is_refused(host: Any) -> None:
    from fedcollab.silo.terms import secure_job_id

    setup = silo_pb2.GroupSetup(job_id="job-1", members=[8, 9, 10], graph_seed=b"s" * 32,
                                secure_job_id=secure_job_id("job-1"),
                                registry={8: b"not an Ed25519 public key"})
    message = silo_pb2.CoordinatorFrame(sender="coordinator", seq=3, setup=setup)
    inbound = from_message(message, trusted_cas={},
                           now=datetime.datetime.now(datetime.timezone.utc))

    def no_egress(frame: Any, data: bytes) -> Any:
        raise AssertionError("nothing may leave at setup")

    body, after = host.act(message, inbound, no_egress)

    assert after is None and body["decision"].verdict == silo_pb2.Decision.REFUSE
    assert body["decision"].reason.startswith("setup: SecAggConfigError")
