"""The sqlite job store: WAL, atomic transitions, idempotency, paging, recovery."""
from __future__ import annotations

import secrets
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.service.errors import InvalidArgument, NotFound
from fedcollab.service.store import _SCHEMA, STATES, JobStore


def _new(store: JobStore, owner: str = "alice", key: str | None = None) -> str:
    job, _ = store.create(kind="run", name="tiny", owner=owner, rounds=3, idempotency_key=key)
    return job.id


def test_store_uses_wal_journal(tmp_path: Path) -> None:
    JobStore(tmp_path / "jobs.sqlite").close()

    mode = sqlite3.connect(tmp_path / "jobs.sqlite").execute("PRAGMA journal_mode").fetchone()

    assert mode[0] == "wal"


def test_store_transition_happens_once_under_contention(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = _new(store)
    wins: list[bool] = []

    def race(target: str) -> None:
        wins.append(store.transition(job_id, ["QUEUED"], target))

    threads = [threading.Thread(target=race, args=(s,)) for s in ["RUNNING", "CANCELLED"] * 8]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert wins.count(True) == 1
    assert store.get(job_id).state in ("RUNNING", "CANCELLED")


def test_store_idempotency_key_returns_same_job_per_owner(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")

    first = _new(store, key="k1")
    again, created = store.create(kind="run", name="tiny", owner="alice", rounds=3,
                                  idempotency_key="k1")
    other = _new(store, owner="bob", key="k1")

    assert (again.id, created) == (first, False)
    assert other != first


def test_store_keeps_the_spec_with_the_job_and_reads_leave_it_out(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job, _ = store.create(kind="run", name="tiny", owner="alice", rounds=3, spec="name: tiny\n")

    assert store.spec(job.id) == "name: tiny\n"
    assert not hasattr(store.get(job.id), "spec")
    with pytest.raises(NotFound):
        store.spec("nope")


def test_store_adds_the_spec_column_to_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA.replace(",\n    spec TEXT NOT NULL DEFAULT ''", ""))
    old.execute("INSERT INTO jobs (id, kind, name, owner, state, created) "
                "VALUES ('abc', 'run', 'old', 'alice', 'QUEUED', 0)")
    old.commit()
    old.close()

    store = JobStore(path)

    assert store.get("abc").name == "old"
    assert store.spec("abc") == ""  # the runner falls back to its request.yaml


def test_store_list_pages_newest_first_and_filters(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    ids = [_new(store) for _ in range(5)]
    store.transition(ids[0], ["QUEUED"], "FAILED")

    page1 = store.list(limit=2)
    page2 = store.list(limit=2, before_seq=page1[-1].seq)
    failed = store.list(states=["FAILED"])

    assert [j.id for j in page1 + page2] == ids[::-1][:4]
    assert [j.id for j in failed] == [ids[0]]
    with pytest.raises(InvalidArgument):
        store.list(states=["DONE"])


_OWNERS = ("id:a", "id:b", "id:c")


def _bulk(store: JobStore, jobs: list[tuple[int, str]]) -> None:
    """Jobs (owner index, state) in one transaction, in order: what thousands of
    submits leave behind, without a thousand fsyncs in a test."""
    store._db.execute("BEGIN")
    store._db.executemany(
        "INSERT INTO jobs (id, kind, name, owner, state, rounds, created, params, spec, "
        "owner_id) VALUES (?, 'run', 'n', ?, ?, 1, ?, '{}', '', ?)",
        [(secrets.token_hex(6), _OWNERS[o][3:], state, time.time(), _OWNERS[o])
         for o, state in jobs])
    store._db.execute("COMMIT")


_QUERY = st.fixed_dictionaries({
    "owner": st.sampled_from((None,) + _OWNERS),
    "states": st.lists(st.sampled_from(STATES), max_size=6),
    "limit": st.integers(1, 8),
    "before": st.one_of(st.none(), st.integers(1, 45)),
})


@settings(max_examples=60, deadline=None)
@given(jobs=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(STATES)), max_size=40),
       queries=st.lists(_QUERY, min_size=1, max_size=8))
def test_store_list_is_the_newest_matching_jobs_for_any_filter(
        jobs: list[tuple[int, str]], queries: list[dict[str, object]]) -> None:
    """Whatever the owner, states (repeated ones too), cursor and page size, a page is
    exactly the newest `limit` jobs that match, newest first: the per-state merge
    and the owner index may not drop, repeat or reorder a job."""
    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(Path(tmp) / "jobs.sqlite")
        _bulk(store, jobs)
        everything = store.list(limit=1000)
        for query in queries:
            owner, states = query["owner"], list(query["states"])  # type: ignore[call-overload]
            limit, before = int(query["limit"]), query["before"]  # type: ignore[call-overload]
            want = [j.id for j in everything
                    if (owner is None or j.owner_id == owner)
                    and (not states or j.state in states)
                    and (before is None or j.seq < before)][:limit]
            got = store.list(states=states, owner=owner, limit=limit,  # type: ignore[arg-type]
                             before_seq=before)  # type: ignore[arg-type]
            assert [j.id for j in got] == want, query
        store.close()


def _steps(store: JobStore, **query: object) -> int:
    """sqlite virtual-machine steps one page costs (the reader's progress handler)."""
    conn = store._reader()
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        assert len(store.list(**query)) == query["limit"]  # type: ignore[arg-type]
    finally:
        conn.set_progress_handler(None, 1)
    return steps[0]


@pytest.mark.parametrize("query", [
    {"owner": "id:a"},
    {"owner": "id:a", "states": ["SUCCEEDED", "FAILED"]},
    {"states": ["SUCCEEDED", "FAILED"]},
    {"states": ["SUCCEEDED", "FAILED", "CANCELLED"]},
    {},
], ids=["owner", "owner-two-states", "two-states", "three-states", "all"])
def test_store_list_page_costs_the_page_not_the_store(tmp_path: Path,
                                                      query: dict[str, object]) -> None:
    """ListJobs runs on the service's event loop: a page of 20 must cost about the same
    with 600 jobs stored as with 12,000 (sorting every match of a filter made it grow
    with the store: 14 ms a page at 20,000 jobs)."""
    def build(n: int, where: Path) -> JobStore:
        store = JobStore(where)
        _bulk(store, [(i % 3, ("SUCCEEDED", "FAILED", "CANCELLED", "QUEUED")[i % 4])
                      for i in range(n)])
        return store

    small = _steps(build(600, tmp_path / "small.sqlite"), limit=20, **query)
    large = _steps(build(12_000, tmp_path / "large.sqlite"), limit=20, **query)
    assert large < 1.5 * small + 200, (small, large)


def test_store_recover_requeues_running_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = _new(store)
    store.transition(job_id, ["QUEUED"], "RUNNING")
    store.close()

    reopened = JobStore(tmp_path / "jobs.sqlite")

    assert reopened.recover() == [job_id]
    assert reopened.get(job_id).state == "QUEUED"


def test_store_unknown_id_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        JobStore(tmp_path / "jobs.sqlite").get("nope")


def test_store_next_queued_highest_priority_first_then_submission_order(
        tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    low = [store.create(kind="run", name="t", owner="a", rounds=1)[0].id for _ in range(2)]
    high, _ = store.create(kind="run", name="t", owner="b", rounds=1, priority=5)
    below, _ = store.create(kind="run", name="t", owner="c", rounds=1, priority=-1)

    order = [job.id for job in store.next_queued(10)]

    assert order == [high.id, *low, below.id]
    assert store.get(high.id).priority == 5


def test_store_next_queued_skips_owners_at_their_quota(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    alice = store.create(kind="run", name="t", owner="alice", rounds=1, priority=9)[0]
    bob = store.create(kind="run", name="t", owner="bob", rounds=1)[0]

    found = store.next_queued(10, skip_owners=[alice.owner_id])

    assert [job.id for job in found] == [bob.id]


def test_store_from_before_priorities_gains_the_column_with_zero(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA.replace(",\n    priority INTEGER NOT NULL DEFAULT 0", ""))
    old.execute("INSERT INTO jobs (id, kind, name, owner, state, created, owner_id) "
                "VALUES ('old', 'run', 't', 'a', 'QUEUED', 0, 'name:a')")
    old.commit()
    old.close()

    store = JobStore(path)

    assert store.get("old").priority == 0
    assert [job.id for job in store.next_queued(5)] == ["old"]


def test_store_counts_a_state_up_to_a_bound(tmp_path: Path) -> None:
    """The runner only asks whether a few jobs wait: the bounded count stops there."""
    store = JobStore(tmp_path / "jobs.sqlite")
    for _ in range(5):
        _new(store)
    assert store.count_state("QUEUED") == 5
    assert [store.count_state("QUEUED", at_most=n) for n in (0, 1, 3, 5, 9)] == [0, 1, 3, 5, 5]
    assert store.count_state("RUNNING", at_most=2) == 0


def test_store_get_never_serves_a_record_older_than_the_last_write(tmp_path: Path) -> None:
    """GetJob's records are kept in memory: every write (transition, progress, the
    restart's requeue) must be seen by the next read, also when reads and writes
    race on two threads."""
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = _new(store)
    assert store.get(job_id).state == "QUEUED"
    assert store.transition(job_id, ["QUEUED"], "RUNNING", started=1.0)
    assert store.get(job_id).state == "RUNNING"
    store.set_progress(job_id, 2)
    assert store.get(job_id).rounds_completed == 2
    assert store.recover() == [job_id]
    assert store.get(job_id).state == "QUEUED"
    with pytest.raises(NotFound):
        store.get("feedbeef0000")

    stop = threading.Event()
    written = [0]

    def writer() -> None:
        for n in range(1, 301):
            store.set_progress(job_id, n)
            written[0] = n  # committed and its record dropped before this line
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not stop.is_set():
        floor = written[0]
        assert store.get(job_id).rounds_completed >= floor
    thread.join()
    assert store.get(job_id).rounds_completed == 300
