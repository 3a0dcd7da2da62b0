"""``scripts/start-cluster``: start Ray nodes for fedcollab, and stop only those.

    python -m fedcollab.cluster.cli head [--port P] [--dashboard] [--node-ip-address IP]
    python -m fedcollab.cluster.cli worker HEAD:PORT [--vendor-site] [--gpus N] [--token-file F]
    python -m fedcollab.cluster.cli stop

Each node is a plain ``ray start`` with token authentication on, its own temp
dir and free side ports (so several nodes, or other people's Ray, can share a
host). What it started is recorded under a state dir (``--state-dir``, default
``$FEDCOLLAB_CLUSTER_STATE`` or ``~/.fedcollab/cluster``); ``stop`` ends exactly
those processes, never every Ray on the host as ``ray stop`` would.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from fedcollab.cluster.connect import (
    AUTH_MODE_ENV,
    TOKEN_ENV,
    TOKEN_PATH_ENV,
    check_reachable,
    check_token,
    default_token_path,
    ensure_private,
    ensure_token_file,
    is_loopback,
    keep_loopback,
    state_dir,
    use_token_file,
)
from fedcollab.cluster.placement import ClusterError

__all__ = ["main", "build_parser", "stop_recorded"]

SCRIPT = "scripts/start-cluster"


def _state_dir(arg: Optional[str]) -> Path:
    return Path(arg).expanduser().resolve() if arg else state_dir()


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ray_start() -> list[str]:
    """``ray start`` through :func:`_run_ray`, which keeps loopback addresses loopback."""
    return [sys.executable, "-m", "fedcollab.cluster.cli", "_ray", "start"]


def _run_ray(argv: Sequence[str]) -> int:
    """Ray's own CLI, with 127.0.0.1 kept as the node/head address when asked for."""
    keep_loopback()
    node_ip = argv[argv.index("--node-ip-address") + 1] if "--node-ip-address" in argv else ""
    if "--head" in argv and node_ip and is_loopback(node_ip):
        _client_server_on_loopback()
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *argv]
    try:
        ray_main()
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    return 0


#: Ray's switch that makes a process without a node of its own take 127.0.0.1 as its
#: address (``get_node_ip_address``) instead of the host's network address.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _client_server_on_loopback() -> None:
    """Start a loopback head's Ray client server with :data:`_LOCAL_ONLY_ENV` off.

    The client server and the per-client servers it starts are separate processes
    that join the head at 127.0.0.1, which Ray rewrites to the host's network
    address, where a loopback head's GCS does not listen: ``ray://`` clients waited
    30 s and failed. Only the client server's process gets the switch (a node
    process with it off would refuse to join a cluster).
    """
    from ray._private import services

    start = services.start_ray_client_server

    def start_local(*args: Any, **kwargs: Any) -> Any:
        saved = os.environ.get(_LOCAL_ONLY_ENV)
        os.environ[_LOCAL_ONLY_ENV] = "0"
        try:
            return start(*args, **kwargs)
        finally:
            if saved is None:
                os.environ.pop(_LOCAL_ONLY_ENV, None)
            else:
                os.environ[_LOCAL_ONLY_ENV] = saved

    services.start_ray_client_server = start_local


def _side_ports(client_port: Optional[int] = None) -> list[str]:
    """Free ports for the per-node services whose defaults collide between nodes; a
    head's Ray client server listens on ``client_port`` (printed, recorded)."""
    args = ["--dashboard-agent-listen-port", str(_free_port()),
            "--dashboard-agent-grpc-port", str(_free_port()),
            "--metrics-export-port", str(_free_port()),
            "--runtime-env-agent-port", str(_free_port())]
    if client_port is not None:
        args += ["--ray-client-server-port", str(client_port)]
    return args


