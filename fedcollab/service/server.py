"""The gRPC job service: JobService, health checking and reflection on one port.

Health and reflection answer without a token (they reveal no job data), so load
balancers, grpcurl and other clients work without our files; every JobService
call needs ``authorization: Bearer <token>`` when a tokens file is given.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import gc
import hashlib
import inspect
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import OrderedDict
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Optional

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from fedcollab._proto.fedcollab.v1 import jobs_pb2, jobs_pb2_grpc
from fedcollab.errors import FedcollabError
from fedcollab.service import artifacts
from fedcollab.service.audit import AuditLog
from fedcollab.service.auth import (
    ANONYMOUS_ADMIN,
    Caller,
    TokenFile,
    authorize,
    check_owner,
    token_from_metadata,
)
from fedcollab.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    status_code,
)
from fedcollab.service.limits import Limits, LimitsConfig
from fedcollab.service.metrics import ServiceMetrics
from fedcollab.service.policy import check_model, confine_data_path, normalise_roots
from fedcollab.service.runner import Hub, Runner
from fedcollab.service.specs import MAX_SPEC_BYTES, parse_spec_text, spec_data
from fedcollab.service.store import STATES, JobRecord, JobStore
from fedcollab.types import GRADE_BUDGETS

__all__ = ["ServeConfig", "JobServer", "run_server", "serve", "job_to_proto",
           "MAX_MESSAGE_BYTES"]

log = logging.getLogger("fedcollab.service")

MAX_MESSAGE_BYTES = 1024 * 1024
SERVICE_NAME = "fedcollab.v1.JobService"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServeConfig:
    """What `fedcollab serve` takes (see its --help)."""

    state_dir: Path
    listen: str = "127.0.0.1:50051"
    ray_address: Optional[str] = None
    max_concurrent: int = 1
    tokens: Optional[Path] = None
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    client_ca: Optional[Path] = None
    warm_runners: Optional[int] = None  # None: max_concurrent (every slot starts warm)
    eager: bool = True  # start Ray and the warm runners at once (else on the first job)
    #: where jobs may read `task.path` from, for tokens that name no data_roots
    data_roots: tuple[Path, ...] = ()
    #: modules (and their submodules) `task.model: package.module:function` may name
    allow_model_modules: tuple[str, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    #: HOST:PORT for Prometheus' /metrics (plain HTTP, no job data); None: off
    metrics_listen: Optional[str] = None
    #: how far below the service jobs and its Ray head run in CPU priority (0-19)
    job_nice: int = 10

    def __post_init__(self) -> None:
        if self.max_concurrent < 0:
            raise InvalidArgument("--max-concurrent must be 0 (queue only) or more")
        if self.warm_runners is not None and self.warm_runners < 0:
            raise InvalidArgument("--warm-runners must be 0 or more")
        if not 0 <= self.job_nice <= 19:
            raise InvalidArgument(f"--job-nice {self.job_nice}: expected 0..19")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("--tls-cert and --tls-key go together")
        if self.client_ca and not self.tls_cert:
            raise InvalidArgument("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
        host = self.listen.rpartition(":")[0]
        if not host or not self.listen.rpartition(":")[2].isdigit():
            raise InvalidArgument(f"--listen {self.listen!r}: expected HOST:PORT")


def lock_state_dir(state_dir: Path) -> int:
    """Hold ``STATE_DIR/service.lock`` (flock) for the service's lifetime.

    Returns the lock's file descriptor (closing it releases the lock; so does the
    process dying, however it dies).

    Raises:
        FailedPrecondition: another service holds it; nothing in the state dir was
            touched.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "service.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise FailedPrecondition(
            f"--state-dir {state_dir} is in use by another fedcollab serve"
            f"{f' (pid {holder})' if holder.isdigit() else ''}; stop it first or give "
            "another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def is_loopback(listen: str) -> bool:
    return listen.rpartition(":")[0] in LOOPBACK


