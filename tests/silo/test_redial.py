"""The gateway's side of a failing link, over real mutual TLS on 127.0.0.1: a coordinator
that stops answering mid-round is dropped by the round's deadline plus the grace (never
later than deadline + 10 s); the gateway then dials again with bounded, jittered
exponential backoff and rejoins with its round ids still increasing; it survives a
coordinator restart and certificate rotation (new leaves, same CA); and when there is
no link it says the one reason why."""
from __future__ import annotations

import json
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedcollab._proto.fedcollab.v1 import silo_pb2
from fedcollab.service.certs import fingerprint
from fedcollab.silo import load_policy, load_state
from fedcollab.silo.gateway import Gateway, LinkError
from fedcollab.silo.redial import Backoff

from .conftest import MODEL, policy_bytes
from .malicious import Hangup, Silence, malicious_coordinator, offer_frame, start_frame

ALLOW, REFUSE = silo_pb2.Decision.ALLOW, silo_pb2.Decision.REFUSE


def _h(n: int) -> str:
    import hashlib

    return hashlib.sha256(f"model {n}".encode()).hexdigest()


def _gateway(tmp: Path, pki: dict[str, Path], address: str, *, grace: float = 1.0,
             cert_dir: Path | None = None, coordinator_ca: str = "main",
             coordinator_name: str | None = None) -> Gateway:
    policy = tmp / "vendor-policy.yaml"
    policy.write_bytes(policy_bytes(
        trusted_cas=[fingerprint((pki["main"] / "ca.pem").read_bytes())]))
    where = cert_dir or pki["main"]
    return Gateway(policy=load_policy(policy), coordinator=address, cert=where / "vendor.pem",
                   key=where / "vendor.key", coordinator_ca=pki[coordinator_ca] / "ca.pem",
                   trusted_cas=[pki["main"] / "ca.pem"], state_dir=tmp / "vendor",
                   deadline_grace=grace, coordinator_name=coordinator_name)


def _coordinator(pki: dict[str, Path], sessions: list, *, leaf: str = "main", port: int = 0,
                 state: Any = None) -> Any:
    return malicious_coordinator(cert=pki[leaf] / "coordinator.pem",
                                 key=pki[leaf] / "coordinator.key",
                                 client_ca=pki["main"] / "ca.pem", sessions=sessions, port=port,
                                 state=state)


# ---- backoff ----

def test_backoff_is_exponential_bounded_and_jittered() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, rng=random.Random(0))

    ceilings, delays = [], []
    for _ in range(8):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next())
    backoff.reset()

    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings))
    assert len(set(delays)) == len(delays)          # drawn, not fixed
    assert backoff.ceiling() == 0.5


def test_backoff_bad_bounds_raise() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=5.0, maximum=1.0)


# ---- a coordinator that stops answering mid-round ----

