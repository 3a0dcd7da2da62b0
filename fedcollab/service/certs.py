"""A small certificate authority for the job service's TLS and mutual TLS.

Like NVIDIA FLARE's provisioning, but two commands: ``fedcollab certs init --dir D``
makes ``ca.pem`` and ``ca.key``; ``fedcollab certs issue --dir D --name N --server``
(or ``--client``) makes ``N.pem`` and ``N.key`` signed by it. Keys are ECDSA P-256,
written 0600. Server certificates name ``localhost``, ``127.0.0.1``, ``::1`` and
the given name; client certificates carry the name as their common name.

Cross-silo parties (``--party``, docs/cross-silo.md) get a leaf that names the party
twice: as its common name and as the URI ``urn:fedcollab:party:NAME`` in its subject
alternative names, which :func:`party_name` reads back. It is good for both ends of
mutual TLS (clientAuth and serverAuth): a vendor's gateway dials out with it, a
coordinator serves with it. ``--days`` sets a leaf's validity (default 825 days).
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from fedcollab.errors import FedcollabError
from fedcollab.io import atomic_write_bytes

__all__ = ["CertError", "IssuedFiles", "init_ca", "issue_cert", "party_name",
           "fingerprint", "PARTY_URI_PREFIX"]

CA_CERT, CA_KEY = "ca.pem", "ca.key"
CA_DAYS, LEAF_DAYS = 3650, 825
PARTY_URI_PREFIX = "urn:fedcollab:party:"
_MAX_NAME = 64


class CertError(FedcollabError):
    """A CA or certificate that cannot be made or loaded."""

    exit_code = 2


@dataclass(frozen=True)
class IssuedFiles:
    cert: Path
    key: Path


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(cert: Any, key: Any, cert_path: Path, key_path: Path) -> IssuedFiles:
    from cryptography.hazmat.primitives import serialization

    atomic_write_bytes(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return IssuedFiles(cert_path, key_path)


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcollab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def init_ca(directory: str | Path, *, name: str = "fedcollab CA",
            force: bool = False) -> IssuedFiles:
    """Make a CA certificate and key in `directory` (refuses to overwrite one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    root = Path(directory)
    if (root / CA_KEY).exists() and not force:
        raise CertError(f"{root / CA_KEY} exists already; a new CA would orphan every "
                        "certificate it signed (use another --dir)")
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    root.mkdir(parents=True, exist_ok=True)
    return _write(cert, key, root / CA_CERT, root / CA_KEY)


def _load_ca(root: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate((root / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((root / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError:
        raise CertError(f"no CA in {root}: run `fedcollab certs init --dir {root}` first") \
            from None
    except (OSError, ValueError) as err:
        raise CertError(f"cannot load the CA in {root} ({err.__class__.__name__})") from None
    return cert, key


def issue_cert(directory: str | Path, *, name: str, server: bool,
               hosts: Sequence[str] = (), party: bool = False, days: int = LEAF_DAYS,
               not_before: Optional[datetime.datetime] = None) -> IssuedFiles:
    """Make `name`.pem / `name`.key signed by the CA in `directory`.

    Args:
        name: the certificate's common name (and a DNS name for servers).
        server: True for a server certificate (serverAuth, SANs for loopback plus
            `name` and `hosts`), False for a client certificate (clientAuth).
        hosts: more DNS names or IP addresses a server certificate should cover.
        party: a cross-silo party's certificate: the URI SAN
            ``urn:fedcollab:party:NAME``, loopback SANs and both clientAuth and
            serverAuth (`server` is then ignored).
        days: validity from `not_before` (at least 1).
        not_before: start of validity (default: five minutes ago); tests pass a
            past date to make an expired certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    root = Path(directory)
    if (not name or "/" in name or name.startswith(".") or name in ("ca",)
            or len(name) > _MAX_NAME or not name.isprintable() or name != name.strip()):
        raise CertError(f"--name {name!r}: use a plain name such as 'server' or 'alice'")
    if days < 1:
        raise CertError(f"--days {days}: a certificate must be valid at least 1 day")
    ca_cert, ca_key = _load_ca(root)
    key = _new_key()
    now = (datetime.datetime.now(datetime.timezone.utc) if not_before is None
           else not_before + datetime.timedelta(minutes=5))
    builder = (x509.CertificateBuilder()
               .subject_name(_name(name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if party:
        server = True
    if server:
        names: list[x509.GeneralName] = []
        if party:
            names.append(x509.UniformResourceIdentifier(PARTY_URI_PREFIX + name))
        for host in ["localhost", "127.0.0.1", "::1", name, *hosts]:
            try:
                entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
            except ValueError:
                entry = x509.DNSName(host)
            if entry not in names:
                names.append(entry)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if party
                  else [ExtendedKeyUsageOID.SERVER_AUTH])
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write(cert, key, root / f"{name}.pem", root / f"{name}.key")


def party_name(cert_pem_or_der: bytes) -> str:
    """The party a ``--party`` certificate names (its ``urn:fedcollab:party:`` URI).

    Raises:
        CertError: the bytes are no certificate, or it names no party (or two).
    """
    from cryptography import x509

    try:
        cert = (x509.load_pem_x509_certificate(cert_pem_or_der)
                if cert_pem_or_der.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_certificate(cert_pem_or_der))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError("the certificate names no party (no subject alternative names); "
                        "issue one with `fedcollab certs issue --party`") from None
    except ValueError as err:
        raise CertError(f"not a certificate ({err.__class__.__name__})") from None
    uris = [u[len(PARTY_URI_PREFIX):] for u in sans.get_values_for_type(
        x509.UniformResourceIdentifier) if u.startswith(PARTY_URI_PREFIX)]
    if len(uris) != 1 or not uris[0]:
        raise CertError(f"the certificate names {len(uris)} parties, expected exactly 1; "
                        "issue one with `fedcollab certs issue --party`")
    return uris[0]


def fingerprint(cert_pem_or_der: bytes) -> str:
    """sha256 (hex) of a certificate's DER bytes: how a policy pins a CA."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
            cert_pem_or_der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(
                serialization.Encoding.DER)
        else:
            x509.load_der_x509_certificate(cert_pem_or_der)
    except ValueError as err:
        raise CertError(f"not a certificate ({err.__class__.__name__})") from None
    return hashlib.sha256(cert_pem_or_der).hexdigest()