def job_to_proto(job: JobRecord) -> Any:
    return jobs_pb2.Job(
        id=job.id, state=jobs_pb2.JobState.Value(job.state), kind=job.kind, name=job.name,
        owner=job.owner, rounds=job.rounds, rounds_completed=job.rounds_completed,
        created_unix=job.created, started_unix=job.started, finished_unix=job.finished,
        error=job.error, attempts=job.attempts, summary_json=job.summary)


class _Malformed:
    """What a request that does not parse becomes: the handler answers INVALID_ARGUMENT
    (gRPC itself would answer UNKNOWN and log a traceback)."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _lenient(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError:
            return _Malformed(message.DESCRIPTOR.full_name)
    return parse


def _serializer(message: Any) -> Callable[[Any], bytes]:
    """A message's serializer that also passes bytes through: WatchJob sends one
    event to many watchers encoded once (:meth:`_Servicer._wire`)."""
    def serialize(value: Any) -> bytes:
        return value if isinstance(value, bytes) else bytes(message.SerializeToString(value))
    return serialize


def _add_job_service(servicer: "_Servicer", server: Any) -> None:
    """Register JobService's methods as the generated code would, with `_lenient`
    request parsing."""
    service = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    handlers = {}
    for method in service.methods:
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_lenient(GetMessageClass(method.input_type)),
            response_serializer=_serializer(GetMessageClass(method.output_type)))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


_settled = threading.Event()


def _settle_heap() -> None:
    """Move what is alive now (the modules a submit imports: numpy, scikit-learn, the
    spec's data loaders) out of the garbage collector's reach, once.

    A full collection walks every tracked object, and those modules bring many; on
    the event loop that stalls every call in flight: it was most of GetJob's p99
    under load. Objects made later are collected as usual.
    """
    if not _settled.is_set():
        _settled.set()
        gc.freeze()


def _check(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise InvalidArgument(f"the request is not a valid {request.type_name} message")


def _rpc(method: str, *, stream: bool = False, blocking: bool = False
         ) -> Callable[[Callable[..., Any]], Any]:
    """Authenticate, authorize, and map errors to status codes: once, for every method.

    Handlers run on the server's event loop. `blocking` ones (they fsync, or load
    a spec's data) run in the servicer's thread pool instead, so a submit never
    holds up a GetJob; the others only read sqlite and small files, or await.
    """

    def decorate(fn: Callable[..., Any]) -> Any:
        async def fail(context: Any, err: BaseException) -> None:
            if isinstance(err, FedcollabError):
                await context.abort(status_code(err),
                                    str(err).splitlines()[0] if str(err) else method)
            log.error("%s: internal error", method, exc_info=err)
            await context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error "
                                                          "(see the service log)")

        def code_of(err: BaseException) -> str:
            return str(status_code(err).name) if isinstance(err, FedcollabError) else "INTERNAL"

        if stream:
            @functools.wraps(fn)
            async def streaming(self: "_Servicer", request: Any, context: Any
                                ) -> AsyncIterator[Any]:
                t0, code = time.perf_counter(), "CANCELLED"  # until it ends otherwise
                observed = False
                try:
                    caller = self.caller(context, method)
                    _check(request)
                    async for item in fn(self, request, context, caller):
                        yield item
                    code = "OK"
                except Exception as err:  # noqa: BLE001  (mapped to a status in fail())
                    # counted before the status leaves: a client that scrapes right
                    # after its error must find the call
                    self.metrics.observe_rpc(method, code_of(err), time.perf_counter() - t0)
                    observed = True
                    await fail(context, err)
                finally:
                    if not observed:
                        self.metrics.observe_rpc(method, code, time.perf_counter() - t0)
            return streaming

        @functools.wraps(fn)
        async def unary(self: "_Servicer", request: Any, context: Any) -> Any:
            t0, code, observed = time.perf_counter(), "CANCELLED", False
            try:
                caller = self.caller(context, method)
                _check(request)
                if inspect.iscoroutinefunction(fn):
                    result = await fn(self, request, context, caller)
                elif blocking:
                    result = await asyncio.get_running_loop().run_in_executor(
                        self.blocking, fn, self, request, context, caller)
                else:
                    result = fn(self, request, context, caller)
                code = "OK"
                return result
            except Exception as err:  # noqa: BLE001
                # counted before the status leaves (see streaming)
                self.metrics.observe_rpc(method, code_of(err), time.perf_counter() - t0)
                observed = True
                await fail(context, err)
            finally:
                if not observed:
                    self.metrics.observe_rpc(method, code, time.perf_counter() - t0)
        return unary
    return decorate


class _Servicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, store: JobStore, runner: Runner, hub: Hub, state_dir: Path,
                 tokens: Optional[TokenFile], blocking: futures.ThreadPoolExecutor,
                 config: ServeConfig, audit: AuditLog, metrics: ServiceMetrics) -> None:
        self.store = store
        self.runner = runner
        self.hub = hub
        self.state_dir = state_dir
        self.tokens = tokens
        self.blocking = blocking
        self.limits = Limits(config.limits)
        self.data_roots = normalise_roots(config.data_roots)
        self.allow_models = tuple(config.allow_model_modules)
        self.audit = audit
        self.metrics = metrics
        # WatchJob's events, encoded once per (job, version, what) for every watcher
        self._wire_cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()

    def _wire(self, key: tuple[str, int, int], build: Callable[[], Any]) -> bytes:
        cached = self._wire_cache.get(key)
        if cached is None:
            cached = self._wire_cache[key] = build().SerializeToString()
            while len(self._wire_cache) > 4096:
                self._wire_cache.popitem(last=False)
        return cached

    def caller(self, context: Any, method: str) -> Caller:
        if self.tokens is None:
            caller = ANONYMOUS_ADMIN
        else:
            caller = self.tokens.authenticate(token_from_metadata(context.invocation_metadata()))
        authorize(caller, method)
        return caller

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id

    def _visible(self, caller: Caller, job_id: str) -> JobRecord:
        if not job_id:
            raise InvalidArgument("a job id is required")
        job = self.store.get(job_id)
        check_owner(caller, job.owner_id, job.id)
        return job

    def _roots(self, caller: Caller) -> tuple[Path, ...]:
        """The caller's data roots: its token's, else the service's --data-root."""
        return normalise_roots(caller.data_roots) if caller.has_roots else self.data_roots

    def _confine(self, caller: Caller, text: str) -> tuple[str, dict[str, Any]]:
        """The spec with its data and model checked against the caller's policy, before
        anything is read, imported or run; returns (text to store, job params)."""
        from fedcollab.worker.models import MODELS

        data = spec_data(text)
        _no_file_overrides(data)
        task = data.get("task")
        task = task if isinstance(task, dict) else {}
        check_model(task.get("model"), tuple(MODELS), self.allow_models)
        release = data.get("release")
        key = release.get("key") if isinstance(release, dict) else None
        wants_file = task.get("dataset") == "file" and task.get("path") is not None
        if not wants_file and key is None:
            return text, {}
        roots = self._roots(caller)
        if wants_file:
            task["path"] = str(confine_data_path(str(task["path"]), roots))
        if key is not None:  # a signing key is a file on this machine too
            assert isinstance(release, dict)
            release["key"] = str(confine_data_path(str(key), roots))
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False)), {
            "data_roots": [str(r) for r in roots]}

    def _create(self, caller: Caller, *, kind: str, spec_yaml: str, key: str,
                params: dict[str, Any]) -> Any:
        if len(spec_yaml.encode("utf-8")) > MAX_SPEC_BYTES:
            raise ResourceExhausted(f"spec is {len(spec_yaml.encode())} bytes; the limit is "
                                    f"{MAX_SPEC_BYTES}")
        if not spec_yaml.strip():
            raise InvalidArgument("spec_yaml is empty")
        self.limits.take_submit(caller)
        action = "submit" if kind == "run" else "grade"
        try:
            spec_yaml, confined = self._confine(caller, spec_yaml)
        except ServiceError as err:  # a policy refusal: who tried what is worth keeping
            self.audit.record(f"{action}-refused", who=caller.name, code=err.code,
                              reason=str(err).splitlines()[0][:200])
            raise
        spec = parse_spec_text(spec_yaml, find_model=False)
        _settle_heap()
        # The spec goes into the store with the job (one transaction, one fsync); the
        # runner writes the job's directory when the job starts.
        queued = self.limits.config.queued_per_token
        # The token's running quota travels with the job (the runner enforces it).
        quota = self.limits.running_quota(caller)
        job, created = self.store.create(
            kind=kind, name=spec.name, owner=caller.name, owner_id=caller.owner_id,
            rounds=spec.rounds if kind == "run" else 0, idempotency_key=key or None,
            params={**params, **confined, **({"max_running": quota} if quota else {})},
            spec=spec_yaml, priority=caller.priority,
            max_queued=queued if queued and not caller.is_admin else None)
        self.audit.record(action if created else f"{action}-repeat", who=caller.name,
                          job=job.id, spec_sha256=hashlib.sha256(spec_yaml.encode()).hexdigest())
        if created:
            self.runner.wake()
        return job_to_proto(job)

    @_rpc("SubmitJob", blocking=True)
    def SubmitJob(self, request: Any, context: Any, caller: Caller) -> Any:
        return self._create(caller, kind="run", spec_yaml=request.spec_yaml,
                            key=request.idempotency_key, params={})

    @_rpc("GradeJob", blocking=True)
    def GradeJob(self, request: Any, context: Any, caller: Caller) -> Any:
        budget = request.budget or "fast"
        if budget not in GRADE_BUDGETS:
            raise InvalidArgument(f"budget {budget!r}: expected one of {', '.join(GRADE_BUDGETS)}")
        priority = request.priority or "balanced"
        return self._create(caller, kind="grade", spec_yaml=request.spec_yaml,
                            key=request.idempotency_key,
                            params={"budget": budget, "priority": priority})

    @_rpc("GetJob")
    def GetJob(self, request: Any, context: Any, caller: Caller) -> Any:
        return job_to_proto(self._visible(caller, request.id))

    @_rpc("ListJobs")
    def ListJobs(self, request: Any, context: Any, caller: Caller) -> Any:
        size = request.page_size or 50
        if not 0 < size <= 500:
            raise InvalidArgument(f"page_size {size}: expected 1..500")
        before = None
        if request.page_token:
            if not request.page_token.isdigit():
                raise InvalidArgument("page_token: not one this service returned")
            before = int(request.page_token)
        states = [jobs_pb2.JobState.Name(s) for s in request.states]
        if "JOB_STATE_UNSPECIFIED" in states:
            raise InvalidArgument(f"states: expected some of {', '.join(STATES)}")
        owner = None if caller.sees_everything else caller.owner_id
        jobs = self.store.list(states=states, owner=owner, limit=size + 1, before_seq=before)
        token = str(jobs[size - 1].seq) if len(jobs) > size else ""
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs[:size]],
                                         next_page_token=token)

    @_rpc("WatchJob", stream=True)
    async def WatchJob(self, request: Any, context: Any, caller: Caller
                       ) -> AsyncIterator[Any]:
        job = self._visible(caller, request.id)
        if request.after_round < 0:
            raise InvalidArgument(f"after_round {request.after_round}: give a round >= 0 "
                                  "(0: from the first)")
        job_dir = self.job_dir(job.id)
        loop = asyncio.get_running_loop()
        with self.limits.watch_stream(caller):
            # a reconnecting watcher names the last round it saw: only later ones are sent
            sent_state, sent_round, index = "", int(request.after_round), 0
            while True:  # a client that goes away cancels this coroutine
                if not self.hub.is_loaded(job.id):  # the job's first watcher reads its file
                    await loop.run_in_executor(self.blocking, self.hub.events, job.id, job_dir)
                lines = self.hub.events(job.id, job_dir)  # in memory, shared by all watchers
                seen = self.hub.version(job.id)
                job = self.hub.record(job.id, self.store.get)
                # Every watcher of this job at this version sends the same bytes: each
                # event is built and encoded once (on the event loop, one thread).
                if job.state != sent_state and not job.is_terminal:
                    sent_state = job.state
                    yield self._wire((job.id, seen, -1), functools.partial(_state_event, job))
                index = min(index, len(lines))
                while index < len(lines):
                    line = lines[index]
                    index += 1
                    number = int(line.get("round", 0))
                    if number <= sent_round:
                        continue  # a resumed job repeats the rounds since its checkpoint
                    sent_round = number
                    yield self._wire((job.id, seen, index),
                                     functools.partial(_round_event, job, line))
                if job.is_terminal:  # the runner reads a job's last lines before it ends it
                    yield self._wire((job.id, seen, -2), functools.partial(_state_event, job))
                    return
                await self.hub.changed(job.id, seen, timeout=5.0)

    @_rpc("CancelJob")
    async def CancelJob(self, request: Any, context: Any, caller: Caller) -> Any:
        job = self._visible(caller, request.id)
        if job.is_terminal:
            raise FailedPrecondition(f"job {job.id} is {job.state} already")
        queued = await asyncio.get_running_loop().run_in_executor(
            self.blocking, functools.partial(self.store.transition, job.id, ["QUEUED"],
                                             "CANCELLED", finished=time.time()))
        self.audit.record("cancel", who=caller.name, job=job.id, state=job.state)
        if not queued:
            self.runner.cancel(job.id)  # RUNNING: signal its process group
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:
                seen = self.hub.version(job.id)
                if self.store.get(job.id).is_terminal:
                    break
                await self.hub.changed(job.id, seen, timeout=0.5)
        self.hub.publish(job.id)
        return job_to_proto(self.store.get(job.id))

    @_rpc("FetchArtifact", stream=True)
    async def FetchArtifact(self, request: Any, context: Any, caller: Caller
                            ) -> AsyncIterator[Any]:
        job = self._visible(caller, request.id)
        files = artifacts.resolve(self.job_dir(job.id), request.name, job)
        self.audit.record("fetch", who=caller.name, job=job.id, artifact=request.name)
        loop = asyncio.get_running_loop()
        for relative, handle, size in artifacts.open_all(files):
            with handle:
                offset = 0
                while True:
                    data = await loop.run_in_executor(self.blocking, handle.read,
                                                      artifacts.CHUNK_BYTES)
                    last = offset + len(data) >= size or not data
                    yield jobs_pb2.ArtifactChunk(path=relative, size=size, offset=offset,
                                                 data=data, last=last)
                    offset += len(data)
                    if last:
                        break

    @_rpc("StreamJobLogs", stream=True)
    async def StreamJobLogs(self, request: Any, context: Any, caller: Caller
                            ) -> AsyncIterator[Any]:
        job = self._visible(caller, request.id)
        if request.offset < 0:
            raise InvalidArgument(f"offset {request.offset}: give a byte offset >= 0")
        self.audit.record("logs", who=caller.name, job=job.id, follow=request.follow)
        loop = asyncio.get_running_loop()
        job_dir, offset = self.job_dir(job.id), request.offset
        held = self.limits.watch_stream(caller) if request.follow else contextlib.nullcontext()
        with held:
            while True:  # a client that goes away cancels this coroutine
                seen = self.hub.version(job.id)
                job = self.hub.record(job.id, self.store.get)  # shared with WatchJob's
                ended = job.is_terminal  # the log read after this holds its last output
                data = await loop.run_in_executor(
                    self.blocking, functools.partial(artifacts.read_log, job_dir, job, offset,
                                                     missing_ok=request.follow and not ended))
                for start in range(0, len(data), artifacts.CHUNK_BYTES):
                    yield jobs_pb2.LogChunk(offset=offset + start,
                                            data=data[start:start + artifacts.CHUNK_BYTES])
                offset += len(data)
                if len(data) == artifacts.LOG_READ_BYTES:
                    continue  # more is waiting: send it before sleeping
                if not request.follow or ended:
                    return
                await self.hub.changed(job.id, seen, timeout=LOG_POLL_SECONDS)