def test_gateway_black_holed_round_ends_by_deadline_plus_grace(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    with _coordinator(silo_pki, []) as coord:
        gateway = _gateway(tmp_path, silo_pki, coord.address, grace=1.0)
        deadline = time.time() + 1.5  # from when the gateway is ready to dial
        coord.sessions = [[offer_frame(model=MODEL),
                           start_frame(1, model_hash=_h(1), deadline=deadline), Silence(120)]]
        try:
            with pytest.raises(LinkError, match="by the round's deadline") as err:
                gateway.run()
        finally:
            gateway.close()
        ended = time.time()
        _wait(lambda: coord.silence_ended, 5)  # the coordinator saw the stream cancelled

    last = json.loads((tmp_path / "vendor" / "audit.jsonl").read_text().splitlines()[-1])
    assert deadline + 1.0 <= ended < deadline + 10   # waited the grace, never past +10 s
    assert err.value.retryable and "\n" not in str(err.value)
    assert (last["kind"], last["decision"], last["rule"]) == ("deadline", "refuse", "deadline")


def test_gateway_reconnects_after_a_deadline_and_rejoins_with_monotonic_rounds(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    lines: list[str] = []
    with _coordinator(silo_pki, []) as coord:
        gateway = _gateway(tmp_path, silo_pki, coord.address, grace=0.5)
        deadline = time.time() + 1.0  # from when the gateway is ready to dial
        coord.sessions = [
            [offer_frame(model=MODEL), start_frame(1, model_hash=_h(1), deadline=deadline),
             Silence(120)],
            [offer_frame(model=MODEL), start_frame(1, model_hash=_h(1)),
             start_frame(2, model_hash=_h(1), deadline=time.time() + 60)]]
        try:
            report = gateway.serve(reconnect=True, max_attempts=5, say=lines.append,
                                   backoff=Backoff(initial=0.05, maximum=0.2))
        finally:
            gateway.close()

    verdicts = [d.verdict for d in coord.decisions()]
    assert report.connections == 2 and len(coord.joins) == 2
    assert list(coord.joins[1].resume_jobs) == ["job-1"]
    assert verdicts == [ALLOW, ALLOW, ALLOW, REFUSE, ALLOW]   # round 1 again: refused
    assert "does not exceed the last round 1" in coord.decisions()[3].reason
    assert len(lines) == 1 and "dialling again in" in lines[0]
    assert load_state(tmp_path / "vendor" / "state.json").job("job-1").last_round == 2


# ---- coordinator restart and certificate rotation ----

def test_gateway_survives_a_coordinator_restart_with_rotated_certificates(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    certs = tmp_path / "vendor-certs"  # the vendor's files, replaced in place on rotation
    certs.mkdir()
    for name in ("vendor.pem", "vendor.key"):
        shutil.copy(silo_pki["main"] / name, certs / name)
    before = [offer_frame(model=MODEL), start_frame(1, model_hash=_h(1)), Silence(120)]
    after = [offer_frame(model=MODEL), start_frame(2, model_hash=_h(2))]
    outcome: dict[str, Any] = {}
    lines: list[str] = []

    with _coordinator(silo_pki, [before]) as first:
        gateway = _gateway(tmp_path, silo_pki, first.address, cert_dir=certs)

        def serve() -> None:
            try:
                outcome["report"] = gateway.serve(
                    reconnect=True, max_attempts=50, say=lines.append,
                    backoff=Backoff(initial=0.05, maximum=0.3))
            except Exception as err:  # noqa: BLE001 - reported below
                outcome["error"] = err

        thread = threading.Thread(target=serve)
        thread.start()
        _wait(lambda: len(first.decisions()) == 2)
        port = first.port
    # the coordinator is gone; both sides rotate their leaf (same CA) meanwhile
    for name in ("vendor.pem", "vendor.key"):
        shutil.copy(silo_pki["rotated"] / name, certs / name)
    _wait(lambda: len(lines) >= 2)  # the gateway is dialling an empty port
    with _coordinator(silo_pki, [after], leaf="rotated", port=port) as second:
        thread.join(timeout=60)
    gateway.close()

    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].connections >= 3
    assert [d.verdict for d in second.decisions()] == [ALLOW, ALLOW]
    assert second.peer_certs[-1] == (silo_pki["rotated"] / "vendor.pem").read_bytes()
    assert load_state(tmp_path / "vendor" / "state.json").job("job-1").last_round == 2


def _wait(condition: Any, seconds: float = 30) -> None:
    end = time.time() + seconds
    while not condition():
        if time.time() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# ---- when to stop dialling ----

def test_gateway_gives_up_after_max_attempts(tmp_path: Path,
                                             silo_pki: dict[str, Path]) -> None:
    slept: list[float] = []
    gateway = _gateway(tmp_path, silo_pki, "127.0.0.1:1")
    try:
        with pytest.raises(LinkError, match="gave up after 3 attempts") as err:
            gateway.serve(reconnect=True, max_attempts=3, sleep=slept.append,
                          say=lambda line: None,
                          backoff=Backoff(initial=1.0, maximum=2.0, rng=random.Random(1)))
    finally:
        gateway.close()

    assert "nothing listens at 127.0.0.1:1" in str(err.value)
    assert len(slept) == 2 and slept[0] <= 1.0 and slept[1] <= 2.0


def test_gateway_refused_by_the_coordinator_does_not_dial_again(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    with _coordinator(silo_pki, [[Hangup(grpc.StatusCode.PERMISSION_DENIED)]]) as coord:
        gateway = _gateway(tmp_path, silo_pki, coord.address)
        try:
            with pytest.raises(LinkError, match="PERMISSION_DENIED") as err:
                gateway.serve(reconnect=True, say=lambda line: None,
                              backoff=Backoff(initial=0.01, maximum=0.01))
        finally:
            gateway.close()

    assert not err.value.retryable and len(coord.joins) == 1


# ---- authentication: each refusal says its one reason on the gateway's side ----

@pytest.mark.parametrize("case, words", [
    ("vendor-from-another-ca", "closed the connection once it saw this party's certificate"),
    ("vendor-expired", "this party's certificate expired on"),
    ("coordinator-from-another-ca", "the coordinator's certificate does not verify against "
                                    "--coordinator-ca"),
    ("nothing-listening", "nothing listens at"),
])
def test_gateway_without_a_link_says_the_one_reason(tmp_path: Path, silo_pki: dict[str, Path],
                                                    case: str, words: str) -> None:
    leaf = "other" if case == "coordinator-from-another-ca" else "main"
    cert_dir = {"vendor-from-another-ca": silo_pki["other"],
                "vendor-expired": silo_pki["expired"]}.get(case)
    with _coordinator(silo_pki, [[offer_frame(model=MODEL)]], leaf=leaf) as coord:
        address = "127.0.0.1:1" if case == "nothing-listening" else coord.address
        gateway = _gateway(tmp_path, silo_pki, address, cert_dir=cert_dir)
        try:
            with pytest.raises(LinkError, match="no mutual-TLS link") as err:
                gateway.run(timeout=10)
        finally:
            gateway.close()

    assert words in str(err.value) and "\n" not in str(err.value)
    assert coord.joins == [] and coord.update_bytes() == 0


def test_cli_silo_serve_reconnect_gives_up_with_one_line_per_attempt(
        tmp_path: Path, silo_pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from fedcollab.cli import main

    policy = tmp_path / "vendor-policy.yaml"
    policy.write_bytes(policy_bytes(
        trusted_cas=[fingerprint((silo_pki["main"] / "ca.pem").read_bytes())]))
    code = main(["silo", "serve", "--policy", str(policy), "--coordinator", "127.0.0.1:1",
                 "--cert", str(silo_pki["main"] / "vendor.pem"),
                 "--key", str(silo_pki["main"] / "vendor.key"),
                 "--coordinator-ca", str(silo_pki["main"] / "ca.pem"),
                 "--trusted-ca", str(silo_pki["main"] / "ca.pem"),
                 "--state-dir", str(tmp_path / "s"), "--reconnect", "--max-attempts", "3",
                 "--backoff-initial", "0.01", "--backoff-max", "0.02"])

    lines = capsys.readouterr().err.splitlines()
    assert code == 1 and len(lines) == 3
    assert all("nothing listens at 127.0.0.1:1" in line for line in lines)
    assert "dialling again in" in lines[0] and "gave up after 3 attempts" in lines[-1]


# ---- the coordinator's identity: its party name, not only its CA ----

def test_gateway_with_coordinator_name_accepts_that_party(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    with _coordinator(silo_pki, [[offer_frame(model=MODEL)]]) as coord:
        gateway = _gateway(tmp_path, silo_pki, coord.address, coordinator_name="coordinator")
        try:
            gateway.run(timeout=30)
        finally:
            gateway.close()

    assert [d.verdict for d in coord.decisions()] == [ALLOW]


def test_gateway_with_coordinator_name_refuses_another_leaf_of_the_same_ca(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    # m0 is a party of the very CA the vendor pins: without the name it would pass
    with malicious_coordinator(cert=silo_pki["main"] / "m0.pem", key=silo_pki["main"] / "m0.key",
                               client_ca=silo_pki["main"] / "ca.pem",
                               sessions=[[offer_frame(model=MODEL)]]) as impostor:
        gateway = _gateway(tmp_path, silo_pki, impostor.address, coordinator_name="coordinator")
        try:
            with pytest.raises(LinkError, match="no mutual-TLS link") as err:
                gateway.run(timeout=10)
        finally:
            gateway.close()

    assert "is not 'coordinator''s (--coordinator-name)" in str(err.value)
    assert impostor.joins == [] and impostor.update_bytes() == 0


def test_gateway_with_coordinator_name_refuses_frames_from_another_sender(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    forged = offer_frame(model=MODEL)
    forged.sender = "mallory"
    with _coordinator(silo_pki, [[forged, offer_frame(model=MODEL)]]) as coord:
        gateway = _gateway(tmp_path, silo_pki, coord.address, coordinator_name="coordinator")
        try:
            gateway.run(timeout=30)
        finally:
            gateway.close()

    decisions = coord.decisions()
    last_two = [json.loads(line) for line in
                (tmp_path / "vendor" / "audit.jsonl").read_text().splitlines()[-2:]]
    assert decisions[0].verdict == REFUSE and "'mallory'" in decisions[0].reason
    assert last_two[0]["rule"] == "sender" and decisions[1].verdict == ALLOW


def test_gateway_idle_timeout_drops_a_silent_link_between_rounds(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    with _coordinator(silo_pki, [[offer_frame(model=MODEL), Silence(120)]]) as coord:
        gateway = _gateway(tmp_path, silo_pki, coord.address)
        gateway.idle_timeout = 1.0
        started = time.time()
        try:
            with pytest.raises(LinkError, match="--idle-timeout") as err:
                gateway.run()
        finally:
            gateway.close()
        took = time.time() - started

    last = json.loads((tmp_path / "vendor" / "audit.jsonl").read_text().splitlines()[-1])
    assert err.value.retryable and 1.0 <= took < 10
    assert (last["kind"], last["rule"]) == ("idle", "idle")
    assert [d.verdict for d in coord.decisions()] == [ALLOW]
