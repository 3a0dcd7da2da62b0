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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from fedcollab.cluster.placement import ClusterError

__all__ = ["ClusterError", "connect", "check_reachable", "worker_env", "Token", "find_token",
           "use_token_file", "ensure_token_file", "ensure_private", "check_token", "is_loopback",
           "keep_loopback",
           "state_dir", "resolve_auto", "EMBEDDED_SYSTEM_CONFIG", "TF_ENV",
           "is_startup_timeout", "EMBEDDED_STARTS"]

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
STATE_ENV = "FEDCOLLAB_CLUSTER_STATE"
TOKEN_HELP = ("pass --token-file FILE, or set RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN "
              "(the head's `scripts/start-cluster head` printed where its token is)")


def worker_env() -> dict[str, str]:
    """Environment for every Ray worker: quiet TensorFlow, one thread each.

    ``TF_FORCE_GPU_ALLOW_GROWTH`` makes TensorFlow allocate GPU memory as needed
    (as :func:`enable_gpu_memory_growth` does), so workers sharing a GPU through
    fractional ``gpus_per_worker`` do not starve each other; no effect on CPU.
    """
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
        return ensure_private(target)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(32))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def ensure_private(path: os.PathLike[str] | str) -> Path:
    """Make a token file readable by its owner alone (0600) if group or others could
    read it, as a file ``ray start`` or ``ray.init`` created may be.

    Raises:
        ClusterError: its mode cannot be changed (another user's file, a read-only disk).
    """
    target = Path(path).expanduser()
    try:
        if target.stat().st_mode & 0o077:
            os.chmod(target, 0o600)
    except OSError as err:
        raise ClusterError(f"token file {target} is readable by others and cannot be made "
                           f"0600 ({err.strerror}); fix its mode or pass --token-file with "
                           "a file of your own") from None
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
#: object store, which saves a store round trip per round. Ray's default is 100 KiB.
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


#: How often Ray is started (or joined) before its start-up time-out is reported.
#: Ray forks its GCS and raylet with a Python ``preexec_fn``, which Python documents
#: as unsafe in a process with other threads (gRPC's, say): now and then a forked
#: process hangs before ``exec`` and Ray gives up waiting for it. Each start forks
#: afresh, so a second one comes up.
EMBEDDED_STARTS = 3

#: What Ray's error says when a process it forked never came up.
STARTUP_TIMEOUTS = ("timed out during startup", "Timed out waiting for file")


#: The one line a start-up time-out that outlasted every retry becomes.
STARTUP_ADVICE = ("Ray at {where} did not come up in time, {starts} tries ({first}); the "
                  "machine is probably overloaded: try again when it is quieter, or start "
                  "Ray once with `scripts/start-cluster head` and pass --address auto")


def is_startup_timeout(err: BaseException) -> bool:
    """Whether ``err`` is Ray giving up on a process it started (worth a new start)."""
    return any(text in str(err) for text in STARTUP_TIMEOUTS)


@contextlib.contextmanager
def connect(address: Optional[str] = None, *, resources: Optional[Mapping[str, float]] = None,
            num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
            loopback: bool = False) -> Iterator[Any]:
    """Connect to Ray for the duration of a job.

    Args:
        address: None for a new embedded local Ray (never an existing one, whatever
            ``RAY_ADDRESS`` or a ``ray start`` on this host say); else "auto",
            "HOST:PORT" or "ray://...".
        resources: custom resources an embedded instance declares (ignored with an address).
        num_cpus: CPUs an embedded instance declares (default: this machine's count).
        loopback: An embedded instance binds every port of its own (GCS, raylet,
            workers) to 127.0.0.1 only: nothing of it is reachable from the network
            (a vendor's silo, whose gateway must stay its only way out and in).

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
        if loopback:
            keep_loopback()
            kwargs["_node_ip_address"] = "127.0.0.1"
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        # a cluster's workers run on other hosts: the environment travels with the job
        kwargs["runtime_env"] = {"env_vars": worker_env()}
        if address == "auto":
            address = resolve_auto()
        check_reachable(address)
        if address.startswith("ray://"):
            # the client server takes the cluster's token too; Ray sends it only in
            # token mode (a Ray client port has no GCS to probe first)
            host, _ = _split(address[len("ray://"):])
            if is_loopback(host):
                keep_loopback()
            if find_token() is not None:
                _send_token()
        elif address not in ("auto", "local"):
            host, _ = _split(address)
            if is_loopback(host):
                keep_loopback()
            if check_token(address) is not None:
                _send_token()
        kwargs["address"] = address
    where = address or "a local instance"
    from fedcollab.errors import raise_on_sigterm, raises_on_sigterm

    ours = raises_on_sigterm()  # the CLI's: SIGTERM ends the job cleanly (exit 143)
    for start in range(1, EMBEDDED_STARTS + 1):
        try:
            # An embedded raylet and every worker it starts inherit this process's
            # environment: a job runtime_env instead made each actor wait for a fresh
            # worker process to start rather than take one Ray pre-started
            # while it came up.
            with _environment(worker_env() if address is None else {}):
                ray.init(**kwargs)
            break
        except Exception as err:  # noqa: BLE001 - Ray's node start-up raises a bare Exception
            if not (is_startup_timeout(err) or isinstance(
                    err, (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError))):
                raise  # not Ray failing to start or join: a bug to see whole
            ray.shutdown()
            first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
            if not is_startup_timeout(err):
                raise ClusterError(f"cannot start or join Ray at {where}: {first}") from None
            if start < EMBEDDED_STARTS:  # a process Ray forked never came up: fork afresh
                print(f"fedcollab: Ray did not come up in time ({first[:120]}); trying "
                      f"again ({start + 1}/{EMBEDDED_STARTS})", file=sys.stderr, flush=True)
                continue
            raise ClusterError(STARTUP_ADVICE.format(where=where, starts=EMBEDDED_STARTS,
                                                     first=first[:200])) from None
    if ours:  # ray.init replaced it with a crash dump and an exit from anywhere
        raise_on_sigterm()
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


def start_local_head(*, num_cpus: int, temp_dir: str) -> tuple[Any, str]:
    """Start a local Ray head in this process for a job service (no dashboard, quiet
    workers, bound to 127.0.0.1); returns the connected ``ray`` module and the head's
    GCS address. Ray's start-up time-out is retried as :func:`connect` retries it.

    Raises:
        ClusterError: Ray did not start (one line).
    """
    import logging

    import ray

    keep_loopback()
    for start in range(1, EMBEDDED_STARTS + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
                     _system_config=EMBEDDED_SYSTEM_CONFIG,
                     logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"env_vars": worker_env()})
            break
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
            ray.shutdown()
            if start < EMBEDDED_STARTS and is_startup_timeout(err):
                continue
            first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
            raise ClusterError(f"cannot start the job service's Ray head: {first}") from None
    return ray, str(ray.get_runtime_context().gcs_address)


def node_info() -> dict[str, Any]:
    """This process's Ray node id and Ray's GPU ids for it (empty outside Ray)."""
    import ray

    if not ray.is_initialized():
        return {"node_id": "", "gpu_ids": []}
    return {"node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


#: Environment for every process that runs TensorFlow: quiet, one thread each.
TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
          "TF_NUM_INTEROP_THREADS": "1", "PYTHONHASHSEED": "0"}