#: How often a followed log is read again when the job has no event to announce.
LOG_POLL_SECONDS = 1.0

#: Spec sections a grade mix may not override on the service: they name files or code
#: the policy checks only once, on the spec as submitted.
_CONFINED = ("task", "release")


def _no_file_overrides(data: dict[str, Any]) -> None:
    grading = data.get("grading")
    mixes = grading.get("mixes") if isinstance(grading, dict) else None
    for i, mix in enumerate(mixes if isinstance(mixes, list) else []):
        overrides = mix.get("overrides") if isinstance(mix, dict) else None
        for path in overrides if isinstance(overrides, dict) else ():
            if str(path).split(".")[0] in _CONFINED:
                raise PermissionDenied(
                    f"spec: grading.mixes.{i}.overrides: {path!r}: on the job service a mix "
                    f"may not change {' or '.join(_CONFINED)} (set them in the spec itself)")


def _state_event(job: JobRecord) -> Any:
    return jobs_pb2.JobEvent(job=job_to_proto(job), state=jobs_pb2.StateChange(
        state=jobs_pb2.JobState.Value(job.state), error=job.error if job.is_terminal else ""))


def _round_event(job: JobRecord, line: dict[str, Any]) -> Any:
    metrics = {k: float(v) for k, v in line.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return jobs_pb2.JobEvent(job=job_to_proto(job), round=jobs_pb2.RoundEvent(
        round=int(line.get("round", 0)), rounds=job.rounds, metrics=metrics,
        metrics_json=_json(line)))


def _json(line: dict[str, Any]) -> str:
    import json

    return json.dumps(line, allow_nan=False, separators=(",", ":"))


class JobServer:
    """The whole service: store, runner, gRPC server. `start()`, then `stop()`."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir).resolve()
        self.tokens = TokenFile(config.tokens) if config.tokens else None
        self._state_lock: Optional[int] = lock_state_dir(self.state_dir)  # before anything
        try:
            for private in (self.state_dir, self.state_dir / "jobs"):
                private.mkdir(parents=True, exist_ok=True)
                private.chmod(0o700)
            self.store = JobStore(self.state_dir / "jobs.sqlite")
            self.audit = AuditLog(self.state_dir / "audit.log")
        except BaseException:
            self._unlock()
            raise
        self.hub = Hub()
        self.runner = Runner(self.store, self.state_dir, self.hub,
                             max_concurrent=config.max_concurrent,
                             ray_address=config.ray_address, warm_runners=config.warm_runners,
                             eager=config.eager, job_nice=config.job_nice)
        self.metrics = ServiceMetrics(self.store.count_by_state,
                                      lambda: self.runner.ray_restarts)
        self.runner.on_round = self.metrics.observe_round
        self.metrics_port = 0
        self.recovered = self.store.recover()
        for stale in (self.state_dir / "jobs").glob(".incoming-*"):  # older services' leftovers
            shutil.rmtree(stale, ignore_errors=True)
        self.port = 0
        self._server: Any = None
        self._health: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Any = None
        # Calls that fsync or load data run here, off the event loop (the store's
        # writes are serialised anyway; a few threads keep one slow fsync from
        # delaying the next submit).
        self._blocking = futures.ThreadPoolExecutor(max_workers=4,
                                                    thread_name_prefix="rpc-blocking")

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    def _credentials(self) -> Any:
        cfg = self.config
        if not cfg.tls_cert:
            return None
        try:
            cert = Path(cfg.tls_cert).read_bytes()
            key = Path(str(cfg.tls_key)).read_bytes()
            ca = Path(cfg.client_ca).read_bytes() if cfg.client_ca else None
        except OSError as err:
            raise InvalidArgument(f"cannot read TLS file {err.filename}: "
                                  f"{err.strerror}") from None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                           require_client_auth=ca is not None)

    def start(self) -> int:
        """Listen and serve (on an event loop in a thread of its own); returns the port."""
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                             name="fedcollab-grpc", daemon=True)
        self._loop_thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        except BaseException:
            self._close_loop()
            self._unlock()
            raise
        return self.port

    async def _start(self) -> int:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
                   ("grpc.so_reuseport", 0),
                   # gRPC cancels calls once more than 1,000 wait for a handler (its
                   # default): a burst of one tenant's streams then cancelled others'
                   # calls. Limits refuses the excess streams itself, by name.
                   ("grpc.server.max_pending_requests", 4096),
                   ("grpc.server.max_pending_requests_hard_limit", 8192)]
        # No server-wide cap on calls: a cap fills with one tenant's WatchJob streams and
        # then refuses admins and health checks too. Streams are bounded per token and
        # in total by Limits instead; unary calls are short.
        server = grpc.aio.server(options=options)
        _add_job_service(_Servicer(self.store, self.runner, self.hub, self.state_dir,
                                   self.tokens, self._blocking, self.config, self.audit,
                                   self.metrics), server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        credentials = self._credentials()
        try:
            if credentials is None:
                port = server.add_insecure_port(self.config.listen)
            else:
                port = server.add_secure_port(self.config.listen, credentials)
        except RuntimeError:
            port = 0
        if not port:
            raise ServiceError(f"cannot listen on {self.config.listen} (in use, or not an "
                               "address of this machine)")
        loop = asyncio.get_running_loop()

        def set_health(ok: bool) -> None:  # the runner's thread: Ray lost, or back
            status = (health_pb2.HealthCheckResponse.SERVING if ok
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            for name in ("", SERVICE_NAME):
                asyncio.run_coroutine_threadsafe(checker.set(name, status), loop)

        self.runner.on_health = set_health
        if self.config.metrics_listen:
            self.metrics_port = self.metrics.serve(self.config.metrics_listen)
        self.runner.start()
        await server.start()
        for name in ("", SERVICE_NAME):
            await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server, self._health = server, checker
        gc.freeze()  # grpc, protobuf and the service's modules: see _settle_heap
        return int(port)

    async def _stop(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)

    def _close_loop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        self._loop_thread.join(10)
        if not loop.is_running():
            loop.close()
        self._loop = None

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, interrupt running jobs (they resume next start), stop Ray."""
        if self._server is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop).result(grace + 5)
            self._server = None
        self._close_loop()
        self._blocking.shutdown(wait=True)
        self.runner.stop()
        self.metrics.close()
        self.store.close()
        self.audit.close()
        self._unlock()  # last: the state dir is free for the next service

    def _unlock(self) -> None:
        if self._state_lock is not None:
            os.close(self._state_lock)
            self._state_lock = None


