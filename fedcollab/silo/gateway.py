"""The vendor's gateway: the only vendor process with network egress and the mTLS key.

It dials OUT to the coordinator's SiloService (gRPC over TLS, its client
certificate naming the vendor, the coordinator's CA pinned), so the vendor opens
no inbound port. It sends a Join (party, fedcollab version, policy_sha256), then
for every frame that comes in: parse it at the edge (size caps, certificates),
decide with the pure :func:`fedcollab.silo.check.check`, persist the state before
answering, append the decision to ``audit.jsonl``, and answer with a Decision
(:class:`fedcollab.silo.decide.FrameDecider` does all of that, for any bytes: the
stream hands the gateway raw bytes, so a frame that does not parse is refused and
audited like any other instead of ending the link).

Failures (:mod:`.redial`): once a round has started, the gateway waits no longer than
its ``deadline_unix`` plus a grace, then drops the link; with ``reconnect`` it dials
again with bounded, jittered exponential backoff, re-reading its certificate and key
each time (a rotated leaf is picked up), and rejoins with its persisted state, so
round ids stay strictly increasing.

Given the vendor's own copy of the job (``silo serve --spec``), a
:class:`~fedcollab.silo.vendor.VendorHost` trains, masks and answers secure stages
for the frames the check allows (its own checks run first, :meth:`VendorHost.before`),
and every update it produces is checked again (``Egress``) and audited before it
leaves; without one the gateway only decides.
"""
from __future__ import annotations

import datetime
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from fedcollab.silo.check import Decision, Pending, Refuse
from fedcollab.silo.decide import FrameDecider
from fedcollab.silo.errors import SiloError
from fedcollab.silo.limits import MAX_COORDINATOR_FRAME, MAX_GATEWAY_FRAME
from fedcollab.silo.policy import Policy
from fedcollab.silo.redial import RETRYABLE, Backoff, Watchdog, diagnose, tls13_refusal

__all__ = ["Gateway", "GatewayReport", "LinkError", "DEADLINE_GRACE"]

DEADLINE_GRACE = 5.0   # seconds past a round's deadline before the gateway drops the link
_CONNECT = "/fedcollab.v1.SiloService/Connect"

_END = object()


@dataclass(frozen=True)
class GatewayReport:
    """What one connection did: frames decided and how."""

    party: str
    frames: int
    allowed: int
    refused: int
    pending: int
    connections: int = 1


