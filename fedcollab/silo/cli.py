"""The cross-silo commands: ``fedcollab silo audit verify FILE`` and
``fedcollab silo policy hash FILE``.

Registered into ``fedcollab``'s parser by :func:`add_silo_commands`; handlers import
nothing heavy (no TensorFlow, Ray or grpc) and raise FedcollabError subclasses,
which ``fedcollab.cli.main`` prints as one line.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from fedcollab.silo.errors import PolicyError

__all__ = ["add_silo_commands", "EXAMPLES"]

EXAMPLES = {
    "silo": "fedcollab silo audit verify vendor/audit.jsonl",
    "audit": "fedcollab silo audit verify vendor/audit.jsonl",
    "policy": "fedcollab silo policy hash vendor-policy.yaml",
}


def _add(sub: Any, name: str, help_text: str, handler: Callable[[argparse.Namespace], int],
         example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_handler=handler)
    return parser


def _usage(words: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise PolicyError(words)

    return handler


def add_silo_commands(sub: Any) -> None:
    """Add ``fedcollab silo ...`` to `fedcollab`'s subparsers."""
    silo = _add(sub, "silo", "cross-silo: the vendor's gateway, its policy and audit log "
                "(docs/cross-silo.md)",
                _usage("silo: say what to do: `fedcollab silo audit verify FILE` or "
                       "`fedcollab silo policy hash FILE`"), EXAMPLES["silo"])
    silo_sub = silo.add_subparsers(dest="silo_command", metavar="ACTION",
                                   parser_class=type(silo))
    audit = _add(silo_sub, "audit", "the gateway's hash-chained audit.jsonl",
                 _usage("silo audit: say what to do: `fedcollab silo audit verify FILE`"),
                 EXAMPLES["audit"])
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION",
                                     parser_class=type(audit))
    verify = _add(audit_sub, "verify", "check the chain: one line, exit 0 if intact, 1 if not",
                  _cmd_audit_verify, EXAMPLES["audit"])
    verify.add_argument("file", type=Path, help="audit.jsonl")
    policy = _add(silo_sub, "policy", "the vendor's policy file",
                  _usage("silo policy: say what to do: `fedcollab silo policy hash FILE`"),
                  EXAMPLES["policy"])
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION",
                                       parser_class=type(policy))
    digest = _add(policy_sub, "hash", "check a policy and print its policy_sha256",
                  _cmd_policy_hash, EXAMPLES["policy"])
    digest.add_argument("file", type=Path, help="vendor-policy.yaml")


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from fedcollab.silo.audit import verify_audit

    head = verify_audit(args.file)
    print(f"ok: {args.file}: {head.entries} entries, chain head {head.head}")
    return 0


def _cmd_policy_hash(args: argparse.Namespace) -> int:
    from fedcollab.silo.policy import load_policy

    print(load_policy(args.file).sha256)
    return 0
