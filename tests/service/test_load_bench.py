"""The `service_load` bench's clients against a real `fedcollab serve` on loopback."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.bench_script import load_bench


def test_load_clients_time_every_method_and_every_submit_is_stored(tmp_path: Path) -> None:
    bench = load_bench()
    service = bench._ServiceProcess(tmp_path / "state", max_concurrent=0)
    try:
        first = service.client.submit(bench._TINY_JOB).id
        samples, errors, submitted = bench._load_worker(service.address, service.token,
                                                        first, 1.5, 5)
    finally:
        service.stop()
    stored = {row[0] for row in sqlite3.connect(tmp_path / "state" / "jobs.sqlite").execute(
        "SELECT id FROM jobs")}

    assert errors == 0
    assert {op for op, _ in samples} == {"GetJob", "ListJobs", "SubmitJob"}
    assert all(ms > 0 for _, ms in samples)
    assert submitted and len(set(submitted)) == len(submitted)
    assert set(submitted) | {first} == stored