class LinkError(SiloError):
    """The link to the coordinator failed; ``retryable`` when dialling again may help
    (the coordinator went away, the link was lost or a deadline passed)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


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
    """One vendor's gateway: :meth:`run` holds one connection, :meth:`serve` keeps
    one up (reconnecting with backoff)."""

    def __init__(self, *, policy: Policy, coordinator: str, cert: Path, key: Path,
                 coordinator_ca: Path, trusted_cas: Sequence[Path], state_dir: Path,
                 deadline_grace: float = DEADLINE_GRACE,
                 coordinator_name: Optional[str] = None,
                 idle_timeout: Optional[float] = None,
                 vendor: Optional[Callable[[str], Any]] = None) -> None:
        self.policy, self.coordinator = policy, coordinator
        self.coordinator_name = coordinator_name
        self._cert_path, self._key_path = Path(cert), Path(key)
        self._coordinator_ca_path = Path(coordinator_ca)
        self.deadline_grace, self.idle_timeout = deadline_grace, idle_timeout
        self._in_round = False   # a round's deadline is what the watchdog holds now
        self._tally = {"frames": 0, "allow": 0, "refuse": 0, "pending": 0}
        self._credentials()  # fail now on unreadable or foreign certificates
        self._cas = _load_cas(trusted_cas, policy)
        self.state_dir = Path(state_dir)
        self.decider = FrameDecider(policy=policy, state_dir=self.state_dir,
                                    trusted_cas=self._cas, coordinator=coordinator_name)
        # the vendor's participants (fedcollab.silo.vendor.VendorHost), built from the
        # fingerprint of the trusted CA its own certificate chains to; their own checks
        # of a frame run before the policy's
        self.vendor = vendor(self.own_ca()) if vendor is not None else None
        if self.vendor is not None:
            self.decider.before = self.vendor.before

    def own_ca(self) -> str:
        """The fingerprint of the trusted CA the gateway's own certificate chains to
        ("" if none does): the vendor's own sites carry this identity."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from fedcollab._proto.fedcollab.v1 import silo_pb2
        from fedcollab.silo.wire import member_of

        now = datetime.datetime.now(datetime.timezone.utc)
        cert, _, _ = self._credentials()
        der = x509.load_pem_x509_certificate(cert).public_bytes(Encoding.DER)
        return member_of(silo_pb2.Identity(party=self.party, certificate_der=der),
                         self._cas, now).ca_sha256

    def _credentials(self) -> tuple[bytes, bytes, bytes]:
        """The certificate, key and pinned CA, read again for every connection (a
        rotated leaf is used on the next dial)."""
        from fedcollab.service.certs import CertError, party_name

        try:
            cert, key = self._cert_path.read_bytes(), self._key_path.read_bytes()
            ca = self._coordinator_ca_path.read_bytes()
            self.party = party_name(cert)
        except OSError as err:
            raise SiloError(f"gateway: cannot read {err.filename} ({err.strerror})") from None
        except CertError as err:
            raise SiloError(f"gateway: --cert: {err}") from None
        if self.party != self.policy.party:
            raise SiloError(f"gateway: the certificate names party {self.party!r}, the policy "
                            f"{self.policy.party!r}")
        return cert, key, ca

    def run(self, *, timeout: Optional[float] = None) -> GatewayReport:
        """Connect, join, decide every frame until the coordinator ends the stream.

        Raises:
            LinkError: no link, a link lost, or a round's deadline passed (one line).
        """
        import grpc

        from fedcollab import __name__ as _pkg
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        cert, key, ca = self._credentials()
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

        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                   certificate_chain=cert)
        counts = self._tally = {"frames": 0, "allow": 0, "refuse": 0, "pending": 0}
        self._require_tls13()  # a refusal leaves this connection's tally at zero
        current = ("", 0)
        self._in_round = False
        state = self.decider.state
        send(join=silo_pb2.Join(party=self.party, fedcollab_version=_version(_pkg),
                                policy_sha256=self.policy.sha256,
                                resume_jobs=sorted(set(state.jobs) | set(state.pending))))
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_COORDINATOR_FRAME),
            ("grpc.max_send_message_length", MAX_GATEWAY_FRAME)]
        if self.coordinator_name:
            # verify the coordinator's certificate against its party name (a party
            # certificate carries its name as a DNS name) instead of the address: any
            # other leaf of the pinned CA, e.g. another vendor's, is refused
            options.append(("grpc.ssl_target_name_override", self.coordinator_name))
        with grpc.secure_channel(self.coordinator, credentials, options=options) as channel:
            # raw bytes in: the gateway parses every frame itself (FrameDecider.decide_bytes)
            connect = channel.stream_stream(
                _CONNECT, request_serializer=silo_pb2.GatewayFrame.SerializeToString,
                response_deserializer=bytes)
            call = connect(requests(), timeout=timeout)
            watchdog = Watchdog(call.cancel)
            self._idle(watchdog)
            try:
                for data in call:
                    counts["frames"] += 1
                    now = datetime.datetime.now(datetime.timezone.utc)
                    outcome = self.decider.decide_bytes(data, now)
                    counts[outcome.verdict] += 1
                    current = self._watch(watchdog, outcome, current)
                    if outcome.kind == "welcome" and counts["frames"] == 1:
                        continue  # the greeting; any later frame gets its Decision
                    if (self.vendor is not None and outcome.verdict == "allow"
                            and outcome.message is not None):
                        body, after = self.vendor.act(outcome.message, outcome.inbound,
                                                      self._decide_out)
                        if body is not None:
                            for message in body.values():
                                message.answers_seq = outcome.seq
                            refused = body.get("decision")
                            if refused is not None:  # a participant could not do it
                                self.decider.refuse_after(data, outcome, Refuse(
                                    "participant", refused.reason), now)
                                counts["allow"] -= 1  # allowed by the policy, not done
                                counts["refuse"] += 1
                            send(**body)
                            if after is not None:
                                after()
                            continue
                    verdict = {"allow": silo_pb2.Decision.ALLOW,
                               "refuse": silo_pb2.Decision.REFUSE,
                               "pending": silo_pb2.Decision.PENDING}[outcome.verdict]
                    send(decision=silo_pb2.Decision(
                        job_id=outcome.job_id, round_id=outcome.round_id,
                        answers_seq=outcome.seq, verdict=verdict,
                        reason=_reason(outcome.decision)))
            except grpc.RpcError as err:
                if watchdog.fired:
                    job, rnd = current if self._in_round else ("", 0)
                    if self._in_round:
                        rule, words = "deadline", (
                            f"round {rnd} of job {job}: no word from the coordinator by the "
                            f"round's deadline + {self.deadline_grace:g} s; the link was "
                            "dropped")
                    else:
                        rule, words = "idle", (
                            f"no frame from the coordinator for {self.idle_timeout:g} s "
                            "between rounds (--idle-timeout); the link was dropped")
                    self.decider.note(Refuse(rule, words), kind=rule, job_id=job,
                                      round_id=rnd,
                                      now=datetime.datetime.now(datetime.timezone.utc))
                    raise LinkError(f"gateway: {words}", retryable=True) from None
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    words = (f"the coordinator sent a frame over the size cap "
                             f"({MAX_COORDINATOR_FRAME} bytes); the link was dropped")
                    self.decider.note(Refuse("malformed", words), kind="oversized",
                                      job_id="", round_id=0,
                                      now=datetime.datetime.now(datetime.timezone.utc))
                    raise LinkError(f"gateway: {words}", retryable=True) from None
                raise self._link_error(err, joined=counts["frames"] > 0) from None
            finally:
                watchdog.stop()
                outbox.put(_END)
        return GatewayReport(self.party, counts["frames"], counts["allow"], counts["refuse"],
                             counts["pending"])

    def _require_tls13(self) -> None:
        """Refuse a coordinator that cannot do TLS 1.3, before the gRPC channel dials:
        one ``ssl`` handshake that accepts nothing older (gRPC's Python API has no
        minimum-version setting; docs/cross-silo.md says why this covers the channel).
        The refusal is audited (rule ``tls``) and retryable: ``serve --reconnect``
        backs off and dials again, as after any link failure.

        Raises:
            LinkError: The coordinator cannot do TLS 1.3.
        """
        why = tls13_refusal(self.coordinator, server_name=self.coordinator_name,
                            coordinator_ca=self._coordinator_ca_path, cert=self._cert_path,
                            key=self._key_path)
        if why:
            self.decider.note(Refuse("tls", why), kind="tls", job_id="", round_id=0,
                              now=datetime.datetime.now(datetime.timezone.utc))
            raise LinkError(f"gateway: no link to the coordinator at {self.coordinator}: "
                            f"{why}", retryable=True)

    def _watch(self, watchdog: Watchdog, outcome: Any,
               current: tuple[str, int]) -> tuple[str, int]:
        """Hold the coordinator to the round's deadline from an allowed RoundStart that
        has one until the vendor's part of the round is over (its unmask answered, or an
        abort); between rounds, to ``idle_timeout`` from the last frame (if set)."""
        if outcome.kind == "round_start" and outcome.verdict == "allow":
            current = (outcome.job_id, outcome.round_id)
            self._in_round = outcome.deadline_unix > 0
            if self._in_round:
                watchdog.arm(outcome.deadline_unix + self.deadline_grace)
        elif (outcome.kind in ("unmask", "abort") and outcome.verdict == "allow"
              and (outcome.job_id, outcome.round_id) == current):
            self._in_round = False
        if not self._in_round:
            self._idle(watchdog)
        return current

    def _decide_out(self, frame: Any, data: bytes) -> Decision:
        """Decide an outbound frame (an update about to leave) by the policy, persist
        the state before it leaves, and audit it (direction "out")."""
        return self.decider.decide_egress(frame, data,
                                          datetime.datetime.now(datetime.timezone.utc))

    def _idle(self, watchdog: Watchdog) -> None:
        if self.idle_timeout:
            watchdog.arm(time.time() + self.idle_timeout)
        else:
            watchdog.disarm()

    def _link_error(self, err: Any, *, joined: bool) -> LinkError:
        code = err.code().name if hasattr(err, "code") else "UNKNOWN"
        if code == "UNAVAILABLE" and not joined:
            why = diagnose(self.coordinator, server_name=self.coordinator_name,
                           coordinator_ca=self._coordinator_ca_path,
                           cert=self._cert_path, key=self._key_path)
            return LinkError(f"gateway: no mutual-TLS link to the coordinator at "
                             f"{self.coordinator}: {why}", retryable=True)
        return LinkError(_rpc_words(self.coordinator, err), retryable=code in RETRYABLE)

    def serve(self, *, reconnect: bool = False, max_attempts: Optional[int] = None,
              backoff: Optional[Backoff] = None, timeout: Optional[float] = None,
              sleep: Callable[[float], None] = time.sleep,
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                              flush=True)) -> GatewayReport:
        """Hold a link until the coordinator ends it; with `reconnect`, dial again after
        every retryable failure (bounded, jittered backoff), at most `max_attempts`
        times in a row (None: without end). `timeout` bounds each connection."""
        backoff = backoff or Backoff()
        total = {"frames": 0, "allow": 0, "refuse": 0, "pending": 0}
        connections, failures = 0, 0
        while True:
            connections += 1
            try:
                self.run(timeout=timeout)
                error: Optional[LinkError] = None
            except LinkError as err:
                error = err
            for name in total:
                total[name] += self._tally[name]
            if error is None:
                return GatewayReport(self.party, total["frames"], total["allow"],
                                     total["refuse"], total["pending"], connections)
            if not (reconnect and error.retryable):
                raise error
            if self._tally["frames"]:
                backoff.reset()  # that link worked: start from the first delay again
                failures = 0
            failures += 1
            if max_attempts is not None and failures >= max_attempts:
                raise LinkError(f"{error} (gave up after {failures} attempts in a row)",
                                retryable=False)
            delay = backoff.next()
            say(f"{error}; dialling again in {delay:.1f} s")
            sleep(delay)

    def close(self) -> None:
        try:
            if self.vendor is not None and hasattr(self.vendor, "close"):
                self.vendor.close()  # the sites' workers
        finally:
            self.decider.close()


def _reason(decision: Decision) -> str:
    return decision.reason if isinstance(decision, (Pending, Refuse)) else ""


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
