"""The cross-silo commands: ``fedcollab silo serve`` (the vendor's gateway),
``fedcollab silo pending`` / ``fedcollab silo approve JOB`` (offers waiting for a
human), ``fedcollab silo audit verify FILE`` and ``fedcollab silo policy hash FILE``.

Registered into ``fedcollab``'s parser by :func:`add_silo_commands`; handlers import
nothing heavy (no TensorFlow, Ray or grpc) and raise FedcollabError subclasses,
which ``fedcollab.cli.main`` prints as one line.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any, Callable

from fedcollab.service.cli import add_command
from fedcollab.silo.errors import PolicyError, SiloUsageError

__all__ = ["add_silo_commands", "EXAMPLES"]

EXAMPLES = {
    "serve": "fedcollab silo serve --policy vendor-policy.yaml --spec job.yaml "
             "--coordinator coord.example:7443 --coordinator-name coordinator "
             "--cert pki/vendor.pem --key pki/vendor.key --coordinator-ca pki/ca.pem "
             "--trusted-ca pki/ca.pem --state-dir vendor-state",
    "silo": "fedcollab silo audit verify vendor/audit.jsonl",
    "audit": "fedcollab silo audit verify vendor/audit.jsonl",
    "policy": "fedcollab silo policy hash vendor-policy.yaml",
    "pending": "fedcollab silo pending --state-dir vendor-state",
    "approve": "fedcollab silo approve job-7 --state-dir vendor-state --expect 3f2a9c",
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
                              "`fedcollab silo pending`, `fedcollab silo approve JOB`, "
                              "`fedcollab silo audit verify FILE` or `fedcollab silo policy "
                              "hash FILE`"),
                       EXAMPLES["silo"])
    silo_sub = silo.add_subparsers(dest="silo_command", metavar="ACTION",
                                   parser_class=type(silo))
    serve = add_command(silo_sub, "serve", "run the vendor's gateway: dial out to the coordinator "
                        "over mutual TLS, decide every frame by the policy and, with --spec, "
                        "train and mask the vendor's sites on the vendor's own Ray (an embedded "
                        "local one, or --ray-address): a worker per vendor group (or per site, "
                        "--worker-per-site), which gets neither the key nor the coordinator's "
                        "address; a site lost mid-round is a dropout the secure sum recovers, "
                        "and is recreated for the next round",
                        _cmd_serve, EXAMPLES["serve"])
    serve.add_argument("--policy", type=Path, required=True, help="vendor-policy.yaml")
    serve.add_argument("--coordinator", required=True, help="the coordinator's HOST:PORT")
    serve.add_argument("--cert", type=Path, required=True,
                       help="this party's certificate (`fedcollab certs issue --party`)")
    serve.add_argument("--key", type=Path, required=True, help="its key (mode 0600)")
    serve.add_argument("--coordinator-ca", type=Path, required=True,
                       help="the CA the coordinator's certificate must chain to (pinned)")
    serve.add_argument("--idle-timeout", type=float, default=None,
                       help="between rounds, drop the link when no frame came for this many "
                            "seconds (a black-holed link; with --reconnect the gateway dials "
                            "again). Default: wait without end")
    serve.add_argument("--coordinator-name", default="coordinator",
                       help="the party the coordinator's certificate must name (default "
                            "coordinator): checked in the TLS handshake instead of the "
                            "address's host name, and every frame's sender must be it, so "
                            "another leaf of the pinned CA (another vendor's) cannot pose "
                            "as the coordinator. An empty value accepts any certificate of "
                            "the pinned CA valid for the address")
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
    serve.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                       help="with --spec: run the sites on this existing Ray cluster of the "
                            "vendor's (auto, HOST:PORT or ray://HOST:PORT; joined as "
                            "`fedcollab run --address` joins one). Default: an embedded local "
                            "Ray, started and stopped with the gateway")
    serve.add_argument("--token-file", default=None,
                       help="with --ray-address: the cluster head's Ray auth token file "
                            "(default: RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    serve.add_argument("--transport", choices=("ray", "inprocess"), default="ray",
                       help="with --spec: where the sites run: the vendor's Ray (default) or "
                            "this process (no Ray: small jobs, debugging)")
    serve.add_argument("--worker-per-site", action="store_true",
                       help="with the ray transport: each site on a Ray worker of its own, so "
                            "losing one loses that site alone (a dropout the secure sum "
                            "recovers); default: a group's sites share one worker, a Ray call "
                            "per stage fewer per site (docs/cross-silo.md)")
    serve.add_argument("--timeout", type=float, default=None,
                       help="end each connection after this many seconds (default: none)")
    serve.add_argument("--reconnect", action="store_true",
                       help="when the link is lost (coordinator restarted or unreachable, a "
                            "round's deadline passed) dial again with exponential backoff, "
                            "re-reading --cert/--key (a rotated certificate is picked up)")
    serve.add_argument("--max-attempts", type=int, default=None,
                       help="with --reconnect: give up after this many failed dials in a row "
                            "(default: never)")
    serve.add_argument("--backoff-initial", type=float, default=0.5,
                       help="with --reconnect: the first delay's ceiling in seconds (default "
                            "0.5); it doubles per failure, and each delay is drawn uniformly "
                            "below its ceiling (full jitter)")
    serve.add_argument("--backoff-max", type=float, default=30.0,
                       help="with --reconnect: the largest delay's ceiling (default 30)")
    serve.add_argument("--deadline-grace", type=float, default=5.0,
                       help="seconds past a round's deadline_unix the gateway still waits for "
                            "the coordinator before it drops the link (default 5)")
    pending = add_command(silo_sub, "pending", "list the offers waiting for `silo approve`: "
                          "job, offer hash and the offer's terms", _cmd_pending,
                          EXAMPLES["pending"])
    pending.add_argument("--state-dir", type=Path, default=Path("silo-state"),
                         help="the gateway's --state-dir (default ./silo-state)")
    pending.add_argument("--json", action="store_true",
                         help="one JSON object per pending offer, its full typed content")
    approve = add_command(silo_sub, "approve", "approve the offer pending for JOB: its exact "
                          "hash is recorded (approvals.json, audited) and the gateway accepts "
                          "that offer the next time it arrives; a changed offer waits again",
                          _cmd_approve, EXAMPLES["approve"])
    approve.add_argument("job", help="the job id (`fedcollab silo pending` lists them)")
    approve.add_argument("--state-dir", type=Path, default=Path("silo-state"),
                         help="the gateway's --state-dir (default ./silo-state)")
    approve.add_argument("--expect", default="",
                         help="the offer hash (or a prefix) you reviewed: refuse if the "
                              "pending offer is another one")
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
    from fedcollab.silo.redial import Backoff

    if args.max_attempts is not None and args.max_attempts < 1:
        raise SiloUsageError(f"silo serve: --max-attempts {args.max_attempts}: must be >= 1")
    if not 0 < args.backoff_initial <= args.backoff_max:
        raise SiloUsageError(f"silo serve: --backoff-initial {args.backoff_initial} and "
                          f"--backoff-max {args.backoff_max}: need 0 < initial <= max")
    if args.idle_timeout is not None and not args.idle_timeout > 0:
        raise SiloUsageError(f"silo serve: --idle-timeout {args.idle_timeout}: must be > 0")
    if not args.deadline_grace >= 0:
        raise SiloUsageError(f"silo serve: --deadline-grace {args.deadline_grace}: must be >= 0")
    if (args.ray_address or args.token_file) and (args.spec is None
                                                   or args.transport != "ray"):
        raise SiloUsageError("silo serve: --ray-address and --token-file need --spec and the "
                             "ray transport (the sites run on Ray only then)")
    if args.worker_per_site and (args.spec is None or args.transport != "ray"):
        raise SiloUsageError("silo serve: --worker-per-site needs --spec and the ray transport "
                             "(the sites run on Ray workers only then)")
    policy = load_policy(args.policy)
    with contextlib.ExitStack() as stack:
        vendor = None
        if args.spec is not None:
            vendor = _vendor(args, policy.party, stack)
        gateway = Gateway(policy=policy, coordinator=args.coordinator,
                          cert=args.cert, key=args.key, coordinator_ca=args.coordinator_ca,
                          trusted_cas=args.trusted_ca, state_dir=args.state_dir,
                          deadline_grace=args.deadline_grace,
                          coordinator_name=args.coordinator_name or None,
                          idle_timeout=args.idle_timeout, vendor=vendor)
        try:
            report = gateway.serve(reconnect=args.reconnect, max_attempts=args.max_attempts,
                                   backoff=Backoff(initial=args.backoff_initial,
                                                   maximum=args.backoff_max),
                                   timeout=args.timeout)
        finally:
            gateway.close()  # the sites' workers end before the vendor's Ray does
    print(f"{report.party}: {report.frames} frame(s): {report.allowed} allowed, "
          f"{report.refused} refused, {report.pending} pending approval; audit in "
          f"{args.state_dir / 'audit.jsonl'}")
    return 0


def _vendor(args: argparse.Namespace, party: str,
            stack: contextlib.ExitStack) -> Callable[[str], Any]:
    """What builds the vendor's sites for the gateway: on the vendor's Ray (embedded,
    declaring the CPUs and custom resources its workers need, or the cluster at
    --ray-address, joined through the cluster package's connect path), or in this
    process (--transport inprocess)."""
    import math
    import os

    from fedcollab.silo.errors import SiloError
    from fedcollab.silo.vendor import site_plan, vendor_pids
    from fedcollab.spec import load_spec

    spec = load_spec(args.spec)  # bad input: one line, exit 2, before Ray or TensorFlow load
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pids = vendor_pids(spec, args.group)
    if not pids:
        raise SiloError(f"silo: the spec {spec.name!r} has no vendor group to host "
                        "(role: vendor, or --group NAME)")
    ray = None
    if args.transport == "ray":
        from fedcollab.cluster.connect import connect, use_token_file

        if args.token_file:
            use_token_file(args.token_file)
        plan = site_plan(spec, pids, per_site=args.worker_per_site)
        custom: dict[str, float] = {}
        for resources, _ in plan:
            for key, amount in resources.items():
                custom[key] = custom.get(key, 0.0) + amount
        cpus = max(os.cpu_count() or 1,
                   math.ceil(len(plan) * (spec.resources.cpus_per_worker or 1.0)))
        # an embedded Ray binds loopback only: the gateway stays the vendor's one way out
        ray = stack.enter_context(connect(args.ray_address, resources=custom, num_cpus=cpus,
                                          loopback=True))

    def vendor(own_ca: str) -> Any:
        from fedcollab.silo.vendor import VendorHost

        return VendorHost(spec, party=party, work_dir=args.state_dir / "work",
                          groups=args.group, own_ca=own_ca, ray=ray,
                          worker_per_site=args.worker_per_site)
    return vendor


def _cmd_pending(args: argparse.Namespace) -> int:
    import json

    from fedcollab.silo.approvals import list_pending

    rows = list_pending(args.state_dir)
    for row in rows:
        if args.json:
            print(json.dumps(row.to_json(), sort_keys=True))
            continue
        offer = row.offer
        print(f"{row.job_id}  offer {row.offer_sha256}  model {offer.model_name} "
              f"({offer.model_sha256[:12]})  {offer.rounds} rounds  layers "
              f"{','.join(offer.layers)}  {offer.secagg.protocol}  dp noise "
              f"{offer.dp.noise_multiplier:g} clip {offer.dp.clip_norm:g}")
    if not rows and not args.json:
        print(f"no offers pending in {args.state_dir}")
    return 0


def _cmd_approve(args: argparse.Namespace) -> int:
    from fedcollab.silo.approvals import approve_offer

    row = approve_offer(args.state_dir, args.job, expect=args.expect)
    print(f"approved job {row.job_id}: offer {row.offer_sha256} (model "
          f"{row.offer.model_name}, {row.offer.rounds} rounds); the gateway accepts it the "
          "next time the coordinator offers it")
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
    from fedcollab.silo.terms import weights_architecture_sha256
    from fedcollab.worker.models import build_checked_model, weight_layers
    from fedcollab.worker.training import configure_tensorflow

    configure_tensorflow(threads=1, deterministic=True)
    model = build_checked_model(spec, load_federation(spec))
    weights = model.get_weights()
    print(weights_architecture_sha256(spec.task.model, weight_layers(model), weights))
    return 0
