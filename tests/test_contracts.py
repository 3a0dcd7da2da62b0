"""The contract checker itself finds what is missing or mistyped (it guards real
outputs in the e2e, grading and bench tests)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.contracts import bench_problems, summary_problems


def test_bench_problems_names_a_missing_key_and_accepts_extras() -> None:
    good = {"bench": "memory", "clients": 10, "rounds": 2, "peak_rss_gib": 0.5, "extra": 1}
    assert bench_problems(json.dumps(good)) == []
    bad = dict(good)
    del bad["peak_rss_gib"]
    assert bench_problems("noise\n" + json.dumps(bad)) == [
        "line 2 (memory): missing 'peak_rss_gib'"]
    assert bench_problems("no json here") == ["no JSON lines"]


def test_summary_problems_want_accuracy_or_loss_and_reject_bools(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"rounds_completed": True, "wall_seconds": 1.0,
                                "rounds_seconds": 0.5, "participants": 3, "bytes_up": 1,
                                "bytes_down": 1}))
    problems = summary_problems(path)
    assert any("'rounds_completed' is bool" in p for p in problems)
    assert any("final_accuracy" in p for p in problems)