def _node_flags(node_ip: Optional[str], args: argparse.Namespace,
                custom: Mapping[str, float]) -> list[str]:
    """What a node offers, as `ray start` flags (head and worker alike)."""
    flags: list[str] = []
    if node_ip:
        flags += ["--node-ip-address", node_ip]
    if args.num_cpus:
        flags += ["--num-cpus", str(args.num_cpus)]
    if args.gpus is not None:
        flags += ["--num-gpus", f"{args.gpus:g}"]
    if custom:
        flags += ["--resources", json.dumps(custom)]
    return flags

def _offers(args: argparse.Namespace) -> dict[str, float]:
    custom: dict[str, float] = {}
    if args.resources:
        try:
            loaded = json.loads(args.resources)
        except json.JSONDecodeError as err:
            raise ClusterError(f"--resources: not JSON ({err.msg}); e.g. '{{\"site_a\": 1}}'") \
                from None
        if not isinstance(loaded, dict) or not all(
                isinstance(v, (int, float)) and v > 0 for v in loaded.values()):
            raise ClusterError("--resources: expected a JSON object of positive amounts")
        custom.update({str(k): float(v) for k, v in loaded.items()})
    if args.vendor_site:
        # one vendor_site per CPU slot: a vendor worker can use every CPU of its node
        custom["vendor_site"] = float(args.num_cpus or os.cpu_count() or 1)
    return custom


def _describe(args: argparse.Namespace, custom: dict[str, float]) -> str:
    parts = [f"CPU {args.num_cpus or os.cpu_count() or 1}"]
    if args.gpus:
        parts.append(f"GPU {args.gpus:g}")
    parts += [f"{k} {v:g}" for k, v in sorted(custom.items())]
    return ", ".join(parts)


def _mode(path: Path) -> str:
    """A token file's permission bits as ``0600``; made 0600 first if group or others
    could read it (``ray start`` and ``ray.init`` create theirs world-readable)."""
    ensure_private(path)
    return f"{path.stat().st_mode & 0o777:04o}"


def _record(state: Path, entry: dict[str, Any]) -> Path:
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state / f"{entry['role']}-{entry['pgid']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


SLOW_START = "timed out during startup"  # Ray's fixed 30 s raylet wait, hit on busy hosts


