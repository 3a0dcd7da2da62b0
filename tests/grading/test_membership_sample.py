"""Membership uses every member and non-member the data allow, and the card says how
many and, where fewer than 1000, why."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcollab.grading.membership import WANTED_PER_SIDE, sample_note


def test_sample_note_on_digits_says_the_test_split_is_why_non_members_are_few() -> None:
    note = sample_note(members=1437, non_members=360, members_available=1437,
                       non_members_available=360, cap=5000, train_rows=1437, test_rows=360)
    assert note.startswith("1437 members and 360 non-members: fewer than 1000 non-members")
    assert "every one the data allow (the test split: 360 rows)" in note
    assert "members:" not in note.replace("non-members:", "")  # members are >= 1000


def test_sample_note_names_the_budget_cap_when_it_is_the_reason() -> None:
    note = sample_note(members=500, non_members=1200, members_available=900,
                       non_members_available=1200, cap=500, train_rows=900, test_rows=1200)
    assert "members: 500 of 900 (the budget's cap of 500)" in note
    assert "larger dataset" not in note
    enough = sample_note(members=5000, non_members=1200, members_available=9000,
                         non_members_available=1200, cap=5000, train_rows=9000, test_rows=1200)
    assert enough == ("5000 members and 1200 non-members (at least 1000 each; members capped "
                      "at the budget's 5000)")


@pytest.mark.slow  # builds the grader's Keras model: a few seconds
def test_a_user_dataset_with_enough_rows_gets_1000_members_and_non_members_each(
        tmp_path: Path) -> None:
    """A generated .npz of 3000 rows with a 40% test split: the grader attacks all 1800
    members and all 1200 non-members, and the card's sentence says so."""
    from fedcollab.grading.measure import BUDGETS, TaskMeasurer, Timer
    from fedcollab.spec import spec_from_dict

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 3000)
    x = (rng.normal(size=(3000, 12)) + y[:, None]).astype(np.float32)
    path = tmp_path / "rows.npz"
    np.savez(path, x=x, y=y)
    spec = spec_from_dict({
        "name": "rows", "task": {"dataset": "file", "path": str(path), "model": "mlp",
                                 "test_fraction": 0.4},
        "rounds": 2,
        "participants": [{"name": "community", "count": 6},
                         {"name": "vendor", "role": "vendor", "count": 3,
                          "sharing": "secure", "data_fraction": 0.3}]})
    ctx = TaskMeasurer(spec, BUDGETS["fast"], Timer())
    sample = ctx.settings()["membership_sample"]
    assert sample["members"] == sample["members_available"] == 1800
    assert sample["non_members"] == sample["non_members_available"] == 1200
    assert min(sample["members"], sample["non_members"]) >= WANTED_PER_SIDE
    assert sample["note"] == ("1800 members and 1200 non-members (at least 1000 each: every "
                              "one the data allow)")
    assert len(set(ctx.member_idx.tolist())) == 1800 and len(ctx.test_idx) == 1200
