"""`fedcollab certs issue --party`: cross-silo party certificates (docs/cross-silo.md)."""
from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedcollab.cli import main
from fedcollab.service.certs import CertError, fingerprint, init_ca, issue_cert, party_name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    assert main(["certs", "init", "--dir", str(root)]) == 0
    assert main(["certs", "issue", "--dir", str(root), "--name", "vendor", "--party",
                 "--days", "7"]) == 0
    return root


def test_party_cert_names_the_party_and_key_is_private(pki: Path) -> None:
    pem = (pki / "vendor.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert party_name(pem) == "vendor"
    assert stat.S_IMODE((pki / "vendor.key").stat().st_mode) == 0o600
    assert set(usage) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}


def test_party_cert_validity_is_the_days_asked(pki: Path) -> None:
    cert = x509.load_pem_x509_certificate((pki / "vendor.pem").read_bytes())

    span = cert.not_valid_after_utc - cert.not_valid_before_utc

    assert span == datetime.timedelta(days=7, minutes=5)


def test_party_cert_is_signed_by_the_ca(pki: Path) -> None:
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((pki / "vendor.pem").read_bytes())

    cert.verify_directly_issued_by(ca)  # raises on a bad signature


def test_party_name_of_a_plain_client_cert_is_refused(tmp_path: Path) -> None:
    init_ca(tmp_path)
    files = issue_cert(tmp_path, name="alice", server=False)

    with pytest.raises(CertError, match="names no party"):
        party_name(files.cert.read_bytes())


def test_party_name_of_garbage_is_refused() -> None:
    with pytest.raises(CertError, match="not a certificate"):
        party_name(b"\x30\x03\x02\x01\x00")


def test_expired_party_cert_can_be_made_for_tests(tmp_path: Path) -> None:
    init_ca(tmp_path)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)

    files = issue_cert(tmp_path, name="old", server=False, party=True, days=1, not_before=past)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())

    assert cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc)


@pytest.mark.parametrize("days", ["0", "-3"])
def test_certs_issue_nonpositive_days_exits_2(pki: Path, days: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["certs", "issue", "--dir", str(pki), "--name", "x", "--party", "--days", days])

    assert code == 2
    assert "valid at least 1 day" in capsys.readouterr().err


def test_fingerprint_is_the_same_for_pem_and_der(pki: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = (pki / "ca.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)

    assert fingerprint(pem) == fingerprint(der)
    assert len(fingerprint(pem)) == 64


def test_certs_init_prints_the_fingerprint_a_silo_policy_pins(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`trusted_cas` in a vendor's policy lists CA fingerprints: `certs init` prints the
    new CA's, the sha256 of its DER (what `openssl x509 -outform DER | sha256sum` gives)."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    assert main(["certs", "init", "--dir", str(tmp_path / "pki")]) == 0
    lines = capsys.readouterr().out.splitlines()
    der = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.pem").read_bytes()).public_bytes(
        Encoding.DER)
    assert lines[-1] == f"CA sha256: {hashlib.sha256(der).hexdigest()}"
