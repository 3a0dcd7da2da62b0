"""`fedcollab ...`: the command-line entry point.

``--help``, ``validate`` and ``verify`` answer at once: they never import
TensorFlow or Ray (``run`` imports them lazily). Exit codes: 0 ok, 1 failure,
2 bad input, 130 Ctrl-C, 143 SIGTERM (``run``'s output directory stays resumable).
Anything a user can cause is one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from fedcollab.errors import FedcollabError, Terminated, raise_on_sigterm
from fedcollab.types import GRADE_BUDGETS

__all__ = ["main", "entry", "build_parser"]

EXAMPLES = {
    "run": "fedcollab run examples/community-vendor.yaml --out runs/demo --set rounds=5",
    "validate": "fedcollab validate examples/community-vendor.yaml --deep --set rounds=5",
    "verify": "fedcollab verify runs/demo/release --public-key publisher.pem",
    "grade": "fedcollab grade examples/community-vendor.yaml --budget fast --out runs/grade",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _command(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text,
                          epilog=f"example:\n  {EXAMPLES[name]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="job spec (.yaml, .yml or .json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="PATH=VALUE",
                        help="override a field, e.g. rounds=5 or participants.0.count=20")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedcollab", description=(
        "Federated collaborations between open community contributors and a proprietary "
        "vendor, on Ray, graded for the privacy and security they cost."),
        epilog="example:\n  " + EXAMPLES["run"],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = _command(sub, "run", "run a collaboration job (embedded local Ray unless --address)")
    _spec_args(run)
    run.add_argument("--out", type=Path, default=None,
                     help="output directory (default runs/<name>-<UTC timestamp>/)")
    run.add_argument("--address", default=None,
                     help="Ray cluster address: auto, HOST:PORT or ray://HOST:PORT")
    run.add_argument("--token-file", default=None,
                     help="the cluster head's Ray auth token file (default: RAY_AUTH_TOKEN_PATH, "
                          "RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    run.add_argument("--quiet", action="store_true",
                     help="no progress (a bar on a terminal, else a line per round)")
    run.add_argument("--resume", action="store_true",
                     help="continue from the last checkpoint in --out")
    run.add_argument("--transport", choices=("ray", "inprocess"), default="ray",
                     help="where the job's own participants run: Ray (default) or this "
                          "process (no Ray: small jobs, debugging)")
    silo = run.add_argument_group(
        "cross-silo", "the vendor's participants run on its own infrastructure and are reached "
        "over a mutual-TLS link its gateway dials (`fedcollab silo serve`, docs/cross-silo.md)")
    silo.add_argument("--silo-listen", default=None, metavar="HOST:PORT",
                      help="serve the silo link here (port 0: a free one, printed on stderr); "
                           "the vendor group's participants are then remote")
    silo.add_argument("--silo-cert", type=Path, default=None,
                      help="the coordinator's party certificate (`fedcollab certs issue --party`)")
    silo.add_argument("--silo-key", type=Path, default=None, help="its key")
    silo.add_argument("--silo-ca", type=Path, default=None,
                      help="the CA the vendor's certificate must chain to")
    silo.add_argument("--silo-party", default="vendor",
                      help="the vendor's party name (its certificate's; default vendor)")
    silo.add_argument("--silo-group", action="append", default=[],
                      help="a spec group the vendor hosts (repeatable; default: role vendor)")
    silo.add_argument("--silo-wait", type=float, default=300.0,
                      help="seconds to wait for the vendor to join and answer the offer")
    silo.add_argument("--silo-deadline", type=float, default=300.0,
                      help="seconds a round waits for the vendor before it aborts (model "
                           "unchanged)")
    silo.add_argument("--silo-record", type=Path, default=None,
                      help="append every byte received on the link to this file (evidence of "
                           "what the vendor sent)")

    validate = _command(sub, "validate", "check a job spec without running it")
    _spec_args(validate)
    validate.add_argument("--json", action="store_true", help="print the resolved spec as JSON")
    validate.add_argument("--deep", action="store_true",
                          help="also build the model (imports TensorFlow) and check its layers "
                               "and shapes against the data")

    verify = _command(sub, "verify", "check a release's hashes and Ed25519 signature")
    verify.add_argument("release_dir", type=Path, help="the release/ directory of a job")
    verify.add_argument("--public-key", default=None,
                        help="the publisher's Ed25519 public key (PEM) to check the signer")
    grade = _command(sub, "grade", "run the task under each policy mix, attack each and write "
                     "scorecard.{json,md,html}")
    grade.add_argument("spec", help="job spec (.yaml, .yml or .json)")
    grade.add_argument("--mixes", default="all",
                       help="all, or comma-separated names: open, secure-vendor, secure-all, "
                            "secure-vendor-dp, private-layers, robust-median, or the spec's "
                            "grading.mixes")
    grade.add_argument("--priority", default="balanced",
                       choices=["privacy", "utility", "cost", "balanced"],
                       help="what the recommendation weighs most (default balanced)")
    grade.add_argument("--budget", default="fast", choices=GRADE_BUDGETS,
                       help="attack effort: fast (minutes), standard (fast plus the "
                            "privacy-utility frontier sweep) or full (see docs/grading.md)")
    grade.add_argument("--out", type=Path, default=None,
                       help="output directory (default runs/<name>-grade-<UTC timestamp>/)")
    grade.add_argument("--address", default=None,
                       help="Ray cluster address: auto, HOST:PORT or ray://HOST:PORT")
    grade.add_argument("--quiet", action="store_true", help="no progress bar")

    from fedcollab.service.cli import add_service_commands  # the job service (no grpc import)

    add_service_commands(sub)
    from fedcollab.silo.cli import add_silo_commands  # cross-silo (no grpc import)

    add_silo_commands(sub)
    return parser


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fedcollab.spec import load_spec

    return load_spec(args.spec, args.overrides, seed=args.seed)


def _cmd_validate(args: argparse.Namespace) -> int:
    from fedcollab.job.preflight import preflight, spec_warnings
    from fedcollab.spec import spec_to_dict

    spec = _load(args)
    facts = preflight(spec)
    for warning in spec_warnings(spec):
        print(f"fedcollab: warning: {warning}", file=sys.stderr, flush=True)
    if args.deep:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from fedcollab.job.run import _Driver

        _Driver.build(spec)
    if args.json:
        print(json.dumps(spec_to_dict(spec), indent=2))
    else:
        print(f"ok: {spec.name}: {spec.total_participants} participants in "
              f"{len(spec.participants)} group(s), {spec.rounds} rounds, "
              f"{facts['train_samples']} training samples")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if not args.quiet and sys.stderr.isatty():
        print(f"fedcollab: reading {args.spec}", file=sys.stderr, flush=True)
    spec = _load(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fedcollab.job.outdir import JobAlreadyFinished
    from fedcollab.job.run import RunOptions, run_job

    if args.token_file:
        from fedcollab.cluster.connect import use_token_file

        use_token_file(args.token_file)

    try:
        result = run_job(spec, RunOptions(out_dir=args.out, address=args.address,
                                          quiet=args.quiet, resume=args.resume,
                                          transport=args.transport, remote=_silo(args)))
    except JobAlreadyFinished as done:
        print(f"fedcollab: {done}")
        return 0
    s = result.summary
    figure = (f"accuracy {s['final_accuracy']:.4f}" if s.get("final_accuracy") is not None
              else f"loss {s['final_loss']:.4f}")
    print(f"{spec.name}: {s['rounds_completed']} rounds, {figure}, "
          f"{s['rounds_seconds']:.2f} s in rounds{_epsilon_words(s['privacy'])} "
          f"-> {result.out_dir}")
    return 0


class UsageError(FedcollabError):
    """Command-line options that do not go together (bad input: exit 2)."""

    exit_code = 2


def _silo(args: argparse.Namespace) -> Any:
    """The remote participants `--silo-listen` asks for (None without it)."""
    given = [name for name in ("silo_cert", "silo_key", "silo_ca") if getattr(args, name)]
    if not args.silo_listen:
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --silo-listen")
        return None
    missing = [name for name in ("silo_cert", "silo_key", "silo_ca") if not getattr(args, name)]
    if missing:
        raise UsageError(f"--silo-listen needs --{missing[0].replace('_', '-')}")
    from fedcollab.silo.remote import SiloParticipants

    return SiloParticipants(listen=args.silo_listen, cert=args.silo_cert, key=args.silo_key,
                            client_ca=args.silo_ca, party=args.silo_party,
                            groups=args.silo_group, join_timeout=args.silo_wait,
                            deadline=args.silo_deadline, record=args.silo_record)


def _epsilon_words(privacy: dict) -> str:
    """``, epsilon 9.01 (server 9.01, outputs 9.01, release 6.37; add_remove, delta
    1e-05)`` for a DP job (empty otherwise): the figure per observer, docs/privacy.md."""
    by = privacy.get("epsilon_by_observer")
    if privacy.get("mode", "none") == "none" or not by:
        return ""

    def fig(value: object) -> str:
        return "unbounded" if value is None else f"{value:.3g}"

    names = {"server": "server", "outputs_reader": "outputs", "release_reader": "release"}
    each = ", ".join(f"{names[k]} {fig(v)}" for k, v in by.items() if k in names)
    stop = "; stopped by the budget" if privacy.get("budget_stop") else ""
    return (f", epsilon {fig(privacy.get('epsilon'))} ({each}; {privacy.get('adjacency')}, "
            f"delta {privacy.get('delta'):g}{stop})")


def _cmd_verify(args: argparse.Namespace) -> int:
    from fedcollab.job.release import verify_release

    result = verify_release(args.release_dir, public_key=args.public_key)
    if result.signer_checked:
        print(f"ok: {result.name}: {result.files} file(s) match the manifest; signed by the "
              "given public key")
    else:
        print(f"ok: {result.name}: {result.files} file(s) match the manifest and the signature "
              "matches the key shipped in the release; that proves integrity only (anyone can "
              "re-sign a release): pass the publisher's key with --public-key to check who "
              "signed it")
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    if getattr(args, "server", None):  # grade on a job service: a GradeJob there
        from fedcollab.service.cli import remote_grade

        return remote_grade(args)
    from fedcollab.spec import load_spec

    load_spec(args.spec)  # bad input: one line, exit 2, before TensorFlow or Ray load
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fedcollab.grading.runner import grade

    card = grade(args.spec, mixes=args.mixes, priority=args.priority, budget=args.budget,
                 out=args.out, address=args.address, progress=False if args.quiet else None)
    out = card.recommendation.get("mix")
    print(f"{card.spec}: {len(card.mixes)} mix(es) graded in {card.seconds:.0f} s; "
          f"Pareto front {', '.join(card.pareto_front)}; recommended {out} "
          f"-> {card.out_dir}/scorecard.html")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib import metadata

        print(metadata.version("fedcollab"))
        return 0
    if not args.command:
        parser.print_help()
        return 2
    handler = getattr(args, "_handler", None)  # the job service's commands carry their own
    if handler is None:
        handler = {"run": _cmd_run, "validate": _cmd_validate, "verify": _cmd_verify,
                   "grade": _cmd_grade}[args.command]
    if args.command in ("run", "grade"):
        raise_on_sigterm()  # a `kill` or a service's cancel ends the job cleanly
    try:
        return handler(args)
    except Terminated:
        resume = (f"; `fedcollab run {args.spec} --out {args.out} --resume` continues it"
                  if args.command == "run" and args.out else "")
        print(f"fedcollab: terminated (SIGTERM){resume}", file=sys.stderr, flush=True)
        return Terminated.exit_code
    except FedcollabError as err:
        print(f"fedcollab: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("fedcollab: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``fedcollab`` command: :func:`main`, then an exit that skips the
    interpreter's teardown.

    Once TensorFlow was loaded, Python's finalisation after the exit handlers took
    longer than the default job's rounds; with Ray and matplotlib alone (a job's
    driver, which no longer loads TensorFlow) it is still a visible share of a small
    job's wall time. Nothing is left to do by then. Every exit handler still runs
    (TensorFlow's removes its autograph files, Ray's, logging's): the last one to
    run, registered here before any of them, flushes the standard streams and ends
    the process with the command's code. ``main()`` itself (as tests call it
    in-process) exits nothing.
    """
    import atexit

    code: list[int] = []

    def leave() -> None:
        if code:
            import logging

            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code[0])

    atexit.register(leave)  # before the handlers the command registers: it runs last
    code.append(main())
    sys.exit(code[0])


if __name__ == "__main__":
    entry()
