"""A cluster started the way a user starts one: `ray start` processes on loopback.

One head and one vendor node (own temp dirs, free ports, a token file of their
own), started through ``scripts/start-cluster``'s module and always stopped,
even when a test fails; ``stop`` must leave every other Ray on the host alone.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_for(token_path: Optional[Path] = None, home: Optional[Path] = None,
            **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    if token_path is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    if home is not None:
        env["HOME"] = str(home)
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str],
        timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@dataclass
class RealCluster:
    address: str
    token: Path
    state: Path
    head_output: str
    nodes: list[dict[str, Any]]

    @property
    def vendor_node(self) -> str:
        return next(n["NodeID"] for n in self.nodes if n["Resources"].get("vendor_site"))


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    base = tmp_path_factory.mktemp("real-cluster")
    token, state = base / "token", base / "state"
    env = env_for(token)
    port = free_port()
    try:
        head = run(["fedcollab.cluster.cli", "head", "--port", str(port), "--node-ip-address",
                    "127.0.0.1", "--num-cpus", "1", "--token-file", str(token),
                    "--state-dir", str(state)], env)
        assert head.returncode == 0, head.stdout + head.stderr
        address = f"127.0.0.1:{port}"
        worker = run(["fedcollab.cluster.cli", "worker", address, "--vendor-site", "--num-cpus",
                      "1", "--token-file", str(token), "--state-dir", str(state)], env)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        listing = subprocess.run(
            [sys.executable, "-c",
             "import json, sys; from fedcollab.cluster.connect import connect\n"
             f"with connect({address!r}) as ray:\n"
             "    print(json.dumps([{'NodeID': n['NodeID'], 'Alive': n['Alive'], "
             "'NodeManagerAddress': n['NodeManagerAddress'], 'Resources': n['Resources']} "
             "for n in ray.nodes()]))"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        assert listing.returncode == 0, listing.stderr[-2000:]
        nodes = json.loads(listing.stdout.strip().splitlines()[-1])
        yield RealCluster(address, token, state, head.stdout, nodes)
    finally:
        stopped = run(["fedcollab.cluster.cli", "stop", "--state-dir", str(state)], env)
        assert stopped.returncode == 0, stopped.stderr


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_head_advertises_loopback_and_prints_token_and_next_steps(
        real_cluster: RealCluster) -> None:
    out = real_cluster.head_output
    assert f"Ray head started at {real_cluster.address} (token authentication on" in out
    assert f"token file: {real_cluster.token}" in out
    assert f"worker {real_cluster.address} --token-file {real_cluster.token}" in out
    assert f"--address {real_cluster.address}" in out
    assert {n["NodeManagerAddress"] for n in real_cluster.nodes} == {"127.0.0.1"}
    assert len([n for n in real_cluster.nodes if n["Alive"]]) == 2


def test_head_prints_its_ray_client_address_and_a_0600_token_and_ray_client_runs_a_job(
        real_cluster: RealCluster, tmp_path: Path) -> None:
    out = real_cluster.head_output
    assert f"GCS address: {real_cluster.address}" in out
    client = next(x.split()[2] for x in out.splitlines() if x.startswith("Ray client:"))
    assert client.startswith("ray://127.0.0.1:")
    assert f"token file: {real_cluster.token} (secret, mode 0600;" in out
    assert real_cluster.token.stat().st_mode & 0o777 == 0o600
    job = tmp_path / "job"
    result = run(["fedcollab.cli", "run", "examples/iid.yaml", "--set", "rounds=1", "--set",
                  "resources.workers=1", "--address", client, "--out", str(job), "--quiet"],
                 env_for(real_cluster.token), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((job / "summary.json").read_text())["rounds_completed"] == 1


def test_run_address_without_token_is_one_line(real_cluster: RealCluster,
                                               tmp_path: Path) -> None:
    result = run(["fedcollab.cli", "run", "examples/multi-node.yaml", "--address",
                  real_cluster.address, "--out", str(tmp_path / "x")], env_for(home=tmp_path))
    assert result.returncode == 1
    assert "token authentication on and no token was found here" in one_line(result)
    assert not (tmp_path / "x" / "summary.json").exists()


def test_run_address_with_wrong_token_is_one_line(real_cluster: RealCluster,
                                                  tmp_path: Path) -> None:
    result = run(["fedcollab.cli", "run", "examples/multi-node.yaml", "--address",
                  real_cluster.address, "--out", str(tmp_path / "x")],
                 env_for(home=tmp_path, RAY_AUTH_TOKEN="0" * 64))
    assert result.returncode == 1
    assert "rejected the token from $RAY_AUTH_TOKEN" in one_line(result)


def test_worker_join_without_token_is_one_line(real_cluster: RealCluster, tmp_path: Path) -> None:
    result = run(["fedcollab.cluster.cli", "worker", real_cluster.address,
                  "--state-dir", str(tmp_path / "state")], env_for(home=tmp_path))
    assert result.returncode == 1
    assert "no token was found here: pass --token-file" in one_line(result)
    assert not list((tmp_path / "state").glob("*.json"))


def test_vendor_participants_train_only_on_vendor_node(real_cluster: RealCluster,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = run(["fedcollab.cli", "run", "examples/multi-node.yaml", "--address",
                  real_cluster.address, "--set", "rounds=3", "--out", str(out), "--quiet"],
                 env_for(real_cluster.token), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds_completed"] == len(metrics) == 3
    cluster_nodes = {n["NodeID"] for n in real_cluster.nodes}
    vendor_workers = [w for w in summary["workers"] if "vendor" in w["roles"]]
    assert vendor_workers and all(w["roles"] == ["vendor"] for w in vendor_workers)
    assert {w["node_id"] for w in vendor_workers} == {real_cluster.vendor_node}
    assert {w["node_id"] for w in summary["workers"]} <= cluster_nodes
    # and the vendor node hosts nothing else (the head has room for the community)
    assert all(w["node_id"] != real_cluster.vendor_node for w in summary["workers"]
               if w not in vendor_workers)
    vendor_pids = {p for w in vendor_workers for p in w["participants"]}
    assert vendor_pids == {8, 9, 10}  # the 3 vendor sites of examples/multi-node.yaml
    for line in metrics:  # every round, the vendor sites trained (on that worker) and none dropped
        assert line["dropped"] == [] and {str(p) for p in vendor_pids} <= set(line["update_sha256"])


def test_embedded_run_starts_its_own_ray_despite_cluster(real_cluster: RealCluster,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from fedcollab.job.run import RunOptions, run_job
    from fedcollab.spec import spec_from_dict

    ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", real_cluster.address)  # must not hijack the embedded run
    spec = spec_from_dict({"name": "embedded", "rounds": 1, "resources": {"workers": 1},
                           "participants": [{"name": "c", "count": 2}]})
    result = run_job(spec, RunOptions(out_dir=tmp_path / "out", quiet=True, release=False))
    assert result.summary["rounds_completed"] == 1
    ours = {w["node_id"] for w in result.summary["workers"]}
    assert ours and not ours & {n["NodeID"] for n in real_cluster.nodes}
    assert not ray.is_initialized()


def test_stop_stops_only_the_nodes_it_recorded(real_cluster: RealCluster, tmp_path: Path) -> None:
    import psutil

    from fedcollab.cluster.connect import check_reachable

    env = env_for(real_cluster.token)
    port = free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="fc-other-", dir="/tmp"))  # AF_UNIX paths <= 107
    other = run(["fedcollab.cluster.cli", "head", "--port", str(port), "--node-ip-address",
                 "127.0.0.1", "--num-cpus", "1", "--state-dir", str(tmp_path / "state"),
                 "--temp-dir", str(temp_dir), "--token-file", str(real_cluster.token)], env)
    try:
        assert other.returncode == 0, other.stderr
        check_reachable(f"127.0.0.1:{port}")
    finally:
        stopped = run(["fedcollab.cluster.cli", "stop", "--state-dir", str(tmp_path / "state")],
                      env)
    assert stopped.returncode == 0 and "stopped the head node" in stopped.stdout
    left = [p for p in psutil.process_iter(["cmdline"])
            if str(temp_dir) in " ".join(p.info["cmdline"] or [])]
    assert left == []
    check_reachable(real_cluster.address)  # the fixture's cluster still runs
    shutil.rmtree(temp_dir, ignore_errors=True)  # given with --temp-dir: stop keeps it
    again = run(["fedcollab.cluster.cli", "stop", "--state-dir", str(tmp_path / "state")], env)
    assert again.returncode == 0 and "nothing to stop" in again.stdout


def test_service_with_ray_address_runs_a_vendor_pinned_spec(real_cluster: RealCluster,
                                                           tmp_path: Path) -> None:
    """`fedcollab serve --ray-address` on the token-auth loopback cluster: the job
    processes join through fedcollab's connect path (loopback kept, token presented),
    and a spec pinned to the vendor node runs to the end."""
    import time

    import yaml

    from fedcollab._proto.fedcollab.v1 import jobs_pb2
    from fedcollab.service.auth import new_token
    from fedcollab.service.client import JobClient
    from fedcollab.spec import apply_overrides, read_spec_data

    tokens = tmp_path / "tokens.yaml"
    admin = new_token(tokens, name="root", role="admin")
    address = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcollab.cli", "serve", "--listen", address, "--state-dir",
         str(tmp_path / "svc"), "--tokens", str(tokens), "--ray-address", real_cluster.address],
        stdout=log, stderr=log, cwd=ROOT, start_new_session=True,
        env=env_for(real_cluster.token, FEDCOLLAB_SPARE_WORKERS="0"))
    try:
        c = JobClient(address, token=admin, timeout=10)
        deadline = time.monotonic() + 120
        while True:
            try:
                c.list(page_size=1)
                break
            except Exception:  # noqa: BLE001  (not up yet)
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
        spec = apply_overrides(read_spec_data(ROOT / "examples" / "multi-node.yaml"),
                               ["rounds=2"])
        job = c.submit(yaml.safe_dump(spec, sort_keys=False))
        deadline = time.monotonic() + 400
        while c.get(job.id).state not in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED,
                                          jobs_pb2.CANCELLED):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.5)
        done = c.get(job.id)
    finally:
        proc.terminate()
        proc.wait(60)

    assert jobs_pb2.JobState.Name(done.state) == "SUCCEEDED", done.error
    assert done.rounds_completed == 2
