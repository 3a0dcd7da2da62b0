"""The gateway skeleton over a real socket: mutual TLS with a throwaway CA, the
coordinator on 127.0.0.1:0, refusals for every certificate that should not pass."""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedcollab._proto.fedcollab.v1 import silo_pb2, silo_pb2_grpc
from fedcollab.service.certs import fingerprint, init_ca, issue_cert
from fedcollab.silo import SiloError, load_policy, load_state
from fedcollab.silo.audit import verify_audit
from fedcollab.silo.coordinator import run_coordinator
from fedcollab.silo.gateway import Gateway

from .conftest import MODEL, policy_bytes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    main, other = tmp_path_factory.mktemp("ca"), tmp_path_factory.mktemp("other-ca")
    init_ca(main, name="throwaway CA")
    init_ca(other, name="another CA")
    for name in ("coordinator", "vendor", "intruder"):
        issue_cert(main, name=name, server=False, party=True)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    expired = tmp_path_factory.mktemp("expired")
    (expired / "ca.pem").write_bytes((main / "ca.pem").read_bytes())
    (expired / "ca.key").write_bytes((main / "ca.key").read_bytes())
    issue_cert(expired, name="vendor", server=False, party=True, days=1, not_before=past)
    issue_cert(other, name="vendor", server=False, party=True)
    issue_cert(other, name="coordinator", server=False, party=True)
    return {"main": main, "other": other, "expired": expired}


def _policy(tmp: Path, ca: Path) -> Path:
    path = tmp / "vendor-policy.yaml"
    path.write_bytes(policy_bytes(trusted_cas=[fingerprint((ca / "ca.pem").read_bytes())]))
    return path


def _gateway(tmp: Path, pki: dict[str, Path], address: str, *, cert_dir: str = "main",
             coordinator_ca: str = "main") -> Gateway:
    policy = load_policy(_policy(tmp, pki["main"]))
    return Gateway(policy=policy, coordinator=address,
                   cert=pki[cert_dir] / "vendor.pem", key=pki[cert_dir] / "vendor.key",
                   coordinator_ca=pki[coordinator_ca] / "ca.pem",
                   trusted_cas=[pki["main"] / "ca.pem"], state_dir=tmp / "vendor")


def _coordinator(pki: dict[str, Path], ca: str = "main", **kw: Any) -> Any:
    return run_coordinator(cert=pki[ca] / "coordinator.pem", key=pki[ca] / "coordinator.key",
                           client_ca=pki["main"] / "ca.pem", **kw)


def _offer(**changes: Any) -> Any:
    offer = silo_pb2.Offer(
        job_id="job-1", model_name="mlp", model_sha256=MODEL, rounds=3,
        layers=[silo_pb2.LayerManifestEntry(name=n, shape=[4, 2], dtype="float32")
                for n in ("dense", "dense_1", "head")],
        secagg=silo_pb2.SecAggParams(protocol="secaggplus", threshold=0.67, min_group=3,
                                     max_group=100, ring_bits=32, scale_bits=16, clip=1.0),
        dp=silo_pb2.DpParams(mode="local", noise_multiplier=2.0, clip_norm=1.0, delta=1e-5))
    for key, value in changes.items():
        setattr(offer, key, value)
    return silo_pb2.CoordinatorFrame(sender="coordinator", offer=offer)


def _start(round_id: int, layers: tuple[str, ...]) -> Any:
    return silo_pb2.CoordinatorFrame(sender="coordinator", round_start=silo_pb2.RoundStart(
        job_id="job-1", round_id=round_id,
        global_model_sha256=hashlib.sha256(f"model {round_id}".encode()).hexdigest(),
        weights=[silo_pb2.Tensor(layer=n, shape=[4, 2], dtype="float32", data=bytes(32))
                 for n in layers]))


