"""The views secure participants confirm are journalled by their worker before the
replies leave, for every round (issue 27, finding 7: a resumed job re-runs rounds,
and a participant must never confirm a second survivor set for the same input)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedcollab.job.run import RunOptions, run_job
from fedcollab.secure.participant import _VIEW_ROUNDS
from fedcollab.spec import spec_from_dict
from fedcollab.worker.worker import ParticipantWorker

ROOT = Path(__file__).resolve().parents[2]


def _journalled(out: Path) -> dict[str, dict[str, list[int]]]:
    """What a restarted worker reloads (its own reader, on a bare worker)."""
    worker: Any = ParticipantWorker.__new__(ParticipantWorker)
    worker.out_dir, worker.worker_index, worker._views_cache = out, 0, None
    return worker._saved_views()


@pytest.mark.slow  # 11 in-process rounds of the default job (TensorFlow): ~6 s
def test_every_rounds_views_are_journalled_past_the_participants_window(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "examples" / "community-vendor.yaml").read_text())
    rounds = _VIEW_ROUNDS + 3  # a participant keeps 8 views; the journal keeps them all
    data.update({"rounds": rounds, "resources": {"workers": 1}, "release": {"sign": False}})
    out = tmp_path / "job"
    result = run_job(spec_from_dict(data), RunOptions(out_dir=out, quiet=True,
                                                      transport="inprocess", release=False))
    assert result.summary["rounds_completed"] == rounds
    journal = sorted((out / "checkpoints" / "secure").glob("views-worker-*.jsonl"))
    assert journal, "no views journal written"
    lines = [json.loads(line) for path in journal for line in path.read_text().splitlines()]
    assert len(lines) == rounds  # one fsynced line per consistency stage
    for line in lines:  # every site confirmed the one survivor set: written once
        assert len(line["sets"]) == 1 and len(line["views"]) == 3
    views = _journalled(out)
    assert sorted(views, key=int) == ["8", "9", "10"]  # the vendor's three sites
    survivors = [8, 9, 10]
    for pid, confirmed in views.items():
        assert sorted(int(key.split(":")[0]) for key in confirmed) == list(range(1, rounds + 1))
        assert all(view == survivors for view in confirmed.values()), pid


def test_a_torn_last_line_is_skipped_and_the_rest_reloads(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "secure"
    folder.mkdir(parents=True)
    good = {"sets": [[1, 2, 3]], "views": {"1": {"4:ab": 0}, "2": {"4:cd": 0}}}
    (folder / "views-worker-0.jsonl").write_text(json.dumps(good) + "\n" + '{"sets": [[1')
    (folder / "views-worker-1.jsonl").write_text(
        json.dumps({"sets": [[1, 3]], "views": {"3": {"5:ef": 0}}}) + "\n")
    assert _journalled(tmp_path) == {"1": {"4:ab": [1, 2, 3]}, "2": {"4:cd": [1, 2, 3]},
                                     "3": {"5:ef": [1, 3]}}
