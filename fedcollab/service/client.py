"""The job service's client, as the CLI uses it: no TensorFlow, no Ray.

Addresses and tokens come from arguments or FEDCOLLAB_SERVER / FEDCOLLAB_TOKEN;
TLS when a CA certificate is given, mutual TLS with a client certificate and key.
"""
from __future__ import annotations

import builtins
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import grpc

from fedcollab._proto.fedcollab.v1 import jobs_pb2, jobs_pb2_grpc
from fedcollab.service.errors import InvalidArgument, ServiceError, Unavailable, from_rpc_error

__all__ = ["DEFAULT_SERVER", "JobClient", "job_to_dict", "STATE_NAMES"]

DEFAULT_SERVER = "127.0.0.1:50051"
STATE_NAMES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def job_to_dict(job: Any) -> dict[str, Any]:
    """A Job message as the JSON `fedcollab status --json` prints."""
    out: dict[str, Any] = {
        "id": job.id, "state": jobs_pb2.JobState.Name(job.state),
        "rounds_completed": job.rounds_completed, "rounds": job.rounds,
        "kind": job.kind, "name": job.name, "owner": job.owner,
        "created_unix": job.created_unix, "started_unix": job.started_unix or None,
        "finished_unix": job.finished_unix or None, "attempts": job.attempts,
        "error": job.error or None,
    }
    if job.summary_json:
        try:
            out["summary"] = json.loads(job.summary_json)
        except ValueError:
            pass
    return out


def _read(path: Optional[str], what: str) -> Optional[bytes]:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InvalidArgument(f"{what} {path}: {err.strerror or 'cannot read'}") from None


class JobClient:
    """A connection to one job service."""

    def __init__(self, server: Optional[str] = None, *, token: Optional[str] = None,
                 ca_cert: Optional[str] = None, client_cert: Optional[str] = None,
                 client_key: Optional[str] = None, timeout: float = 30.0) -> None:
        self.server = server or os.environ.get("FEDCOLLAB_SERVER") or DEFAULT_SERVER
        token = token or os.environ.get("FEDCOLLAB_TOKEN")
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = \
            (("authorization", f"Bearer {token}"),) if token else ()
        if bool(client_cert) != bool(client_key):
            raise InvalidArgument("--client-cert and --client-key go together")
        options = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        if ca_cert or client_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_cert, "--ca-cert"),
                private_key=_read(client_key, "--client-key"),
                certificate_chain=_read(client_cert, "--client-cert"))
            self.channel = grpc.secure_channel(self.server, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(self.server, options=options)
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "JobClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, request: Any, *, timeout: Optional[float] = None) -> Any:
        try:
            return getattr(self.stub, method)(request, metadata=self._metadata,
                                              timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err, server=self.server) from None

    def _stream(self, method: str, request: Any) -> Iterator[Any]:
        try:
            yield from getattr(self.stub, method)(request, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err, server=self.server) from None

    def submit(self, spec_yaml: str, *, idempotency_key: str = "") -> Any:
        return self._call("SubmitJob", jobs_pb2.SubmitJobRequest(
            spec_yaml=spec_yaml, idempotency_key=idempotency_key), timeout=120)

    def grade(self, spec_yaml: str, *, budget: str = "fast", priority: str = "balanced",
              idempotency_key: str = "") -> Any:
        return self._call("GradeJob", jobs_pb2.GradeJobRequest(
            spec_yaml=spec_yaml, budget=budget, priority=priority,
            idempotency_key=idempotency_key), timeout=120)

    def get(self, job_id: str) -> Any:
        return self._call("GetJob", jobs_pb2.GetJobRequest(id=job_id))

    def list(self, *, states: Sequence[str] = (), page_size: int = 50,
             page_token: str = "") -> Any:
        unknown = [s for s in states if s not in STATE_NAMES]
        if unknown:
            raise InvalidArgument(f"--state {unknown[0]}: expected one of "
                                  f"{', '.join(STATE_NAMES)}")
        return self._call("ListJobs", jobs_pb2.ListJobsRequest(
            states=[jobs_pb2.JobState.Value(s) for s in states], page_size=page_size,
            page_token=page_token))

    def cancel(self, job_id: str) -> Any:
        return self._call("CancelJob", jobs_pb2.CancelJobRequest(id=job_id), timeout=60)

    def watch(self, job_id: str, *, after_round: int = 0, reconnect_seconds: float = 0.0,
              on_reconnect: Optional[Callable[[str], None]] = None) -> Iterator[Any]:
        """The job's events until it ends: its state, then each round after
        `after_round`.

        With `reconnect_seconds`, a stream the service drops (UNAVAILABLE: it was
        restarted, or the network went) is opened again from the last round seen, for
        up to that many seconds without an answer; `on_reconnect` is told why, once
        per outage. A service never reached (a wrong address) fails at once. Rounds
        are never repeated (a resumed job re-runs the rounds since its checkpoint: the
        service leaves out those already sent)."""
        last, outage, reached = after_round, None, False  # type: int, Optional[float], bool
        while True:
            try:
                for event in self._stream("WatchJob", jobs_pb2.WatchJobRequest(
                        id=job_id, after_round=last)):
                    outage, reached = None, True
                    if event.HasField("round"):
                        last = max(last, event.round.round)
                    yield event
                return
            except Unavailable as err:
                if not reached:
                    raise
                now = time.monotonic()
                if outage is None:
                    outage = now
                    if reconnect_seconds > 0 and on_reconnect is not None:
                        on_reconnect(str(err))
                if now - outage >= reconnect_seconds:
                    raise
                time.sleep(min(1.0, outage + reconnect_seconds - now))

    def logs(self, job_id: str, *, offset: int = 0, follow: bool = False) -> Iterator[bytes]:
        """The job's log (its process's and, through Ray, its workers' output) from byte
        `offset`; with `follow`, what it writes next until it ends."""
        request = jobs_pb2.StreamJobLogsRequest(id=job_id, offset=offset, follow=follow)
        for chunk in self._stream("StreamJobLogs", request):
            yield chunk.data

    def fetch(self, job_id: str, name: str, out: Path) -> builtins.list[Path]:
        """Download an artifact. A directory artifact lands in `out` (a directory);
        a file lands at `out`, or inside it when `out` is an existing directory."""
        written: list[Path] = []
        handle: Any = None
        target: Optional[Path] = None
        tmp: Optional[Path] = None
        is_dir = "/" not in name.strip("/") and name.strip("/") in ("release", "plots")
        try:
            for chunk in self._stream("FetchArtifact",
                                      jobs_pb2.FetchArtifactRequest(id=job_id, name=name)):
                if handle is None:
                    leaf = Path(chunk.path).name
                    if is_dir:
                        target = out / leaf
                    else:
                        target = out / leaf if out.is_dir() else out
                    if leaf in ("", ".", "..") or "/" in leaf:
                        raise ServiceError(f"the service sent a bad file name {chunk.path!r}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.part")
                    handle = tmp.open("wb")
                handle.write(chunk.data)
                if chunk.last:
                    handle.close()
                    handle = None
                    assert tmp is not None and target is not None
                    os.replace(tmp, target)
                    written.append(target)
        finally:
            if handle is not None:
                handle.close()
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
        return written
