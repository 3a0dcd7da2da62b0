"""A scripted malicious coordinator against the real gateway, over real mutual TLS on
127.0.0.1:0: every attack is refused (or held pending), each refusal is in the
audit chain with its rule, and no update byte leaves the vendor.

One named test per case of issue #31. The gateway is the one `fedcollab silo serve`
runs (:class:`fedcollab.silo.gateway.Gateway`; the approval case goes through the
CLI itself); "restarting the vendor" is a new gateway over the same state directory.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import pytest

from fedcollab._proto.fedcollab.v1 import silo_pb2
from fedcollab.service.certs import fingerprint
from fedcollab.silo import Allow, Member, Roster, SiloState, check, load_policy, save_state
from fedcollab.silo.audit import verify_audit
from fedcollab.silo.gateway import Gateway
from fedcollab.silo.wire import from_message

from .conftest import MODEL, make_egress, make_start, member_der
from .conftest import policy_bytes as _policy_bytes
from .malicious import (
    Step,
    malicious_coordinator,
    offer_frame,
    roster_frame,
    start_frame,
    unmask_frame,
)

NOW = datetime.datetime.now(datetime.timezone.utc)
ALLOW, REFUSE, PENDING = (silo_pb2.Decision.ALLOW, silo_pb2.Decision.REFUSE,
                          silo_pb2.Decision.PENDING)


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _policy(tmp: Path, pki: dict[str, Path]) -> Path:
    path = tmp / "vendor-policy.yaml"
    if not path.exists():
        path.write_bytes(_policy_bytes(
            trusted_cas=[fingerprint((pki["main"] / "ca.pem").read_bytes())]))
    return path


def _gateway(tmp: Path, pki: dict[str, Path], address: str) -> Gateway:
    return Gateway(policy=load_policy(_policy(tmp, pki)), coordinator=address,
                   cert=pki["main"] / "vendor.pem", key=pki["main"] / "vendor.key",
                   coordinator_ca=pki["main"] / "ca.pem", trusted_cas=[pki["main"] / "ca.pem"],
                   state_dir=tmp / "vendor")


def _play(tmp: Path, pki: dict[str, Path], script: Sequence[Step]) -> Any:
    """One connection of the gateway to a coordinator playing `script`; returns the
    coordinator's record (decisions in order, bytes received)."""
    with malicious_coordinator(cert=pki["main"] / "coordinator.pem",
                               key=pki["main"] / "coordinator.key",
                               client_ca=pki["main"] / "ca.pem", sessions=[script]) as coord:
        gateway = _gateway(tmp, pki, coord.address)
        try:
            gateway.run(timeout=30)
        finally:
            gateway.close()
    return coord


def _audit(tmp: Path) -> list[dict[str, Any]]:
    verify_audit(tmp / "vendor" / "audit.jsonl")
    return [json.loads(line) for line in (tmp / "vendor" / "audit.jsonl").open()]


def _refused(tmp: Path, coord: Any, index: int, rule: str) -> str:
    """The gateway's answer to the script's frame `index` was REFUSE under `rule`, the
    audit chain holds that refusal, and nothing but decisions left the vendor."""
    decisions = coord.decisions()
    decision = decisions[index]
    audit = [e for e in _audit(tmp) if e["kind"] != "welcome"][-len(decisions):]
    assert decision.verdict == REFUSE, decision
    assert audit[index]["decision"] == "refuse" and audit[index]["rule"] == rule, audit[index]
    assert audit[index]["reason"] == decision.reason
    assert coord.update_bytes() == 0
    return str(decision.reason)


def _accepted_round(round_id: int = 1, model: str = "") -> list[Step]:
    return [offer_frame(model=MODEL), start_frame(round_id, model_hash=model or h("m1"))]


def _trusted(pki: dict[str, Path], *names: str) -> list[tuple[str, bytes, bool]]:
    return [(n, member_der(pki, n), False) for n in names]


# ---- asks for a plaintext update, or sends a frame the gateway does not know ----

