"""An embedded Ray hands its workers the worker environment without a runtime_env."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray]

CODE = """
import json, os
from fedcollab.cluster.connect import connect, worker_env
with connect(None, num_cpus=1) as ray:
    @ray.remote(num_cpus=1)
    class Probe:
        def env(self):
            return {k: os.environ.get(k) for k in worker_env()}
    seen = ray.get(Probe.remote().env.remote())
print(json.dumps({"worker": seen, "driver": {k: os.environ.get(k) for k in worker_env()}}))
"""


def test_embedded_workers_get_the_worker_environment_and_the_driver_keeps_its_own() -> None:
    from fedcollab.cluster.connect import worker_env

    env = {k: v for k, v in os.environ.items()
           if k not in worker_env() and not k.startswith("RAY_")}
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["worker"] == worker_env()
    assert all(v is None for v in seen["driver"].values())  # restored after Ray started


RETRY = """
import ray
from fedcollab.cluster.connect import connect

real, calls = ray.init, []

def init(**kwargs):  # the first start hangs as a forked GCS sometimes does
    calls.append(kwargs["address"])
    if len(calls) == 1:
        raise RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port")
    return real(**kwargs)

ray.init = init
with connect(None, num_cpus=1) as ray:
    print(len(calls), sum(ray.get([ray.remote(lambda: 1).remote()])))
"""


def test_embedded_start_that_times_out_is_started_again() -> None:
    result = subprocess.run([sys.executable, "-c", RETRY], capture_output=True, text=True,
                            cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["2", "1"]  # started twice, then it ran a task
