"""Builders for the cross-silo tests: a policy, an offer and a round that passes it."""
from __future__ import annotations

import datetime
import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from fedcollab.silo import (
    MASKED,
    DpTerms,
    Egress,
    Member,
    Offer,
    Policy,
    Roster,
    RoundStart,
    SecAggTerms,
    UnmaskRequest,
    policy_from_bytes,
)

TRUSTED_CA = hashlib.sha256(b"the vendor's CA").hexdigest()
OTHER_CA = hashlib.sha256(b"someone else's CA").hexdigest()
MODEL = hashlib.sha256(b"mlp architecture").hexdigest()
JOB = "job-1"

POLICY_DOC = {
    "party": "vendor",
    "share_only": ["dense", "dense_1"],
    "egress": "masked_only",
    "min_group": 3,
    "trusted_cas": [TRUSTED_CA],
    "dp": {"min_noise_multiplier": 1.0, "max_clip_norm": 1.0, "epsilon_budget": 8.0,
           "delta": 1e-5},
    "fixed_point": {"max_scale_bits": 24},
    "approved_models": [MODEL],
}


def policy_bytes(**changes: object) -> bytes:
    doc = {**POLICY_DOC, **changes}
    return yaml.safe_dump(doc, sort_keys=False).encode()


def make_policy(**changes: object) -> Policy:
    return policy_from_bytes(policy_bytes(**changes))


def model_hash(round_id: int, job: str = JOB) -> str:
    return hashlib.sha256(f"{job}/{round_id}".encode()).hexdigest()


def make_offer(**changes: object) -> Offer:
    offer = Offer(job_id=JOB, model_name="mlp", model_sha256=MODEL,
                  layers=("dense", "dense_1", "head"), rounds=5,
                  secagg=SecAggTerms(protocol="secaggplus", threshold=0.67, min_group=3,
                                     max_group=100, ring_bits=32, scale_bits=16, clip=1.0),
                  dp=DpTerms(mode="local", noise_multiplier=2.0, clip_norm=1.0))
    return replace(offer, **changes)  # type: ignore[arg-type]


def make_start(round_id: int = 1, **changes: object) -> RoundStart:
    start = RoundStart(job_id=JOB, round_id=round_id, global_model_sha256=model_hash(round_id),
                       layers=("dense", "dense_1"))
    return replace(start, **changes)  # type: ignore[arg-type]


def members(trusted: int, *, simulated: int = 0, untrusted: int = 0) -> tuple[Member, ...]:
    return (tuple(Member(f"t{i}", TRUSTED_CA) for i in range(trusted))
            + tuple(Member(f"s{i}", TRUSTED_CA, simulated=True) for i in range(simulated))
            + tuple(Member(f"u{i}", OTHER_CA) for i in range(untrusted)))


def make_roster(round_id: int = 1, trusted: int = 3, **kw: int) -> Roster:
    return Roster(job_id=JOB, round_id=round_id, members=members(trusted, **kw))


def make_unmask(roster: Roster, dropped: tuple[str, ...] = ()) -> UnmaskRequest:
    names = tuple(m.party for m in roster.members)
    return UnmaskRequest(job_id=roster.job_id, round_id=roster.round_id,
                         survivors=tuple(n for n in names if n not in dropped), dropped=dropped)


def make_egress(round_id: int = 1, **changes: object) -> Egress:
    egress = Egress(job_id=JOB, round_id=round_id, global_model_sha256=model_hash(round_id),
                    encoding=MASKED, layers=("dense", "dense_1"), noise_multiplier=2.0,
                    clip_norm=1.0, max_abs=0.5)
    return replace(egress, **changes)  # type: ignore[arg-type]


# ---- a throwaway PKI for the socket tests (session-wide: keys take time) ----


def _der(pem_path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(pem_path.read_bytes()).public_bytes(
        serialization.Encoding.DER)


@pytest.fixture(scope="session")
def silo_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``main``: the CA both sides trust (coordinator, vendor, members m0..m4, a second
    coordinator leaf for rotation); ``forger``: another CA with the SAME name
    (its m5 has a forged signature); ``expired``: the main CA's m6, expired;
    ``other``: an unrelated CA with its own vendor and coordinator."""
    from fedcollab.service.certs import init_ca, issue_cert

    main, forger, other = (tmp_path_factory.mktemp(n) for n in ("main", "forger", "other"))
    init_ca(main, name="throwaway CA")
    init_ca(forger, name="throwaway CA")
    init_ca(other, name="another CA")
    for name in ("coordinator", "vendor", "m0", "m1", "m2", "m3", "m4"):
        issue_cert(main, name=name, server=False, party=True)
    rotated = tmp_path_factory.mktemp("rotated")
    for name in ("ca.pem", "ca.key"):
        (rotated / name).write_bytes((main / name).read_bytes())
    issue_cert(rotated, name="coordinator", server=False, party=True)
    issue_cert(rotated, name="vendor", server=False, party=True)
    issue_cert(forger, name="m5", server=False, party=True)
    expired = tmp_path_factory.mktemp("expired")
    for name in ("ca.pem", "ca.key"):
        (expired / name).write_bytes((main / name).read_bytes())
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    issue_cert(expired, name="m6", server=False, party=True, days=1, not_before=past)
    issue_cert(expired, name="vendor", server=False, party=True, days=1, not_before=past)
    for name in ("vendor", "coordinator"):
        issue_cert(other, name=name, server=False, party=True)
    return {"main": main, "forger": forger, "other": other, "expired": expired,
            "rotated": rotated}


def member_der(pki: dict[str, Path], name: str, where: str = "main") -> bytes:
    return _der(pki[where] / f"{name}.pem")
