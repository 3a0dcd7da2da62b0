"""The roster's kinds of party: the Sharing/Role enums and the policy registry.

A kind of party is one ``Sharing`` member and one ``POLICIES`` entry. These tests hold
the registry complete, pin what open and secure mean, add a made-up kind at test time
to show the code acts on its policy rather than its name, and scan the package for a
comparison with the word that would bring the scattered ``== "secure"`` back.
"""
from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import yaml

from fedcollab.spec import GroupSpec, JobSpec, SpecError, spec_from_dict, spec_to_dict
from fedcollab.spec import roster as roster_module
from fedcollab.spec.roster import (
    POLICIES,
    ROLES,
    SHARING,
    Role,
    Sharing,
    SharingPolicy,
    group_sample_sizes,
    policy,
    roster,
)

PACKAGE = Path(__file__).resolve().parents[2] / "fedcollab"


def _spec(*groups: dict[str, Any], **top: Any) -> JobSpec:
    data: dict[str, Any] = {"name": "t", "task": {"dataset": "digits", "model": "mlp"},
                            "rounds": 2, "participants": list(groups)}
    data.update(top)
    return spec_from_dict(data)


# ------------------------------------------------------------------------- the registry

def test_policies_every_sharing_member_has_a_policy() -> None:
    assert set(POLICIES) == set(Sharing)
    assert all(isinstance(p, SharingPolicy) for p in POLICIES.values())


def test_allowed_words_come_from_the_enums() -> None:
    assert SHARING[:2] == ("open", "secure") and ROLES[:2] == ("community", "vendor")
    assert SHARING == tuple(s.value for s in Sharing)
    assert ROLES == tuple(r.value for r in Role)


def test_policy_open_sends_its_update_in_the_clear() -> None:
    # README: "open: its model update, in the clear (logged with a hash)"
    assert policy(Sharing.OPEN) == SharingPolicy(in_clear=True, in_secure_sum=False)


def test_policy_secure_sends_only_into_the_secure_sum() -> None:
    # README: "secure: only a masked share: the server learns nothing but the sum"
    assert policy(Sharing.SECURE) == SharingPolicy(in_clear=False, in_secure_sum=True)


def test_policy_accepts_the_spec_word_or_the_member() -> None:
    for kind in Sharing:
        assert policy(kind.value) is policy(kind) is POLICIES[kind]


def test_policy_unknown_word_raises() -> None:
    with pytest.raises(ValueError, match="bogus"):
        policy("bogus")


@pytest.mark.parametrize("both", [True, False])
def test_sharing_policy_neither_or_both_raises(both: bool) -> None:
    with pytest.raises(ValueError, match="either in the clear or into the secure sum"):
        SharingPolicy(in_clear=both, in_secure_sum=both)


# --------------------------------------------------------------- what a user sees

def test_enums_serialise_as_the_spec_word() -> None:
    assert json.dumps([Sharing.SECURE, Role.VENDOR]) == '["secure", "vendor"]'
    assert f"{Sharing.OPEN} {Role.COMMUNITY}" == "open community"
    assert str(Sharing.SECURE) == "secure"


def test_spec_loaded_word_equals_the_enum_member() -> None:
    spec = _spec({"name": "v", "role": "vendor", "count": 3, "sharing": "secure"},
                 {"name": "c", "count": 2})
    vendor, community = spec.participants
    assert (vendor.sharing, vendor.role) == (Sharing.SECURE, Role.VENDOR)
    assert (community.sharing, community.role) == (Sharing.OPEN, Role.COMMUNITY)
    assert roster(spec)[0].policy == POLICIES[Sharing.SECURE]
    assert roster(spec)[3].policy == POLICIES[Sharing.OPEN]


