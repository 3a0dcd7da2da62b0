"""`fedcollab certs` and the service over TLS and mutual TLS, certificates made here."""
from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509

from fedcollab.cli import main
from fedcollab.service.certs import CertError, init_ca, issue_cert
from fedcollab.service.errors import Unavailable
from fedcollab.service.server import run_server

from .conftest import Tokens, client


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    assert main(["certs", "init", "--dir", str(root)]) == 0
    assert main(["certs", "issue", "--dir", str(root), "--name", "server", "--server"]) == 0
    assert main(["certs", "issue", "--dir", str(root), "--name", "alice", "--client"]) == 0
    return root


def test_certs_keys_are_private_and_server_names_loopback(pki: Path) -> None:
    cert = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert {stat.S_IMODE((pki / k).stat().st_mode) for k in ("ca.key", "server.key",
                                                             "alice.key")} == {0o600}
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_certs_init_refuses_to_overwrite_a_ca(pki: Path) -> None:
    with pytest.raises(CertError, match="exists already"):
        init_ca(pki)


def test_certs_issue_without_ca_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="certs init"):
        issue_cert(tmp_path, name="server", server=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Path,
               tokens: Tokens) -> Iterator[Any]:
    with run_server(tmp_path_factory.mktemp("tls"), tokens=tokens.path, max_concurrent=0,
                    tls_cert=pki / "server.pem", tls_key=pki / "server.key") as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Path,
                tokens: Tokens) -> Iterator[Any]:
    with run_server(tmp_path_factory.mktemp("mtls"), tokens=tokens.path, max_concurrent=0,
                    tls_cert=pki / "server.pem", tls_key=pki / "server.key",
                    client_ca=pki / "ca.pem") as server:
        yield server


def test_tls_client_with_ca_is_served(tls_server: Any, pki: Path, tokens: Tokens) -> None:
    reply = client(tls_server, tokens.viewer, ca_cert=str(pki / "ca.pem")).list()

    assert reply.next_page_token == ""


def test_tls_plaintext_client_is_refused(tls_server: Any, tokens: Tokens) -> None:
    with pytest.raises(Unavailable):
        client(tls_server, tokens.viewer, timeout=5).list()


def test_tls_client_trusting_another_ca_is_refused(tls_server: Any, tmp_path: Path,
                                                   tokens: Tokens) -> None:
    init_ca(tmp_path)

    with pytest.raises(Unavailable):
        client(tls_server, tokens.viewer, ca_cert=str(tmp_path / "ca.pem"), timeout=5).list()


def test_mtls_client_certificate_is_required(mtls_server: Any, pki: Path,
                                             tokens: Tokens) -> None:
    with pytest.raises(Unavailable):
        client(mtls_server, tokens.viewer, ca_cert=str(pki / "ca.pem"), timeout=5).list()


def test_mtls_client_with_certificate_is_served(mtls_server: Any, pki: Path,
                                                tokens: Tokens) -> None:
    reply = client(mtls_server, tokens.viewer, ca_cert=str(pki / "ca.pem"),
                   client_cert=str(pki / "alice.pem"), client_key=str(pki / "alice.key")).list()

    assert reply.next_page_token == ""
