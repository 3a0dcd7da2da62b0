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
from fedcollab.secure.participant import VIEW_ROUNDS
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
    rounds = VIEW_ROUNDS + 3  # a participant keeps 8 views; the journal keeps them all
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


def test_compaction_keeps_every_participants_recent_views_and_drops_the_rest(
        tmp_path: Path) -> None:
    """A long job's journal is rewritten, every 256 lines a worker appends, to the views
    of its last VIEW_ROUNDS rounds: whoever hosts a participant now, a view of a round a
    resume could still re-run is kept (it is what refuses a second survivor set), and
    an older one, which no participant holds any more, goes."""
    from fedcollab.worker.worker import _compact_views_journal, _read_views_journal

    path = tmp_path / "views-worker-0.jsonl"
    lines = []
    last = 3 * VIEW_ROUNDS
    for r in range(1, last + 1):
        lines.append(json.dumps({"sets": [[1, 2, 3], [1, 3]],
                                 "views": {"1": {f"{r}:aa": 0}, "3": {f"{r}:bb": r % 2}}}))
    path.write_text("\n".join(lines) + "\n" + '{"sets": [[1')  # and a torn last line
    before = _read_views_journal(path)
    _compact_views_journal(path)
    after = _read_views_journal(path)
    assert len(path.read_text().splitlines()) == 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    kept = range(last - VIEW_ROUNDS + 1, last + 1)
    for pid in ("1", "3"):
        assert sorted(int(k.split(":")[0]) for k in after[pid]) == list(kept)
        assert all(after[pid][k] == before[pid][k] for k in after[pid])


def test_the_worker_compacts_its_journal_as_it_appends(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the worker's own path: after many rounds its file holds the views of the
    last VIEW_ROUNDS rounds and the lines since its last compaction, not every round."""
    import fedcollab.worker.worker as worker_module

    monkeypatch.setattr(worker_module, "_VIEWS_COMPACT_EVERY", 4)
    worker: Any = worker_module.ParticipantWorker.__new__(worker_module.ParticipantWorker)
    worker.out_dir, worker.worker_index, worker._views_cache = tmp_path, 0, None
    worker._views_sync, worker._views_syncer, worker._views_lines = None, None, 0

    class _Participant:
        def __init__(self) -> None:
            self.new: dict[str, list[int]] = {}

        def take_new_views(self) -> dict[str, list[int]]:
            new, self.new = self.new, {}
            return new

    hosted = {1: _Participant(), 2: _Participant()}
    worker._secure = hosted
    rounds = 2 * VIEW_ROUNDS + 5
    for r in range(1, rounds + 1):
        for p in hosted.values():
            p.new = {f"{r}:{r:02x}": [1, 2]}
        worker._save_views({1: b"", 2: b""})
    views = worker_module._read_views_journal(worker._views_path())
    assert len(views["1"]) < rounds and len(views["1"]) >= VIEW_ROUNDS
    newest = sorted(int(k.split(":")[0]) for k in views["2"])
    assert newest[-VIEW_ROUNDS:] == list(range(rounds - VIEW_ROUNDS + 1, rounds + 1))
    assert min(newest) > rounds - VIEW_ROUNDS - 4  # at most a compaction period older