def test_gateway_joins_over_mtls_and_decides_each_frame(tmp_path: Path,
                                                        pki: dict[str, Path]) -> None:
    script = {"vendor": [_offer(), _start(1, ("dense", "dense_1")), _start(2, ("head",)),
                         silo_pb2.CoordinatorFrame(sender="coordinator")]}
    with _coordinator(pki, script=script) as coordinator:
        gateway = _gateway(tmp_path, pki, coordinator.address)
        report = gateway.run(timeout=30)
        gateway.close()

    verdicts = [(f.decision.verdict, f.decision.reason) for f in coordinator.received]
    audit = [json.loads(line) for line in (tmp_path / "vendor" / "audit.jsonl").open()]

    join = coordinator.joins[0]
    assert join.party == "vendor"
    assert join.policy_sha256 == hashlib.sha256(policy_bytes(
        trusted_cas=[fingerprint((pki["main"] / "ca.pem").read_bytes())])).hexdigest()
    assert [v for v, _ in verdicts] == [silo_pb2.Decision.ALLOW, silo_pb2.Decision.ALLOW,
                                        silo_pb2.Decision.REFUSE, silo_pb2.Decision.REFUSE]
    assert "'head'" in verdicts[2][1] and "unknown frame" in verdicts[3][1]
    assert (report.frames, report.allowed, report.refused) == (5, 3, 2)  # with the Welcome
    assert [e["decision"] for e in audit] == ["allow", "allow", "allow", "refuse", "refuse"]
    assert verify_audit(tmp_path / "vendor" / "audit.jsonl").entries == 5
    assert load_state(tmp_path / "vendor" / "state.json").job("job-1").last_round == 1
    assert all(f.WhichOneof("body") == "decision" for f in coordinator.received)


def test_gateway_rejoin_keeps_round_ids_monotonic(tmp_path: Path, pki: dict[str, Path]) -> None:
    first = {"vendor": [_offer(), _start(2, ("dense",))]}
    again = {"vendor": [_offer(), _start(1, ("dense",))]}  # a lower round after a restart
    for script in (first, again):
        with _coordinator(pki, script=script) as coordinator:
            gateway = _gateway(tmp_path, pki, coordinator.address)
            gateway.run(timeout=30)
            gateway.close()

    last = coordinator.received[-1].decision

    assert coordinator.joins[0].policy_sha256 == load_policy(
        tmp_path / "vendor-policy.yaml").sha256
    assert last.verdict == silo_pb2.Decision.REFUSE
    assert "does not exceed the last round 2" in last.reason


def test_gateway_unapproved_model_is_pending(tmp_path: Path, pki: dict[str, Path]) -> None:
    script = {"vendor": [_offer(model_sha256=hashlib.sha256(b"other").hexdigest())]}
    with _coordinator(pki, script=script) as coordinator:
        gateway = _gateway(tmp_path, pki, coordinator.address)
        report = gateway.run(timeout=30)
        gateway.close()

    assert report.pending == 1
    assert coordinator.received[0].decision.verdict == silo_pb2.Decision.PENDING


def test_gateway_link_is_tls_with_the_vendor_certificate(tmp_path: Path,
                                                             pki: dict[str, Path]) -> None:
    with _coordinator(pki) as coordinator:
        gateway = _gateway(tmp_path, pki, coordinator.address)
        gateway.run(timeout=30)
        gateway.close()

    auth = coordinator.auth[0]

    assert auth["transport_security_type"] == [b"ssl"]
    assert b"urn:fedcollab:party:vendor" in auth.get("x509_subject_alternative_name", [])


@pytest.mark.parametrize("cert_dir, coordinator_ca, coordinator_cert", [
    ("other", "main", "main"),      # the vendor's certificate is from a CA the coordinator
                                    # does not trust
    ("expired", "main", "main"),    # an expired certificate
    ("main", "main", "other"),      # a coordinator with another CA than the pinned one
])
def test_gateway_bad_certificates_are_refused(tmp_path: Path, pki: dict[str, Path],
                                              cert_dir: str, coordinator_ca: str,
                                              coordinator_cert: str) -> None:
    with _coordinator(pki, ca=coordinator_cert,
                      script={"vendor": [_offer()]}) as coordinator:
        gateway = _gateway(tmp_path, pki, coordinator.address, cert_dir=cert_dir,
                           coordinator_ca=coordinator_ca)
        with pytest.raises(SiloError, match="no mutual-TLS link") as err:
            gateway.run(timeout=10)
        gateway.close()

    assert "\n" not in str(err.value)
    assert coordinator.joins == [] and coordinator.received == []


def _raw_stream(address: str, credentials: Any, frames: list[Any]) -> list[Any]:
    with grpc.secure_channel(address, credentials) as channel:
        stub = silo_pb2_grpc.SiloServiceStub(channel)
        return list(stub.Connect(iter(frames), timeout=10))


def _join(sender: str, party: str) -> Any:
    return silo_pb2.GatewayFrame(sender=sender, seq=1, join=silo_pb2.Join(
        party=party, fedcollab_version="0", policy_sha256="0" * 64))


