"""deploy/kuberay/service.yaml: the job service's manifests agree with the CLI, pass the
restricted Pod Security Standard (a pure check of its rules), expose only what they
must, and say which KubeRay they need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedcollab.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "service.yaml"


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the Kubernetes 'restricted' Pod Security Standard (v1.30) forbids here."""
    out = []
    pod_ctx = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(flag)
    allowed = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed:
            out.append(f"volume {volume['name']}: {sorted(kinds - allowed)}")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        ctx = c.get("securityContext", {})
        name = c["name"]
        if ctx.get("privileged"):
            out.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(ctx.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities")
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile")
        if any("hostPort" in p for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


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


def test_restricted_check_finds_what_it_must() -> None:
    pod = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }

    found = " ".join(restricted_violations(pod))

    for word in (
        "hostNetwork",
        "hostPath",
        "privileged",
        "allowPrivilegeEscalation",
        "drop ALL",
        "runAsNonRoot",
        "seccompProfile",
    ):
        assert word in found


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
