"""The gateway's decision path without the socket: every inbound frame and every update
about to leave is checked, persisted before anything acts, and audited once."""
from __future__ import annotations

import datetime
import json
from dataclasses import replace
from pathlib import Path

import pytest

from fedcollab.silo import Allow, Member, Refuse, Roster, check, load_state
from fedcollab.silo.audit import verify_audit
from fedcollab.silo.decide import FrameDecider

from .conftest import MODEL, TRUSTED_CA, make_egress, make_policy
from .malicious import offer_frame, roster_frame, start_frame

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture()
def decider(tmp_path: Path) -> FrameDecider:
    made = FrameDecider(policy=make_policy(), state_dir=tmp_path / "vendor", trusted_cas={})
    yield made
    made.close()


def _at_key_sharing(decider: FrameDecider, model_hash: str) -> None:
    """Through offer, round start and a roster (its members' trust set as the edge would)."""
    for frame in (offer_frame(model=MODEL), start_frame(1, model_hash=model_hash)):
        assert decider.decide_message(frame, NOW).verdict == "allow"
    roster = Roster("job-1", 1, tuple(Member(f"t{i}", TRUSTED_CA) for i in range(3)))
    decision = check(decider.policy, decider.state, roster)
    assert isinstance(decision, Allow)
    decider.state = decision.state


def test_decide_allowed_frame_carries_the_parsed_message(decider: FrameDecider) -> None:
    frame = offer_frame(model=MODEL)

    outcome = decider.decide_bytes(frame.SerializeToString(), NOW)

    assert outcome.verdict == "allow" and outcome.message == frame
    assert outcome.inbound is not None and outcome.inbound.kind == "offer"


def test_decide_malformed_bytes_carry_no_message(decider: FrameDecider) -> None:
    outcome = decider.decide_bytes(b"\xff\xff\xff", NOW)

    assert (outcome.verdict, outcome.kind, outcome.message) == ("refuse", "malformed", None)


def test_decide_egress_plaintext_is_refused_and_audited_out(decider: FrameDecider,
                                                            tmp_path: Path) -> None:
    hashed = make_egress(1).global_model_sha256
    _at_key_sharing(decider, hashed)

    refused = decider.decide_egress(replace(make_egress(1), encoding="plaintext"), b"x", NOW)
    allowed = decider.decide_egress(make_egress(1), b"masked bytes", NOW)
    again = decider.decide_egress(make_egress(1), b"masked bytes", NOW)

    entries = [json.loads(line) for line in (tmp_path / "vendor" / "audit.jsonl").open()]
    out = [e for e in entries if e["direction"] == "out"]
    assert isinstance(refused, Refuse) and refused.rule == "egress"
    assert isinstance(allowed, Allow)
    assert isinstance(again, Refuse) and again.rule == "replay"
    assert [e["decision"] for e in out] == ["refuse", "allow", "refuse"]
    assert load_state(tmp_path / "vendor" / "state.json").job("job-1").contributed == {hashed}
    assert verify_audit(tmp_path / "vendor" / "audit.jsonl").entries == len(entries)


def test_decide_roster_members_verified_at_the_edge(decider: FrameDecider) -> None:
    # members without certificates count zero, whatever the coordinator says
    decider.decide_message(offer_frame(model=MODEL), NOW)
    decider.decide_message(start_frame(1, model_hash="a" * 64), NOW)

    outcome = decider.decide_message(roster_frame(1, [("a", b"", False), ("b", b"", False),
                                                      ("c", b"", False)]), NOW)

    assert isinstance(outcome.decision, Refuse) and outcome.decision.rule == "min_group"
