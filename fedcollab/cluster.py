"""Connecting to Ray: an embedded local instance, or an existing cluster.

With no address, a local Ray starts inside the job and declares the custom
resources the spec asks for (e.g. ``vendor_site``), so a spec written for a
cluster also runs on a laptop. It is always a *new* instance: a ``ray start``
cluster on the same host, ``RAY_ADDRESS`` or Ray's "latest cluster" file never
take it over.

With an address, the cluster is probed before Ray is asked to join it, so an
unreachable head, a missing token or a wrong token is one clear line
(:class:`ClusterError`), not a minute of retries and a traceback.

Token authentication (Ray >= 2.5x, on by default). A head started with token
authentication accepts only callers that present its token. Ray's own loader
looks for it in this order, and so does :func:`find_token`:

1. the ``RAY_AUTH_TOKEN`` environment variable (the token itself);
2. the file named by ``RAY_AUTH_TOKEN_PATH``;
3. ``~/.ray/auth_token`` (where ``ray start`` and ``ray.init`` keep it).

Ray only *sends* the token when ``RAY_AUTH_MODE=token``; for an explicit address
it does not switch that on by itself, which is why joining used to fail with
"Failed to connect". :func:`connect` turns it on when the probe shows the
cluster wants a token.

Placement checks (:func:`check_placement`) are pure: they take planned worker
requests and the ``ray.nodes()`` listing and decide whether the workers can ever
be placed, so a job fails at once instead of waiting forever on pending actors.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from fedcollab.errors import FedcollabError

__all__ = ["ClusterError", "connect", "check_reachable", "worker_env", "Token", "find_token",
           "use_token_file", "ensure_token_file", "check_token", "is_loopback", "keep_loopback",
           "state_dir", "resolve_auto", "EMBEDDED_SYSTEM_CONFIG",
           "WorkerRequest", "check_placement", "worker_requests",
           "enable_gpu_memory_growth", "device_info"]

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
STATE_ENV = "FEDCOLLAB_CLUSTER_STATE"
TOKEN_HELP = ("pass --token-file FILE, or set RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN "
              "(the head's `scripts/start-cluster head` printed where its token is)")


class ClusterError(FedcollabError):
    """The Ray cluster cannot be reached or cannot host the job."""


def worker_env() -> dict[str, str]:
    """Environment for every Ray worker: quiet TensorFlow, one thread each.

    ``TF_FORCE_GPU_ALLOW_GROWTH`` makes TensorFlow allocate GPU memory as needed
    (as :func:`enable_gpu_memory_growth` does), so workers sharing a GPU through
    fractional ``gpus_per_worker`` do not starve each other; no effect on CPU.
    """
    from fedcollab.training import TF_ENV

    return {**TF_ENV, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


# ------------------------------------------------------------------ addresses
def _split(address: str) -> tuple[str, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ClusterError(f"cluster address {address!r}: expected HOST:PORT, 'auto' or "
                           "ray://HOST:PORT")
    return host.strip("[]"), int(port_text)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def keep_loopback() -> None:
    """Make Ray in this process keep 127.0.0.1 as 127.0.0.1.

    Ray replaces a loopback node or head address by the host's network address
    (``resolve_ip_for_localhost``), so a cluster asked to bind loopback would
    advertise, and be joined on, another interface. Only loopback hosts are
    affected; any other address resolves as before.
    """
    from ray._private import services

    original = services.resolve_ip_for_localhost
    if getattr(services, "_fedcollab_loopback", False):
        return

    def resolve(host: str) -> str:
        return host if is_loopback(host) else str(original(host))

    services.resolve_ip_for_localhost = resolve
    services._fedcollab_loopback = True  # type: ignore[attr-defined]


def state_dir() -> Path:
    """Where ``scripts/start-cluster`` records the nodes it started on this host."""
    raw = os.environ.get(STATE_ENV) or str(Path.home() / ".fedcollab" / "cluster")
    return Path(raw).expanduser().resolve()


def resolve_auto(directory: Optional[Path] = None) -> str:
    """What ``--address auto`` means here: ``RAY_ADDRESS``, else the head that
    ``scripts/start-cluster`` recorded on this host, else Ray's own "auto".

    Raises:
        ClusterError: the records name more than one cluster.
    """
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    heads: set[str] = set()
    where = directory or state_dir()
    for record in sorted(where.glob("*.json")) if where.is_dir() else []:
        try:
            entry = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        address = entry.get("address") if entry.get("role") == "head" else entry.get("head")
        if address:
            heads.add(str(address))
    if len(heads) > 1:
        raise ClusterError(f"--address auto: {where} records several clusters "
                           f"({', '.join(sorted(heads))}); pass --address HOST:PORT")
    return heads.pop() if heads else "auto"


def check_reachable(address: str, *, timeout: float = 3.0) -> None:
    """Fail fast if ``host:port`` does not accept a TCP connection."""
    if address in ("auto", "local") or address.startswith("ray://"):
        target = address[len("ray://"):] if address.startswith("ray://") else ""
        if not target:
            return
        address = target
    host, port = _split(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: "
                           f"{err.strerror or err.__class__.__name__}; is `ray start --head` "
                           "running there?") from None


# ------------------------------------------------------------------ the token
@dataclass(frozen=True)
class Token:
    """The cluster token a caller would present, and where it came from (never logged)."""

    value: str = field(repr=False)
    source: str


def default_token_path() -> Path:
    """Ray's default token file, ``~/.ray/auth_token``."""
    return Path.home() / ".ray" / "auth_token"


