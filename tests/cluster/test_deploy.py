"""deploy/: the manifests parse, carry what KubeRay / the cluster launcher require,
and agree with the Dockerfile and the CLI."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from fedcollab.cli import build_parser
from fedcollab.spec import spec_from_dict

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                    re.M).group(1)  # type: ignore[union-attr]
RAY_VERSION = "2.60.0"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kuberay" / name).read_text()) if d]


def cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs("raycluster.yaml"):
        if d["kind"] == "RayCluster":
            yield "raycluster.yaml", d["spec"]
    for d in docs("rayjob.yaml"):
        if d["kind"] == "RayJob":
            yield "rayjob.yaml", d["spec"]["rayClusterSpec"]


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_kuberay_manifests_have_api_version_kind_and_groups() -> None:
    kinds = {d["kind"]: d for d in docs("raycluster.yaml") + docs("rayjob.yaml")}
    assert set(kinds) == {"RayCluster", "RayJob", "ConfigMap"}
    assert kinds["RayCluster"]["apiVersion"] == kinds["RayJob"]["apiVersion"] == "ray.io/v1"
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == RAY_VERSION, name
        assert spec["authOptions"] == {"mode": "token"}, name  # token auth stays on
        head = spec["headGroupSpec"]
        assert isinstance(head["rayStartParams"], dict) and containers(head), name
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu", "vendor"}, name
        for group in groups.values():
            assert {"groupName", "minReplicas", "maxReplicas", "template",
                    "rayStartParams"} <= set(group), name
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            assert all(isinstance(v, str) for v in group["rayStartParams"].values())
            assert containers(group)[0]["name"] and containers(group)[0]["image"]


def test_kuberay_vendor_group_offers_vendor_site_on_vendor_nodes() -> None:
    for name, spec in cluster_specs():
        vendor = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "vendor")
        # KubeRay passes rayStartParams.resources verbatim: a quoted JSON object
        raw = vendor["rayStartParams"]["resources"]
        assert raw.startswith('"') and raw.endswith('"'), name
        offered = json.loads(raw[1:-1].replace('\\"', '"'))
        cpus = int(containers(vendor)[0]["resources"]["limits"]["cpu"])
        assert offered == {"vendor_site": cpus}, name
        pod = vendor["template"]["spec"]
        assert pod["nodeSelector"] == {"fedcollab.io/site": "vendor"}
        assert {"key": "fedcollab.io/vendor", "operator": "Exists",
                "effect": "NoSchedule"} in pod["tolerations"]
        for other in spec["workerGroupSpecs"]:
            if other is not vendor:
                assert "vendor_site" not in other["rayStartParams"].get("resources", "")


def test_kuberay_gpu_group_limits_nvidia_gpus_and_tolerates_taint() -> None:
    for name, spec in cluster_specs():
        gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
        limits = containers(gpu)[0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, name
        assert containers(gpu)[0]["image"] == f"fedcollab:{VERSION}-gpu"
        assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])
        for other in spec["workerGroupSpecs"] + [spec["headGroupSpec"]]:
            if other is not gpu:
                assert "nvidia.com/gpu" not in containers(other)[0]["resources"]["limits"]


def test_kuberay_images_and_user_agree_with_the_dockerfile() -> None:
    text = dockerfile()
    uid = re.search(r"useradd .*--uid (\d+)", text)
    assert uid and re.search(r"^USER fedcollab$", text, re.M)
    assert re.search(r"^FROM python:3\.\d+-slim@sha256:", text, re.M)
    assert re.search(r"pip install .*\s\.", text)
    assert "ARG LOCK=" in text  # the -gpu tag is the same file with the CUDA lock
    for name, spec in cluster_specs():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            image = containers(group)[0]["image"]
            assert image in (f"fedcollab:{VERSION}", f"fedcollab:{VERSION}-gpu"), name
            ctx = group["template"]["spec"]["securityContext"]
            assert ctx["runAsUser"] == int(uid.group(1)) and ctx["runAsNonRoot"] is True
    assert f"-t fedcollab:{VERSION} ." in text and f"-t fedcollab:{VERSION}-gpu ." in text


def test_rayjob_entrypoint_is_a_cli_run_of_the_mounted_configmap_spec() -> None:
    by_kind = {d["kind"]: d for d in docs("rayjob.yaml")}
    job, config_map = by_kind["RayJob"]["spec"], by_kind["ConfigMap"]
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "fedcollab"
    args = build_parser().parse_args(argv[1:])  # the CLI accepts it as written
    assert args.command == "run" and args.address == "auto"
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = containers(job["rayClusterSpec"]["headGroupSpec"])[0]["volumeMounts"]
    spec_path = Path(args.spec)
    mount = next(m for m in mounts if spec_path.parent == Path(m["mountPath"]))
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    spec_text = config_map["data"][spec_path.name]
    spec = spec_from_dict(yaml.safe_load(spec_text))  # a valid fedcollab job spec
    assert any(g.resources.get("vendor_site") for g in spec.participants)
    out_mount = next(m for m in mounts if Path(str(args.out)).is_relative_to(m["mountPath"]))
    assert not out_mount.get("readOnly")
    assert job["shutdownAfterJobFinishes"] is True


def test_ray_launcher_yaml_validates_against_rays_schema() -> None:
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json")
                        .read_text())
    config = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types["vendor"]["resources"].get("vendor_site", 0) >= 1
    assert types["gpu_worker"]["resources"].get("GPU", 0) >= 1
    assert not any("vendor_site" in t["resources"] for n, t in types.items() if n != "vendor")
    assert config["docker"]["image"] == f"fedcollab:{VERSION}"
    assert types["gpu_worker"]["docker"]["worker_image"] == f"fedcollab:{VERSION}-gpu"
    assert "~/.ray/auth_token" in config["file_mounts"]  # the token reaches every node
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token ray start" in command


def test_ray_submit_script_runs_the_cli(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(DEPLOY / "ray" / "run_job.py"),
                             str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and "missing.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def _docker_ready() -> str:
    if shutil.which("docker") is None:
        return "docker is not on PATH"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return "docker is on PATH but its daemon is not reachable (`docker info` failed)"
    return ""


@pytest.mark.slow
def test_docker_build_of_the_image(tmp_path: Path) -> None:
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    tag = f"fedcollab:{VERSION}-test"
    built = subprocess.run(["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag,
                            str(ROOT)], capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    user = subprocess.run(["docker", "run", "--rm", tag, "id", "-un"], capture_output=True,
                          text=True, timeout=120)
    assert user.stdout.strip() == "fedcollab"
    ran = subprocess.run(["docker", "run", "--rm", tag, "fedcollab", "validate",
                          "/opt/fedcollab/examples/multi-node.yaml"],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
