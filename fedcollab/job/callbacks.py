"""What a job leaves behind, as callbacks on the round loop (Keras-style).

Each output is a :class:`RoundCallback`: ``metrics.jsonl`` (:class:`MetricsLog`),
checkpoints (:class:`Checkpointer`), TensorBoard scalars (:class:`TensorBoardLog`),
the progress bar (:class:`ProgressBar`), plots (:class:`Plots`) and
``summary.json`` (:class:`SummaryFile`). A user's own callbacks go in the same
:class:`CallbackList` and see the same frozen records.

A round is **committed** when ``checkpoints/latest.json`` names it, and that file
is written last: after the round's metrics line is on disk, the vendor workers have
saved their private layers for that round, and the global checkpoint (weights,
server-optimiser state, DP ledger) is written atomically. A resumed job continues
from the committed round and drops anything written after it.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Protocol

from fedcollab.io import atomic_save_npz, atomic_write_json
from fedcollab.job.records import JobInfo

if TYPE_CHECKING:
    import numpy as np

    from fedcollab.job.records import RoundRecord
    from fedcollab.worker.messages import Pool

__all__ = ["JobInfo", "RoundCallback", "CallbackList", "MetricsLog", "Checkpointer",
           "TensorBoardLog", "ProgressBar", "Plots", "SummaryFile", "write_plots"]


class RoundCallback:
    """Base class: override what you need. Exceptions propagate and stop the job."""

    def on_job_begin(self, job: JobInfo) -> None:
        """Before the first round of this run."""

    def on_round_end(self, record: RoundRecord) -> None:
        """After each round, in order."""

    def on_job_end(self, result: Any) -> None:
        """After the last round, with the :class:`~fedcollab.job.run.JobResult`."""


class CallbackList(RoundCallback):
    """Calls each callback in order."""

    def __init__(self, callbacks: Iterable[RoundCallback] = ()) -> None:
        self.callbacks = list(callbacks)

    def append(self, callback: RoundCallback) -> None:
        self.callbacks.append(callback)

    def on_job_begin(self, job: JobInfo) -> None:
        for cb in self.callbacks:
            cb.on_job_begin(job)

    def on_round_end(self, record: RoundRecord) -> None:
        for cb in self.callbacks:
            cb.on_round_end(record)

    def on_job_end(self, result: Any) -> None:
        for cb in self.callbacks:
            cb.on_job_end(result)


class MetricsLog(RoundCallback):
    """Appends one JSON line per round to ``metrics.jsonl``."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"

    def on_round_end(self, record: RoundRecord) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record.to_json(), allow_nan=False) + "\n")


class Snapshots(Protocol):
    """What :class:`Checkpointer` commits: the round loop's state and its pool."""

    pool: Pool

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        ...


