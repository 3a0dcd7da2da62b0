"""The coordinator's side of the link: a SiloService that authenticates each party.

A skeleton: it serves ``Connect`` over mutual TLS (the client certificate is
required and must chain to the coordinator's CA), binds the stream to the party
its certificate names, refuses any frame whose ``sender`` differs, records each
Join (party, fedcollab version, policy_sha256) and answers with a Welcome. It
then plays frames a caller queued for that party (a scripted coordinator, as the
tests use) and collects what comes back. A job's coordinator is
:mod:`fedcollab.silo.link` and :mod:`fedcollab.silo.remote` (``fedcollab run
--silo-listen``); this scripted one stays for tests that play frames by hand.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from fedcollab.silo.limits import MAX_COORDINATOR_FRAME, MAX_GATEWAY_FRAME

__all__ = ["Coordinator", "JoinRecord", "run_coordinator"]


@dataclass(frozen=True)
class JoinRecord:
    party: str
    fedcollab_version: str
    policy_sha256: str


@dataclass
class Coordinator:
    """A running SiloService; ``port`` is the bound one."""

    server: Any
    port: int
    name: str
    joins: list[JoinRecord] = field(default_factory=list)
    received: list[Any] = field(default_factory=list)    # GatewayFrames after the Join
    refusals: list[str] = field(default_factory=list)    # why streams were ended
    script: dict[str, list[Any]] = field(default_factory=dict)  # party -> CoordinatorFrames
    done: threading.Event = field(default_factory=threading.Event)
    on_join: Optional[Callable[[JoinRecord], None]] = None
    auth: list[dict[str, list[bytes]]] = field(default_factory=list)  # each stream's

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _servicer(coordinator: Coordinator) -> Any:
    import grpc

    from fedcollab._proto.fedcollab.v1 import silo_pb2, silo_pb2_grpc
    from fedcollab.silo.link import authenticated_party

    class Servicer(silo_pb2_grpc.SiloServiceServicer):
        def Connect(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            party = authenticated_party(context, coordinator.refusals)

            def refuse(code: Any, reason: str) -> None:
                coordinator.refusals.append(reason)
                context.abort(code, reason)

            def check_sender(frame: Any) -> None:
                if frame.sender != party:
                    refuse(grpc.StatusCode.PERMISSION_DENIED, f"sender {frame.sender!r} does "
                           f"not match the certificate's party {party!r}")

            seq = 0
            first = next(requests, None)
            if first is None:
                return
            check_sender(first)
            if first.WhichOneof("body") != "join":
                refuse(grpc.StatusCode.FAILED_PRECONDITION, "the first frame must be a Join")
            if first.join.party != party:
                refuse(grpc.StatusCode.PERMISSION_DENIED, f"the Join names party "
                       f"{first.join.party!r}, the certificate {party!r}")
            record = JoinRecord(party, first.join.fedcollab_version, first.join.policy_sha256)
            coordinator.joins.append(record)
            coordinator.auth.append({k: list(v) for k, v in context.auth_context().items()
                                     if k != "x509_pem_cert"})
            if coordinator.on_join is not None:
                coordinator.on_join(record)
            seq += 1
            yield silo_pb2.CoordinatorFrame(sender=coordinator.name, seq=seq,
                                            welcome=silo_pb2.Welcome(
                                                coordinator=coordinator.name))
            for frame in coordinator.script.get(party, []):
                seq += 1
                frame.seq = seq
                yield frame
                reply = next(requests, None)
                if reply is None:
                    break
                check_sender(reply)
                coordinator.received.append(reply)
            coordinator.done.set()

    return Servicer()


@contextlib.contextmanager
def run_coordinator(*, cert: Path, key: Path, client_ca: Path, name: str = "coordinator",
                    script: Optional[dict[str, Sequence[Any]]] = None,
                    on_join: Optional[Callable[[JoinRecord], None]] = None,
                    listen: str = "127.0.0.1:0") -> Iterator[Coordinator]:
    """A SiloService on `listen` (port 0: a free one) requiring client certificates
    from `client_ca`; stopped on exit."""
    from concurrent import futures

    import grpc

    from fedcollab._proto.fedcollab.v1 import silo_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
        ("grpc.max_receive_message_length", MAX_GATEWAY_FRAME),
        ("grpc.max_send_message_length", MAX_COORDINATOR_FRAME), ("grpc.so_reuseport", 0)])
    credentials = grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=client_ca.read_bytes(),
        require_client_auth=True)
    port = server.add_secure_port(listen, credentials)
    coordinator = Coordinator(server=server, port=port, name=name,
                              script={k: list(v) for k, v in (script or {}).items()},
                              on_join=on_join)
    silo_pb2_grpc.add_SiloServiceServicer_to_server(_servicer(coordinator), server)
    server.start()
    try:
        yield coordinator
    finally:
        server.stop(grace=None)