def test_coordinator_refuses_a_client_without_certificate(pki: dict[str, Path]) -> None:
    with _coordinator(pki) as coordinator:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(pki["main"] / "ca.pem").read_bytes())
        with pytest.raises(grpc.RpcError) as err:
            _raw_stream(coordinator.address, credentials, [_join("vendor", "vendor")])

    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert coordinator.joins == []


@pytest.mark.parametrize("sender, party", [("vendor", "vendor"), ("intruder", "vendor")])
def test_coordinator_refuses_a_sender_the_certificate_does_not_name(
        pki: dict[str, Path], sender: str, party: str) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki["main"] / "ca.pem").read_bytes(),
        private_key=(pki["main"] / "intruder.key").read_bytes(),
        certificate_chain=(pki["main"] / "intruder.pem").read_bytes())
    with _coordinator(pki) as coordinator:
        with pytest.raises(grpc.RpcError) as err:
            _raw_stream(coordinator.address, credentials, [_join(sender, party)])

    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "the certificate's party 'intruder'" in err.value.details() or \
        "the certificate 'intruder'" in err.value.details()
    assert coordinator.joins == []


def test_gateway_certificate_for_another_party_than_the_policy_is_refused(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    policy = load_policy(_policy(tmp_path, pki["main"]))
    with pytest.raises(SiloError, match="names party 'intruder', the policy 'vendor'"):
        Gateway(policy=policy, coordinator="127.0.0.1:1", cert=pki["main"] / "intruder.pem",
                key=pki["main"] / "intruder.key", coordinator_ca=pki["main"] / "ca.pem",
                trusted_cas=[pki["main"] / "ca.pem"], state_dir=tmp_path / "v")


def test_gateway_trusted_ca_outside_the_policy_is_refused(tmp_path: Path,
                                                          pki: dict[str, Path]) -> None:
    policy = load_policy(_policy(tmp_path, pki["main"]))
    with pytest.raises(SiloError, match="not in the policy's trusted_cas"):
        Gateway(policy=policy, coordinator="127.0.0.1:1", cert=pki["main"] / "vendor.pem",
                key=pki["main"] / "vendor.key", coordinator_ca=pki["main"] / "ca.pem",
                trusted_cas=[pki["other"] / "ca.pem"], state_dir=tmp_path / "v")



def test_cli_silo_serve_dials_out_and_listens_on_nothing(tmp_path: Path,
                                                         pki: dict[str, Path]) -> None:
    import subprocess
    import sys

    import psutil

    listening: list[Any] = []
    child: list[subprocess.Popen[str]] = []

    def on_join(record: Any) -> None:  # while the gateway is connected
        conns = psutil.Process(child[0].pid).net_connections(kind="inet")
        listening.extend(c for c in conns if c.status == psutil.CONN_LISTEN)
        listening.append("checked")

    policy = _policy(tmp_path, pki["main"])
    with _coordinator(pki, script={"vendor": [_offer()]}, on_join=on_join) as coordinator:
        child.append(subprocess.Popen(
            [sys.executable, "-m", "fedcollab.cli", "silo", "serve", "--policy", str(policy),
             "--coordinator", coordinator.address, "--cert", str(pki["main"] / "vendor.pem"),
             "--key", str(pki["main"] / "vendor.key"),
             "--coordinator-ca", str(pki["main"] / "ca.pem"),
             "--trusted-ca", str(pki["main"] / "ca.pem"), "--state-dir", str(tmp_path / "s"),
             "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        out, err = child[0].communicate(timeout=120)

    assert child[0].returncode == 0, err
    assert "vendor: 2 frame(s): 2 allowed, 0 refused" in out
    assert listening == ["checked"]


def test_cli_silo_serve_unreachable_coordinator_is_one_line(
        tmp_path: Path, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from fedcollab.cli import main

    code = main(["silo", "serve", "--policy", str(_policy(tmp_path, pki["main"])),
                 "--coordinator", "127.0.0.1:1", "--cert", str(pki["main"] / "vendor.pem"),
                 "--key", str(pki["main"] / "vendor.key"),
                 "--coordinator-ca", str(pki["main"] / "ca.pem"),
                 "--trusted-ca", str(pki["main"] / "ca.pem"),
                 "--state-dir", str(tmp_path / "s"), "--timeout", "5"])

    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no mutual-TLS link" in err
