"""The vendor's gateway: the only vendor process with network egress and the mTLS key.

It dials OUT to the coordinator's SiloService (gRPC over TLS, its client
certificate naming the vendor, the coordinator's CA pinned), so the vendor opens
no inbound port. It sends a Join (party, fedcollab version, policy_sha256), then
for every frame that comes in: parse it at the edge (size caps, certificates),
decide with the pure :func:`fedcollab.silo.check.check`, persist the state before
answering, append the decision to ``audit.jsonl``, and answer with a Decision.

Given the vendor's own copy of the job (``silo serve --spec``), a
:class:`~fedcollab.silo.vendor.VendorHost` trains, masks and answers secure stages
for the frames the check allows, and every update it produces is checked again
(``Egress``) and audited before it leaves; without one the gateway only decides.
"""
from __future__ import annotations

import datetime
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from fedcollab.silo.audit import AuditLog
from fedcollab.silo.check import Allow, Decision, Pending, Refuse, check
from fedcollab.silo.errors import SiloError
from fedcollab.silo.limits import MAX_COORDINATOR_FRAME, MAX_GATEWAY_FRAME
from fedcollab.silo.policy import Policy
from fedcollab.silo.state import load_state, save_state
from fedcollab.silo.wire import MalformedFrameError, from_message

__all__ = ["Gateway", "GatewayReport"]

_END = object()


@dataclass(frozen=True)
class GatewayReport:
    """What one connection did: frames decided and how."""

    party: str
    frames: int
    allowed: int
    refused: int
    pending: int


def _load_cas(paths: Sequence[Path], policy: Policy) -> dict[str, Any]:
    from cryptography import x509

    from fedcollab.service.certs import CertError, fingerprint

    cas = {}
    for path in paths:
        try:
            pem = Path(path).read_bytes()
            digest = fingerprint(pem)
        except (OSError, CertError) as err:
            raise SiloError(f"--trusted-ca {path}: {err}") from None
        if digest not in policy.trusted_cas:
            raise SiloError(f"--trusted-ca {path}: its sha256 {digest[:16]}... is not in the "
                            "policy's trusted_cas")
        cas[digest] = x509.load_pem_x509_certificate(pem)
    return cas


