"""The runner's bookkeeping with real processes and a real store: a job's state and
its result.json agree, whatever way its process ends; the hub that wakes watchers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedcollab.service.jobproc import autogroup, parse_autogroup
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


# ------------------------------------------------------------------ Hub.changed
def test_hub_changed_publish_from_another_thread_wakes_every_waiter() -> None:
    hub = Hub()

    async def scenario() -> list[bool]:
        waits = [asyncio.ensure_future(hub.changed("j", 0, timeout=30.0)) for _ in range(100)]
        await asyncio.sleep(0)  # all of them waiting
        threading.Thread(target=hub.publish, args=("j",)).start()
        done, _ = await asyncio.wait(waits, timeout=5.0)
        return [w in done for w in waits]

    assert all(asyncio.run(scenario()))
    assert hub._waiters == {}


def test_hub_changed_many_waiters_share_one_timer_that_wakes_them() -> None:
    hub = Hub()

    async def scenario() -> tuple[int, int, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        waits = [asyncio.ensure_future(hub.changed("j", 0, timeout=0.2)) for _ in range(500)]
        await asyncio.sleep(0)
        timers = len(loop._scheduled)  # type: ignore[attr-defined]  (asyncio's timer heap)
        await asyncio.wait_for(asyncio.gather(*waits), timeout=5.0)
        return timers, len(hub._waiters), loop.time() - t0

    timers, left, seconds = asyncio.run(scenario())

    assert timers == 1  # not one per waiter
    assert left == 0
    assert 0.15 <= seconds < 2.0


def test_hub_changed_stale_version_returns_at_once() -> None:
    hub = Hub()
    hub.publish("j")

    async def scenario() -> None:
        await asyncio.wait_for(hub.changed("j", 0, timeout=30.0), timeout=1.0)

    asyncio.run(scenario())
    assert hub._waiters == {}


def test_hub_changed_cancelled_waiters_leave_nothing_behind() -> None:
    hub = Hub()

    async def scenario() -> tuple[int, int, bool]:
        loop = asyncio.get_running_loop()
        stay = asyncio.ensure_future(hub.changed("j", 0, timeout=30.0))
        gone = [asyncio.ensure_future(hub.changed("j", 0, timeout=30.0)) for _ in range(10)]
        await asyncio.sleep(0)
        for g in gone:
            g.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        waiting = len(hub._waiters["j"][(loop, 30.0)].futures)
        stay.cancel()  # the last one: the group goes, and its timer with it
        await asyncio.gather(stay, return_exceptions=True)
        live_timers = sum(not t.cancelled() for t in loop._scheduled)  # type: ignore[attr-defined]
        hub.publish("j")  # nobody left to wake; must not fail
        return waiting, live_timers, stay.cancelled()

    waiting, live_timers, cancelled = asyncio.run(scenario())

    assert waiting == 1
    assert live_timers == 0
    assert cancelled
    assert hub._waiters == {}


def test_hub_changed_publish_disarms_the_timer() -> None:
    hub = Hub()

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        waits = [asyncio.ensure_future(hub.changed("j", 0, timeout=30.0)) for _ in range(3)]
        await asyncio.sleep(0)
        hub.publish("j")
        await asyncio.wait_for(asyncio.gather(*waits), timeout=5.0)
        return sum(not t.cancelled() for t in loop._scheduled)  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == 0


@pytest.mark.skipif(autogroup() is None,
                    reason="no scheduler autogroups shown by this kernel")
def test_lower_priority_lowers_the_autogroup_of_a_process_in_its_own_session() -> None:
    """A job process is started in a session of its own, so it has an autogroup of its
    own; the CPU is shared between autogroups by their nice, so lowering only the
    process's nice left it level with the service."""
    code = ("from fedcollab.service.jobproc import autogroup, lower_priority; "
            "lower_priority(7); import os; "
            "print(os.getpriority(os.PRIO_PROCESS, 0), *autogroup())")
    mine = autogroup()
    assert mine is not None
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, start_new_session=True).stdout.split()
    assert int(out[0]) == min(os.getpriority(os.PRIO_PROCESS, 0) + 7, 19)
    assert out[2] == "7"
    assert out[1] != mine[0]  # its own group: this process's autogroup is left as it was
    assert autogroup() == mine


def test_autogroup_reads_none_where_the_kernel_shows_no_group() -> None:
    """A sandboxed kernel may present an empty or odd autogroup file (CI's did): that is
    "no autogroup", never an IndexError in the service or its tests."""
    assert autogroup(2 ** 22 + 12345) is None  # above pid_max's default: no such process
    for text in ("", "\n", "/autogroup-7", "/autogroup-7 nice", "/autogroup-7 nice x",
                 "/autogroup-7 prio 3", "/autogroup-7 nice 3 extra"):
        assert parse_autogroup(text) is None, text
    assert parse_autogroup("/autogroup-1667 nice -2\n") == ("/autogroup-1667", -2)
    group = autogroup()
    assert group is None or (group[0].startswith("/autogroup-") and -20 <= group[1] <= 19)
