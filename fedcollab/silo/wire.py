"""The edge between ``silo.proto`` and the pure frames the policy check reads.

Every CoordinatorFrame is parsed here with size caps before anything else sees
it; what does not convert is refused as a malformed frame (one line, never a
traceback). Roster certificates are verified here: a member counts as trusted
only if its certificate is signed by one of the CAs the gateway was given (whose
fingerprints the policy lists), is valid now, and names the party it claims.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from fedcollab.silo.errors import SiloError
from fedcollab.silo.frames import (
    DpTerms,
    GroupSetup,
    LayerEntry,
    Member,
    Offer,
    Roster,
    RoundStart,
    SecAggTerms,
    Stage,
    UnmaskRequest,
)
from fedcollab.silo.limits import MAX_COORDINATOR_FRAME, MAX_LAYERS, MAX_MEMBERS, MAX_NAME

__all__ = ["MalformedFrameError", "Inbound", "from_coordinator", "member_of", "parse_frame"]


class MalformedFrameError(SiloError):
    """A frame that does not parse or breaks a size cap."""


@dataclass(frozen=True)
class Inbound:
    """A CoordinatorFrame as the gateway handles it: the pure frame (None for frames
    the check does not rule on, such as Welcome), its kind, job and round."""

    frame: Optional[object]
    kind: str
    job_id: str
    round_id: int
    seq: int
    sender: str
    deadline_unix: float = 0.0   # a RoundStart's deadline (0: none); the gateway's watchdog


def _name(value: str, what: str) -> str:
    if len(value.encode()) > MAX_NAME:
        raise MalformedFrameError(f"{what} is longer than {MAX_NAME} bytes")
    return value


def _cap(items: Any, cap: int, what: str) -> Any:
    if len(items) > cap:
        raise MalformedFrameError(f"{what}: {len(items)} entries, at most {cap}")
    return items


def member_of(identity: Any, trusted_cas: Mapping[str, Any],
              now: datetime.datetime) -> Member:
    """A roster entry: trusted (ca_sha256 set) only if its certificate verifies."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from fedcollab.service.certs import CertError, party_name

    party = _name(identity.party, "a member's party")
    if identity.simulated or not identity.certificate_der:
        return Member(party, "", simulated=True)
    try:
        cert = x509.load_der_x509_certificate(identity.certificate_der)
        named = party_name(identity.certificate_der)
    except (ValueError, CertError):
        return Member(party, "")
    if named != party or not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return Member(party, "")
    for fingerprint, ca in trusted_cas.items():
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return Member(party, fingerprint)
    return Member(party, "")


def from_coordinator(data: bytes, *, trusted_cas: Mapping[str, Any],
                     now: datetime.datetime) -> Inbound:
    """Parse one CoordinatorFrame's bytes (from the stream) into what the gateway checks.

    Raises:
        MalformedFrameError: bytes that are not a CoordinatorFrame within the caps.
    """
    return from_message(parse_frame(data), trusted_cas=trusted_cas, now=now)


def parse_frame(data: bytes) -> Any:
    """The CoordinatorFrame in `data`, within the frame cap.

    Raises:
        MalformedFrameError: bytes over the cap or that are not a CoordinatorFrame.
    """
    from google.protobuf.message import DecodeError

    from fedcollab._proto.fedcollab.v1 import silo_pb2

    if len(data) > MAX_COORDINATOR_FRAME:
        raise MalformedFrameError(f"a frame of {len(data)} bytes, at most "
                                  f"{MAX_COORDINATOR_FRAME}")
    message = silo_pb2.CoordinatorFrame()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise MalformedFrameError(f"not a CoordinatorFrame ({err.__class__.__name__})") from None
    return message


def from_message(message: Any, *, trusted_cas: Mapping[str, Any],
                 now: datetime.datetime) -> Inbound:
    """Convert a parsed CoordinatorFrame (see :func:`from_coordinator`)."""
    kind = message.WhichOneof("body")
    sender, seq = _name(message.sender, "sender"), int(message.seq)
    if kind is None:
        return Inbound(object(), "unknown", "", 0, seq, sender)  # refused by the check
    body = getattr(message, kind)
    job_id = _name(getattr(body, "job_id", ""), "job_id")
    round_id = int(getattr(body, "round_id", 0))
    frame: Optional[object]
    deadline = 0.0
    if kind in ("welcome", "abort"):
        frame = None  # logged, not ruled on: an abort only ever stops the vendor
    elif kind == "offer":
        manifest = tuple(LayerEntry(_name(e.name, "a layer name"),
                                    tuple(int(d) for d in _cap(e.shape, 8, "a layer's shape")),
                                    _name(e.dtype, "a layer's dtype"))
                         for e in _cap(body.layers, MAX_LAYERS, "layers"))
        layers = tuple(dict.fromkeys(e.name for e in manifest))
        sa, dp = body.secagg, body.dp
        frame = Offer(job_id=job_id, model_name=_name(body.model_name, "model_name"),
                      model_sha256=_name(body.model_sha256, "model_sha256"), layers=layers,
                      rounds=int(body.rounds),
                      secagg=SecAggTerms(protocol=_name(sa.protocol, "protocol"),
                                         threshold=sa.threshold, min_group=sa.min_group,
                                         max_group=sa.max_group, ring_bits=sa.ring_bits,
                                         scale_bits=sa.scale_bits, clip=sa.clip),
                      dp=DpTerms(mode=_name(dp.mode, "dp.mode"),
                                 noise_multiplier=dp.noise_multiplier, clip_norm=dp.clip_norm,
                                 delta=dp.delta),
                      manifest=manifest)
    elif kind == "round_start":
        deadline = float(body.deadline_unix)
        frame = RoundStart(job_id=job_id, round_id=round_id,
                           global_model_sha256=_name(body.global_model_sha256, "model hash"),
                           layers=tuple(_name(t.layer, "a layer name")
                                        for t in _cap(body.weights, MAX_LAYERS, "weights")))
    elif kind == "roster":
        frame = Roster(job_id=job_id, round_id=round_id, members=tuple(
            member_of(m, trusted_cas, now) for m in _cap(body.members, MAX_MEMBERS, "members")))
    elif kind == "unmask":
        frame = UnmaskRequest(
            job_id=job_id, round_id=round_id,
            survivors=tuple(_name(s, "a survivor") for s in _cap(body.survivors, MAX_MEMBERS,
                                                                 "survivors")),
            dropped=tuple(_name(s, "a dropped party") for s in _cap(body.dropped, MAX_MEMBERS,
                                                                    "dropped")))
    elif kind == "stage":
        pids = tuple(int(p) for p in _cap(body.participants, MAX_MEMBERS, "participants"))
        pids += tuple(int(m.participant) for m in _cap(body.messages, MAX_MEMBERS, "messages"))
        frame = Stage(job_id=job_id, round_id=round_id, stage=_name(body.stage, "stage"),
                      participants=pids)
    elif kind == "setup":
        frame = GroupSetup(job_id=job_id, members=tuple(
            int(m) for m in _cap(body.members, MAX_MEMBERS, "members")),
            secure_job_id=bytes(body.secure_job_id))
        _cap(body.registry, MAX_MEMBERS, "registry")
    else:  # a bare secagg frame: messages travel inside StageRequests; refused
        frame = object()
    return Inbound(frame, kind, job_id, round_id, seq, sender, deadline)