def test_malicious_offer_asking_for_plaintext_updates_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    coord = _play(tmp_path, silo_pki, [offer_frame(model=MODEL, protocol="none")])

    assert "leave only masked" in _refused(tmp_path, coord, 0, "egress")


def test_malicious_unknown_frame_is_refused(tmp_path: Path,
                                            silo_pki: dict[str, Path]) -> None:
    # a CoordinatorFrame whose body is field 99 (length-delimited): a message type
    # the vendor's schema does not have, e.g. "send me your plaintext update"
    unknown = (silo_pb2.CoordinatorFrame(sender="coordinator", seq=2).SerializeToString()
               + bytes([0x9A, 0x06, 0x09]) + b"plaintext")
    coord = _play(tmp_path, silo_pki, [unknown])

    assert "unknown frame" in _refused(tmp_path, coord, 0, "unknown")


def test_malicious_pickle_inside_a_secagg_frame_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    import pickle

    payload = pickle.dumps({"__reduce__": "os.system"})
    frame = silo_pb2.CoordinatorFrame(sender="coordinator", secagg=silo_pb2.SecAggMessage(
        job_id="job-1", round_id=1, global_model_sha256=h("m1"), payload=payload))
    coord = _play(tmp_path, silo_pki, [frame])

    _refused(tmp_path, coord, 0, "unknown")