def find_token(environ: Optional[Mapping[str, str]] = None) -> Optional[Token]:
    """The token Ray would load, in Ray's own order (env value, env path, default file)."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV, "").strip():
        return Token(env[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    named = env.get(TOKEN_PATH_ENV, "")
    candidates = [(Path(named).expanduser(), f"${TOKEN_PATH_ENV} ({named})")] if named else []
    candidates.append((default_token_path(), str(default_token_path())))
    for path, source in candidates:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            if named and path == Path(named).expanduser():
                raise ClusterError(f"{TOKEN_PATH_ENV}={named}: cannot read the token file") \
                    from None
            continue
        if text:
            return Token(text, source)
    return None


def use_token_file(path: os.PathLike[str] | str) -> Path:
    """Use ``path`` as the cluster token for this process and the Ray processes it starts.

    This is what ``--token-file`` does: it sets ``RAY_AUTH_TOKEN_PATH`` and drops
    ``RAY_AUTH_TOKEN`` (which Ray would prefer over the file).

    Raises:
        ClusterError: the file is missing, unreadable or empty.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        text = resolved.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ClusterError(f"token file {path}: {err.strerror or 'cannot read it'}") from None
    if not text:
        raise ClusterError(f"token file {path} is empty; copy the head's token into it")
    os.environ[TOKEN_PATH_ENV] = str(resolved)
    os.environ.pop(TOKEN_ENV, None)
    return resolved


