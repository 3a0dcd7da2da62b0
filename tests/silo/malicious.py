"""A scripted, malicious coordinator speaking silo.proto over real mutual TLS.

Unlike ``fedcollab.silo.coordinator`` (the honest skeleton), it sends whatever it
is told, raw bytes included, can go silent mid-round or hang up, and records every
byte the gateway sent back, so a test can say how many update bytes left the
vendor. Each incoming connection plays the next script in ``sessions`` (the last
one again when they run out).
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import grpc

from fedcollab._proto.fedcollab.v1 import silo_pb2
from fedcollab.service.certs import CertError, party_name
from fedcollab.silo.limits import MAX_GATEWAY_FRAME


@dataclass(frozen=True)
class Silence:
    """Stop answering (keep the stream open, send nothing) for `seconds`."""

    seconds: float


@dataclass(frozen=True)
class Hangup:
    """End the stream with an error status, as a crashing coordinator would."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


Step = Union[Any, bytes, Silence, Hangup]


@dataclass
class Malicious:
    port: int
    sessions: list[list[Step]]
    received: list[Any] = field(default_factory=list)        # parsed GatewayFrames
    received_bytes: list[bytes] = field(default_factory=list)
    joins: list[Any] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    silence_ended: list[float] = field(default_factory=list)  # when a Silence saw the cancel
    peer_certs: list[bytes] = field(default_factory=list)     # each connection's client PEM
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def decisions(self) -> list[Any]:
        return [f.decision for f in self.received if f.WhichOneof("body") == "decision"]

    def update_bytes(self) -> int:
        """Bytes of every frame the gateway sent that was not a Join or a Decision:
        what could carry an update (there is no other outbound body)."""
        return sum(len(raw) for raw, frame in zip(self.received_bytes, self.received)
                   if frame.WhichOneof("body") not in ("join", "decision"))


def _serialize(item: Any) -> bytes:
    return item if isinstance(item, bytes) else item.SerializeToString()


def _handler(state: Malicious) -> Any:
    def connect(requests: Iterator[bytes], context: Any) -> Iterator[Any]:
        pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
        state.peer_certs.append(pem)
        try:
            party = party_name(pem)
        except CertError as err:
            state.refusals.append(str(err))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))

        def take() -> Optional[Any]:
            raw = next(requests, None)
            if raw is None:
                return None
            frame = silo_pb2.GatewayFrame.FromString(raw)
            if frame.sender != party:
                state.refusals.append(f"sender {frame.sender!r}")
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "sender mismatch")
            with state.lock:
                if frame.WhichOneof("body") == "join":
                    state.joins.append(frame.join)
                state.received.append(frame)
                state.received_bytes.append(raw)
            return frame

        if take() is None:
            return
        with state.lock:
            index = min(len(state.joins) - 1, len(state.sessions) - 1)
        script = state.sessions[index] if state.sessions else []
        seq = 1
        yield silo_pb2.CoordinatorFrame(sender="coordinator", seq=seq,
                                        welcome=silo_pb2.Welcome(coordinator="coordinator"))
        for step in script:
            if isinstance(step, Silence):
                end = time.time() + step.seconds
                while context.is_active() and time.time() < end:
                    time.sleep(0.02)
                if not context.is_active():
                    state.silence_ended.append(time.time())
                    return
                continue
            if isinstance(step, Hangup):
                context.abort(step.code, "the coordinator went away")
            seq += 1
            if not isinstance(step, bytes):
                step = silo_pb2.CoordinatorFrame.FromString(step.SerializeToString())
                step.seq = seq
            yield step
            if take() is None:
                return

    return grpc.method_handlers_generic_handler("fedcollab.v1.SiloService", {
        "Connect": grpc.stream_stream_rpc_method_handler(
            connect, request_deserializer=None, response_serializer=_serialize)})


@contextlib.contextmanager
def malicious_coordinator(*, cert: Path, key: Path, client_ca: Path,
                          sessions: Sequence[Sequence[Step]], port: int = 0,
                          state: Optional[Malicious] = None) -> Iterator[Malicious]:
    """Serve the scripted coordinator on 127.0.0.1:`port` (0: a free one). Pass the
    `state` of an earlier one (and its port) to restart it, as after a crash."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
        ("grpc.max_receive_message_length", MAX_GATEWAY_FRAME),
        ("grpc.max_send_message_length", -1),  # the gateway's own cap is under test
        ("grpc.so_reuseport", 0)])
    credentials = grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=client_ca.read_bytes(),
        require_client_auth=True)
    bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    if state is None:
        state = Malicious(port=bound, sessions=[list(s) for s in sessions])
    else:
        state.port, state.sessions = bound, [list(s) for s in sessions]
        state.joins.clear()
    server.add_generic_rpc_handlers((_handler(state),))
    server.start()
    try:
        yield state
    finally:
        server.stop(grace=None)


# ---- proto builders: frames a coordinator sends ----

LAYERS = ("dense", "dense_1", "head")


def offer_frame(*, job: str = "job-1", model: str, rounds: int = 3, protocol: str = "secaggplus",
                noise: float = 2.0, clip_norm: float = 1.0,
                layers: Sequence[str] = LAYERS) -> Any:
    return silo_pb2.CoordinatorFrame(sender="coordinator", offer=silo_pb2.Offer(
        job_id=job, model_name="mlp", model_sha256=model, rounds=rounds,
        layers=[silo_pb2.LayerManifestEntry(name=n, shape=[4, 2], dtype="float32")
                for n in layers],
        secagg=silo_pb2.SecAggParams(protocol=protocol, threshold=0.67, min_group=3,
                                     max_group=100, ring_bits=32, scale_bits=16, clip=1.0),
        dp=silo_pb2.DpParams(mode="local", noise_multiplier=noise, clip_norm=clip_norm,
                             delta=1e-5)))


def start_frame(round_id: int, *, model_hash: str, job: str = "job-1",
                layers: Sequence[str] = ("dense", "dense_1"), deadline: float = 0.0) -> Any:
    return silo_pb2.CoordinatorFrame(sender="coordinator", round_start=silo_pb2.RoundStart(
        job_id=job, round_id=round_id, global_model_sha256=model_hash, deadline_unix=deadline,
        weights=[silo_pb2.Tensor(layer=n, shape=[4, 2], dtype="float32", data=bytes(32))
                 for n in layers]))


def roster_frame(round_id: int, members: Sequence[tuple[str, bytes, bool]], *,
                 job: str = "job-1") -> Any:
    return silo_pb2.CoordinatorFrame(sender="coordinator", roster=silo_pb2.Roster(
        job_id=job, round_id=round_id,
        members=[silo_pb2.Identity(party=p, certificate_der=der, simulated=sim)
                 for p, der, sim in members]))


def unmask_frame(round_id: int, survivors: Sequence[str], dropped: Sequence[str] = (), *,
                 job: str = "job-1") -> Any:
    return silo_pb2.CoordinatorFrame(sender="coordinator", unmask=silo_pb2.UnmaskRequest(
        job_id=job, round_id=round_id, survivors=list(survivors), dropped=list(dropped)))