def test_spec_to_dict_members_given_in_python_write_plain_words() -> None:
    spec = JobSpec(name="t", participants=(
        GroupSpec("v", role=Role.VENDOR, count=3, sharing=Sharing.SECURE),
        GroupSpec("c", count=2)))
    data = spec_to_dict(spec)
    group = data["participants"][0]
    assert type(group["sharing"]) is str and group["sharing"] == "secure"
    assert type(group["role"]) is str and group["role"] == "vendor"
    assert "sharing: secure" in yaml.safe_dump(data)
    assert spec_to_dict(spec_from_dict(data)) == data


def test_jobspec_built_in_python_unknown_sharing_raises_spec_error() -> None:
    with pytest.raises(SpecError, match=r"participants\.0\.sharing: got 'bogus'"):
        JobSpec(name="t", participants=(GroupSpec("c", sharing="bogus"),))


def test_roster_pids_where_policy_field_role_and_member() -> None:
    spec = _spec({"name": "v", "role": "vendor", "count": 3, "sharing": "secure"},
                 {"name": "c", "count": 2})
    people = roster(spec)
    assert people.pids_where(in_secure_sum=True) == [0, 1, 2]
    assert people.pids_where(in_clear=True) == [3, 4]
    assert people.pids_where(sharing=Sharing.OPEN) == [3, 4]
    assert people.pids_where(role=Role.VENDOR, in_secure_sum=True) == [0, 1, 2]


# ------------------------------------------------- a made-up kind, added at test time

class _Sharing(str, enum.Enum):
    """The built-in kinds plus two made up: ``sealed`` sums like secure, ``public``
    sends in the clear like open, under names no code knows."""

    OPEN = "open"
    SECURE = "secure"
    SEALED = "sealed"
    PUBLIC = "public"


