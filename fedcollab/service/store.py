"""The job store: one sqlite database in WAL mode under the state directory.

Every state change is one ``UPDATE ... WHERE state IN (...)``: it happens or it
does not, so two threads (a cancel and the runner reaping the process) never
both win, and a crash leaves each job in exactly one state. WAL lets readers
(GetJob, ListJobs, WatchJob) run while the runner writes.
"""
from __future__ import annotations

import builtins
import json
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from fedcollab.service.errors import InvalidArgument, NotFound, ResourceExhausted

__all__ = ["STATES", "TERMINAL", "JobRecord", "JobStore"]

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    rounds INTEGER NOT NULL DEFAULT 0,
    rounds_completed INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL NOT NULL DEFAULT 0,
    finished REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    summary TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL DEFAULT '',
    owner_id TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
"""
_INDEXES = """CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner_id, state);
CREATE INDEX IF NOT EXISTS jobs_owner_seq ON jobs(owner_id, seq);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(state, priority DESC, seq);"""


#: Every column but the spec text, which only the runner reads (`JobStore.spec`).
_COLUMNS = ("seq, id, kind, name, owner, state, rounds, rounds_completed, created, started, "
            "finished, error, attempts, idempotency_key, params, summary, owner_id, priority")


@dataclass(frozen=True)
class JobRecord:
    seq: int
    id: str
    kind: str
    name: str
    owner: str
    state: str
    rounds: int
    rounds_completed: int
    created: float
    started: float
    finished: float
    error: str
    attempts: int
    idempotency_key: Optional[str]
    params: dict[str, Any]
    summary: str
    owner_id: str = ""
    priority: int = 0  # the submitting token's: higher starts first

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "JobRecord":
        data = dict(row)
        data["params"] = json.loads(data["params"] or "{}")
        return cls(**data)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL


def _private(path: Path) -> None:
    """The store and its WAL files are the service's alone: 0600."""
    for suffix in ("", "-wal", "-shm"):
        try:
            path.with_name(path.name + suffix).chmod(0o600)
        except FileNotFoundError:
            pass


