"""The cross-silo commands: ``fedcollab silo serve`` (the vendor's gateway),
``fedcollab silo audit verify FILE`` and ``fedcollab silo policy hash FILE``.

Registered into ``fedcollab``'s parser by :func:`add_silo_commands`; handlers import
nothing heavy (no TensorFlow, Ray or grpc) and raise FedcollabError subclasses,
which ``fedcollab.cli.main`` prints as one line.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from fedcollab.service.cli import add_command
from fedcollab.silo.errors import PolicyError

__all__ = ["add_silo_commands", "EXAMPLES"]

EXAMPLES = {
    "serve": "fedcollab silo serve --policy vendor-policy.yaml --spec job.yaml "
             "--coordinator coord.example:7443 --cert pki/vendor.pem --key pki/vendor.key "
             "--coordinator-ca pki/ca.pem --trusted-ca pki/ca.pem --state-dir vendor-state",
    "silo": "fedcollab silo audit verify vendor/audit.jsonl",
    "audit": "fedcollab silo audit verify vendor/audit.jsonl",
    "policy": "fedcollab silo policy hash vendor-policy.yaml",
    "model-hash": "fedcollab silo model-hash examples/community-vendor.yaml",
}




def _usage(words: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise PolicyError(words)

    return handler


def add_silo_commands(sub: Any) -> None:
    """Add ``fedcollab silo ...`` to `fedcollab`'s subparsers."""
    silo = add_command(sub, "silo", "cross-silo: the vendor's gateway, its policy and audit log "
                       "(docs/cross-silo.md)",
                       _usage("silo: say what to do: `fedcollab silo serve ...`, "
                              "`fedcollab silo audit verify FILE` or `fedcollab silo policy "
                              "hash FILE`"),
                       EXAMPLES["silo"])
    silo_sub = silo.add_subparsers(dest="silo_command", metavar="ACTION",
                                   parser_class=type(silo))
    serve = add_command(silo_sub, "serve", "run the vendor's gateway: dial out to the coordinator "
                        "over mutual TLS, decide every frame by the policy and, with --spec, "
                        "train and mask the vendor's participants", _cmd_serve, EXAMPLES["serve"])
    serve.add_argument("--policy", type=Path, required=True, help="vendor-policy.yaml")
    serve.add_argument("--coordinator", required=True, help="the coordinator's HOST:PORT")
    serve.add_argument("--cert", type=Path, required=True,
                       help="this party's certificate (`fedcollab certs issue --party`)")
    serve.add_argument("--key", type=Path, required=True, help="its key (mode 0600)")
    serve.add_argument("--coordinator-ca", type=Path, required=True,
                       help="the CA the coordinator's certificate must chain to (pinned)")
    serve.add_argument("--trusted-ca", type=Path, action="append", default=[],
                       help="a CA whose identities count toward min_group; its sha256 must be "
                            "in the policy's trusted_cas (repeatable)")
    serve.add_argument("--state-dir", type=Path, default=Path("silo-state"),
                       help="state.json and audit.jsonl (default ./silo-state)")
    serve.add_argument("--spec", type=Path, default=None,
                       help="the vendor's own copy of the job spec (its data, model and "
                            "training): with it the gateway trains, masks and answers secure "
                            "stages for what its policy allows; without, it only decides")
    serve.add_argument("--group", action="append", default=[],
                       help="a spec group this vendor hosts (repeatable; default: role vendor)")
    serve.add_argument("--timeout", type=float, default=None,
                       help="end the connection after this many seconds (default: none)")
    audit = add_command(silo_sub, "audit", "the gateway's hash-chained audit.jsonl",
                        _usage("silo audit: say what to do: `fedcollab silo audit verify FILE`"),
                        EXAMPLES["audit"])
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION",
                                     parser_class=type(audit))
    verify = add_command(audit_sub, "verify",
                         "check the chain: one line, exit 0 if intact, 1 if not",
                         _cmd_audit_verify, EXAMPLES["audit"])
    verify.add_argument("file", type=Path, help="audit.jsonl")
    policy = add_command(silo_sub, "policy", "the vendor's policy file",
                         _usage("silo policy: say what to do: `fedcollab silo policy hash FILE`"),
                         EXAMPLES["policy"])
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION",
                                       parser_class=type(policy))
    digest = add_command(policy_sub, "hash", "check a policy and print its policy_sha256",
                         _cmd_policy_hash, EXAMPLES["policy"])
    digest.add_argument("file", type=Path, help="vendor-policy.yaml")
    model = add_command(silo_sub, "model-hash", "build a spec's model here and print its "
                        "architecture hash (what approved_models lists)", _cmd_model_hash,
                        EXAMPLES["model-hash"])
    model.add_argument("spec", type=Path, help="the job spec (.yaml)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from fedcollab.silo.gateway import Gateway
    from fedcollab.silo.policy import load_policy

    policy = load_policy(args.policy)
    vendor = None
    if args.spec is not None:
        import os

        from fedcollab.spec import load_spec

        spec = load_spec(args.spec)  # bad input: one line, exit 2, before TensorFlow loads
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

        def vendor(own_ca: str) -> Any:
            from fedcollab.silo.vendor import VendorHost

            return VendorHost(spec, party=policy.party, work_dir=args.state_dir / "work",
                              groups=args.group, own_ca=own_ca)

    gateway = Gateway(policy=policy, coordinator=args.coordinator,
                      cert=args.cert, key=args.key, coordinator_ca=args.coordinator_ca,
                      trusted_cas=args.trusted_ca, state_dir=args.state_dir, vendor=vendor)
    try:
        report = gateway.run(timeout=args.timeout)
    finally:
        gateway.close()
    print(f"{report.party}: {report.frames} frame(s): {report.allowed} allowed, "
          f"{report.refused} refused, {report.pending} pending approval; audit in "
          f"{args.state_dir / 'audit.jsonl'}")
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from fedcollab.silo.audit import verify_audit

    head = verify_audit(args.file)
    print(f"ok: {args.file}: {head.entries} entries, chain head {head.head}")
    return 0


def _cmd_policy_hash(args: argparse.Namespace) -> int:
    from fedcollab.silo.policy import load_policy

    print(load_policy(args.file).sha256)
    return 0


def _cmd_model_hash(args: argparse.Namespace) -> int:
    import os

    from fedcollab.spec import load_spec

    spec = load_spec(args.spec)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fedcollab.data import load_federation
    from fedcollab.silo.terms import architecture_sha256
    from fedcollab.worker.models import build_checked_model, weight_layers
    from fedcollab.worker.training import configure_tensorflow

    configure_tensorflow(threads=1, deterministic=True)
    model = build_checked_model(spec, load_federation(spec))
    weights = model.get_weights()
    print(architecture_sha256(spec.task.model, weight_layers(model), [w.shape for w in weights],
                              [str(w.dtype) for w in weights]))
    return 0