@pytest.fixture
def made_up_kinds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Declare the made-up kinds the way a contributor would: enum member + entry."""
    entries = {_Sharing(k.value): p for k, p in POLICIES.items()}
    entries[_Sharing.SEALED] = SharingPolicy(in_clear=False, in_secure_sum=True)
    entries[_Sharing.PUBLIC] = SharingPolicy(in_clear=True, in_secure_sum=False)
    monkeypatch.setattr(roster_module, "Sharing", _Sharing)
    monkeypatch.setattr(roster_module, "POLICIES", MappingProxyType(entries))
    monkeypatch.setattr(roster_module, "SHARING", tuple(s.value for s in _Sharing))
    yield


def _made_up_spec(**top: Any) -> JobSpec:
    return _spec({"name": "v", "role": "vendor", "count": 4, "sharing": "sealed"},
                 {"name": "c", "count": 6, "sharing": "public"}, **top)


@pytest.mark.usefixtures("made_up_kinds")
def test_made_up_kind_spec_and_roster_act_on_its_policy() -> None:
    spec = _made_up_spec(fraction=0.1, secure={"min_group": 3})
    people = roster(spec)
    assert people.pids_where(in_secure_sum=True) == [0, 1, 2, 3]
    assert people.pids_where(in_clear=True) == [4, 5, 6, 7, 8, 9]
    # the sealed group is held at secure.min_group like a secure one; public is not
    assert group_sample_sizes(spec) == [3, 1]


@pytest.mark.usefixtures("made_up_kinds")
def test_made_up_kind_spec_checks_act_on_its_policy() -> None:
    with pytest.raises(SpecError, match="attacks are simulated for open groups only"):
        _spec({"name": "v", "count": 4, "sharing": "sealed", "behaviour": "sign_flip"})
    _spec({"name": "c", "count": 4, "sharing": "public", "behaviour": "sign_flip"})
    with pytest.raises(SpecError, match="expected at least secure.min_group"):
        _spec({"name": "v", "count": 2, "sharing": "sealed"})
    with pytest.raises(SpecError, match="must see individual updates"):
        _spec({"name": "v", "count": 4, "sharing": "sealed"}, aggregation={"rule": "median"})
    # the public group is seen one by one; the sealed one is held to a norm bound
    _made_up_spec(aggregation={"rule": "median", "norm_bound": 5.0})
    _spec({"name": "v", "count": 4, "sharing": "sealed"},
          privacy={"dp": {"mode": "distributed", "noise_multiplier": 1.0}})


@pytest.mark.usefixtures("made_up_kinds")
def test_made_up_kind_sampling_keeps_a_sealed_group_at_min_group() -> None:
    from fedcollab.job.sampling import poisson_sample

    spec = _made_up_spec(fraction=0.1, secure={"min_group": 3})
    rng = np.random.default_rng(0)
    rounds = [poisson_sample(list(roster(spec)), spec, rng) for _ in range(50)]
    sealed = [len([p for p in chosen if p < 4]) for chosen in rounds]
    # drawn at rate 3/4: some rounds draw fewer than min_group and sit out
    assert set(sealed) <= {0, 3, 4} and 0 in sealed and max(sealed) >= 3


@pytest.mark.usefixtures("made_up_kinds")
def test_made_up_kind_outgoing_sends_what_its_policy_says() -> None:
    from fedcollab.worker.messages import RoundConfig
    from fedcollab.worker.outgoing import outgoing

    raw = [np.zeros(20_000, np.float32)]
    config = RoundConfig(dp_mode="distributed", clip_norm=1.0, noise_multiplier=1.0,
                         noisy_participants=100)

    def send(sharing: str) -> Any:
        return outgoing(raw, pid=0, shared=[0], shapes=[(20_000,)], num_samples=5, loss=0.1,
                        sharing=sharing, behaviour="honest", attack_scale=1.0,
                        config=config, rng=np.random.default_rng(0))

    sealed, public = send("sealed"), send("public")
    assert sealed.update is None and sealed.secure_vector is not None
    assert public.secure_vector is None and public.update is not None
    # in the sum, a share of the noise (z*C/sqrt(100)); in the clear, all of it (z*C)
    assert float(np.std(sealed.secure_vector[:20_000])) == pytest.approx(0.1, rel=0.05)
    assert float(np.std(public.update.delta[0])) == pytest.approx(1.0, rel=0.05)


# ------------------------------------------------------- no comparison with the word

_WORD_COMPARISONS = [
    re.compile(r"""\b(sharing|role)\s*[=!]=\s*["']"""),          # g.sharing == "secure"
    re.compile(r"""["']\s*[=!]=\s*[\w.\[\]]*\b(sharing|role)\b"""),  # "secure" == g.sharing
    re.compile(r"""\bsharing\s+(not\s+)?in\s*[(\[{]\s*["']"""),  # sharing in ("open",)
    re.compile(r"""pids_where\([^)]*\b(sharing|role)\s*=\s*["']"""),  # pids_where(sharing="s")
    # g.get("role") == "vendor" on raw spec data (a cluster node's role "head" is no party's)
    re.compile(r"""\b(sharing|role)["']\s*[)\]]\s*[=!]=\s*["'](%s)["']"""
               % "|".join(SHARING + ROLES)),
]


def test_package_never_compares_sharing_or_role_with_a_word() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_proto" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in _WORD_COMPARISONS):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert not found, ("ask the policy (policy(g.sharing).in_secure_sum) or the Role enum, "
                       "not the word:\n" + "\n".join(found))


def test_word_comparison_scan_catches_the_old_forms() -> None:
    old = ['if g.sharing == "secure":', "x = p.sharing != 'open'", 'if "secure" == g.sharing:',
           'if p.role == "vendor":', 'roster.pids_where(sharing="secure")',
           'if group.sharing in ("secure",):', 'if g.get("role") == "vendor":',
           "g['sharing'] != 'open'"]
    assert all(any(p.search(line) for p in _WORD_COMPARISONS) for line in old)
    new = ["if policy(g.sharing).in_secure_sum:", "if p.role == Role.VENDOR:",
           'out["vendor"] = row', 'entry.get("role") == "head"']
    assert not any(p.search(line) for p in _WORD_COMPARISONS for line in new)