def test_malicious_garbage_bytes_are_refused_and_the_link_stays(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    coord = _play(tmp_path, silo_pki, [b"\xff\xff\xff\xff garbage", offer_frame(model=MODEL)])

    _refused(tmp_path, coord, 0, "malformed")
    assert coord.decisions()[1].verdict == ALLOW  # the next, honest frame is decided


# ---- asks for an unlisted layer ----

def test_malicious_round_with_an_unlisted_layer_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    script = [offer_frame(model=MODEL),
              start_frame(1, model_hash=h("m1"), layers=("dense", "head"))]
    coord = _play(tmp_path, silo_pki, script)

    assert "'head'" in _refused(tmp_path, coord, 1, "share_only")


def test_malicious_offer_with_only_unlisted_layers_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    coord = _play(tmp_path, silo_pki, [offer_frame(model=MODEL, layers=("head", "conv"))])

    _refused(tmp_path, coord, 0, "share_only")


# ---- a roster short of k trusted identities, or with forged ones ----

def test_malicious_roster_of_simulated_identities_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    members = _trusted(silo_pki, "m0", "m1") + [(f"sim{i}", b"", True) for i in range(20)]
    coord = _play(tmp_path, silo_pki, _accepted_round() + [roster_frame(1, members)])

    assert "has 2 trusted identities" in _refused(tmp_path, coord, 2, "min_group")


def test_malicious_roster_with_forged_certificates_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    forged = [
        ("m5", member_der(silo_pki, "m5", "forger"), False),   # same issuer name, forged
        ("m6", member_der(silo_pki, "m6", "expired"), False),  # expired
        ("m9", member_der(silo_pki, "m2"), False),             # m2's certificate, named m9
        ("m7", member_der(silo_pki, "vendor", "other"), False),  # another CA
        ("m8", b"\x30\x82\x01\x00not a certificate", False),   # not DER at all
        ("m3", b"", False),                                    # no certificate: simulated
    ]
    members = _trusted(silo_pki, "m0", "m1") + forged
    coord = _play(tmp_path, silo_pki, _accepted_round() + [roster_frame(1, members)])

    assert "has 2 trusted identities" in _refused(tmp_path, coord, 2, "min_group")


def test_malicious_roster_with_enough_trusted_identities_is_allowed(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    # the control for the two above: the same round with three real certificates passes
    members = _trusted(silo_pki, "m0", "m1", "m2") + [("sim", b"", True)]
    coord = _play(tmp_path, silo_pki, _accepted_round() + [roster_frame(1, members)])

    assert [d.verdict for d in coord.decisions()] == [ALLOW, ALLOW, ALLOW]
    assert coord.update_bytes() == 0


# ---- inconsistent unmask requests ----

def test_malicious_inconsistent_unmask_requests_are_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    members = _trusted(silo_pki, "m0", "m1", "m2", "m3")
    script = _accepted_round() + [
        roster_frame(1, members),
        unmask_frame(1, ["m0", "m1", "m2"], ["m2", "m3"]),   # m2 both alive and dropped
        unmask_frame(1, ["m0", "m1", "m2", "outsider"], ["m3"]),  # someone not in the roster
        unmask_frame(1, ["m0", "m1"], ["m2", "m3"]),         # two trusted survivors: too few
        unmask_frame(1, ["m0", "m1", "m2"], ["m3"]),         # consistent: allowed once
        unmask_frame(1, ["m0", "m1", "m3"], ["m2"]),         # a second, different reveal
    ]
    coord = _play(tmp_path, silo_pki, script)

    _refused(tmp_path, coord, 3, "unmask")
    _refused(tmp_path, coord, 4, "unmask")
    assert "2 trusted survivors" in _refused(tmp_path, coord, 5, "min_group")
    assert coord.decisions()[6].verdict == ALLOW
    assert "second unmask" in _refused(tmp_path, coord, 7, "sequence")


# ---- replays a global-model hash with a new round id or roster ----

def test_malicious_replayed_model_hash_with_a_new_round_or_roster_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    # the vendor contributed to model m1 in round 1 of an earlier session
    policy = load_policy(_policy(tmp_path, silo_pki))
    ca = fingerprint((silo_pki["main"] / "ca.pem").read_bytes())
    offer = offer_frame(model=MODEL)
    state = SiloState()
    for frame in (from_message(offer, trusted_cas={}, now=NOW).frame,
                  make_start(1, global_model_sha256=h("m1")),
                  Roster("job-1", 1, tuple(Member(f"m{i}", ca) for i in range(3))),
                  make_egress(1, global_model_sha256=h("m1"))):
        decision = check(policy, state, frame)
        assert isinstance(decision, Allow), decision
        state = decision.state
    (tmp_path / "vendor").mkdir()
    save_state(tmp_path / "vendor" / "state.json", state)
    members = _trusted(silo_pki, "m0", "m1", "m2")
    script = [offer,
              start_frame(2, model_hash=h("m1")),                # same model, new round id
              roster_frame(1, _trusted(silo_pki, "m0", "m1", "m3")),  # new roster, old round
              start_frame(3, model_hash=h("m3")),                # an honest next round
              roster_frame(3, members),
              roster_frame(3, _trusted(silo_pki, "m0", "m1", "m3"))]  # then a swapped roster
    coord = _play(tmp_path, silo_pki, script)

    assert coord.decisions()[0].verdict == ALLOW  # the same offer as before
    assert "already contributed" in _refused(tmp_path, coord, 1, "replay")
    _refused(tmp_path, coord, 2, "sequence")
    assert [d.verdict for d in coord.decisions()[3:5]] == [ALLOW, ALLOW]
    assert "second, different roster" in _refused(tmp_path, coord, 5, "sequence")


# ---- lowers a round id after a vendor restart ----

def test_malicious_lower_round_id_after_a_vendor_restart_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    first = _play(tmp_path, silo_pki, [offer_frame(model=MODEL),
                                       start_frame(3, model_hash=h("m3"))])
    # the gateway process is gone; a new one starts over the same state directory
    again = _play(tmp_path, silo_pki, [offer_frame(model=MODEL),
                                       start_frame(2, model_hash=h("m2")),
                                       start_frame(3, model_hash=h("m3-again"))])

    assert [d.verdict for d in first.decisions()] == [ALLOW, ALLOW]
    assert again.joins[0].resume_jobs == ["job-1"]
    assert "does not exceed the last round 3" in _refused(tmp_path, again, 1, "round_order")
    kinds = [e["kind"] for e in _audit(tmp_path)]
    assert kinds.count("round_start") == 3  # one before the restart, two after
    decisions = again.decisions()
    assert decisions[2].verdict == REFUSE and "last round 3" in decisions[2].reason


# ---- DP noise below the floor, rounds past the epsilon budget ----

def test_malicious_dp_noise_below_the_floor_is_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    coord = _play(tmp_path, silo_pki, [offer_frame(model=MODEL, noise=0.5),
                                       offer_frame(model=MODEL, job="job-2", clip_norm=5.0)])

    assert "below the policy's floor" in _refused(tmp_path, coord, 0, "dp_floor")
    assert "above the policy's maximum" in _refused(tmp_path, coord, 1, "dp_floor")


def test_malicious_rounds_past_the_epsilon_budget_are_refused(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    script = [offer_frame(model=MODEL, rounds=10_000),          # alone past the budget
              offer_frame(model=MODEL, job="job-2", rounds=5),  # fits: accepted, reserved
              offer_frame(model=MODEL, job="job-3", rounds=5)]  # fits alone, not beside job-2
    coord = _play(tmp_path, silo_pki, script)

    assert "over the budget" in _refused(tmp_path, coord, 0, "budget")
    assert coord.decisions()[1].verdict == ALLOW
    assert "reserved by accepted offers" in _refused(tmp_path, coord, 2, "budget")


# ---- an unapproved model: pending until `fedcollab silo approve` ----

def _serve_cli(tmp: Path, pki: dict[str, Path], address: str) -> int:
    from fedcollab.cli import main

    return main(["silo", "serve", "--policy", str(_policy(tmp, pki)), "--coordinator", address,
                 "--cert", str(pki["main"] / "vendor.pem"),
                 "--key", str(pki["main"] / "vendor.key"),
                 "--coordinator-ca", str(pki["main"] / "ca.pem"),
                 "--trusted-ca", str(pki["main"] / "ca.pem"),
                 "--state-dir", str(tmp / "vendor"), "--timeout", "30"])


def test_malicious_unapproved_model_is_pending_until_approved(
        tmp_path: Path, silo_pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from fedcollab.cli import main
    from fedcollab.silo import load_state

    other = h("an architecture nobody approved")
    offered = offer_frame(model=other)
    changed = offer_frame(model=other, rounds=4)
    kw = dict(cert=silo_pki["main"] / "coordinator.pem", key=silo_pki["main"] / "coordinator.key",
              client_ca=silo_pki["main"] / "ca.pem")
    with malicious_coordinator(sessions=[[offered], [changed, offered]], **kw) as coord:
        assert _serve_cli(tmp_path, silo_pki, coord.address) == 0
        pending = load_state(tmp_path / "vendor" / "state.json").pending
        capsys.readouterr()
        assert main(["silo", "pending", "--state-dir", str(tmp_path / "vendor")]) == 0
        listed = capsys.readouterr().out
        assert main(["silo", "approve", "job-1", "--state-dir", str(tmp_path / "vendor"),
                     "--expect", listed.split()[2][:12]]) == 0
        assert _serve_cli(tmp_path, silo_pki, coord.address) == 0

    verdicts = [d.verdict for d in coord.decisions()]
    approvals = [e for e in _audit(tmp_path) if e["kind"] == "approval"]
    assert list(pending) == ["job-1"] and pending["job-1"].model_sha256 == other
    assert listed.startswith("job-1  offer ") and "4 rounds" not in listed
    assert verdicts == [PENDING, PENDING, ALLOW]  # first offer; changed offer; approved one
    assert "silo approve job-1" in coord.decisions()[0].reason
    assert len(approvals) == 1 and approvals[0]["decision"] == "allow"
    assert (tmp_path / "vendor" / "approvals.json").stat().st_mode & 0o777 == 0o600
    assert coord.update_bytes() == 0
    state = load_state(tmp_path / "vendor" / "state.json")
    assert state.job("job-1").offer is not None and state.job("job-1").offer.rounds == 3
    assert state.pending == {}