class Gateway:
    """One vendor's gateway; :meth:`run` holds one connection to its end."""

    def __init__(self, *, policy: Policy, coordinator: str, cert: Path, key: Path,
                 coordinator_ca: Path, trusted_cas: Sequence[Path], state_dir: Path,
                 vendor: Optional[Callable[[str], Any]] = None) -> None:
        from fedcollab.service.certs import CertError, party_name

        self.policy, self.coordinator = policy, coordinator
        try:
            self._cert, self._key = Path(cert).read_bytes(), Path(key).read_bytes()
            self._coordinator_ca = Path(coordinator_ca).read_bytes()
            self.party = party_name(self._cert)
        except OSError as err:
            raise SiloError(f"gateway: cannot read {err.filename} ({err.strerror})") from None
        except CertError as err:
            raise SiloError(f"gateway: --cert: {err}") from None
        if self.party != policy.party:
            raise SiloError(f"gateway: the certificate names party {self.party!r}, the policy "
                            f"{policy.party!r}")
        self._cas = _load_cas(trusted_cas, policy)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._state_path = self.state_dir / "state.json"
        self.state = load_state(self._state_path)
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        # the vendor's participants (fedcollab.silo.vendor.VendorHost), built from the
        # fingerprint of the trusted CA its own certificate chains to
        self.vendor = vendor(self.own_ca()) if vendor is not None else None

    def own_ca(self) -> str:
        """The fingerprint of the trusted CA the gateway's own certificate chains to
        ("" if none does): the vendor's own sites carry this identity."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from fedcollab._proto.fedcollab.v1 import silo_pb2
        from fedcollab.silo.wire import member_of

        now = datetime.datetime.now(datetime.timezone.utc)
        der = x509.load_pem_x509_certificate(self._cert).public_bytes(Encoding.DER)
        return member_of(silo_pb2.Identity(party=self.party, certificate_der=der),
                         self._cas, now).ca_sha256

    def _decide(self, inbound_frame: Any, now: datetime.datetime) -> tuple[Any, Decision]:
        inbound = from_message(inbound_frame, trusted_cas=self._cas, now=now)
        if inbound.frame is None:
            return inbound, Allow(self.state)
        if self.vendor is not None:  # what only the vendor's own copy of the job knows
            inbound = self.vendor.before(inbound_frame, inbound)
            if isinstance(inbound, Refuse):
                return None, inbound
        decision = check(self.policy, self.state, inbound.frame)
        if isinstance(decision, Allow) and decision.state != self.state:
            save_state(self._state_path, decision.state)  # before acting on it
            self.state = decision.state
        return inbound, decision

    def run(self, *, timeout: Optional[float] = None) -> GatewayReport:
        """Connect, join, decide every frame until the coordinator ends the stream."""
        import grpc

        from fedcollab import __name__ as _pkg
        from fedcollab._proto.fedcollab.v1 import silo_pb2, silo_pb2_grpc

        version = _version(_pkg)
        outbox: queue.Queue[Any] = queue.Queue()
        seq = [0]

        def send(**body: Any) -> None:
            seq[0] += 1
            outbox.put(silo_pb2.GatewayFrame(sender=self.party, seq=seq[0], **body))

        def requests() -> Iterator[Any]:
            while True:
                item = outbox.get()
                if item is _END:
                    return
                yield item

        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._coordinator_ca, private_key=self._key,
            certificate_chain=self._cert)
        counts = {"allow": 0, "refuse": 0, "pending": 0}
        frames = 0
        send(join=silo_pb2.Join(party=self.party, fedcollab_version=version,
                                policy_sha256=self.policy.sha256,
                                resume_jobs=sorted(self.state.jobs)))
        with grpc.secure_channel(self.coordinator, credentials, options=[
                ("grpc.max_receive_message_length", MAX_COORDINATOR_FRAME),
                ("grpc.max_send_message_length", MAX_GATEWAY_FRAME)]) as channel:
            stub = silo_pb2_grpc.SiloServiceStub(channel)
            try:
                for incoming in stub.Connect(requests(), timeout=timeout):
                    frames += 1
                    now = datetime.datetime.now(datetime.timezone.utc)
                    try:
                        inbound, decision = self._decide(incoming, now)
                        if inbound is None:  # the vendor's own check refused it
                            inbound = from_message(incoming, trusted_cas=self._cas, now=now)
                        kind, job, rnd = inbound.kind, inbound.job_id, inbound.round_id
                    except MalformedFrameError as err:
                        decision = Refuse("malformed", str(err))
                        kind, job, rnd = "malformed", "", 0
                    fields = self.audit_decision(incoming.SerializeToString(), decision,
                                                 kind, job, rnd, now)
                    counts[fields] += 1
                    if kind == "welcome":
                        continue
                    if self.vendor is not None and isinstance(decision, Allow):
                        body, after = self.vendor.act(incoming, inbound, self.decide_out)
                        if body is not None:
                            for message in body.values():
                                message.answers_seq = incoming.seq
                            refused = body.get("decision")
                            if refused is not None:  # a participant could not do it
                                self.audit_decision(
                                    incoming.SerializeToString(),
                                    Refuse("participant", refused.reason), kind, job, rnd, now)
                                counts["allow"] -= 1  # allowed by the policy, not done
                                counts["refuse"] += 1
                            send(**body)
                            if after is not None:
                                after()
                            continue
                    verdict = {"allow": silo_pb2.Decision.ALLOW,
                               "refuse": silo_pb2.Decision.REFUSE,
                               "pending": silo_pb2.Decision.PENDING}[fields]
                    send(decision=silo_pb2.Decision(
                        job_id=job, round_id=rnd, answers_seq=incoming.seq, verdict=verdict,
                        reason="" if isinstance(decision, Allow) else _reason(decision)))
            except grpc.RpcError as err:
                raise SiloError(_rpc_words(self.coordinator, err)) from None
            finally:
                outbox.put(_END)
        return GatewayReport(self.party, frames, counts["allow"], counts["refuse"],
                             counts["pending"])

    def decide_out(self, frame: Any, data: bytes) -> Decision:
        """Decide an outbound frame (an update about to leave) by the policy, persist
        the state before it leaves, and audit it (direction "out")."""
        now = datetime.datetime.now(datetime.timezone.utc)
        decision = check(self.policy, self.state, frame)
        if isinstance(decision, Allow) and decision.state != self.state:
            save_state(self._state_path, decision.state)
            self.state = decision.state
        self.audit.append(frame=data, decision=decision, direction="out", kind="egress",
                          job_id=frame.job_id, round_id=frame.round_id, time=now.timestamp())
        return decision

    def audit_decision(self, frame: bytes, decision: Decision, kind: str, job: str,
                       round_id: int, now: datetime.datetime) -> str:
        from fedcollab.silo.audit import decision_fields

        self.audit.append(frame=frame, decision=decision, direction="in", kind=kind,
                          job_id=job, round_id=round_id, time=now.timestamp())
        return decision_fields(decision)["decision"]

    def close(self) -> None:
        self.audit.close()


def _reason(decision: Decision) -> str:
    return decision.reason if isinstance(decision, Pending) else getattr(decision, "reason", "")


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _rpc_words(address: str, err: Any) -> str:
    code = err.code().name if hasattr(err, "code") else "UNKNOWN"
    details = (err.details() if hasattr(err, "details") else str(err)) or ""
    first = details.splitlines()[0] if details else ""
    if code == "UNAVAILABLE":
        return (f"gateway: no mutual-TLS link to the coordinator at {address} ({first}); "
                "check that it is up, that --coordinator-ca is its CA and that the vendor's "
                "certificate is from the CA it trusts and valid now")
    return f"gateway: the coordinator at {address} ended the link: {code}: {first}"
