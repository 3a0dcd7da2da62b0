"""The default job with the vendor remote, end to end on loopback (issue #31).

The coordinator (`fedcollab run --silo-listen`) and the vendor (`fedcollab silo serve
--spec`) are separate process trees with separate temp dirs, a throwaway CA with a
leaf certificate per party, and ports bound to 127.0.0.1:0. The vendor's sites run on
its own embedded Ray (a worker actor per site) unless a test asks for
``--transport inprocess`` to stay short; the coordinator's community runs in process
unless a test says otherwise (the pool seam is the same).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "community-vendor.yaml"

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "2"}


def _cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "fedcollab.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _spec(path: Path, rounds: int) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["rounds"] = rounds
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _model_sha256(manifest: dict[str, Any]) -> str:
    """The architecture hash from a release manifest's weights (layer/variable paths)."""
    from fedcollab.silo.terms import architecture_sha256

    weights = manifest["weights"]
    return architecture_sha256(manifest["spec"]["task"]["model"],
                               [w["name"].split("/")[0] for w in weights],
                               [w["shape"] for w in weights], [w["dtype"] for w in weights])


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Two directories (coordinator, vendor), a CA and a certificate per party, the
    embedded run of the 3-round job, and the vendor's policy approving its model."""
    from fedcollab.service.certs import fingerprint

    root = tmp_path_factory.mktemp("cross-silo")
    coord, vendor = root / "coordinator", root / "vendor"
    coord.mkdir()
    vendor.mkdir()
    _cli("certs", "init", "--dir", "pki", cwd=root)
    for party in ("coordinator", "vendor"):
        _cli("certs", "issue", "--dir", "pki", "--name", party, "--party", cwd=root)
    spec = _spec(coord / "job.yaml", rounds=3)
    _spec(vendor / "job.yaml", rounds=3)  # the vendor's own copy of the job
    _cli("run", str(spec), "--transport", "inprocess", "--out", "embedded", "--quiet", cwd=coord)
    manifest = json.loads((coord / "embedded" / "release" / "manifest.json").read_text())
    policy = {"party": "vendor", "share_only": ["hidden"], "egress": "masked_only",
              "min_group": 3, "trusted_cas": [fingerprint((root / "pki" / "ca.pem").read_bytes())],
              "dp": {"min_noise_multiplier": 0, "max_clip_norm": float("inf"),
                     "epsilon_budget": float("inf"), "delta": 1e-5},
              "fixed_point": {"max_scale_bits": 24},
              "approved_models": [_model_sha256(manifest)]}
    (vendor / "vendor-policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    yield {"root": root, "coord": coord, "vendor": vendor, "pki": root / "pki"}


def _start_coordinator(sites: dict[str, Path], out: str, *extra: str, spec: str = "job.yaml",
                       transport: str = "inprocess") -> tuple[subprocess.Popen[str], str]:
    pki = sites["pki"]
    err = (sites["coord"] / f"{out}.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcollab.cli", "run", spec, "--transport", transport,
         "--out", out, "--quiet", "--silo-listen", "127.0.0.1:0",
         "--silo-cert", str(pki / "coordinator.pem"), "--silo-key", str(pki / "coordinator.key"),
         "--silo-ca", str(pki / "ca.pem"), "--silo-wait", "180", *extra],
        cwd=sites["coord"], env=_env(), stdout=subprocess.PIPE, stderr=err, text=True)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        text = (sites["coord"] / f"{out}.err").read_text()
        if "listening on " in text:
            return proc, text.split("listening on ")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    said = (sites["coord"] / f"{out}.err").read_text()
    raise AssertionError(f"the coordinator did not listen: {said}")


