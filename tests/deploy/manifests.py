"""Checks for the Kubernetes manifests under deploy/kuberay/, offline.

* KubeRay objects (RayCluster, RayJob) against the CRD schemas vendored in
  kuberay_crds/ (scripts/vendor-kuberay-crds), read strictly: a field the schema does not
  name is an error, as under `kubectl apply --validate=strict`. The API server's default
  is to drop such a field silently, which is how `authOptions` vanishes on KubeRay 1.5.0
  and leaves the cluster unauthenticated.
* Core objects (Deployment, Service, NetworkPolicy, ConfigMap, PVC), and every pod
  template inside a KubeRay object read as a core PodTemplate, against the strict
  Kubernetes JSON schemas that `kubernetes-validate` ships (no unknown fields).
* Every pod against the rules of the restricted Pod Security Standard.

The CRDs' CEL rules (`x-kubernetes-validations`) are not evaluated here.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kuberay"
CRDS = Path(__file__).resolve().parent / "kuberay_crds"

KUBERAY_FLOOR = "v1.5.1"  # the oldest KubeRay with authOptions (token authentication)
KUBERAY_NEWEST = "v1.7.0"  # the newest release vendored; bump with scripts/vendor-kuberay-crds
KUBERAY_TOO_OLD = "v1.5.0"  # kept to prove the floor: it has no authOptions
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.major_minor(
    kubernetes_validate.utils.latest_version()
))
KUBERAY_ANNOTATION = "fedcollab.io/kuberay-version"

KUBERAY_KINDS = {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob")}
CORE_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}


@dataclass(frozen=True)
class Manifest:
    """One YAML document of a file under deploy/kuberay/."""

    path: Path
    index: int
    doc: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path.name}#{self.index} {self.doc.get('kind')}"


def load_manifests(folder: Path = MANIFESTS) -> list[Manifest]:
    """Every non-empty document of every .yaml file in `folder`, in a stable order."""
    return [
        Manifest(path, i, doc)
        for path in sorted(folder.glob("*.yaml"))
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


def strict_schema(node: Any) -> Any:
    """A CRD's structural OpenAPI v3 schema as JSON Schema that refuses unknown fields.

    `nullable` and `x-kubernetes-int-or-string` become JSON Schema types; an object with
    `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`.
    """
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: (
            {name: strict_schema(sub) for name, sub in value.items()}
            if key == "properties"
            else strict_schema(value)
        )
        for key, value in node.items()
    }
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if out.pop("nullable", False) and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(tag: str, kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((CRDS / tag / f"{kind}.json").read_text())
    return jsonschema.Draft7Validator(strict_schema(schema))


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top)"


def crd_errors(doc: dict[str, Any], tag: str) -> list[str]:
    """What KubeRay `tag`'s CRD schema (read strictly) refuses in `doc`."""
    validator = crd_validator(tag, doc["kind"])
    return [
        f"KubeRay {tag}: {_path(e)}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


@functools.cache
def kubernetes_validator(version: str, kind: str, api_version: str) -> jsonschema.Validator:
    """The strict JSON schema of `kind` in Kubernetes `version`, as kubernetes-validate
    ships it (what its validate() builds on every call, built once here)."""
    files = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = files / f"v{version}.0-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # networking.k8s.io/v1
    schema = json.loads((folder / f"{kind.lower()}-{group}.json").read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def kubernetes_errors(doc: dict[str, Any], version: str) -> list[str]:
    """What Kubernetes `version`'s schema (strict: no unknown fields) refuses in `doc`."""
    validator = kubernetes_validator(version, doc["kind"], doc["apiVersion"])
    return [
        f"Kubernetes {version}: {_path(e)}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, PodTemplateSpec) for every pod a manifest makes, KubeRay's included."""
    spec = doc.get("spec", {})
    if doc["kind"] == "Deployment":
        yield "spec.template", spec["template"]
        return
    if doc["kind"] == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]
        spec, prefix = spec.get("rayClusterSpec", {}), "spec.rayClusterSpec"
    elif doc["kind"] == "RayCluster":
        prefix = "spec"
    else:
        return
    if "headGroupSpec" in spec:
        yield f"{prefix}.headGroupSpec.template", spec["headGroupSpec"]["template"]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        yield f"{prefix}.workerGroupSpecs.{i}.template", group["template"]


RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the Kubernetes 'restricted' Pod Security Standard (v1.30) forbids in `pod`."""
    out = []
    pod_ctx = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(flag)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUMES)}")
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
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any("hostPort" in p for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


def manifest_errors(
    doc: dict[str, Any],
    *,
    kuberay: tuple[str, ...] = (KUBERAY_FLOOR, KUBERAY_NEWEST),
    kubernetes: tuple[str, ...] = KUBERNETES_VERSIONS,
) -> list[str]:
    """Everything wrong with one manifest; [] when it passes every check."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in KUBERAY_KINDS:
        errors = [e for tag in kuberay for e in crd_errors(doc, tag)]
        annotation = doc.get("metadata", {}).get("annotations", {}).get(KUBERAY_ANNOTATION)
        if annotation != f">={KUBERAY_FLOOR[1:]}":
            errors.append(f"metadata.annotations.{KUBERAY_ANNOTATION} must be "
                          f"'>={KUBERAY_FLOOR[1:]}', got {annotation!r}")
    elif key in CORE_KINDS:
        errors = [e for version in kubernetes for e in kubernetes_errors(doc, version)]
    else:
        return [f"unknown apiVersion/kind {key}"]
    for where, template in pod_templates(doc):
        as_core = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": "check"}, "template": template}
        errors += [f"{where}: {e}" for v in kubernetes for e in kubernetes_errors(as_core, v)]
        errors += [f"{where}: restricted: {v}"
                   for v in restricted_violations(template.get("spec", {}))]
    return errors
