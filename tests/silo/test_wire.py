"""The gateway's edge: CoordinatorFrame bytes to pure frames, caps and certificates."""
from __future__ import annotations

import datetime
import pickle
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab._proto.fedcollab.v1 import silo_pb2
from fedcollab.service.certs import fingerprint, init_ca, issue_cert
from fedcollab.silo import Refuse, SiloState, check
from fedcollab.silo.limits import MAX_COORDINATOR_FRAME, MAX_NAME
from fedcollab.silo.wire import Inbound, MalformedFrameError, from_coordinator, member_of

from .conftest import make_policy

NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    good, bad = tmp_path_factory.mktemp("good"), tmp_path_factory.mktemp("bad")
    init_ca(good)
    init_ca(bad)
    issue_cert(good, name="alice", server=False, party=True)
    issue_cert(bad, name="mallory", server=False, party=True)
    issue_cert(good, name="bob", server=False)  # a plain client cert: names no party
    return {"good": good, "bad": bad}


def _trusted(cas: dict[str, Path]) -> dict[str, x509.Certificate]:
    pem = (cas["good"] / "ca.pem").read_bytes()
    return {fingerprint(pem): x509.load_pem_x509_certificate(pem)}


def _identity(path: Path, party: str, simulated: bool = False) -> silo_pb2.Identity:
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    return silo_pb2.Identity(party=party, certificate_der=der, simulated=simulated)


def test_member_signed_by_a_trusted_ca_counts(cas: dict[str, Path]) -> None:
    member = member_of(_identity(cas["good"] / "alice.pem", "alice"), _trusted(cas), NOW)

    assert member.ca_sha256 in _trusted(cas) and not member.simulated


@pytest.mark.parametrize("ca, cert, party, simulated", [
    ("bad", "mallory.pem", "mallory", False),   # another CA
    ("good", "alice.pem", "carol", False),      # a certificate for someone else
    ("good", "bob.pem", "bob", False),          # names no party
    ("good", "alice.pem", "alice", True),       # simulated, whatever its certificate
])
def test_member_that_does_not_verify_counts_zero(cas: dict[str, Path], ca: str, cert: str,
                                                 party: str, simulated: bool) -> None:
    member = member_of(_identity(cas[ca] / cert, party, simulated), _trusted(cas), NOW)

    assert member.ca_sha256 == ""


def test_member_outside_validity_counts_zero(cas: dict[str, Path]) -> None:
    later = NOW + datetime.timedelta(days=5000)

    assert member_of(_identity(cas["good"] / "alice.pem", "alice"), _trusted(cas),
                     later).ca_sha256 == ""


def test_forged_certificate_bytes_count_zero(cas: dict[str, Path]) -> None:
    identity = _identity(cas["good"] / "alice.pem", "alice")
    forged = bytearray(identity.certificate_der)
    forged[-5] ^= 0x01  # inside the signature
    identity.certificate_der = bytes(forged)

    assert member_of(identity, _trusted(cas), NOW).ca_sha256 == ""


def test_oversized_frame_is_malformed() -> None:
    with pytest.raises(MalformedFrameError, match="at most"):
        from_coordinator(b"\x00" * (MAX_COORDINATOR_FRAME + 1), trusted_cas={}, now=NOW)


def test_overlong_name_is_malformed() -> None:
    frame = silo_pb2.CoordinatorFrame(sender="c", offer=silo_pb2.Offer(job_id="j" * (MAX_NAME
                                                                                     + 1)))
    with pytest.raises(MalformedFrameError, match="job_id"):
        from_coordinator(frame.SerializeToString(), trusted_cas={}, now=NOW)


def test_pickle_payload_is_never_unpickled() -> None:
    payload = pickle.dumps({"weights": [1.0, 2.0]})

    try:
        inbound = from_coordinator(payload, trusted_cas={}, now=NOW)
    except MalformedFrameError:
        return
    assert isinstance(check(make_policy(), SiloState(), inbound.frame), Refuse)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_parse_or_are_malformed_and_never_allowed_out(data: bytes) -> None:
    try:
        inbound = from_coordinator(data, trusted_cas={}, now=NOW)
    except MalformedFrameError:
        return
    assert isinstance(inbound, Inbound)
    if inbound.frame is not None:
        check(make_policy(), SiloState(), inbound.frame)  # decides, never raises