class Checkpointer(RoundCallback):
    """Commits every round: private layers, global checkpoint, then ``latest.json``.

    The workers' private-layer saves are requested on the caller's thread (so they
    run before the next round trains); the rest is written by one background thread,
    in round order, so the disk never stalls a round.
    """

    def __init__(self, out_dir: Path, loop: Snapshots, *, keep: int = 2) -> None:
        self.dir = Path(out_dir) / "checkpoints"
        self.metrics = Path(out_dir) / "metrics.jsonl"
        self.loop = loop
        self.keep = keep
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                             thread_name_prefix="checkpoint")
        self._pending: list[concurrent.futures.Future[None]] = []

    def on_round_end(self, record: RoundRecord) -> None:
        round_id = record.round
        pool = self.loop.pool
        saved = pool.save_private(round_id)
        arrays, meta = self.loop.snapshot()
        meta["round"] = round_id

        def commit() -> None:
            saved()
            name = f"round-{round_id:05d}.npz"
            atomic_save_npz(self.dir / name, arrays, meta=meta)
            if self.metrics.exists():
                with self.metrics.open("rb") as handle:
                    os.fsync(handle.fileno())
            atomic_write_json(self.dir / "latest.json", {"round": round_id, "file": name})
            pool.commit(round_id)
            for old in sorted(self.dir.glob("round-*.npz"))[:-self.keep]:
                old.unlink(missing_ok=True)

        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()  # a round that failed to commit stops the job here, once
        self._pending.append(self._writer.submit(commit))

    def flush(self) -> None:
        """Wait until every round handed over so far is committed (raises its error)."""
        for future in self._pending:
            future.result()
        self._pending.clear()

    def on_job_end(self, result: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._writer.shutdown(wait=True)


_EVENT_FILES = itertools.count()


class TensorBoardLog(RoundCallback):
    """Scalars per round as a TensorBoard event file, written without TensorFlow.

    TensorBoard's own ``EventFileWriter`` opens its file through ``tf.io.gfile``, and
    importing it imports TensorFlow (the slowest import there is, for the driver's
    only use of it); its ``RecordWriter`` (the TFRecord framing with masked
    CRC32C) and the ``Event`` protos are TensorFlow-free, so they write the same
    file here, flushed at most every :attr:`FLUSH_SECONDS` and at the job's end.
    """

    KEYS = ("accuracy", "loss", "vendor_accuracy", "vendor_loss", "seconds", "bytes_up",
            "epsilon")

    #: The file is flushed at the end of a round that comes this long after the last
    #: flush, and when the job ends (or fails).
    FLUSH_SECONDS = 1.0

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir) / "tensorboard"
        self._writer: Any = None
        self._flushed = -float("inf")

    def on_job_begin(self, job: JobInfo) -> None:
        import socket

        from tensorboard.compat.proto.event_pb2 import Event, SourceMetadata
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.dir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_EVENT_FILES)}")  # a resumed job adds a file
        self._writer = RecordWriter(open(self.dir / name, "wb"))  # noqa: SIM115 - closed in close()
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2",
                          source_metadata=SourceMetadata(writer="fedcollab")))

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())
        now = time.monotonic()
        if now - self._flushed >= self.FLUSH_SECONDS:  # a flush a round shows in small rounds
            self._writer.flush()
            self._flushed = now

    def on_round_end(self, record: RoundRecord) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        line = record.to_json()
        values = [Summary.Value(tag=k, simple_value=float(line[k])) for k in self.KEYS
                  if isinstance(line.get(k), (int, float))]
        self._write(Event(wall_time=time.time(), step=int(record.round),
                          summary=Summary(value=values)))

    def on_job_end(self, result: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ProgressBar(RoundCallback):
    """A rich progress bar: rounds done, the latest accuracy (or loss), s/round; plain
    lines when stderr is not a terminal (see :class:`RoundProgress`). Off with ``quiet``.
    """

    def __init__(self, rounds: int, *, enabled: Optional[bool] = None, quiet: bool = False,
                 classification: bool = True, wall_start: Optional[float] = None) -> None:
        self._bar = RoundProgress(rounds, enabled=enabled, quiet=quiet,
                                  classification=classification, wall_start=wall_start)

    def on_job_begin(self, job: JobInfo) -> None:
        self._bar.__enter__()
        self._bar.advance_to(job.start_round - 1)

    def on_round_end(self, record: RoundRecord) -> None:
        self._bar.update(record.to_json())

    def on_job_end(self, result: Any) -> None:
        self.close()

    def close(self) -> None:
        self._bar.__exit__(None, None, None)


def write_plots(out: Path, metrics: Sequence[dict[str, Any]]) -> None:
    """``plots/accuracy.png`` and ``plots/loss.png``: the global model (and the vendor's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [m["round"] for m in metrics]
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for key, label in (("accuracy", "test accuracy"), ("loss", "test loss")):
        values = [m.get(key) for m in metrics]
        if not any(v is not None for v in values):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(rounds, [float("nan") if v is None else v for v in values], marker="o",
                label="global model")
        vendor = [m.get(f"vendor_{key}") for m in metrics]
        if any(v is not None for v in vendor):
            ax.plot(rounds, [float("nan") if v is None else v for v in vendor], marker=".",
                    linestyle="--", label="vendor (private layers)")
        ax.set_title(f"{label} per round")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = plots / f".{key}.png.tmp"
        fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        tmp.replace(plots / f"{key}.png")


class Plots(RoundCallback):
    """Writes the plots once the job ends."""

    def __init__(self, out_dir: Path) -> None:
        self.out = Path(out_dir)

    def on_job_end(self, result: Any) -> None:
        write_plots(self.out, result.metrics)


class SummaryFile(RoundCallback):
    """Writes ``summary.json`` (atomically) once the job ends; it is written last."""

    def __init__(self, out_dir: Path, *, wall_start: float) -> None:
        self.path = Path(out_dir) / "summary.json"
        self.wall_start = wall_start

    def on_job_end(self, result: Any) -> None:
        """Writes ``result.record`` (the job's :class:`~fedcollab.job.records.Summary`)
        with the wall time until now."""
        record = replace(result.record, wall_seconds=time.perf_counter() - self.wall_start)
        atomic_write_json(self.path, record.to_json())


def stderr_progress(label: str, fields: Sequence[str]) -> Any:
    """A rich progress display on stderr: the bold ``label`` (rich markup, e.g. a task's
    ``{task.description}``), done/total, a bar, each task field in ``fields``, and the
    time elapsed."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(f"[bold]{label}"), MofNCompleteColumn(), BarColumn(),
                    *(TextColumn(f"{{task.fields[{name}]}}") for name in fields),
                    TimeElapsedColumn(), console=Console(stderr=True))


class RoundProgress:
    """Shows rounds done, the latest accuracy (or loss) and seconds per round.

    On a terminal, a rich bar. When stderr is not a terminal (CI, ``kubectl logs``, a
    log file) and ``enabled`` is None, plain lines instead:
    ``fedcollab: round 3/20: accuracy 0.9120, 12.3 s elapsed``, one per round but at
    most one every :attr:`PLAIN_EVERY_S` seconds (the first and last rounds always),
    the time elapsed since ``wall_start`` (a ``time.perf_counter()``; default: since the
    rounds began). Off with ``quiet`` or ``enabled=False``.
    """

    #: The fewest seconds between two plain progress lines.
    PLAIN_EVERY_S = 5.0

    def __init__(self, rounds: int, *, enabled: Optional[bool] = None, quiet: bool = False,
                 classification: bool = True, wall_start: Optional[float] = None) -> None:
        self.rounds = rounds
        self.wall_start = wall_start
        self.enabled = (not quiet) and (sys.stderr.isatty() if enabled is None else enabled)
        self.plain = not quiet and enabled is None and not self.enabled
        self.classification = classification
        self._progress: Any = None
        self._task: Any = None
        self._t0 = time.perf_counter() if wall_start is None else wall_start
        self._said: Optional[float] = None

    def _say(self, line: dict[str, Any]) -> None:
        now = time.perf_counter()
        first, last = self._said is None, line["round"] >= self.rounds
        if not (first or last or now - (self._said or 0.0) >= self.PLAIN_EVERY_S):
            return
        self._said = now
        if self.classification and line.get("accuracy") is not None:
            metric = f"accuracy {line['accuracy']:.4f}"
        else:
            metric = f"loss {line['loss']:.4f}"
        print(f"fedcollab: round {line['round']}/{self.rounds}: {metric}, "
              f"{now - self._t0:.1f} s elapsed", file=sys.stderr, flush=True)

    def __enter__(self) -> "RoundProgress":
        if self.wall_start is None:
            self._t0 = time.perf_counter()
        if self.enabled:
            self._progress = stderr_progress("round", ["metric", "speed"])
            self._progress.__enter__()
            self._task = self._progress.add_task("rounds", total=self.rounds, metric="",
                                                 speed="")
        return self

    def advance_to(self, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)

    def update(self, line: dict[str, Any]) -> None:
        if self.plain:
            self._say(line)
        if self._progress is None:
            return
        if self.classification and line.get("accuracy") is not None:
            metric = f"acc {line['accuracy']:.3f}"
        else:
            metric = f"loss {line['loss']:.4f}"
        self._progress.update(self._task, completed=line["round"], metric=metric,
                              speed=f"{line['seconds']:.2f} s/round")

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
