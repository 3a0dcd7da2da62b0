"""The coordinator's end of the cross-silo link: a SiloService that holds one
authenticated stream per remote party and lets the job send it frames and wait for
the answers.

Each party's gateway dials in over mutual TLS (the client certificate is required,
must chain to ``client_ca`` and names the party; every frame's ``sender`` must match
it) and sends a Join first. :meth:`SiloLink.request` then sends one CoordinatorFrame
and waits, up to a deadline, for the GatewayFrame that answers it (its
``answers_seq``). Nothing on the link is pickled; every byte received can be copied
to a file as it arrives (``record``: the community's own evidence of what a vendor
sent).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fedcollab.silo.errors import SiloError
from fedcollab.silo.limits import MAX_COORDINATOR_FRAME, MAX_GATEWAY_FRAME

__all__ = ["SiloLink", "Joined", "LinkTimeout", "LinkLost"]


class LinkTimeout(SiloError):
    """A party did not answer by the deadline."""


class LinkLost(SiloError):
    """A party's stream ended (or never came)."""


@dataclass(frozen=True)
class Joined:
    """A party's Join, as its authenticated stream delivered it."""

    party: str
    fedcollab_version: str
    policy_sha256: str


_END = object()


@dataclass
class _Stream:
    joined: Joined
    outbox: queue.Queue[Any] = field(default_factory=queue.Queue)
    replies: dict[int, Any] = field(default_factory=dict)
    lost: Optional[str] = None
    seq: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class SiloLink:
    """A running SiloService on ``listen`` (port 0: a free one, see :attr:`port`).

    Args:
        cert, key: The coordinator's party certificate and key (`fedcollab certs issue
            --party`).
        client_ca: The CA every gateway's certificate must chain to.
        listen: HOST:PORT.
        record: Append every message received (length-prefixed, exactly the bytes
            that came off the stream) to this file.
    """

    def __init__(self, *, cert: Path, key: Path, client_ca: Path,
                 listen: str = "127.0.0.1:0", record: Optional[Path] = None) -> None:
        from fedcollab.service.certs import CertError, party_name

        try:
            self._cert, self._key = Path(cert).read_bytes(), Path(key).read_bytes()
            self._client_ca = Path(client_ca).read_bytes()
            self.name = party_name(self._cert)
        except OSError as err:
            raise SiloError(f"silo: cannot read {err.filename} ({err.strerror})") from None
        except CertError as err:
            raise SiloError(f"silo: --silo-cert: {err}") from None
        self.listen = listen
        self.record = Path(record) if record is not None else None
        self._streams: dict[str, _Stream] = {}
        self._joins: dict[str, int] = {}  # party -> how many Joins its streams sent
        self._cond = threading.Condition()
        self.refusals: list[str] = []
        self._server: Any = None
        self._recording: Any = None  # the interceptor writing --silo-record, if any
        self.port = 0

    # ------------------------------------------------------------------ the service
    def start(self) -> SiloLink:
        from concurrent import futures

        import grpc

        from fedcollab._proto.fedcollab.v1 import silo_pb2_grpc

        self._recording = _recorder(self.record) if self.record is not None else None
        interceptors = [self._recording] if self._recording is not None else []
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                             interceptors=interceptors, options=[
                                 ("grpc.max_receive_message_length", MAX_GATEWAY_FRAME),
                                 ("grpc.max_send_message_length", MAX_COORDINATOR_FRAME),
                                 ("grpc.so_reuseport", 0)])
        credentials = grpc.ssl_server_credentials([(self._key, self._cert)],
                                                  root_certificates=self._client_ca,
                                                  require_client_auth=True)
        try:
            self.port = server.add_secure_port(self.listen, credentials)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise SiloError(f"silo: cannot listen on {self.listen} (in use, or not an "
                            "address of this host)")
        silo_pb2_grpc.add_SiloServiceServicer_to_server(_Servicer(self), server)
        server.start()
        self._server = server
        return self

    @property
    def address(self) -> str:
        host = self.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def stop(self) -> None:
        """End every stream (each gateway sees the coordinator end it) and stop."""
        with self._cond:
            for stream in self._streams.values():
                stream.outbox.put(_END)
        if self._server is not None:
            self._server.stop(grace=2.0).wait(5.0)
            self._server = None
        if self._recording is not None:
            self._recording.close()
            self._recording = None

    # ------------------------------------------------------------------ the job's side
    def wait_join(self, party: str, timeout: float) -> Joined:
        """The party's Join, once its gateway has connected.

        Raises:
            LinkLost: It did not connect within ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        with self._cond:
            while party not in self._streams or self._streams[party].lost is not None:
                left = end - time.monotonic()
                if left <= 0:
                    why = f" (last refusal: {self.refusals[-1]})" if self.refusals else ""
                    raise LinkLost(f"silo: party {party!r} did not connect to "
                                   f"{self.address} within {timeout:g} s{why}")
                self._cond.wait(left)
            return self._streams[party].joined

    def joins(self, party: str) -> int:
        """How many times ``party`` has joined (0: never): a gateway that dialled again
        (after a restart, or a lost link) joined once more, and its stream is new."""
        with self._cond:
            return self._joins.get(party, 0)

    def send(self, party: str, **body: Any) -> int:
        """Queue one CoordinatorFrame for ``party``; its seq.

        Raises:
            LinkLost: The party's stream has ended.
        """
        from fedcollab._proto.fedcollab.v1 import silo_pb2

        with self._cond:
            stream = self._streams.get(party)
            if stream is None or stream.lost is not None:
                raise LinkLost(f"silo: the link to {party!r} is down"
                               + (f" ({stream.lost})" if stream and stream.lost else ""))
            stream.seq += 1
            frame = silo_pb2.CoordinatorFrame(sender=self.name, seq=stream.seq, **body)
            stream.bytes_out += frame.ByteSize()
            stream.outbox.put(frame)
            return stream.seq

    def wait(self, party: str, seq: int, deadline: float) -> Any:
        """The GatewayFrame answering frame ``seq``, by ``deadline`` (time.monotonic()).

        Raises:
            LinkTimeout: No answer by the deadline.
            LinkLost: The stream ended first.
        """
        with self._cond:
            while True:
                stream = self._streams.get(party)
                if stream is not None and seq in stream.replies:
                    return stream.replies.pop(seq)
                if stream is None or stream.lost is not None:
                    raise LinkLost(f"silo: the link to {party!r} is down"
                                   + (f" ({stream.lost})" if stream and stream.lost else ""))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LinkTimeout(f"silo: {party!r} did not answer in time")
                self._cond.wait(min(left, 1.0))

    def request(self, party: str, deadline: float, **body: Any) -> Any:
        """:meth:`send` then :meth:`wait`."""
        return self.wait(party, self.send(party, **body), deadline)

    def bytes(self, party: str) -> tuple[int, int]:
        """(received from, sent to) ``party`` so far, in serialized frame bytes."""
        with self._cond:
            stream = self._streams.get(party)
            return (stream.bytes_in, stream.bytes_out) if stream else (0, 0)

    # ------------------------------------------------------------------ the streams
    def _joined(self, stream: _Stream) -> None:
        with self._cond:
            old = self._streams.get(stream.joined.party)
            if old is not None and old.lost is None:
                old.lost = "replaced by a new connection"
                old.outbox.put(_END)
            self._streams[stream.joined.party] = stream
            self._joins[stream.joined.party] = self._joins.get(stream.joined.party, 0) + 1
            self._cond.notify_all()

    def _received(self, stream: _Stream, frame: Any) -> None:
        kind = frame.WhichOneof("body")
        answers = getattr(frame, kind).answers_seq if kind in ("decision", "stage_reply") else 0
        with self._cond:
            stream.bytes_in += frame.ByteSize()
            if answers:
                stream.replies[int(answers)] = frame
            self._cond.notify_all()

    def _ended(self, stream: _Stream, why: str) -> None:
        with self._cond:
            if stream.lost is None:
                stream.lost = why
            stream.outbox.put(_END)
            self._cond.notify_all()


def authenticated_party(context: Any, refusals: list[str]) -> str:
    """The party the client certificate of a call names; a call without a party
    certificate is noted in ``refusals`` and aborted UNAUTHENTICATED."""
    import grpc

    from fedcollab.service.certs import CertError, party_name

    pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
    try:
        return party_name(pem)
    except CertError as err:
        refusals.append(str(err))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
        raise  # abort raises; never reached


def _Servicer(link: SiloLink) -> Any:  # noqa: N802 - builds the servicer class lazily
    import grpc

    from fedcollab._proto.fedcollab.v1 import silo_pb2, silo_pb2_grpc

    class Servicer(silo_pb2_grpc.SiloServiceServicer):
        def Connect(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            party = authenticated_party(context, link.refusals)
            first = next(requests, None)
            if first is None:
                return
            if first.sender != party or first.WhichOneof("body") != "join" \
                    or first.join.party != party:
                why = (f"the first frame must be a Join from the certificate's party "
                       f"{party!r}")
                link.refusals.append(why)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            stream = _Stream(Joined(party, first.join.fedcollab_version,
                                    first.join.policy_sha256))
            stream.bytes_in += first.ByteSize()
            reader = threading.Thread(target=_read, args=(link, stream, requests, party),
                                      name=f"silo-read-{party}", daemon=True)
            link._joined(stream)
            reader.start()
            yield silo_pb2.CoordinatorFrame(sender=link.name, seq=0,
                                            welcome=silo_pb2.Welcome(coordinator=link.name))
            while context.is_active():
                try:
                    item = stream.outbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                yield item

    return Servicer()


def _read(link: SiloLink, stream: _Stream, requests: Iterator[Any], party: str) -> None:
    """Each GatewayFrame of one stream, until it ends; a frame from another sender
    ends the stream."""
    try:
        for frame in requests:
            if frame.sender != party:
                link.refusals.append(f"sender {frame.sender!r} does not match the "
                                     f"certificate's party {party!r}")
                link._ended(stream, "a frame from another sender")
                return
            link._received(stream, frame)
    except Exception as err:  # noqa: BLE001 - grpc ends a cancelled stream with an error
        link._ended(stream, f"{type(err).__name__}")
        return
    link._ended(stream, "the gateway ended the stream")


def _recorder(path: Path) -> Any:
    """A server interceptor that appends every request message's bytes, exactly as
    they came off the stream (4-byte big-endian length, then the bytes), to ``path``."""
    import grpc

    lock = threading.Lock()
    handle = open(path, "ab")  # noqa: SIM115 - open for the server's life

    def record(parse: Any) -> Any:
        def recorded(data: bytes) -> Any:
            with lock:
                handle.write(len(data).to_bytes(4, "big") + data)
                handle.flush()
            return parse(data)
        return recorded

    class Recorder(grpc.ServerInterceptor):
        def close(self) -> None:
            with lock:
                handle.close()

        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            if handler is None or handler.request_deserializer is None:
                return handler
            wrapped = record(handler.request_deserializer)
            if handler.stream_stream is not None:  # SiloService has only Connect
                return grpc.stream_stream_rpc_method_handler(
                    handler.stream_stream, request_deserializer=wrapped,
                    response_serializer=handler.response_serializer)
            return handler

    return Recorder()
