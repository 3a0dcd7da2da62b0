"""`fedcollab silo pending` / `fedcollab silo approve JOB`: an offer outside the policy
waits with its full typed content and hash; an approval binds that exact hash, is
written atomically (0600) and audited in the gateway's own chain, even while the
gateway holds the log open."""
from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedcollab.cli import main
from fedcollab.silo.approvals import UnknownJobError, approve_offer, list_pending
from fedcollab.silo.audit import verify_audit
from fedcollab.silo.decide import FrameDecider
from fedcollab.silo.frames import offer_sha256

from .conftest import make_policy
from .malicious import offer_frame

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
OTHER = hashlib.sha256(b"an unapproved architecture").hexdigest()


@pytest.fixture()
def decider(tmp_path: Path) -> FrameDecider:
    made = FrameDecider(policy=make_policy(), state_dir=tmp_path / "vendor", trusted_cas={})
    yield made
    made.close()


def test_pending_offer_is_persisted_with_its_full_content(decider: FrameDecider,
                                                          tmp_path: Path) -> None:
    outcome = decider.decide_message(offer_frame(model=OTHER), NOW)

    rows = list_pending(tmp_path / "vendor")
    saved = json.loads((tmp_path / "vendor" / "state.json").read_text())["pending"]["job-1"]
    assert outcome.verdict == "pending"
    assert [r.job_id for r in rows] == ["job-1"]
    assert saved["offer_sha256"] == rows[0].offer_sha256 == offer_sha256(rows[0].offer)
    assert saved["offer"]["manifest"][0] == {"name": "dense", "shape": [4, 2],
                                             "dtype": "float32"}
    assert saved["offer"]["dp"]["delta"] == 1e-5


def test_approve_binds_the_exact_offer_and_the_gateway_allows_it_next_time(
        decider: FrameDecider, tmp_path: Path) -> None:
    decider.decide_message(offer_frame(model=OTHER), NOW)  # the gateway's log stays open

    approve_offer(tmp_path / "vendor", "job-1", by="alice", now=NOW)
    changed = decider.decide_message(offer_frame(model=OTHER, rounds=4), NOW)
    same = decider.decide_message(offer_frame(model=OTHER), NOW)

    entries = [json.loads(line) for line in (tmp_path / "vendor" / "audit.jsonl").open()]
    assert (changed.verdict, same.verdict) == ("pending", "allow")
    assert [e["kind"] for e in entries] == ["offer", "approval", "offer", "offer"]
    assert entries[1]["reason"].startswith("approved by alice: model mlp")
    assert verify_audit(tmp_path / "vendor" / "audit.jsonl").entries == 4  # one chain
    assert (tmp_path / "vendor" / "approvals.json").stat().st_mode & 0o777 == 0o600
    assert list_pending(tmp_path / "vendor") == []


def test_approve_a_job_with_nothing_pending_raises(decider: FrameDecider,
                                                  tmp_path: Path) -> None:
    decider.decide_message(offer_frame(model=OTHER), NOW)

    with pytest.raises(UnknownJobError, match=r"no offer from job 'job-9' .*pending: job-1"):
        approve_offer(tmp_path / "vendor", "job-9")


def test_approve_with_another_expected_hash_raises(decider: FrameDecider,
                                                   tmp_path: Path) -> None:
    decider.decide_message(offer_frame(model=OTHER), NOW)

    with pytest.raises(UnknownJobError, match="review it again"):
        approve_offer(tmp_path / "vendor", "job-1", expect="0" * 12)
    assert not (tmp_path / "vendor" / "approvals.json").exists()


def test_approve_never_overrides_a_refusal(decider: FrameDecider, tmp_path: Path) -> None:
    outcome = decider.decide_message(offer_frame(model=OTHER, noise=0.1), NOW)

    assert outcome.verdict == "refuse" and list_pending(tmp_path / "vendor") == []
    with pytest.raises(UnknownJobError):
        approve_offer(tmp_path / "vendor", "job-1")


def test_cli_approve_unknown_job_is_one_line_exit_2(
        decider: FrameDecider, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decider.decide_message(offer_frame(model=OTHER), NOW)

    code = main(["silo", "approve", "nope", "--state-dir", str(tmp_path / "vendor")])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no offer from job 'nope'" in err


def test_cli_pending_without_state_is_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["silo", "pending", "--state-dir", str(tmp_path / "none")])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no gateway state directory" in err


def test_cli_pending_json_is_the_offer_and_its_hash(
        decider: FrameDecider, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decider.decide_message(offer_frame(model=OTHER), NOW)

    code = main(["silo", "pending", "--json", "--state-dir", str(tmp_path / "vendor")])

    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["job_id"] == "job-1" and row["offer"]["model_sha256"] == OTHER
    assert len(row["offer_sha256"]) == 64


def test_cli_approve_imports_neither_tensorflow_nor_ray_nor_grpc(tmp_path: Path) -> None:
    script = f"""
import sys
from fedcollab.cli import main
code = main(["silo", "approve", "j", "--state-dir", {str(tmp_path)!r}])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "ray", "grpc"))
print("CODE", code, "HEAVY", heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)

    assert "CODE 2 HEAVY []" in done.stdout, done.stdout + done.stderr
