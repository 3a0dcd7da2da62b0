"""The job service's commands: serve, submit, jobs, status, watch, cancel, fetch,
token, certs, and ``grade --server``.

Registered into ``fedcollab``'s parser by :func:`add_service_commands`. Handlers
import grpc lazily and never TensorFlow or Ray; they raise FedcollabError
subclasses, which ``fedcollab.cli.main`` prints as one line (exit 1, or 2 for
bad input such as an invalid spec or an unknown job id).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from fedcollab.errors import FedcollabError
from fedcollab.types import GRADE_BUDGETS

__all__ = ["add_service_commands", "add_remote_grade_args", "remote_grade", "EXAMPLES"]

EXAMPLES = {
    "serve": "fedcollab serve --listen 127.0.0.1:50051 --state-dir svc --tokens tokens.yaml",
    "submit": "fedcollab submit examples/community-vendor.yaml --set rounds=5 --watch",
    "jobs": "fedcollab jobs --state RUNNING --state QUEUED",
    "status": "fedcollab status 3f2a9c0d1e4b --json",
    "watch": "fedcollab watch 3f2a9c0d1e4b",
    "cancel": "fedcollab cancel 3f2a9c0d1e4b",
    "logs": "fedcollab logs 3f2a9c0d1e4b --follow",
    "fetch": "fedcollab fetch 3f2a9c0d1e4b release -o release/ && fedcollab verify release/",
    "token": "fedcollab token new --name ci --role submitter --tokens tokens.yaml",
    "certs": "fedcollab certs init --dir pki && fedcollab certs issue --dir pki --name server "
             "--server",
    "grade": "fedcollab grade examples/community-vendor.yaml --server 127.0.0.1:50051 --watch "
             "--out graded/",
}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


#: How long `watch` (and `submit --watch`) keeps reconnecting to a service that went
#: away: a restarted service resumes its jobs, and the watch goes on from its last round.
RECONNECT_SECONDS = 60.0


class ServiceUsageError(FedcollabError):
    exit_code = 2


def _add(sub: Any, name: str, help_text: str, handler: Callable[[argparse.Namespace], int],
         example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_handler=handler)
    return parser


add_command = _add  # public: the silo CLI builds its commands the same way


def _client_args(parser: argparse.ArgumentParser) -> None:
    have = set(parser._option_string_actions)
    for flag, kwargs in (
            ("--server", {"default": None, "help": "job service HOST:PORT "
                          "(default: $FEDCOLLAB_SERVER or 127.0.0.1:50051)"}),
            ("--token", {"default": None, "help": "bearer token (default: $FEDCOLLAB_TOKEN)"}),
            ("--ca-cert", {"default": None, "help": "CA certificate (PEM): use TLS"}),
            ("--client-cert", {"default": None, "help": "client certificate (mutual TLS)"}),
            ("--client-key", {"default": None, "help": "client key (mutual TLS)"})):
        if flag not in have:
            parser.add_argument(flag, **kwargs)  # type: ignore[arg-type]


def _client(args: argparse.Namespace) -> Any:
    from fedcollab.service.client import JobClient

    return JobClient(args.server, token=args.token, ca_cert=args.ca_cert,
                     client_cert=args.client_cert, client_key=args.client_key)


def add_service_commands(sub: Any) -> None:
    """Add the job service's commands to `fedcollab`'s subparsers."""
    serve = _add(sub, "serve", "run the gRPC job service", _cmd_serve, EXAMPLES["serve"])
    serve.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT to listen on")
    serve.add_argument("--ray-address", default=None,
                       help="an existing Ray cluster (default: the service starts its own)")
    serve.add_argument("--state-dir", type=Path, default=Path("fedcollab-service"),
                       help="job store and job outputs (default ./fedcollab-service)")
    serve.add_argument("--max-concurrent", type=int, default=1,
                       help="jobs running at once; more queue (0: queue only)")
    serve.add_argument("--tokens", type=Path, default=None,
                       help="tokens file (sha256 hashes; `fedcollab token new` makes one)")
    serve.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, default=None, help="server key (PEM)")
    serve.add_argument("--client-ca", type=Path, default=None,
                       help="CA for client certificates: require mutual TLS")
    serve.add_argument("--warm-runners", type=int, default=None,
                       help="job processes kept ready, connected to Ray with their workers "
                       "started (default: --max-concurrent, so every slot starts warm)")
    serve.add_argument("--data-root", action="append", type=Path, default=[],
                       metavar="DIR", help="a directory jobs may read task.path from, for "
                       "tokens whose entry names no data_roots (repeatable)")
    serve.add_argument("--allow-model-module", action="append", default=[], metavar="MODULE",
                       help="a module (with its submodules) task.model may name as "
                       "MODULE:function; only built-in models otherwise (repeatable)")
    serve.add_argument("--max-watch-per-token", type=int, default=64,
                       help="WatchJob streams one token may hold open (0: no limit)")
    serve.add_argument("--max-watch-total", type=int, default=2048,
                       help="WatchJob streams all non-admin tokens together (0: no limit)")
    serve.add_argument("--max-queued-per-token", type=int, default=20,
                       help="queued jobs per non-admin token (0: no limit)")
    serve.add_argument("--max-running-per-token", type=int, default=0,
                       help="jobs one token may have running at once, for tokens whose "
                       "entry names no max_running (0: no limit)")
    serve.add_argument("--submits-per-minute", type=int, default=60,
                       help="submits per token per minute (0: no limit)")
    serve.add_argument("--job-nice", type=int, default=10, metavar="N",
                       help="run jobs and the service's own Ray head N steps below the "
                       "service in CPU priority (0-19; default 10), so the API and health "
                       "checks answer first on a busy host; 0: the same priority")
    serve.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics "
                       "(counts and timings only; default: off)")

    submit = _add(sub, "submit", "submit a job spec to the service; prints the job id",
                  _cmd_submit, EXAMPLES["submit"])
    submit.add_argument("spec", help="job spec (.yaml, .yml or .json)")
    submit.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="PATH=VALUE", help="override a field, e.g. rounds=5")
    submit.add_argument("--watch", action="store_true", help="then watch it to the end")
    submit.add_argument("--idempotency-key", default="",
                        help="resubmitting with the same key returns the same job")
    _client_args(submit)

    jobs = _add(sub, "jobs", "list jobs, newest first", _cmd_jobs, EXAMPLES["jobs"])
    jobs.add_argument("--state", action="append", default=[],
                      help="only jobs in this state (repeatable)")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    jobs.add_argument("--json", action="store_true", help="one JSON object per line")
    _client_args(jobs)

    status = _add(sub, "status", "show one job", _cmd_status, EXAMPLES["status"])
    status.add_argument("id")
    status.add_argument("--json", action="store_true",
                        help='print {"id", "state", "rounds_completed", "rounds", ...}')
    _client_args(status)

    watch = _add(sub, "watch", "follow a job round by round until it ends", _cmd_watch,
                 EXAMPLES["watch"])
    watch.add_argument("id")
    watch.add_argument("--reconnect", type=float, default=RECONNECT_SECONDS, metavar="SECONDS",
                       help="if the service goes away (a restart), keep trying to reconnect "
                       f"for this long and go on from the last round seen (default "
                       f"{RECONNECT_SECONDS:g}; 0: stop at once)")
    _client_args(watch)

    logs = _add(sub, "logs", "print a job's log: its own and its workers' output", _cmd_logs,
                EXAMPLES["logs"])
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing what the job writes until it ends")
    logs.add_argument("--offset", type=int, default=0,
                      help="start at this byte of the log (default: 0, the beginning)")
    _client_args(logs)

    cancel = _add(sub, "cancel", "cancel a queued or running job", _cmd_cancel,
                  EXAMPLES["cancel"])
    cancel.add_argument("id")
    _client_args(cancel)

    fetch = _add(sub, "fetch", "download an artifact: release, summary.json, metrics.jsonl, "
                 "scorecard.json|md|html, plots, release/FILE ...", _cmd_fetch,
                 EXAMPLES["fetch"])
    fetch.add_argument("id")
    fetch.add_argument("artifact")
    fetch.add_argument("-o", "--output", type=Path, default=None,
                       help="file or directory to write (default: the artifact's name here)")
    _client_args(fetch)

    token = _add(sub, "token", "manage the service's bearer tokens", _cmd_token_help,
                 EXAMPLES["token"])
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION",
                                     parser_class=type(token))
    new = _add(token_sub, "new", "make a token: print it once, append its sha256 to the file",
               _cmd_token_new, EXAMPLES["token"])
    new.add_argument("--name", required=True, help="who the token is for")
    new.add_argument("--role", required=True, choices=("admin", "submitter", "viewer"))
    new.add_argument("--tokens", type=Path, required=True, help="tokens file (created 0600)")
    new.add_argument("--expires-in", default=None, metavar="DURATION",
                     help="refuse the token after this long: e.g. 90d, 12h, 30m, 3600 (s)")
    new.add_argument("--data-root", action="append", default=[], metavar="DIR",
                     help="a directory this token's jobs may read task.path from "
                     "(repeatable; default: the service's --data-root)")
    new.add_argument("--priority", type=int, default=None, metavar="N",
                     help="its queued jobs start before those of lower priority (default 0)")
    new.add_argument("--max-running", type=int, default=None, metavar="N",
                     help="its jobs running at once (default: the service's "
                     "--max-running-per-token; 0: no limit)")
    revoke = _add(token_sub, "revoke", "remove a token from the file (the service refuses it "
                  "on its next call)", _cmd_token_revoke,
                  "fedcollab token revoke --name ci --tokens tokens.yaml")
    revoke.add_argument("--name", required=True, help="the token's name")
    revoke.add_argument("--tokens", type=Path, required=True, help="tokens file")

    certs = _add(sub, "certs", "make a CA and TLS certificates for the service",
                 _cmd_certs_help, EXAMPLES["certs"])
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION",
                                     parser_class=type(certs))
    init = _add(certs_sub, "init", "make a CA (ca.pem, ca.key) in --dir", _cmd_certs_init,
                "fedcollab certs init --dir pki")
    init.add_argument("--dir", type=Path, required=True)
    issue = _add(certs_sub, "issue", "make NAME.pem and NAME.key signed by the CA in --dir",
                 _cmd_certs_issue, "fedcollab certs issue --dir pki --name alice --client")
    issue.add_argument("--dir", type=Path, required=True)
    issue.add_argument("--name", required=True)
    kind = issue.add_mutually_exclusive_group(required=True)
    kind.add_argument("--server", action="store_true", help="a server certificate")
    kind.add_argument("--client", action="store_true", help="a client certificate")
    kind.add_argument("--party", action="store_true",
                      help="a cross-silo party's certificate: names the party "
                           "(urn:fedcollab:party:NAME), client and server use")
    issue.add_argument("--days", type=int, default=825,
                       help="validity in days (default 825)")
    issue.add_argument("--host", action="append", default=[],
                       help="another DNS name or IP the server certificate covers")

    if "grade" in getattr(sub, "choices", {}):
        add_remote_grade_args(sub.choices["grade"])
    else:
        grade = _add(sub, "grade", "grade a spec as a job on a job service (--server)",
                     _cmd_grade, EXAMPLES["grade"])
        grade.add_argument("spec", help="job spec (.yaml, .yml or .json)")
        grade.add_argument("--budget", choices=GRADE_BUDGETS, default="fast")
        grade.add_argument("--priority", default="balanced")
        grade.add_argument("--out", type=Path, default=None,
                           help="with --watch: where to put scorecard.json/.md/.html")
        add_remote_grade_args(grade)


def add_remote_grade_args(parser: argparse.ArgumentParser) -> None:
    """The options `grade --server` adds to the (local) grade command."""
    _client_args(parser)
    have = set(parser._option_string_actions)
    if "--watch" not in have:
        parser.add_argument("--watch", action="store_true",
                            help="with --server: wait for the grade job, fetch the scorecard")
    if "--idempotency-key" not in have:
        parser.add_argument("--idempotency-key", default="")


def _cmd_grade(args: argparse.Namespace) -> int:
    if not args.server:
        raise ServiceUsageError("grading locally is not part of this build; pass --server "
                                "HOST:PORT to grade on a job service")
    return remote_grade(args)


def remote_grade(args: argparse.Namespace) -> int:
    """`fedcollab grade SPEC --server ...`: the grader as a job on the service."""
    text = _spec_text(args.spec, [])
    with _client(args) as client:
        job = client.grade(text, budget=args.budget, priority=args.priority,
                           idempotency_key=args.idempotency_key)
        print(job.id, flush=True)
        if not getattr(args, "watch", False):
            return 0
        code = _watch(client, job.id)
        if code == 0 and getattr(args, "out", None):
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for name in ("scorecard.json", "scorecard.md", "scorecard.html"):
                client.fetch(job.id, name, out)
            print(f"scorecard -> {out}", file=sys.stderr)
        return code


def _spec_text(path: str, overrides: list[str]) -> str:
    from fedcollab.spec import SpecError, apply_overrides, read_spec_data

    if overrides:
        import yaml

        return str(yaml.safe_dump(apply_overrides(read_spec_data(path), overrides),
                                  sort_keys=False))
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"spec: {path}: cannot read ({err.__class__.__name__})") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from fedcollab.service.limits import LimitsConfig
    from fedcollab.service.server import ServeConfig, serve

    try:
        limits = LimitsConfig(watch_per_token=args.max_watch_per_token,
                              watch_total=args.max_watch_total,
                              queued_per_token=args.max_queued_per_token,
                              running_per_token=args.max_running_per_token,
                              submits_per_minute=args.submits_per_minute)
    except ValueError as err:
        raise ServiceUsageError(f"serve: {err}") from None
    return serve(ServeConfig(state_dir=args.state_dir, listen=args.listen,
                             ray_address=args.ray_address, max_concurrent=args.max_concurrent,
                             tokens=args.tokens, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             client_ca=args.client_ca, warm_runners=args.warm_runners,
                             data_roots=tuple(args.data_root),
                             allow_model_modules=tuple(args.allow_model_module),
                             limits=limits, metrics_listen=args.metrics_listen,
                             job_nice=args.job_nice))


def _cmd_submit(args: argparse.Namespace) -> int:
    text = _spec_text(args.spec, args.overrides)
    with _client(args) as client:
        job = client.submit(text, idempotency_key=args.idempotency_key)
        print(job.id, flush=True)
        return _watch(client, job.id) if args.watch else 0


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _cmd_jobs(args: argparse.Namespace) -> int:
    from fedcollab.service.client import job_to_dict

    with _client(args) as client:
        found: list[Any] = []
        token = ""
        while len(found) < args.limit:
            page = client.list(states=args.state, page_size=min(500, args.limit - len(found)),
                               page_token=token)
            found.extend(page.jobs)
            token = page.next_page_token
            if not token:
                break
    if args.json:
        for job in found:
            print(json.dumps(job_to_dict(job)))
        return 0
    rows = [(j.id, job_to_dict(j)["state"], f"{j.rounds_completed}/{j.rounds}", j.kind,
             j.name, j.owner, _when(j.created_unix)) for j in found]
    header = ("ID", "STATE", "ROUNDS", "KIND", "NAME", "OWNER", "CREATED")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from fedcollab.service.client import job_to_dict

    with _client(args) as client:
        info = job_to_dict(client.get(args.id))
    if args.json:
        print(json.dumps(info))
    else:
        line = f"{info['id']}  {info['state']}  round {info['rounds_completed']}/{info['rounds']}"
        line += f"  {info['kind']} {info['name']} (owner {info['owner']})"
        if info["error"]:
            line += f"\n  error: {info['error']}"
        print(line)
    return 0 if info["state"] != "FAILED" else 1


def _watch(client: Any, job_id: str, reconnect: float = RECONNECT_SECONDS) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from fedcollab._proto.fedcollab.v1 import jobs_pb2

    console = Console(stderr=True)
    state, error = "", ""
    with Progress(TextColumn(f"[bold]{job_id}"), TextColumn("{task.fields[state]}"),
                  MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[metric]}"),
                  console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task("rounds", total=None, state="", metric="")
        def lost(why: str) -> None:
            print(f"fedcollab: {why}; reconnecting for up to {reconnect:g} s",
                  file=sys.stderr, flush=True)

        for event in client.watch(job_id, reconnect_seconds=reconnect, on_reconnect=lost):
            job = event.job
            bar.update(task, total=job.rounds or None, completed=job.rounds_completed)
            if event.HasField("state"):
                state = jobs_pb2.JobState.Name(event.state.state)
                error = event.state.error
                bar.update(task, state=state)
            elif event.HasField("round"):
                m = event.round.metrics
                metric = (f"acc {m['accuracy']:.3f}" if "accuracy" in m
                          else f"loss {m.get('loss', float('nan')):.4f}")
                bar.update(task, completed=event.round.round, metric=metric)
                if not console.is_terminal:
                    print(f"{job_id} round {event.round.round}/{event.round.rounds} {metric}",
                          file=sys.stderr, flush=True)
    print(f"{job_id} {state}" + (f": {error}" if error else ""), flush=True)
    return 0 if state == "SUCCEEDED" else 1


def _cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.reconnect < 0:
            raise ServiceUsageError(f"--reconnect {args.reconnect:g}: give seconds >= 0")
        return _watch(client, args.id, args.reconnect)


def _cmd_logs(args: argparse.Namespace) -> int:
    if args.offset < 0:
        raise ServiceUsageError(f"--offset {args.offset}: give a byte offset >= 0")
    out = sys.stdout.buffer
    with _client(args) as client:
        for data in client.logs(args.id, offset=args.offset, follow=args.follow):
            out.write(data)
            out.flush()
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from fedcollab.service.client import job_to_dict

    with _client(args) as client:
        info = job_to_dict(client.cancel(args.id))
    print(f"{info['id']} {info['state']}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    name = args.artifact.strip("/") if args.artifact else args.artifact
    is_dir = name in ("release", "plots")
    out = args.output or Path(name if is_dir else Path(name).name)
    if is_dir:
        out.mkdir(parents=True, exist_ok=True)
    with _client(args) as client:
        written = client.fetch(args.id, name, out)
    for path in written:
        print(path)
    return 0


def _cmd_token_help(args: argparse.Namespace) -> int:
    raise ServiceUsageError("token: say what to do, e.g. `fedcollab token new --name ci "
                            "--role submitter --tokens tokens.yaml` or `fedcollab token revoke "
                            "--name ci --tokens tokens.yaml`")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """'90d', '12h', '30m', '45s' or plain seconds."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:], 0) if raw else 0
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ServiceUsageError(f"--expires-in {text!r}: expected a duration like 90d, 12h, "
                                "30m or seconds")
    return value