def _start_vendor(sites: dict[str, Path], address: str, state: str, *extra: str,
                  spec: str = "job.yaml", policy: str = "vendor-policy.yaml",
                  env: dict[str, str] | None = None, command: tuple[str, ...] = (),
                  ) -> subprocess.Popen[str]:
    """``fedcollab silo serve --spec``: by default its sites on the vendor's own embedded
    Ray (a worker actor per site); ``--transport inprocess`` keeps them in the gateway."""
    pki = sites["pki"]
    return subprocess.Popen(
        [sys.executable, *(command or ("-m", "fedcollab.cli")), "silo", "serve",
         "--policy", policy,
         "--spec", spec, "--coordinator", address, "--cert", str(pki / "vendor.pem"),
         "--key", str(pki / "vendor.key"), "--coordinator-ca", str(pki / "ca.pem"),
         "--trusted-ca", str(pki / "ca.pem"), "--state-dir", state, "--timeout", "240",
         *extra],
        cwd=sites["vendor"], env=env or _env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _kill(procs: tuple[subprocess.Popen[str], ...]) -> None:
    """What is still running of a test's process trees, killed and reaped."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _listening(pid: int) -> list[Any]:
    import psutil

    found = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            found += [c for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    return found


def _site_workers(pid: int) -> list[Any]:
    """The Ray worker actors (``ray::RayWorker``) in a process tree."""
    import psutil

    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for proc in children:
        try:
            if proc.name().startswith("ray::RayWorker") or any(
                    a.startswith("ray::RayWorker") for a in proc.cmdline()[:1]):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _windows(array: np.ndarray, size: int = 4) -> list[bytes]:
    """Byte patterns of a float32 tensor: runs of ``size`` distinct non-zero values
    (16 bytes) from all over it (zeros, e.g. the update of a pixel that is always
    blank, are in any file)."""
    flat = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
    out = []
    for i in range(0, flat.size - size + 1, size):
        run = flat[i:i + size]
        if np.all(run != 0) and len(set(run.tolist())) == size:
            out.append(run.tobytes())
    return out


def _records(path: Path) -> list[bytes]:
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        n = int.from_bytes(data[at:at + 4], "big")
        out.append(data[at + 4:at + 4 + n])
        at += 4 + n
    return out


def _round_one_updates(spec_path: Path, work: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The model's initial weights (public: every party builds them from the seed) and
    the vendor sites' unmasked round-1 updates over the shared layer, recomputed here:
    round 1 trains from the initial weights, the same on both sides (the weights_sha256
    equality says training is deterministic)."""
    from fedcollab.spec import load_spec, spec_to_dict
    from fedcollab.worker.messages import WorkerConfig
    from fedcollab.worker.worker import ParticipantWorker

    spec = load_spec(spec_path)
    worker = ParticipantWorker(WorkerConfig(spec_to_dict(spec), (8, 9, 10), str(work), 0))
    start = worker.model_info().weights
    updates = []
    for pid in (8, 9, 10):
        _, trained, _ = worker._train_one(pid, worker.trainer.feed(start), 1)
        updates += [np.asarray(trained[i]) - start[i] for i in (0, 1)]  # hidden: shared
    return start, updates


def test_remote_vendor_same_weights_policy_hash_and_nothing_private_leaves(
        sites: dict[str, Path]) -> None:
    from fedcollab._proto.fedcollab.v1 import silo_pb2
    from fedcollab.io import load_npz

    coordinator, address = _start_coordinator(sites, "remote", "--silo-record", "received.bin")
    vendor = _start_vendor(sites, address, "vendor-state")
    listening: list[Any] = []
    checks = workers = 0
    while vendor.poll() is None and checks < 400:  # while the gateway runs the job
        listening += _listening(vendor.pid)
        workers = max(workers, len(_site_workers(vendor.pid)))
        checks += 1
        time.sleep(0.25)
    v_out, v_err = vendor.communicate(timeout=240)
    c_out, _ = coordinator.communicate(timeout=240)
    c_err = (sites["coord"] / "remote.err").read_text()

    assert vendor.returncode == 0, v_err
    assert coordinator.returncode == 0, c_err
    assert "0 refused" in v_out and checks > 0
    assert workers == 1  # the vendor's group of three sites, on one Ray worker of the vendor's
    # the vendor's own Ray listens (its GCS, raylet, workers), on loopback only: nothing
    # of the vendor's process tree is reachable from the network, the gateway dials out
    assert listening and all(_loopback(c.laddr.ip) for c in listening), \
        sorted({c.laddr.ip for c in listening})
    coord = sites["coord"]
    embedded = json.loads((coord / "embedded" / "release" / "manifest.json").read_text())
    remote = json.loads((coord / "remote" / "release" / "manifest.json").read_text())
    # 1. the same weights as the embedded run with the same seed
    assert remote["weights_sha256"] == embedded["weights_sha256"]
    # 2. what the vendor promised to enforce, in the metrics and the release manifest
    promised = hashlib.sha256((sites["vendor"] / "vendor-policy.yaml").read_bytes()).hexdigest()
    assert [p["policy_sha256"] for p in remote["silo_parties"]] == [promised]
    lines = [json.loads(x) for x in (coord / "remote" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(
        m["placement"]["silo"]["vendor"]["policy_sha256"] == promised for m in lines)
    # 3. nothing private leaves: every received byte is a typed frame; no byte pattern of
    # the vendor's private layer is in what the coordinator received or wrote
    frames = [silo_pb2.GatewayFrame.FromString(r) for r in _records(coord / "received.bin")]
    kinds = {f.WhichOneof("body") for f in frames}
    assert kinds <= {"join", "decision", "stage_reply"} and "stage_reply" in kinds
    payloads = [m.payload for f in frames if f.WhichOneof("body") == "stage_reply"
                for m in f.stage_reply.replies]
    assert payloads and all(p[:4] == b"FCSA" or len(p) == 32 for p in payloads)
    private = sorted((sites["vendor"] / "vendor-state" / "work" / "checkpoints" / "private")
                     .glob("participant-*-round-00003.npz"))
    assert len(private) == 3  # the vendor's three sites kept their head
    initial, updates = _round_one_updates(sites["vendor"] / "job.yaml", sites["root"] / "work")
    public = b"".join(np.ascontiguousarray(w, dtype="<f4").tobytes() for w in initial)
    # the private head's values a site never moved from the initial weights (units it
    # never activates) are public; every value it trained must not reach the coordinator
    patterns = [w for path in private for a in load_npz(path)[0].values()
                for w in _windows(a) if w not in public]
    assert len(patterns) > 300  # most of the 3 x 650 values of the head were trained
    assert all(np.abs(u).max() > 0 for u in updates)
    patterns += [w for u in updates for w in _windows(u)]
    received = (coord / "received.bin").read_bytes()
    written = b"".join(p.read_bytes() for p in (coord / "remote").rglob("*") if p.is_file())
    assert patterns and not any(w in received or w in written for w in patterns)
    # the vendor's audit log is intact and covers every frame and the updates that left
    verified = _cli("silo", "audit", "verify", "vendor-state/audit.jsonl", cwd=sites["vendor"])
    assert verified.startswith("ok:")
    audit = [json.loads(x) for x in
             (sites["vendor"] / "vendor-state" / "audit.jsonl").read_text().splitlines()]
    assert sum(e["direction"] == "out" and e["decision"] == "allow" for e in audit) == 3


@pytest.mark.parametrize("how, words", [
    (signal.SIGSTOP, "did not answer by the round's deadline (2 s)"),  # a black-holed link
    (signal.SIGKILL, "the link to 'vendor' is down"),                 # a killed gateway
])
def test_remote_vendor_lost_mid_job_aborts_rounds_by_the_deadline(
        sites: dict[str, Path], how: int, words: str) -> None:
    for side in ("coord", "vendor"):
        _spec(sites[side] / "job6.yaml", rounds=6)
    out = f"lost-{how}"
    coordinator, address = _start_coordinator(sites, out, "--silo-deadline", "2",
                                              spec="job6.yaml")
    vendor = _start_vendor(sites, address, f"{out}-state", "--transport", "inprocess",
                           spec="job6.yaml")
    metrics = sites["coord"] / out / "metrics.jsonl"
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end and not (metrics.exists() and metrics.read_text()):
            assert coordinator.poll() is None, (sites["coord"] / f"{out}.err").read_text()
            time.sleep(0.05)
        os.kill(vendor.pid, how)
        coordinator.communicate(timeout=120)
    finally:
        os.kill(vendor.pid, signal.SIGKILL)
        vendor.wait()

    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert coordinator.returncode == 0, (sites["coord"] / f"{out}.err").read_text()
    assert [m["round"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert "aborted" not in lines[0]
    first = next(i for i, m in enumerate(lines) if "aborted" in m)  # once lost, always
    assert first < 6 and all("aborted" in m for m in lines[first:])
    for m in lines[first:]:
        assert words in m["aborted"]
        assert m["seconds"] < 2 + 10  # no hang beyond the deadline + 10 s
        # the model is unchanged: the same held-out figures as the last round that ran
        assert (m["loss"], m["accuracy"]) == (lines[first - 1]["loss"],
                                              lines[first - 1]["accuracy"])


def test_remote_vendor_refusing_the_offer_fails_the_job_in_one_line(
        sites: dict[str, Path]) -> None:
    policy = yaml.safe_load((sites["vendor"] / "vendor-policy.yaml").read_text())
    policy["dp"] = {"min_noise_multiplier": 1.0, "max_clip_norm": 1.0, "epsilon_budget": 8.0,
                    "delta": 1e-5}  # a DP floor the job (no DP) does not meet
    (sites["vendor"] / "floor-policy.yaml").write_text(yaml.safe_dump(policy))
    coordinator, address = _start_coordinator(sites, "refused")
    vendor = _start_vendor(sites, address, "refused-state", "--transport", "inprocess",
                           policy="floor-policy.yaml")
    v_out, v_err = vendor.communicate(timeout=240)
    coordinator.communicate(timeout=240)
    c_err = (sites["coord"] / "refused.err").read_text()

    assert coordinator.returncode == 1 and vendor.returncode == 0, v_err
    last = c_err.strip().splitlines()[-1]
    assert last.startswith("fedcollab: error: silo: the offer of job ")
    assert "was refused by the vendor: noise multiplier 0.0 is below the policy's floor" in last
    assert "Traceback" not in c_err and "1 refused" in v_out
    assert not (sites["coord"] / "refused" / "release").exists()


@pytest.mark.ray
def test_remote_vendor_beside_the_coordinators_embedded_ray_same_weights(
        sites: dict[str, Path]) -> None:
    """The coordinator's community on its own embedded Ray (the default transport),
    the vendor in its own process tree: the same weights as the embedded run."""
    coordinator, address = _start_coordinator(sites, "on-ray", transport="ray")
    vendor = _start_vendor(sites, address, "on-ray-state")
    v_out, v_err = vendor.communicate(timeout=300)
    coordinator.communicate(timeout=300)

    assert vendor.returncode == 0, v_err
    assert coordinator.returncode == 0, (sites["coord"] / "on-ray.err").read_text()
    coord = sites["coord"]
    embedded = json.loads((coord / "embedded" / "release" / "manifest.json").read_text())
    remote = json.loads((coord / "on-ray" / "release" / "manifest.json").read_text())
    assert remote["weights_sha256"] == embedded["weights_sha256"]
    workers = json.loads((coord / "on-ray" / "summary.json").read_text())["workers"]
    assert [w["node_id"] for w in workers if w.get("device") == "remote"] == ["silo:vendor"]


# ---- failures survived: a coordinator restart, a gateway killed and restarted ----


def _audit(state: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]


def _vendor_kept_its_promises(sites: dict[str, Path], state: str) -> list[dict[str, Any]]:
    """The audit chain verifies; the round ids the vendor started only increase; each
    update that left was for another global model; its state holds as many models
    contributed to as updates left. Returns the audit entries."""
    verified = _cli("silo", "audit", "verify", f"{state}/audit.jsonl", cwd=sites["vendor"])
    assert verified.startswith("ok:")
    audit = _audit(sites["vendor"] / state)
    started = [e["round_id"] for e in audit
               if e["kind"] == "round_start" and e["decision"] == "allow"]
    assert started == sorted(set(started))  # strictly increasing
    out = [e for e in audit if e["direction"] == "out" and e["decision"] == "allow"]
    saved = json.loads((sites["vendor"] / state / "state.json").read_text())
    (job,) = saved["jobs"].values()
    assert len(job["contributed"]) == len(out)  # no global model contributed to twice
    assert job["last_round"] == started[-1]
    return audit


def _audited(state: Path, kind: str, round_id: int) -> Any:
    """Whether the vendor's audit chain has an allowed entry of ``kind`` for the round
    (a predicate, read from the file as it grows)."""
    def seen() -> bool:
        path = state / "audit.jsonl"
        return path.exists() and any(
            f'"kind":"{kind}"' in x and f'"round_id":{round_id},' in x and '"allow"' in x
            for x in path.read_text().splitlines())
    return seen


def _wait_for(what: Any, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not what():
        assert proc.poll() is None, "the process ended first"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_remote_vendor_coordinator_killed_and_resumed_finishes_without_contributing_twice(
        sites: dict[str, Path]) -> None:
    """kill -9 the coordinator once the vendor was asked to train in round 2 (the vendor
    stopped meanwhile: round 2 is not committed), let the vendor go on (it trains and
    lets its update out: it contributed to round 2's global model) and restart the
    coordinator with --resume on the same port: the gateway, still running and
    redialling, rejoins; round 2 runs again on the same global model, without the
    vendor; the job finishes with the vendor in every later round."""
    for side in ("coord", "vendor"):
        _spec(sites[side] / "job5.yaml", rounds=5)
    out, state = "resumed", "resumed-state"
    coordinator, address = _start_coordinator(sites, out, "--silo-deadline", "20",
                                              spec="job5.yaml")
    vendor = _start_vendor(sites, address, state, "--reconnect", "--backoff-initial", "0.2",
                           "--backoff-max", "1", spec="job5.yaml")
    try:
        # round 2's first stage is "train" (keys are amortised after round 1)
        _wait_for(_audited(sites["vendor"] / state, "stage", 2), vendor)
        os.kill(vendor.pid, signal.SIGSTOP)  # round 2 cannot finish before the kill
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait()
        latest = sites["coord"] / out / "checkpoints" / "latest.json"
        committed = json.loads(latest.read_text())["round"] if latest.exists() else 0
        os.kill(vendor.pid, signal.SIGCONT)
        t0 = time.monotonic()
        again, _ = _start_coordinator(sites, out, "--silo-deadline", "20", "--resume",
                                      "--silo-listen", address, spec="job5.yaml")
        again.communicate(timeout=240)
        resumed_seconds = time.monotonic() - t0
        v_out, v_err = vendor.communicate(timeout=120)
    finally:
        _kill((coordinator, vendor))

    c_err = (sites["coord"] / f"{out}.err").read_text()
    assert again.returncode == 0, c_err
    assert vendor.returncode == 0, v_err
    assert committed == 1  # the crash came after the vendor contributed, before the commit
    summary = json.loads((sites["coord"] / out / "summary.json").read_text())
    assert summary["rounds_completed"] == 5 and summary["status"] == "succeeded"
    _cli("verify", str(sites["coord"] / out / "release"), cwd=sites["coord"])
    lines = [json.loads(x) for x in (sites["coord"] / out / "metrics.jsonl").read_text()
             .splitlines()]
    assert [m["round"] for m in lines] == [1, 2, 3, 4, 5]
    # round 2 ran again on the model the vendor contributed to: without the vendor
    absent = lines[1]["placement"]["silo"]["vendor"]["absent"]
    assert "declined round 2: round 2 does not exceed the last round 2" in absent
    assert lines[1]["dropped"] == [8, 9, 10] and "aborted" not in lines[1]
    # then the vendor again, in every later round
    assert all("aborted" not in m and m["dropped"] == [] for m in lines[2:])
    assert all(m["secure"]["survivors"] == [8, 9, 10] for m in lines[2:])
    entries = _vendor_kept_its_promises(sites, state)
    refused = [e for e in entries if e["kind"] == "round_start" and e["decision"] == "refuse"]
    assert [(e["round_id"], e["rule"]) for e in refused] == [(2, "round_order")]
    out = [e["round_id"] for e in entries if e["direction"] == "out" and e["decision"] == "allow"]
    assert out == [1, 2, 3, 4, 5]  # its round-2 update was let out before the restart
    assert resumed_seconds < 120


def test_remote_vendor_gateway_killed_and_restarted_rejoins_the_running_job(
        sites: dict[str, Path]) -> None:
    """kill -9 the gateway once its round-2 update left (the coordinator stopped
    meanwhile, so round 2 cannot finish), start it again with the same --state-dir
    while the coordinator's run goes on: the rounds while it is away abort by the
    deadline, the coordinator takes its new Join, the first round after it (on round
    2's global model, unchanged: the vendor contributed to it) goes on without it, and
    every later round includes it again."""
    deadline = 4
    for side in ("coord", "vendor"):
        _spec(sites[side] / "job10.yaml", rounds=10)
    out, state = "rejoined", "rejoined-state"
    coordinator, address = _start_coordinator(sites, out, "--silo-deadline", str(deadline),
                                              spec="job10.yaml")
    vendor = _start_vendor(sites, address, state, spec="job10.yaml")
    metrics = sites["coord"] / out / "metrics.jsonl"
    try:
        _wait_for(_audited(sites["vendor"] / state, "stage", 2), vendor)  # "train"
        os.kill(coordinator.pid, signal.SIGSTOP)
        _wait_for(_audited(sites["vendor"] / state, "egress", 2), vendor)
        os.kill(vendor.pid, signal.SIGKILL)  # mid-round, once its update left
        vendor.wait()
        os.kill(coordinator.pid, signal.SIGCONT)
        again = _start_vendor(sites, address, state, spec="job10.yaml")
        coordinator.communicate(timeout=240)
        v_out, v_err = again.communicate(timeout=120)
    finally:
        _kill((coordinator, vendor))

    c_err = (sites["coord"] / f"{out}.err").read_text()
    assert coordinator.returncode == 0, c_err
    assert again.returncode == 0, v_err
    assert "'vendor' rejoined the job" in c_err
    _cli("verify", str(sites["coord"] / out / "release"), cwd=sites["coord"])
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [m["round"] for m in lines] == list(range(1, 11))
    lost = [i for i, m in enumerate(lines) if "aborted" in m]
    assert lost == list(range(1, len(lost) + 1))  # round 2 and those until the rejoin
    assert "the link to 'vendor' is down" in lines[1]["aborted"]
    for i in lost:
        assert lines[i]["seconds"] < deadline + 10  # no hang beyond the deadline + 10 s
        assert lines[i]["loss"] == lines[0]["loss"]  # the model unchanged
    declined, *back = lines[lost[-1] + 1:]
    assert declined["dropped"] == [8, 9, 10] and declined["loss"] != lines[0]["loss"]
    assert "already contributed to global model" in \
        declined["placement"]["silo"]["vendor"]["absent"]
    assert back and all(m.get("secure", {}).get("survivors") == [8, 9, 10] for m in back)
    entries = _vendor_kept_its_promises(sites, state)
    out = [e["round_id"] for e in entries if e["direction"] == "out" and e["decision"] == "allow"]
    assert out == [1, 2, *(m["round"] for m in back)]


def _lossy_job(sites: dict[str, Path], out: str, *, vendor_sites: int, kill: tuple[str, ...],
               rounds: int = 3) -> tuple[list[dict[str, Any]], str]:
    """The job with ``vendor_sites`` vendor sites on the vendor's embedded Ray, one
    site's worker lost as ``kill`` (ROUND STAGE SITE HOW) says; the metrics and the
    vendor's stderr."""
    for side in ("coord", "vendor"):
        doc = yaml.safe_load(EXAMPLE.read_text())
        doc["rounds"] = rounds
        doc["participants"][1]["count"] = vendor_sites
        (sites[side] / f"{out}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    coordinator, address = _start_coordinator(sites, out, "--silo-deadline", "60",
                                              spec=f"{out}.yaml")
    vendor = _start_vendor(sites, address, f"{out}-state", "--worker-per-site",
                           spec=f"{out}.yaml",
                           command=(str(ROOT / "tests" / "silo" / "lossy_vendor.py"), *kill))
    try:
        v_out, v_err = vendor.communicate(timeout=110)
        coordinator.communicate(timeout=30)
    finally:
        _kill((vendor, coordinator))
    c_err = (sites["coord"] / f"{out}.err").read_text()
    assert vendor.returncode == 0, v_err[-3000:]
    assert coordinator.returncode == 0, c_err[-3000:]
    assert "Traceback" not in v_err and "lossy vendor: site" in v_err, v_err[-3000:]
    metrics = sites["coord"] / out / "metrics.jsonl"
    return [json.loads(x) for x in metrics.read_text().splitlines()], v_err


@pytest.mark.ray
def test_vendor_site_lost_before_its_masked_input_is_a_dropout_the_secure_sum_recovers(
        sites: dict[str, Path]) -> None:
    """Five vendor sites; in round 1 one site's actor is killed (ray.kill) after the
    key shares, before its masked input: the vendor answers for the four left, the
    coordinator's server recovers the lost site's pairwise masks from their shares and
    the round completes without it; the site's worker is recreated before round 2
    (healed, as `fedcollab run` heals a lost worker), re-keys with the group and takes
    part again."""
    lines, _ = _lossy_job(sites, "lossy-keys", vendor_sites=5,
                          kill=("1", "share_keys", "9", "kill"))

    assert [m["round"] for m in lines] == [1, 2, 3]
    assert not any("aborted" in m for m in lines), [m.get("aborted") for m in lines]
    first = lines[0]["secure"]
    assert first["survivors"] == [8, 10, 11, 12] and first["dropped"] == [9]
    # the unmasked sum is the survivors' updates, not masks: the model improves
    losses = [m["loss"] for m in lines]
    assert all(np.isfinite(losses)) and losses[2] < losses[1] < losses[0]
    assert [m["secure"]["survivors"] for m in lines[1:]] == [[8, 9, 10, 11, 12]] * 2
    assert lines[1]["secure"]["key_setup"] == 5  # the group re-keyed, the healed site too


@pytest.mark.ray
def test_vendor_site_lost_after_its_masked_input_is_recovered_then_rejoins(
        sites: dict[str, Path]) -> None:
    """Five vendor sites; in round 2 one site's worker process is SIGKILLed after its
    masked input left: its input stays in the sum (its self mask is recovered from the
    other sites' shares, SecAgg's dropout at unmask) and the round completes. Its
    recreated worker holds none of the group's amortised keys, so it sits round 3 out
    (a dropout again, which makes the server re-key) and is back in round 4: one
    contribution per global model, never two."""
    lines, _ = _lossy_job(sites, "lossy-unmask", vendor_sites=5, rounds=4,
                          kill=("2", "train", "9", "sigkill"))

    assert [m["round"] for m in lines] == [1, 2, 3, 4]
    assert not any("aborted" in m for m in lines), [m.get("aborted") for m in lines]
    second, third = lines[1]["secure"], lines[2]["secure"]
    assert second["survivors"] == [8, 9, 10, 11, 12] and second["unresponsive"] == [9]
    assert third["survivors"] == [8, 10, 11, 12] and third["dropped"] == [9]
    assert lines[3]["secure"]["survivors"] == [8, 9, 10, 11, 12]
    losses = [m["loss"] for m in lines]
    assert all(np.isfinite(losses)) and losses == sorted(losses, reverse=True)


@pytest.mark.ray
def test_vendor_site_lost_below_min_group_aborts_the_round_and_keeps_the_model(
        sites: dict[str, Path]) -> None:
    """Three vendor sites (min_group 3); one site's actor is killed after round 1's
    unmask: round 2 has two masked inputs, too few, so it aborts with the reason in its
    metrics and the model unchanged. Round 3 starts from that same global model, to
    which two of the vendor's sites already sent masked inputs: the vendor's policy
    refuses a second contribution to one global model (a recreated site's or any), so
    round 3 goes on without the vendor (its sites dropped, the reason in the metrics)."""
    lines, _ = _lossy_job(sites, "lossy-abort", vendor_sites=3,
                          kill=("1", "unmask", "10", "kill"))

    assert [m["round"] for m in lines] == [1, 2, 3]
    assert "aborted" not in lines[0] and lines[0]["secure"]["survivors"] == [8, 9, 10]
    assert "only 2 masked inputs, min_group is 3" in lines[1]["aborted"], lines[1]["aborted"]
    # the model is unchanged by the aborted round: the same held-out figures as round 1's
    assert (lines[1]["loss"], lines[1]["accuracy"]) == (lines[0]["loss"], lines[0]["accuracy"])
    declined = lines[2]
    assert "aborted" not in declined and declined["dropped"] == [8, 9, 10]
    assert "already contributed to global model" in \
        declined["placement"]["silo"]["vendor"]["absent"]


@pytest.mark.ray
def test_remote_vendor_on_its_own_token_auth_ray_cluster_same_weights(
        sites: dict[str, Path], tmp_path: Path) -> None:
    """`silo serve --ray-address` joins the vendor's own `ray start --head` cluster
    (loopback, token authentication on) through the cluster package's connect path:
    the sites run on that cluster's workers, not under the gateway, and the job gives
    the same weights as the embedded run."""
    from tests.cluster.test_real_cluster import env_for, free_port, run

    token, state = tmp_path / "token", tmp_path / "state"
    port = free_port()
    env = env_for(token)
    try:
        head = run(["fedcollab.cluster.cli", "head", "--port", str(port), "--node-ip-address",
                    "127.0.0.1", "--num-cpus", "3", "--token-file", str(token),
                    "--state-dir", str(state)], env)
        assert head.returncode == 0, head.stdout + head.stderr
        coordinator, address = _start_coordinator(sites, "on-cluster")
        vendor = _start_vendor(sites, address, "on-cluster-state", "--ray-address",
                               f"127.0.0.1:{port}", "--token-file", str(token),
                               "--worker-per-site",
                               env={**_env(), **{k: v for k, v in env_for().items()
                                                 if k != "PYTHONPATH"}})
        workers = 0
        while vendor.poll() is None:
            workers = max(workers, len(_site_workers(vendor.pid)))
            time.sleep(0.25)
        v_out, v_err = vendor.communicate(timeout=240)
        coordinator.communicate(timeout=240)
    finally:
        stopped = run(["fedcollab.cluster.cli", "stop", "--state-dir", str(state)], env)
        assert stopped.returncode == 0, stopped.stderr

    assert vendor.returncode == 0, v_err[-3000:]
    assert coordinator.returncode == 0, (sites["coord"] / "on-cluster.err").read_text()
    assert "0 refused" in v_out and workers == 0  # the cluster's workers, not the gateway's
    coord = sites["coord"]
    embedded = json.loads((coord / "embedded" / "release" / "manifest.json").read_text())
    remote = json.loads((coord / "on-cluster" / "release" / "manifest.json").read_text())
    assert remote["weights_sha256"] == embedded["weights_sha256"]


def test_silo_serve_ray_address_without_spec_is_a_usage_error(sites: dict[str, Path]) -> None:
    pki = sites["pki"]
    done = subprocess.run(
        [sys.executable, "-m", "fedcollab.cli", "silo", "serve", "--policy",
         "vendor-policy.yaml", "--coordinator", "127.0.0.1:1", "--cert",
         str(pki / "vendor.pem"), "--key", str(pki / "vendor.key"), "--coordinator-ca",
         str(pki / "ca.pem"), "--ray-address", "127.0.0.1:6379"],
        cwd=sites["vendor"], env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "fedcollab: error: silo serve: --ray-address and --token-file need --spec and the ray "
        "transport (the sites run on Ray only then)"]