def ensure_token_file(path: os.PathLike[str] | str) -> Path:
    """Create a fresh 256-bit token at ``path`` (mode 0600) unless one is there.

    The token is ``secrets.token_hex(32)``, as Ray's ``ray get-auth-token --generate``.
    """
    target = Path(path).expanduser()
    if target.exists() and target.read_text(encoding="utf-8").strip():
        return target
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(32))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def _probe(host: str, port: int, token: Optional[str], timeout: float) -> Optional[str]:
    """Ask the GCS for its cluster id; the gRPC status name on failure, None when accepted."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]
        try:
            stub.GetClusterId(request, metadata=metadata,
                              timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            return code.name if code is not None else "UNKNOWN"
    return None


def check_token(address: str, *, timeout: float = 5.0) -> Optional[Token]:
    """Which token (if any) the cluster at ``address`` wants, checked before joining.

    Returns:
        The token to present, or None when the cluster has token authentication off.

    Raises:
        ClusterError: the cluster wants a token and none is set up here, or it
            rejects the one found (one line, naming where it came from).
    """
    host, port = _split(address[len("ray://"):] if address.startswith("ray://") else address)
    status = _probe(host, port, None, timeout)
    if status is None:
        return None
    if status != "UNAUTHENTICATED":
        raise ClusterError(f"the Ray cluster at {address} did not answer ({status}); "
                           "is it a Ray head (GCS) port?")
    token = find_token()
    if token is None:
        raise ClusterError(f"the Ray cluster at {address} has token authentication on and no "
                           f"token was found here: {TOKEN_HELP}")
    if _probe(host, port, token.value, timeout) == "UNAUTHENTICATED":
        raise ClusterError(f"the Ray cluster at {address} rejected the token from "
                           f"{token.source}: it is not that head's token; {TOKEN_HELP}")
    return token


def _send_token() -> None:
    """Switch Ray in this process (and its children) to presenting the token."""
    os.environ[AUTH_MODE_ENV] = "token"
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - older Ray has no token auth
        return
    Config.initialize("")  # re-read RAY_AUTH_MODE, as ray's own _enable_token_auth does
    AuthenticationTokenLoader.instance().reset_cache()


# ------------------------------------------------------------------ connecting
#: Ray settings of an embedded instance (a cluster started with ``ray start`` keeps its
#: own). A worker's round reply (its participants' updates, ~1 MB at 50 participants
#: of the benchmark model) travels back inside the reply instead of through the
#: object store: ~3 ms less per round on 2 cores. Ray's default is 100 KiB.
EMBEDDED_SYSTEM_CONFIG = {"max_direct_call_object_size": 4 * 1024 * 1024}


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block, then as they were."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def connect(address: Optional[str] = None, *, resources: Optional[Mapping[str, float]] = None,
            num_cpus: Optional[int] = None, num_gpus: Optional[int] = None) -> Iterator[Any]:
    """Connect to Ray for the duration of a job.

    Args:
        address: None for a new embedded local Ray (never an existing one, whatever
            ``RAY_ADDRESS`` or a ``ray start`` on this host say); else "auto",
            "HOST:PORT" or "ray://...".
        resources: custom resources an embedded instance declares (ignored with an address).
        num_cpus: CPUs an embedded instance declares (default: this machine's count).

    Raises:
        ClusterError: the address is unreachable, wants a token that is missing or
            wrong, or Ray refuses the connection.
    """
    import ray

    if ray.is_initialized():  # a caller (a test, a notebook) already connected
        yield ray
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING,
                              "log_to_driver": bool(os.environ.get("FEDCOLLAB_WORKER_LOGS"))}
    if address is None:
        # "local": start a new instance; None would join RAY_ADDRESS or the
        # latest `ray start` cluster, and then refuse num_cpus/resources.
        if AUTH_MODE_ENV not in os.environ:  # Ray's default (token), minus its warning
            _send_token()
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                      include_dashboard=False, resources=dict(resources or {}),
                      _system_config=EMBEDDED_SYSTEM_CONFIG)
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        # a cluster's workers run on other hosts: the environment travels with the job
        kwargs["runtime_env"] = {"env_vars": worker_env()}
        if address == "auto":
            address = resolve_auto()
        check_reachable(address)
        if address not in ("auto", "local") and not address.startswith("ray://"):
            host, _ = _split(address)
            if is_loopback(host):
                keep_loopback()
            if check_token(address) is not None:
                _send_token()
        kwargs["address"] = address
    try:
        # An embedded raylet and every worker it starts inherit this process's
        # environment: a job runtime_env instead made each actor wait for a fresh
        # worker process (~1 s on 2 cores) rather than take one Ray pre-started
        # while it came up.
        with _environment(worker_env() if address is None else {}):
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
        where = address or "a local instance"
        first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise ClusterError(f"cannot start or join Ray at {where}: {first}") from None
    try:
        yield ray
    finally:
        if address is None:
            _stop_autoscaler_monitor(ray)
        ray.shutdown()


def _stop_autoscaler_monitor(ray: Any) -> None:
    """Kill an embedded instance's autoscaler monitor before ``ray.shutdown``.

    Ray stops its processes one after the other, giving each a second after SIGTERM;
    the monitor (nothing to autoscale on one machine, no state to keep) always takes
    the whole second, which was most of a job's shutdown. Best effort: the private
    structure may change between Ray versions, and then shutdown is only slower.
    """
    try:
        node = ray._private.worker._global_node
        for info in (node.all_processes.get("monitor", []) if node is not None else []):
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=5)
    except Exception:  # noqa: BLE001 - an optimisation only
        pass


# ------------------------------------------------------------------ placement (pure)
_UNIT = 10_000  # Ray's fixed-point resolution for resource amounts
_IGNORED = ("memory", "object_store_memory")


def _units(amount: float) -> int:
    return int(round(float(amount) * _UNIT))


@dataclass(frozen=True)
class WorkerRequest:
    """What one worker actor asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    label: str = "worker"  # names the group in messages

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0 or any(v < 0 for v in self.resources.values()):
            raise ClusterError(f"{self.label}: resource amounts must be >= 0")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ClusterError(f"{self.label}: gpus_per_worker={self.gpus}: above 1 it must "
                               "be a whole number of GPUs")

    def wants(self) -> dict[str, float]:
        want = {"CPU": self.cpus, "GPU": self.gpus, **dict(self.resources)}
        return {k: v for k, v in want.items() if v > 0}


class _Node:
    """Free capacity of one node in fixed-point units; GPUs tracked per device."""

    def __init__(self, resources: Mapping[str, float]) -> None:
        self.free = {k: _units(v) for k, v in resources.items()
                     if k != "GPU" and k not in _IGNORED and not k.startswith("node:")}
        total = _units(resources.get("GPU", 0.0))
        self.gpus = [_UNIT] * (total // _UNIT) + ([total % _UNIT] if total % _UNIT else [])

    def take(self, request: WorkerRequest) -> bool:
        want = {k: _units(v) for k, v in request.wants().items() if k != "GPU"}
        if any(self.free.get(k, 0) < v for k, v in want.items()):
            return False
        gpu = _units(request.gpus)
        chosen: list[int] = []
        if gpu >= _UNIT:  # whole GPUs
            chosen = [i for i, free in enumerate(self.gpus) if free == _UNIT][:gpu // _UNIT]
            if len(chosen) < gpu // _UNIT:
                return False
        elif gpu > 0:  # a fraction must fit on one device: best fit keeps devices whole
            fits = [i for i, free in enumerate(self.gpus) if free >= gpu]
            if not fits:
                return False
            chosen = [min(fits, key=lambda i: self.gpus[i])]
        for k, v in want.items():
            self.free[k] -= v
        for i in chosen:
            self.gpus[i] -= min(gpu, _UNIT)
        return True


def _fmt(amount: float) -> str:
    return f"{amount:g}"


def _describe(want: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(want.items())) or "nothing"


def check_placement(requests: Sequence[WorkerRequest],
                    nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Decide whether all workers can be placed at once on the cluster's nodes.

    Bin-packs the requests (pinned and largest first, first fit) onto the alive nodes'
    total resources, as Ray's scheduler must: a fractional GPU request must fit
    on one device (four 0.25 workers share a GPU, a 0.75 and a 0.5 do not).

    Args:
        requests: one entry per worker actor.
        nodes: ``ray.nodes()`` entries (``NodeID``, ``Alive``, ``Resources``).

    Returns:
        The ``NodeID`` each request would land on (index-aligned with ``requests``).

    Raises:
        ClusterError: one line naming what is missing: GPUs where there are none,
            a custom resource no node offers, a worker bigger than any node, or
            more workers than the cluster has slots for.
    """
    alive = [n for n in nodes if n.get("Alive", True)]
    totals: dict[str, float] = {}
    for n in alive:
        for k, v in (n.get("Resources") or {}).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    for req in requests:
        for key, amount in req.wants().items():
            if totals.get(key, 0.0) > 0:
                continue
            if key == "GPU":
                raise ClusterError(f"{req.label}: the spec asks for {_fmt(amount)} GPU per "
                                   "worker but the cluster has no GPUs; set "
                                   "resources.gpus_per_worker: 0 or add GPU nodes "
                                   "(scripts/start-cluster worker HEAD:PORT --gpus N)")
            if key == "CPU":
                raise ClusterError(f"{req.label}: the cluster offers no CPUs to workers")
            hint = (" (scripts/start-cluster worker HEAD:PORT --vendor-site)"
                    if key == "vendor_site" else "")
            raise ClusterError(f"{req.label}: no node in the cluster offers the custom "
                               f"resource {key!r} the group is pinned to; start a node "
                               f"offering it{hint}")
    free = [_Node(n.get("Resources") or {}) for n in alive]
    for req in requests:
        if not any(_Node(n.get("Resources") or {}).take(req) for n in alive):
            raise ClusterError(f"{req.label}: one worker needs {_describe(req.wants())} but "
                               "no single node has that much; lower resources.cpus_per_worker "
                               "/ gpus_per_worker or add bigger nodes")
    order = sorted(range(len(requests)),
                   key=lambda i: (-len(requests[i].resources), -requests[i].gpus,
                                  -requests[i].cpus, i))  # most constrained first
    placed: list[Optional[int]] = [None] * len(requests)
    for i in order:
        for index, node in enumerate(free):
            if node.take(requests[i]):
                placed[i] = index
                break
    unplaced = [i for i in order if placed[i] is None]
    if unplaced:
        first = requests[unplaced[0]]
        same = [i for i in range(len(requests)) if requests[i].wants() == first.wants()]
        room = sum(1 for i in same if placed[i] is not None)
        raise ClusterError(f"{first.label}: {len(same)} workers need {_describe(first.wants())} "
                           f"each but the cluster has room for only {room} of them at once "
                           f"({len(alive)} node(s)); lower resources.workers or add nodes")
    return [str(alive[index].get("NodeID", index)) for index in placed if index is not None]


def worker_requests(plan: Sequence[tuple[Mapping[str, float], Sequence[int]]], *,
                    cpus_per_worker: float, gpus_per_worker: float,
                    labels: Optional[Sequence[str]] = None) -> list[WorkerRequest]:
    """One :class:`WorkerRequest` per planned worker (``plan_workers`` output shape)."""
    out = []
    for index, (resources, _) in enumerate(plan):
        label = labels[index] if labels else (
            f"worker {index} ({', '.join(sorted(resources))})" if resources
            else f"worker {index}")
        out.append(WorkerRequest(cpus=cpus_per_worker, gpus=gpus_per_worker,
                                 resources=dict(resources), label=label))
    return out


# ------------------------------------------------------------------ inside a worker
def enable_gpu_memory_growth() -> list[str]:
    """Let TensorFlow grow GPU memory on demand on every visible GPU (no-op on CPU).

    Without it, the first worker on a GPU reserves nearly all its memory and the
    other fractional workers sharing that GPU fail. Call before any TF op runs.

    Returns:
        The names of the GPUs configured (empty on a CPU-only worker).
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth can no longer change
            pass
    return [g.name for g in gpus]


def device_info() -> dict[str, Any]:
    """Where this worker trains: Ray node id, host, TF device and Ray's GPU ids."""
    node_id, gpu_ids = "", []
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
            gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    device = gpus[0].name if gpus else "/device:CPU:0"
    return {"node_id": node_id, "host": socket.gethostname(), "device": device,
            "gpu_ids": gpu_ids}