def _cmd_token_new(args: argparse.Namespace) -> int:
    from fedcollab.service.auth import new_token

    token = new_token(args.tokens, name=args.name, role=args.role,
                      expires_in=_duration(args.expires_in) if args.expires_in else None,
                      data_roots=args.data_root, priority=args.priority,
                      max_running=args.max_running)
    print(token)
    print(f"token {args.name!r} ({args.role}) added to {args.tokens} as a sha256 hash; it is "
          "shown only this once", file=sys.stderr)
    return 0


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    from fedcollab.service.auth import revoke_token

    removed = revoke_token(args.tokens, name=args.name)
    print(f"token {args.name!r} revoked ({removed} entr{'y' if removed == 1 else 'ies'} removed "
          f"from {args.tokens})", file=sys.stderr)
    return 0


def _cmd_certs_help(args: argparse.Namespace) -> int:
    raise ServiceUsageError("certs: say what to do: `fedcollab certs init --dir DIR` or "
                            "`fedcollab certs issue --dir DIR --name NAME "
                            "--server|--client|--party`")


def _cmd_certs_init(args: argparse.Namespace) -> int:
    from fedcollab.service.certs import fingerprint, init_ca

    files = init_ca(args.dir)
    print(f"CA: {files.cert} (key {files.key}, mode 0600)")
    # what a vendor's silo policy lists under trusted_cas to trust this CA's parties
    print(f"CA sha256: {fingerprint(Path(files.cert).read_bytes())}")
    return 0


def _cmd_certs_issue(args: argparse.Namespace) -> int:
    from fedcollab.service.certs import issue_cert

    files = issue_cert(args.dir, name=args.name, server=args.server, hosts=args.host,
                       party=args.party, days=args.days)
    kind = "party" if args.party else "server" if args.server else "client"
    print(f"{kind} certificate: {files.cert} "
          f"(key {files.key}, mode 0600)")
    return 0