@contextlib.contextmanager
def run_server(state_dir: str | Path, **options: Any) -> Iterator[JobServer]:
    """A running job service (port 0 by default: a free one), stopped on exit."""
    options.setdefault("listen", "127.0.0.1:0")
    options.setdefault("eager", False)
    server = JobServer(ServeConfig(state_dir=Path(state_dir), **options))
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def serve(config: ServeConfig, *, out: Any = None) -> int:
    """Run the service until SIGTERM or SIGINT, then shut down gracefully."""
    err = out or sys.stderr
    if not config.tokens:
        if not is_loopback(config.listen):
            raise InvalidArgument(f"--listen {config.listen}: beyond loopback the service "
                                  "needs --tokens (make one with `fedcollab token new`)")
        print("fedcollab serve: warning: no --tokens: every caller is admin (loopback only)",
              file=err)
    if not config.tls_cert and not is_loopback(config.listen):
        print(f"fedcollab serve: warning: listening on {config.listen} without TLS: tokens "
              "and job data cross the network in the clear (pass --tls-cert/--tls-key)",
              file=err)
    server = JobServer(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    resumed = f", {len(server.recovered)} interrupted job(s) resume" if server.recovered else ""
    print(f"fedcollab serve: listening on {server.address} "
          f"({'mutual TLS' if config.client_ca else 'TLS' if config.tls_cert else 'plaintext'}),"
          f" state in {server.state_dir}{resumed}", file=err, flush=True)
    stop.wait()
    print("fedcollab serve: shutting down (running jobs resume on the next start)", file=err,
          flush=True)
    server.stop()
    return 0
