"""The runner's bookkeeping with real processes and a real store: a job's state and
its result.json agree, whatever way its process ends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcollab.service.runner import Hub, Runner, _Running
from fedcollab.service.store import JobStore

from .conftest import TINY_SPEC


def _running(
    tmp_path: Path, code: str, *, result: dict[str, object] | None, kind: str = "run"
) -> tuple[Runner, JobStore, str]:
    store = JobStore(tmp_path / "jobs.sqlite")
    runner = Runner(store, tmp_path, Hub(), max_concurrent=0)
    job, _ = store.create(kind=kind, name="t", owner="o", rounds=3, spec=TINY_SPEC)
    job_dir = tmp_path / "jobs" / job.id
    job_dir.mkdir(parents=True)
    (job_dir / "result.json").write_text(json.dumps({"ok": False, "error": "old attempt"}))
    runner._prepare_dir(job, job_dir)  # a new attempt: the old result is gone
    assert not (job_dir / "result.json").exists()
    if result is not None:
        (job_dir / "result.json").write_text(json.dumps(result))
    store.transition(job.id, ["QUEUED"], "RUNNING", started=time.time(), attempts=1)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    proc.wait(30)
    runner._finish(_Running(store.get(job.id), proc, job_dir), proc.returncode)
    return runner, store, job.id


@pytest.mark.parametrize(
    ("code", "result", "state"),
    [
        ("pass", {"ok": True, "error": ""}, "SUCCEEDED"),
        ("pass", None, "FAILED"),  # exit 0, no result
        ("pass", {"ok": False, "error": "diverged"}, "FAILED"),  # exit 0, failed result
        ("import os; os._exit(7)", {"ok": True, "error": ""}, "FAILED"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", None, "FAILED"),
    ],
)
def test_finish_state_agrees_with_result(
    tmp_path: Path, code: str, result: dict[str, object] | None, state: str
) -> None:
    _, store, job_id = _running(tmp_path, code, result=result)

    job = store.get(job_id)
    written = json.loads((tmp_path / "jobs" / job_id / "result.json").read_text())

    assert job.state == state
    assert written["ok"] is (state == "SUCCEEDED")
    assert (job.error == "") is (state == "SUCCEEDED")


def test_runner_token_at_its_running_quota_waits_while_others_start(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    runner = Runner(store, tmp_path, Hub(), max_concurrent=3)
    quota = {"max_running": 1}
    first = store.create(kind="run", name="t", owner="alice", owner_id="id:a", rounds=1,
                         params=quota, priority=3)[0]
    second = store.create(kind="run", name="t", owner="alice", owner_id="id:a", rounds=1,
                          params=quota, priority=3)[0]
    other = store.create(kind="run", name="t", owner="bob", owner_id="id:b", rounds=1)[0]
    store.transition(first.id, ["QUEUED"], "RUNNING")
    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    proc.wait(30)
    runner._running[first.id] = _Running(store.get(first.id), proc, tmp_path / first.id)

    waiting = store.next_queued(3, skip_owners=runner._at_quota())

    assert runner._at_quota() == ["id:a"]
    assert [job.id for job in waiting] == [other.id]  # alice's second outranks bob's, but waits
    del runner._running[first.id]
    assert [job.id for job in store.next_queued(3, skip_owners=runner._at_quota())] == \
        [second.id, other.id]


def test_runner_warm_pool_defaults_to_one_per_slot(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")

    assert Runner(store, tmp_path, Hub(), max_concurrent=3).warm_runners == 3
    assert Runner(store, tmp_path, Hub(), max_concurrent=3, warm_runners=1).warm_runners == 1