class JobStore:
    """Thread-safe access to ``jobs.sqlite``.

    Writes go through one connection under a lock; reads use a connection per
    thread, so GetJob never waits behind a writer's fsync (WAL readers see the
    last committed state).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # sqlite gives its -wal and -shm files the database file's mode: make it 0600
        # before sqlite creates it.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "spec" not in columns:  # a state directory from before specs lived here
            self._db.execute("ALTER TABLE jobs ADD COLUMN spec TEXT NOT NULL DEFAULT ''")
        if "owner_id" not in columns:  # jobs from before tokens had ids: owned by name
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner_id TEXT NOT NULL DEFAULT ''")
            self._db.execute("UPDATE jobs SET owner_id='name:' || owner")
        if "priority" not in columns:  # jobs from before priorities: all equal
            self._db.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
        self._db.executescript(_INDEXES)
        _private(self.path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        # GetJob's records, written through: only this store writes the file, and each
        # write drops its job's record once committed (see get). Its own lock: the
        # writer's is held across fsyncs, which GetJob must never wait for.
        self._records: OrderedDict[str, JobRecord] = OrderedDict()
        self._records_lock = threading.Lock()
        self._generation = 0

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=30)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._db.close()

    def _one(self, sql: str, args: Sequence[Any], *,
             conn: Optional[sqlite3.Connection] = None) -> Optional[JobRecord]:
        row = (conn or self._db).execute(sql, args).fetchone()
        return JobRecord.from_row(row) if row is not None else None

    def create(self, *, kind: str, name: str, owner: str, rounds: int,
               idempotency_key: Optional[str] = None,
               params: Optional[dict[str, Any]] = None,
               spec: str = "", owner_id: str = "", priority: int = 0,
               max_queued: Optional[int] = None) -> tuple[JobRecord, bool]:
        """Insert a QUEUED job with its spec text; returns (job, created). An
        idempotency key the same owner used before returns that job instead
        (created False).

        One transaction, one fsync: the job and its spec are both stored or neither.

        Raises:
            ResourceExhausted: the owner has `max_queued` jobs QUEUED already (checked
                in the same transaction, so concurrent submits cannot overshoot).
        """
        key = idempotency_key or None
        owner_id = owner_id or f"name:{owner}"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if key is not None:
                    found = self._one(f"SELECT {_COLUMNS} FROM jobs WHERE owner_id=? AND "
                                      "idempotency_key=?",
                                      (owner_id, key))
                    if found is not None:
                        self._db.execute("COMMIT")
                        return found, False
                if max_queued is not None:
                    queued = self._db.execute(
                        "SELECT COUNT(*) FROM jobs WHERE owner_id=? AND state='QUEUED'",
                        (owner_id,)).fetchone()[0]
                    if queued >= max_queued:
                        raise ResourceExhausted(
                            f"{owner} has {queued} jobs queued; the limit is {max_queued} per "
                            "token (serve --max-queued-per-token)")
                job_id = secrets.token_hex(6)
                self._db.execute(
                    "INSERT INTO jobs (id, kind, name, owner, state, rounds, created, "
                    "idempotency_key, params, spec, owner_id, priority) "
                    "VALUES (?, ?, ?, ?, 'QUEUED', ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, kind, name, owner, rounds, time.time(), key,
                     json.dumps(params or {}), spec, owner_id, int(priority)))
                record = self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        assert record is not None
        return record, True

    #: How many job records :meth:`get` keeps in memory (the most recently read).
    RECORDS = 4096

    def get(self, job_id: str) -> JobRecord:
        """The job's record, from memory when no write touched it since it was read.

        GetJob runs on the service's event loop, and a sqlite read there released the
        GIL and then waited to take it back behind the submit threads: a fifth of the
        loop's time under load went to reading one row. A read that overlapped any
        write is not kept (the generation moved), and every write drops its job's
        record after it commits, so a record served from memory is never older than
        the last committed write to it.

        Raises NotFound for an unknown id (never kept: a job may be created next).
        """
        with self._records_lock:
            record = self._records.get(job_id)
            if record is not None:
                self._records.move_to_end(job_id)
                return record
            generation = self._generation
        record = self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,),
                           conn=self._reader())
        if record is None:
            raise NotFound(f"no job {job_id!r}")
        with self._records_lock:
            if self._generation == generation:
                self._records[job_id] = record
                while len(self._records) > self.RECORDS:
                    self._records.popitem(last=False)
        return record

    def _written(self, job_id: Optional[str]) -> None:
        """After a committed write: drop the job's record (every record: None)."""
        with self._records_lock:
            self._generation += 1
            if job_id is None:
                self._records.clear()
            else:
                self._records.pop(job_id, None)

    def list(self, *, states: Iterable[str] = (), owner: Optional[str] = None,
             limit: int = 50, before_seq: Optional[int] = None) -> list[JobRecord]:
        """Newest first; `before_seq` continues a previous page; `owner` is an owner id.

        A page costs what it returns, not what the store holds: ListJobs runs on the
        service's event loop. Each state is read newest first from its own index and
        the pages merged (several states in one ``IN`` sorted every matching job: 14 ms
        for a page of two states out of 20,000 jobs), and an owner's jobs newest first
        from ``(owner_id, seq)`` (before it, all of the owner's jobs were sorted)."""
        wanted = list(dict.fromkeys(states))
        for state in wanted:
            if state not in STATES:
                raise InvalidArgument(f"unknown state {state!r}; expected one of "
                                      f"{', '.join(STATES)}")
        where, args = [], []  # type: list[str], list[Any]
        if owner is not None:
            where.append("owner_id=?")
            args.append(owner)
        if before_seq is not None:
            where.append("seq<?")
            args.append(before_seq)

        def page(extra: list[str], extra_args: list[Any]) -> tuple[str, list[Any]]:
            clauses = extra + where
            return (f"SELECT {_COLUMNS} FROM jobs"
                    + (" WHERE " + " AND ".join(clauses) if clauses else "")
                    + " ORDER BY seq DESC LIMIT ?", [*extra_args, *args, limit])

        if len(wanted) <= 1:
            sql, values = page(["state=?"] if wanted else [], wanted)
        else:
            parts = [page(["state=?"], [state]) for state in wanted]
            sql = (" UNION ALL ".join(f"SELECT * FROM ({part})" for part, _ in parts)
                   + " ORDER BY seq DESC LIMIT ?")
            values = [v for _, part_values in parts for v in part_values] + [limit]
        rows = self._reader().execute(sql, values).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def oldest(self, state: str, limit: int) -> builtins.list[JobRecord]:
        rows = self._reader().execute(f"SELECT {_COLUMNS} FROM jobs WHERE state=? ORDER BY seq "
                                      "LIMIT ?", (state, limit)).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def next_queued(self, limit: int, *, skip_owners: Iterable[str] = ()
                    ) -> builtins.list[JobRecord]:
        """The next `limit` QUEUED jobs to start: highest priority first, in submission
        order within a priority, leaving out the jobs of `skip_owners` (owner ids at
        their running quota)."""
        skip = list(skip_owners)
        where = f" AND owner_id NOT IN ({','.join('?' * len(skip))})" if skip else ""
        rows = self._reader().execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state='QUEUED'{where} "
            "ORDER BY priority DESC, seq LIMIT ?", (*skip, limit)).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def spec(self, job_id: str) -> str:
        """The spec text the job was submitted with ('' for a job stored before specs
        lived in the store: its job directory holds request.yaml)."""
        row = self._reader().execute("SELECT spec FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return str(row[0])

    def count_by_state(self) -> dict[str, int]:
        rows = self._reader().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {str(state): int(n) for state, n in rows.fetchall()}

    def count_state(self, state: str, at_most: Optional[int] = None) -> int:
        """Jobs in `state`, counted up to `at_most` (the runner asks after every
        submit whether a few are waiting: with thousands queued, counting them all
        was a tenth of the service's CPU under load)."""
        sql = "SELECT COUNT(*) FROM jobs WHERE state=?"
        args: list[Any] = [state]
        if at_most is not None:
            sql = "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE state=? LIMIT ?)"
            args.append(max(0, at_most))
        return int(self._reader().execute(sql, args).fetchone()[0])

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def transition(self, job_id: str, from_states: Iterable[str], to_state: str,
                   **fields: Any) -> bool:
        """Move a job to `to_state` if it is in one of `from_states` (atomically).

        Returns:
            True when this call made the change.
        """
        allowed = list(from_states)
        sets = ["state=?"] + [f"{k}=?" for k in fields]
        args: list[Any] = [to_state, *fields.values(), job_id, *allowed]
        sql = (f"UPDATE jobs SET {', '.join(sets)} WHERE id=? AND state IN "
               f"({','.join('?' * len(allowed))})")
        try:
            with self._lock:
                return self._db.execute(sql, args).rowcount == 1
        finally:
            self._written(job_id)

    def set_progress(self, job_id: str, rounds_completed: int) -> None:
        try:
            with self._lock:
                self._db.execute("UPDATE jobs SET rounds_completed=? WHERE id=?",
                                 (rounds_completed, job_id))
        finally:
            self._written(job_id)

    def recover(self) -> builtins.list[str]:
        """After a restart: jobs that were RUNNING go back to the queue (they resume)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state='RUNNING'").fetchall()
            self._db.execute("UPDATE jobs SET state='QUEUED' WHERE state='RUNNING'")
        self._written(None)
        return [r[0] for r in rows]
