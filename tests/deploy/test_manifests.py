"""Every manifest under deploy/kuberay/ validates against the CRD schemas of KubeRay 1.5.1
(the floor: authOptions) and of the newest vendored release, and against the Kubernetes
schemas; its pods pass the restricted Pod Security Standard; a broken manifest fails."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy.manifests import (
    CRDS,
    KUBERAY_ANNOTATION,
    KUBERAY_FLOOR,
    KUBERAY_NEWEST,
    KUBERAY_TOO_OLD,
    ROOT,
    Manifest,
    crd_errors,
    load_manifests,
    manifest_errors,
    pod_templates,
    restricted_violations,
)

MANIFESTS = load_manifests()
DOCS = ROOT / "docs" / "deploy.md"


def _one(name: str) -> Manifest:
    """The one manifest of kind `name`, or `FILE:KIND` where the kind appears twice."""
    file, _, kind = name.rpartition(":")
    (found,) = [m for m in MANIFESTS
                if m.doc["kind"] == kind and (not file or m.path.name == file)]
    return found


def test_manifests_cover_the_cluster_the_job_and_the_service() -> None:
    kinds = sorted((m.path.name, m.doc["kind"]) for m in MANIFESTS)

    assert kinds == [
        ("networkpolicy.yaml", "NetworkPolicy"),
        ("raycluster.yaml", "RayCluster"),
        ("rayjob.yaml", "ConfigMap"),
        ("rayjob.yaml", "RayJob"),
        ("service.yaml", "Deployment"),
        ("service.yaml", "NetworkPolicy"),
        ("service.yaml", "PersistentVolumeClaim"),
        ("service.yaml", "Service"),
    ]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.where)
def test_manifest_validates_against_kuberay_floor_newest_and_kubernetes(
    manifest: Manifest,
) -> None:
    assert manifest_errors(manifest.doc) == []


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_1_5_0_refuses_auth_options_so_the_floor_is_1_5_1(kind: str) -> None:
    doc = _one(kind).doc

    errors = crd_errors(doc, KUBERAY_TOO_OLD)

    assert len(errors) == 1 and "'authOptions' was unexpected" in errors[0]
    assert crd_errors(doc, KUBERAY_FLOOR) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation: set the field at dotted `path` (list indices as numbers)."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = doc
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()
HEAD_POD = "spec.headGroupSpec.template.spec"
JOB_POD = "spec.rayClusterSpec.workerGroupSpecs.0.template.spec"
SERVE_POD = "spec.template.spec"

MUTATIONS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    ("RayCluster", "replicas a string", _set("spec.workerGroupSpecs.0.replicas", "two"),
     "'two' is not of type 'integer'"),
    ("RayCluster", "misspelt field", _set("spec.headGroupSpec.rayStartParam", {}),
     "'rayStartParam' was unexpected"),
    ("RayCluster", "misspelt container field",
     _set(f"{HEAD_POD}.containers.0.resourcez", {}), "'resourcez' was unexpected"),
    ("RayCluster", "auth mode unknown", _set("spec.authOptions.mode", "password"),
     "'password' is not one of"),
    ("RayCluster", "privilege escalation",
     _set(f"{HEAD_POD}.containers.0.securityContext.allowPrivilegeEscalation", True),
     "restricted: ray-head: allowPrivilegeEscalation"),
    ("RayJob", "misspelt field", _set("spec.shutdownAfterJobFinish", True),
     "'shutdownAfterJobFinish' was unexpected"),
    ("RayJob", "root worker", _set(f"{JOB_POD}.securityContext.runAsNonRoot", False),
     "restricted: ray-worker: runAsNonRoot"),
    ("RayJob", "submitter keeps capabilities",
     _set("spec.submitterPodTemplate.spec.containers.0.securityContext", {}),
     "restricted: ray-job-submitter: allowPrivilegeEscalation"),
    ("Deployment", "unconfined seccomp",
     _set(f"{SERVE_POD}.containers.0.securityContext.seccompProfile", {"type": "Unconfined"}),
     "restricted: serve: seccompProfile"),
    ("Deployment", "misspelt probe field",
     _set(f"{SERVE_POD}.containers.0.readinessProbe.exec.comand", ["true"]),
     "'comand' was unexpected"),
    ("Deployment", "hostPath volume", _set(f"{SERVE_POD}.volumes.0", {
        "name": "state", "hostPath": {"path": "/var/lib/fedcollab"}}),
     "restricted: volume state: ['hostPath']"),
    ("Deployment", "no selector", _set("spec.selector", _DELETE), "'selector' is a required"),
    ("Service", "port a name", _set("spec.ports.0.port", "grpc"), "'grpc' is not of type"),
    ("service.yaml:NetworkPolicy", "policy types a string", _set("spec.policyTypes", "Ingress"),
     "'Ingress' is not of type 'array'"),
    ("RayCluster", "old API version", _set("apiVersion", "ray.io/v1alpha1"),
     "unknown apiVersion/kind"),
    ("RayCluster", "version below the floor",
     lambda doc: doc["metadata"]["annotations"].update({KUBERAY_ANNOTATION: ">=1.5.0"}),
     KUBERAY_ANNOTATION),
]


@pytest.mark.parametrize(("kind", "what", "mutate", "expected"), MUTATIONS,
                         ids=[f"{k}-{w}" for k, w, _, _ in MUTATIONS])
def test_a_broken_manifest_fails_validation(
    kind: str, what: str, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    doc = copy.deepcopy(_one(kind).doc)
    mutate(doc)

    errors = manifest_errors(doc)

    assert any(expected in e for e in errors), errors


def test_restricted_check_finds_what_it_must() -> None:
    pod = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }

    found = " ".join(restricted_violations(pod))

    for word in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation",
                 "drop ALL", "runAsNonRoot", "seccompProfile"):
        assert word in found


def test_every_pod_is_fenced_by_a_network_policy() -> None:
    selectors = [m.doc["spec"]["podSelector"]["matchLabels"] for m in MANIFESTS
                 if m.doc["kind"] == "NetworkPolicy"]
    pods = [(m.where, where, t.get("metadata", {}).get("labels", {}))
            for m in MANIFESTS for where, t in pod_templates(m.doc)]

    assert len(pods) == 10  # head + 3 groups, twice, the submitter, the service
    for name, where, labels in pods:
        assert any(sel.items() <= labels.items() for sel in selectors), (name, where)


def test_every_pods_egress_is_fenced_to_pods_and_dns() -> None:
    policies = [m.doc["spec"] for m in MANIFESTS if m.doc["kind"] == "NetworkPolicy"]
    pods = [(m.where, where, t.get("metadata", {}).get("labels", {}))
            for m in MANIFESTS for where, t in pod_templates(m.doc)]
    dns = {(53, "UDP"), (53, "TCP")}

    for name, where, labels in pods:
        fencing = [p for p in policies if "Egress" in p["policyTypes"]
                   and p["podSelector"]["matchLabels"].items() <= labels.items()]
        assert fencing, (name, where)  # no pod may dial anything it likes
        for policy in fencing:
            for rule in policy["egress"]:
                if rule.get("to"):  # named peers: pods, never address blocks
                    assert all(set(peer) <= {"podSelector", "namespaceSelector"}
                               for peer in rule["to"]), (name, where, rule)
                else:  # any destination: DNS only
                    assert {(p["port"], p["protocol"]) for p in rule["ports"]} <= dns, rule


def test_ray_pods_may_dial_each_other_and_the_service_drivers() -> None:
    spec = _one("networkpolicy.yaml:NetworkPolicy").doc["spec"]
    service_pod = _one("Deployment").doc["spec"]["template"]["metadata"]["labels"]
    peers = [peer["podSelector"]["matchLabels"] for rule in spec["egress"]
             for peer in rule.get("to", [])]

    assert {"fedcollab.io/ray": "true"} in peers
    assert any(sel.items() <= service_pod.items() for sel in peers)  # job processes drive Ray


def test_secrets_are_kuberays_token_or_made_as_the_docs_say() -> None:
    cluster = _one("RayCluster").doc["metadata"]["name"]
    pod = _one("Deployment").doc["spec"]["template"]["spec"]
    env_refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                for c in pod["containers"] for e in c.get("env", []) if "valueFrom" in e}
    volume_secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    made_by_docs = set(re.findall(r"create secret generic ([\w-]+)", DOCS.read_text()))

    # KubeRay >= 1.5.1 names the token Secret after the RayCluster, key auth_token
    assert env_refs == {(cluster, "auth_token")}
    assert volume_secrets == {"fedcollab-tokens", "fedcollab-tls"} <= made_by_docs
    assert {v["secret"].get("defaultMode") for v in pod["volumes"] if "secret" in v} == {0o400}


def test_vendored_crds_match_the_sums_in_their_readme() -> None:
    readme = (CRDS / "README.md").read_text()
    sections = re.split(r"^## ", readme, flags=re.M)[1:]
    sums = {
        (section.split()[0], kind): vendored
        for section in sections
        for kind, vendored in re.findall(r"^\| (\w+) \| .* \| `(\w{64})` \|$", section, re.M)
    }

    assert {tag for tag, _ in sums} == {KUBERAY_TOO_OLD, KUBERAY_FLOOR, KUBERAY_NEWEST}
    for (tag, kind), expected in sums.items():
        assert hashlib.sha256((CRDS / tag / f"{kind}.json").read_bytes()).hexdigest() == expected


def test_kuberay_floor_and_newest_are_stated_in_the_docs_and_manifests() -> None:
    text = DOCS.read_text()

    assert f"KubeRay >= {KUBERAY_FLOOR[1:]}" in text and KUBERAY_NEWEST[1:] in text
    for path in sorted((ROOT / "deploy" / "kuberay").glob("*.yaml")):
        if path.name != "networkpolicy.yaml":
            assert f"KubeRay >= {KUBERAY_FLOOR[1:]}" in path.read_text(), path
