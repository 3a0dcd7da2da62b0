"""Callbacks: metrics lines, the commit order of checkpoints, plots; reading a commit back."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab.job.callbacks import (
    CallbackList,
    Checkpointer,
    MetricsLog,
    RoundCallback,
    SummaryFile,
    write_plots,
)
from fedcollab.job.records import RoundRecord, Summary
from fedcollab.job.run import JobResult, _read_committed
from tests.job.test_records import KNOWN


def _record(r: int) -> RoundRecord:
    return RoundRecord(round=r, participants=2, loss=1.0 / r, accuracy=0.1 * r, trained=2,
                       accepted=2)


class _FakePool:
    committed = 0

    def save_private(self, round_id: int) -> Callable[[], None]:
        return lambda: None

    def commit(self, round_id: int) -> None:
        self.committed = round_id


class _FakeLoop:
    pool = _FakePool()

    def __init__(self) -> None:
        self.weights = [np.zeros(2, np.float32)]

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"w0": self.weights[0].copy()},
                {"bytes_up": 0, "bytes_down": 0, "rejected_total": 0})


def test_metrics_log_appends_one_json_line_per_round(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    for r in (1, 2):
        log.on_round_end(_record(r))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2] and lines[1]["accuracy"] == 0.2


def test_checkpointer_commits_each_round_and_keeps_the_last_two(tmp_path: Path) -> None:
    loop = _FakeLoop()
    ckpt = Checkpointer(tmp_path, loop, keep=2)  # type: ignore[arg-type]
    for r in (1, 2, 3):
        loop.weights = [np.full(2, r, np.float32)]
        MetricsLog(tmp_path).on_round_end(_record(r))
        ckpt.on_round_end(_record(r))
    ckpt.close()
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest == {"round": 3, "file": "round-00003.npz"}
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("round-*.npz")) == [
        "round-00002.npz", "round-00003.npz"]
    assert loop.pool.committed == 3


class _DiskFullPool(_FakePool):
    """Round 2's private save fails on its worker (what WorkerPool raises then)."""

    def save_private(self, round_id: int) -> Callable[[], None]:
        from fedcollab.worker.hosting import private_save_failed

        def wait() -> None:
            if round_id == 2:
                raise private_save_failed(2, self.committed, OSError(28, "No space left"))
        return wait


def test_checkpointer_stops_the_job_at_the_round_after_a_failed_commit(tmp_path: Path) -> None:
    """A commit that failed on the writer thread is raised at the next round's end (it
    was dropped with the finished futures, and the job went on with its checkpoints
    stuck at the last good round); nothing after the failed round is committed."""
    import time

    from fedcollab.errors import CheckpointError

    loop = _FakeLoop()
    loop.pool = _DiskFullPool()  # type: ignore[assignment]
    ckpt = Checkpointer(tmp_path, loop)  # type: ignore[arg-type]
    for r in (1, 2):
        MetricsLog(tmp_path).on_round_end(_record(r))
        ckpt.on_round_end(_record(r))
    deadline = time.monotonic() + 30
    while not all(f.done() for f in ckpt._pending) and time.monotonic() < deadline:
        time.sleep(0.01)

    with pytest.raises(CheckpointError, match="after round 2 failed.*last saved round is 1"):
        ckpt.on_round_end(_record(3))
    ckpt.close()

    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest["round"] == 1 and loop.pool.committed == 1


def test_read_committed_drops_later_rounds_and_a_torn_line(tmp_path: Path) -> None:
    loop = _FakeLoop()
    ckpt = Checkpointer(tmp_path, loop)  # type: ignore[arg-type]
    for r in (1, 2):
        MetricsLog(tmp_path).on_round_end(_record(r))
        ckpt.on_round_end(_record(r))
    ckpt.close()
    MetricsLog(tmp_path).on_round_end(_record(3))             # written, never committed
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"round": 4, "participants": 2, "lo')  # a crash mid-append

    committed = _read_committed(tmp_path)

    assert committed is not None and committed.round == 2
    assert [m["round"] for m in committed.history] == [1, 2]
    assert committed.uncommitted == 1  # round 3 ran (a DP ledger must count it)
    rounds = [json.loads(x)["round"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]


def test_callback_list_calls_in_order() -> None:
    seen: list[str] = []

    class Named(RoundCallback):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_round_end(self, record: RoundRecord) -> None:
            seen.append(self.name)

    CallbackList([Named("a"), Named("b")]).on_round_end(_record(1))
    assert seen == ["a", "b"]


def test_summary_file_writes_the_record_with_the_wall_time_and_leaves_the_result(
        tmp_path: Path) -> None:
    import time

    record = Summary(**KNOWN)
    result = JobResult.of(tmp_path, record, [], [], [])
    assert result.summary == record.to_json() and result.record is record
    SummaryFile(tmp_path, wall_start=time.perf_counter() - 100.0).on_job_end(result)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["wall_seconds"] >= 100.0
    assert {**written, "wall_seconds": KNOWN["wall_seconds"]} == KNOWN
    assert result.summary["wall_seconds"] == KNOWN["wall_seconds"]  # the result is as it was


def test_write_plots_titles_and_integer_round_ticks(tmp_path: Path) -> None:
    import matplotlib.image

    metrics = [_record(r).to_json() for r in range(1, 11)]
    write_plots(tmp_path, metrics)
    for name in ("accuracy.png", "loss.png"):
        image = matplotlib.image.imread(tmp_path / "plots" / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_round_progress_off_a_terminal_is_a_plain_line_per_round_unless_quiet(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcollab.job.callbacks import RoundProgress

    def run(quiet: bool, every: float) -> list[str]:
        monkeypatch.setattr(RoundProgress, "PLAIN_EVERY_S", every)
        with RoundProgress(3, quiet=quiet) as bar:  # stderr is captured: not a terminal
            for r in (1, 2, 3):
                bar.update({"round": r, "accuracy": 0.5 + r / 10, "loss": 1.0, "seconds": 0.1})
        return capsys.readouterr().err.splitlines()

    said = run(quiet=False, every=0.0)
    assert [x.split(", ")[0] for x in said] == [
        "fedcollab: round 1/3: accuracy 0.6000", "fedcollab: round 2/3: accuracy 0.7000",
        "fedcollab: round 3/3: accuracy 0.8000"]
    assert all(x.endswith(" s elapsed") for x in said)
    # a fast job: the first and the last round only
    assert [x.split(":")[1] for x in run(quiet=False, every=3600.0)] == [" round 1/3",
                                                                          " round 3/3"]
    assert run(quiet=True, every=0.0) == []