def _start(cmd: list[str], env: dict[str, str], temp_dir: Path, role: str,
           state: Path, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``ray start`` (again once if only Ray's 30 s start-up wait ran out)."""
    try:
        return _start_once(cmd, env, temp_dir, role, state, extra)
    except ClusterError as err:
        if SLOW_START not in str(err):
            raise
        print(f"start-cluster: the {role} was slow to start (busy host); trying once more",
              file=sys.stderr)
        return _start_once(cmd, env, temp_dir, role, state, extra)


def _start_once(cmd: list[str], env: dict[str, str], temp_dir: Path, role: str,
                state: Path, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Run ``ray start`` in its own process group and record it; its output on failure."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    entry = {"role": role, "pgid": proc.pid, "temp_dir": str(temp_dir),
             "started": time.time(), **extra}
    if not entry.get("own_temp_dir"):
        entry["own_temp_dir"] = False
    _record(state, entry)  # recorded before it can leave processes behind
    output, _ = proc.communicate()
    latest = temp_dir / "session_latest"
    if latest.exists():  # processes name their session dir: what `stop` looks for
        entry["session_dir"] = str(latest.resolve())
        _record(state, entry)
    if proc.returncode != 0:
        stop_recorded(state, only=[entry])
        errors = [line for line in output.splitlines()
                  if re.search(r"Error|error|Exception|failed", line)]
        detail = errors[-1].strip() if errors else (output.strip().splitlines() or ["?"])[-1]
        raise ClusterError(f"`ray start` failed for the {role}: {detail}")
    return output, entry


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env[AUTH_MODE_ENV] = "token"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def cmd_head(args: argparse.Namespace) -> int:
    state = _state_dir(args.state_dir)
    custom = _offers(args)  # bad input fails before anything is written
    if args.token_file or not os.environ.get(TOKEN_ENV):
        token_file = ensure_token_file(args.token_file or os.environ.get(TOKEN_PATH_ENV)
                                       or default_token_path())
        use_token_file(token_file)
        token_note = (f"token file: {token_file} (secret, mode {_mode(token_file)}; copy it "
                      "to each joining host)")
        token_flag, token_env = f" --token-file {token_file}", f"{TOKEN_PATH_ENV}={token_file} "
    else:
        token_note = f"token: the value of ${TOKEN_ENV} (give joining hosts the same value)"
        token_flag, token_env = "", ""
    temp_dir = Path(args.temp_dir or tempfile.mkdtemp(prefix="fedcollab-ray-", dir="/tmp"))
    client_port = args.ray_client_port or _free_port()
    extra = {"port": args.port, "own_temp_dir": not args.temp_dir, "client_port": client_port}
    dashboard_port = args.dashboard_port or (8265 if args.dashboard else _free_port())
    cmd = [*_ray_start(), "--head", "--port", str(args.port),
           "--temp-dir", str(temp_dir), "--disable-usage-stats",
           f"--include-dashboard={'true' if args.dashboard else 'false'}",
           "--dashboard-port", str(dashboard_port), *_side_ports(client_port)]
    cmd += _node_flags(args.node_ip_address, args, custom)
    output, entry = _start(cmd, _env(), temp_dir, "head", state, extra)
    found = re.search(r"--address='([^']+)'", output)
    address = found.group(1) if found else f"{args.node_ip_address or '?'}:{args.port}"
    entry["address"] = address
    _record(state, entry)
    if token_env:  # `ray start` may have rewritten it: it stays 0600, or the line says not
        token_note = (f"token file: {token_file} (secret, mode {_mode(token_file)}; copy it "
                      "to each joining host)")
    client = f"ray://{address.rsplit(':', 1)[0]}:{client_port}"
    print(f"Ray head started at {address} (token authentication on; offers "
          f"{_describe(args, custom)})")
    print(f"GCS address: {address}  (--address {address}, or --address auto on this host)")
    print(f"Ray client:  {client}  (--address {client} from a host without Ray nodes)")
    print(token_note)
    if args.dashboard:
        print(f"dashboard: http://{address.rsplit(':', 1)[0]}:{dashboard_port}")
    print(f"next, on each worker host:  {SCRIPT} worker {address}{token_flag} "
          "[--vendor-site] [--gpus N]")
    print(f"then run a job:             {token_env}fedcollab run examples/multi-node.yaml "
          f"--address {address}")
    print(f"stop what this host started: {SCRIPT} stop")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    state = _state_dir(args.state_dir)
    args.vendor_site = args.vendor_site or args.kind == "vendor"
    head = args.head
    host = head.rpartition(":")[0].strip("[]")
    if args.token_file:
        use_token_file(args.token_file)
    check_reachable(head)
    token = check_token(head)  # one clear line when missing or wrong, before ray start
    node_ip = args.node_ip_address or ("127.0.0.1" if is_loopback(host) else None)
    custom = _offers(args)
    temp_dir = Path(args.temp_dir or tempfile.mkdtemp(prefix="fedcollab-ray-", dir="/tmp"))
    cmd = [*_ray_start(), "--address", head, "--temp-dir", str(temp_dir),
           "--disable-usage-stats", *_side_ports()]
    cmd += _node_flags(node_ip, args, custom)
    env = _env()
    if token is None:
        env.pop(AUTH_MODE_ENV)  # the head has token authentication off
    _start(cmd, env, temp_dir, "worker", state, {"head": head, "own_temp_dir": not args.temp_dir})
    print(f"worker node joined {head} (offers {_describe(args, custom)})")
    print(f"stop what this host started: {SCRIPT} stop")
    return 0


def _ours(pgid: int, marker: Optional[str]) -> list[Any]:
    """Processes of one recorded node: its process group and whatever names its session."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if (marker and marker in cmdline) or os.getpgid(proc.pid) == pgid:
                found.append(proc)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    # a recycled group id is not ours: something in the group must still name our session
    if marker and not any(marker in " ".join(p.info["cmdline"] or []) for p in found):
        return []
    return [p for p in found if p.pid != os.getpid()]


def _marker(entry: dict[str, Any]) -> Optional[str]:
    """The path only this node's processes carry (never a shared temp dir like /tmp/ray)."""
    if entry.get("session_dir"):
        return str(entry["session_dir"])
    return str(entry["temp_dir"]) if entry.get("own_temp_dir") else None


def stop_recorded(state: Path, *, only: Optional[Sequence[dict[str, Any]]] = None,
                  grace: float = 5.0) -> list[dict[str, Any]]:
    """Stop the nodes recorded in ``state`` (workers first); returns what was stopped."""
    import psutil

    entries = list(only) if only is not None else [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted(state.glob("*.json"))]
    entries.sort(key=lambda e: e["role"] == "head")
    for entry in entries:
        procs = _ours(int(entry["pgid"]), _marker(entry))
        for proc in procs:
            with _quiet():
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with _quiet():
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        (state / f"{entry['role']}-{entry['pgid']}.json").unlink(missing_ok=True)
        if entry.get("own_temp_dir"):
            shutil.rmtree(entry["temp_dir"], ignore_errors=True)
    return entries


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        import psutil

        return exc[0] is not None and issubclass(exc[0], psutil.Error)


def cmd_stop(args: argparse.Namespace) -> int:
    state = _state_dir(args.state_dir)
    stopped = stop_recorded(state) if state.exists() else []
    if not stopped:
        print(f"nothing to stop: no node recorded in {state}")
        return 0
    for entry in stopped:
        where = entry.get("address") or entry.get("head", "")
        print(f"stopped the {entry['role']} node ({where}, temp dir {entry['temp_dir']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def node_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--num-cpus", type=int, default=None, help="CPUs this node offers")
        p.add_argument("--gpus", type=float, default=None, help="GPUs this node offers")
        p.add_argument("--vendor-site", action="store_true",
                       help="offer the vendor_site resource (one per CPU): vendor groups "
                            "with resources: {vendor_site: 1} run only on such nodes")
        p.add_argument("--resources", default=None,
                       help="more custom resources as JSON, e.g. '{\"site_a\": 1}'")
        p.add_argument("--node-ip-address", default=None,
                       help="address this node advertises (127.0.0.1: loopback only)")
        p.add_argument("--temp-dir", default=None, help="Ray temp dir (default: a new one)")
        p.add_argument("--token-file", default=None,
                       help="the cluster token file (default: $RAY_AUTH_TOKEN, "
                            "$RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token)")
        p.add_argument("--state-dir", default=None,
                       help="where started nodes are recorded (default "
                            "$FEDCOLLAB_CLUSTER_STATE or ~/.fedcollab/cluster)")

    head = sub.add_parser("head", help="start a head node (token authentication on)")
    head.add_argument("--port", type=int, default=6379)
    head.add_argument("--ray-client-port", type=int, default=None,
                      help="the Ray client server's port (default: a free one, printed)")
    head.add_argument("--dashboard", action="store_true", help="start Ray's dashboard")
    head.add_argument("--dashboard-port", type=int, default=None)
    node_options(head)
    head.set_defaults(func=cmd_head)
    worker = sub.add_parser("worker", help="join a worker node to HEAD:PORT")
    worker.add_argument("head", metavar="HEAD:PORT")
    worker.add_argument("kind", nargs="?", choices=["vendor"],
                        help="`vendor`: the same as --vendor-site (older syntax)")
    node_options(worker)
    worker.set_defaults(func=cmd_worker)
    stop = sub.add_parser("stop", help="stop the nodes started from this host's state dir")
    stop.add_argument("--state-dir", default=None)
    stop.set_defaults(func=cmd_stop)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_ray"]:
        return _run_ray(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ClusterError as err:
        print(f"start-cluster: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
