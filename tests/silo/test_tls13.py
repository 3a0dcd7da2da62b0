"""The gateway insists on TLS 1.3 (issue #31): gRPC's Python API cannot set a minimum
TLS version, so before each dial the gateway makes one handshake with ``ssl`` that
accepts nothing older. Against a real TLS server on 127.0.0.1 that speaks at most
TLS 1.2 it refuses with one audited reason and backs off like any link failure;
against the real coordinator (``SiloLink``) the probe passes."""
from __future__ import annotations

import json
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fedcollab.service.certs import fingerprint
from fedcollab.silo import load_policy
from fedcollab.silo.gateway import Gateway, LinkError
from fedcollab.silo.link import SiloLink
from fedcollab.silo.redial import Backoff, tls13_refusal

from .conftest import policy_bytes


@contextmanager
def tls12_server(pki: Path) -> Iterator[tuple[str, list[str]]]:
    """A TLS server on 127.0.0.1:0 with the coordinator's certificate that speaks at
    most TLS 1.2 and asks for a client certificate; yields its address and the
    versions of the handshakes it completed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki / "coordinator.pem", pki / "coordinator.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    completed: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    completed.append(str(tls.version()))
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", completed
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _gateway(tmp: Path, pki: dict[str, Path], address: str) -> Gateway:
    policy = tmp / "vendor-policy.yaml"
    policy.write_bytes(policy_bytes(
        trusted_cas=[fingerprint((pki["main"] / "ca.pem").read_bytes())]))
    main = pki["main"]
    return Gateway(policy=load_policy(policy), coordinator=address, cert=main / "vendor.pem",
                   key=main / "vendor.key", coordinator_ca=main / "ca.pem",
                   trusted_cas=[main / "ca.pem"], state_dir=tmp / "vendor",
                   coordinator_name="coordinator")


def _probe(pki: dict[str, Path], address: str) -> str:
    main = pki["main"]
    return tls13_refusal(address, coordinator_ca=main / "ca.pem", cert=main / "vendor.pem",
                         key=main / "vendor.key", server_name="coordinator")


def test_tls13_probe_refuses_a_tls12_only_server(silo_pki: dict[str, Path]) -> None:
    with tls12_server(silo_pki["main"]) as (address, completed):
        why = _probe(silo_pki, address)
    assert why.startswith(f"the coordinator at {address} cannot do TLS 1.3 (")
    assert "\n" not in why and completed == []  # no TLS 1.2 session was made


def test_tls13_probe_passes_the_real_coordinator(silo_pki: dict[str, Path]) -> None:
    main = silo_pki["main"]
    link = SiloLink(cert=main / "coordinator.pem", key=main / "coordinator.key",
                    client_ca=main / "ca.pem").start()
    try:
        assert _probe(silo_pki, link.address) == ""
    finally:
        link.stop()


def test_tls13_probe_leaves_other_failures_to_the_dial(silo_pki: dict[str, Path]) -> None:
    assert _probe(silo_pki, "127.0.0.1:1") == ""  # nothing listens: diagnose() says so


def test_gateway_refuses_a_tls12_coordinator_audits_it_and_backs_off(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    slept: list[float] = []
    said: list[str] = []
    with tls12_server(silo_pki["main"]) as (address, completed):
        gateway = _gateway(tmp_path, silo_pki, address)
        try:
            with pytest.raises(LinkError, match="gave up after 3 attempts") as err:
                gateway.serve(reconnect=True, max_attempts=3, sleep=slept.append,
                              say=said.append,
                              backoff=Backoff(initial=1.0, maximum=2.0, rng=random.Random(1)))
        finally:
            gateway.close()

    assert "cannot do TLS 1.3" in str(err.value) and "\n" not in str(err.value)
    assert len(slept) == 2 and all("cannot do TLS 1.3" in line for line in said)
    audit = [json.loads(line) for line in
             (tmp_path / "vendor" / "audit.jsonl").read_text().splitlines()]
    refusals = [e for e in audit if e["rule"] == "tls"]
    assert len(refusals) == 3 and all(e["decision"] == "refuse" and e["kind"] == "tls"
                                      and "cannot do TLS 1.3" in e["reason"] for e in refusals)
    assert completed == []  # neither the probe nor gRPC ever completed a TLS 1.2 session


def test_a_listener_that_speaks_no_tls_is_not_called_a_tls_version_problem(
        silo_pki: dict[str, Path]) -> None:
    """A plaintext listener answers a ClientHello with bytes that are no TLS record
    (OpenSSL: wrong version number): that is not a coordinator that cannot do 1.3, so
    the probe stays silent and the dial's own diagnosis names the real cause."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        said = _probe(silo_pki, f"127.0.0.1:{listener.getsockname()[1]}")
    finally:
        listener.close()
    assert said == ""
