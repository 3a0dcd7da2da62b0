from __future__ import annotations

import pytest

from fedcollab.grading.mixes import builtin_mixes, mix_spec, select_mixes
from fedcollab.spec import BUILTIN_MIXES, SpecError, read_spec_data, spec_from_dict


def _data() -> dict:
    return read_spec_data("examples/community-vendor.yaml")


def test_builtin_mixes_names_match_design() -> None:
    assert tuple(m.name for m in builtin_mixes(_data())) == BUILTIN_MIXES


def test_mix_spec_secure_all_makes_every_group_secure() -> None:
    data = _data()
    mix = next(m for m in builtin_mixes(data) if m.name == "secure-all")
    spec, why = mix_spec(data, mix)
    assert why == "" and spec is not None
    assert {g.sharing for g in spec.participants} == {"secure"}


def test_mix_spec_vendor_of_two_cannot_be_secure_and_says_why() -> None:
    data = _data()
    data["participants"][1]["count"] = 2
    data["participants"][1]["sharing"] = "open"
    mix = next(m for m in builtin_mixes(data) if m.name == "secure-vendor")
    spec, why = mix_spec(data, mix)
    assert spec is None and "min_group" in why


def test_select_mixes_user_mix_from_grading_section() -> None:
    data = _data()
    data["grading"] = {"mixes": [{"name": "big-community",
                                  "overrides": {"participants.0.count": 12}}]}
    spec = spec_from_dict(data)
    chosen = select_mixes(data, spec, "open,big-community")
    assert [m.name for m in chosen] == ["open", "big-community"]
    patched, _ = mix_spec(data, chosen[1])
    assert patched is not None and patched.participants[0].count == 12


def test_select_mixes_unknown_name_is_one_line_spec_error() -> None:
    data = _data()
    with pytest.raises(SpecError, match="unknown mix 'nope'; known: open"):
        select_mixes(data, spec_from_dict(data), "nope")


def test_grading_spec_rejects_builtin_name() -> None:
    data = _data()
    data["grading"] = {"mixes": [{"name": "open", "overrides": {}}]}
    with pytest.raises(SpecError, match="grading.mixes.0.name"):
        spec_from_dict(data)
