"""deploy/kuberay/service.yaml: the job service's manifests agree with the CLI, pass the
restricted Pod Security Standard (tests/deploy/manifests.py checks its rules), expose
only what they must, and say which KubeRay they need. tests/deploy/ validates them
against the Kubernetes and KubeRay schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedcollab.cli import build_parser
from tests.deploy.manifests import restricted_violations

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "service.yaml"


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def test_service_manifest_kinds_and_one_replica_that_recreates() -> None:
    docs = _docs()
    deployment = docs["Deployment"]

    assert set(docs) == {"PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy"}
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 1  # the state dir is locked by one service
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_service_pod_passes_the_restricted_profile() -> None:
    pod = _docs()["Deployment"]["spec"]["template"]["spec"]

    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_args_parse_with_the_cli_and_use_tls_tokens_and_the_cluster() -> None:
    container = _docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    args = build_parser().parse_args(container["args"])

    assert container["command"] == ["fedcollab"] and args.command == "serve"
    assert str(args.tokens).startswith("/etc/fedcollab/tokens/")
    assert str(args.tls_cert).startswith("/etc/fedcollab/tls/") and args.tls_key
    assert args.ray_address == "fedcollab-head-svc:6379"  # raycluster.yaml's head service
    assert str(args.state_dir) in mounts and not mounts[str(args.state_dir)].get("readOnly")
    assert all(
        mounts[p]["readOnly"] for p in ("/etc/fedcollab/tokens", "/etc/fedcollab/tls", "/data")
    )
    assert [str(r) for r in args.data_root] == ["/data"]


def test_readiness_is_the_grpc_health_check_over_tls() -> None:
    container = _docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    command = container["readinessProbe"]["exec"]["command"]

    compile(command[2], "probe", "exec")
    assert command[:2] == ["python", "-c"]
    assert "secure_channel('localhost:50051'" in command[2]
    assert "fedcollab.v1.JobService" in command[2] and "SERVING" in command[2]


def test_service_and_network_policy_expose_only_the_service_ports() -> None:
    docs = _docs()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    policy = docs["NetworkPolicy"]["spec"]
    ports = {
        p["containerPort"]
        for p in docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    }

    assert docs["Service"]["spec"]["selector"] == labels
    assert policy["podSelector"]["matchLabels"] == labels
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == ports
    assert all(rule.get("from") for rule in policy["ingress"])  # never from everywhere


def test_kuberay_version_is_stated_as_at_least_1_5_1() -> None:
    for path in (
        MANIFEST,
        ROOT / "deploy" / "kuberay" / "raycluster.yaml",
        ROOT / "deploy" / "kuberay" / "rayjob.yaml",
        ROOT / "docs" / "cluster.md",
    ):
        text = path.read_text()
        assert "KubeRay >= 1.5.1" in text or "KubeRay operator >= 1.5.1" in text, path
