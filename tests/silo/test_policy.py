"""The vendor policy file: parsing, hashing, and one clear refusal per mistake."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from fedcollab.silo import PolicyError, load_policy, policy_from_bytes

from .conftest import MODEL, POLICY_DOC, TRUSTED_CA, policy_bytes


def test_policy_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "vendor-policy.yaml"
    path.write_bytes(policy_bytes())

    policy = load_policy(path)

    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy.share_only == {"dense", "dense_1"}
    assert policy.trusted_cas == {TRUSTED_CA} and policy.approved_models == {MODEL}
    assert policy.min_group == 3 and policy.dp.epsilon_budget == 8.0


def test_policy_same_rules_other_bytes_hash_differently() -> None:
    a = policy_from_bytes(policy_bytes())
    b = policy_from_bytes(policy_bytes() + b"\n# a comment\n")

    assert a.sha256 != b.sha256 and a.share_only == b.share_only


@pytest.mark.parametrize("changes, message", [
    ({"egress": "plaintext"}, "egress='plaintext': the only value is masked_only"),
    ({"min_group": 1}, "min_group=1: must be >= 2"),
    ({"min_group": True}, "min_group: expected an integer"),
    ({"share_only": []}, "share_only is empty"),
    ({"share_only": "dense"}, "share_only: expected a list"),
    ({"trusted_cas": []}, "trusted_cas is empty"),
    ({"trusted_cas": ["ABC"]}, "not a lowercase hex sha256"),
    ({"approved_models": ["x" * 64]}, "approved_models: 'xxx"),
    ({"shareonly": ["dense"]}, "unknown key 'shareonly'"),
    ({"dp": {**POLICY_DOC["dp"], "min_noise_multiplier": 0}},  # type: ignore[dict-item]
     "min_noise_multiplier=0.0 with a finite epsilon_budget"),
    ({"dp": {**POLICY_DOC["dp"], "max_clip_norm": -1}},  # type: ignore[dict-item]
     "max_clip_norm=-1.0"),
    ({"dp": {**POLICY_DOC["dp"], "delta": 1}}, "delta=1.0: must be in"),  # type: ignore[dict-item]
    ({"dp": {**POLICY_DOC["dp"], "epsilon_budget": "lots"}},  # type: ignore[dict-item]
     "epsilon_budget: expected a number"),
    ({"dp": {"min_noise_multiplier": 1.0}}, "dp.max_clip_norm is required"),
    ({"fixed_point": {"max_scale_bits": 60}}, "max_scale_bits=60"),
    ({"party": ""}, "party=''"),
])
def test_policy_bad_field_is_one_line(changes: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)) as err:
        policy_from_bytes(policy_bytes(**changes))

    assert "\n" not in str(err.value) and err.value.exit_code == 2


@pytest.mark.parametrize("data", [b"- a list\n", b"party: [\n", b"\xff\xfe", b""])
def test_policy_not_a_mapping_is_refused(data: bytes) -> None:
    with pytest.raises(PolicyError, match="policy"):
        policy_from_bytes(data)


def test_policy_missing_required_key_is_named() -> None:
    doc = policy_bytes().replace(b"min_group: 3\n", b"")

    with pytest.raises(PolicyError, match="min_group is required"):
        policy_from_bytes(doc)


def test_policy_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")
