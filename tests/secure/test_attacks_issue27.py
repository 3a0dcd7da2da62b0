"""Issue 27's attacks, each replayed by the scripted server against the real
participants (tests/secure/lying_server.py), for secagg and secaggplus with amortised
and per-round keys. Each must end in a refusal (the named error) and, whatever the
participants did, the exposure oracle must find no set of honest inputs below
``min_group`` that the server can isolate (except a whole round's survivor set).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import pytest

from fedcollab.secure import SecAggParams
from fedcollab.secure.exposure import expose
from tests.secure.lying_server import Lab, Lie, View

PROTOCOLS = ("secagg", "secaggplus")
KEYS = (True, False)
BOTH = pytest.mark.parametrize(("protocol", "amortise"), [(p, a) for p in PROTOCOLS for a in KEYS])


def _params(protocol: str, amortise: bool, server: str = "malicious", **kw: float) -> SecAggParams:
    return SecAggParams(
        protocol=protocol, amortise_keys=amortise, server=server, clip=4.0, scale_bits=20, **kw
    )  # type: ignore[arg-type]


def _assert_safe(lab: Lab, *refusals: str) -> None:
    """The property, then (where given) one of the named refusals."""
    exposure = expose(lab.transcript())
    assert exposure.ok, f"{exposure.describe()}; participants refused: {lab.refusals}"
    if refusals:
        assert any(lab.refused(name) for name in refusals), (
            f"expected a refusal {' or '.join(refusals)}, got {lab.refusals}"
        )


def _split(n: int, victim: int, inner: Sequence[int], *, shrink_roster: bool = False) -> Lie:
    """The victim is told ``inner`` are its only partners (threshold as its own rule for
    that many); ``inner`` sees only itself and the victim; the rest see each other
    and the victim, and are told the victim dropped, so they reveal its recovery
    secret while ``inner`` reveals its self-mask seed."""
    everyone = tuple(range(n))
    rest = tuple(u for u in everyone if u != victim and u not in inner)
    views = {victim: View(partners=tuple(inner), roster=tuple(inner) if shrink_roster else None)}
    for a in inner:
        clique = tuple(x for x in (victim, *inner) if x != a)
        views[a] = View(roster=clique, partners=clique)
    hidden = tuple(x for x in everyone if x != victim)
    for h in rest:
        nb = tuple(x for x in (victim, *rest) if x != h)
        views[h] = View(roster=nb, partners=nb, survivors=hidden)
    return Lie(views=views)


# -- 1. shrunk partner list in a key-setup round -------------------------------------


@BOTH
@pytest.mark.parametrize("server", ["malicious", "honest_but_curious"])
def test_attack1_shrunk_partner_list_is_refused(protocol: str, amortise: bool, server: str) -> None:
    lab = Lab(9, _params(protocol, amortise, server), seed=1)
    lab.round(0, _split(9, 0, (1, 2)))  # the first round: key setup
    _assert_safe(lab, "DerivedMismatchError")


@BOTH
def test_attack1_at_a_key_rotation(protocol: str, amortise: bool) -> None:
    params = SecAggParams(
        protocol=protocol, amortise_keys=amortise, clip=4.0, scale_bits=20, key_rotation_rounds=2
    )
    lab = Lab(9, params, seed=2)
    lab.round(0)
    lab.round(1)
    lab.round(2, _split(9, 3, (4, 5)))  # everyone rotates keys here
    _assert_safe(lab, "DerivedMismatchError")


# -- 2. two live recovery sharings for one round ---------------------------------------


@BOTH
def test_attack2_second_roster_for_the_same_round_is_refused(protocol: str, amortise: bool) -> None:
    lab = Lab(9, _params(protocol, amortise), seed=3)
    lie = _split(9, 0, (1, 2))
    # the victim's partners are honest in its first roster; a second roster (same keys)
    # shares a new recovery secret with the inner set only, whose new shares replace
    # nothing at the rest, who keep the superseded one
    lie = Lie(
        views={**lie.views, 0: View(partners=(1, 2))},
        reshare=frozenset({0}),
        views2={0: View(roster=(1, 2))},
    )
    lab.round(0, lie)
    _assert_safe(lab, "ReshareRefusedError", "DerivedMismatchError")


@BOTH
def test_attack2_reshare_with_fresh_keys_keeps_one_live_sharing(
    protocol: str, amortise: bool
) -> None:
    """The honest way to re-share (fresh keys first) must not open the victim either."""
    lab = Lab(9, _params(protocol, amortise), seed=4)
    lie = _split(9, 0, (1, 2))
    lie = Lie(
        views={**lie.views, 0: View(partners=(1, 2))},
        reshare=frozenset({0}),
        views2={0: View(roster=(1, 2))},
        fresh_keys_for_reshare=True,
    )
    lab.round(0, lie)
    _assert_safe(lab)


# -- 3. an incomplete graph accepted -----------------------------------------------------


@BOTH
def test_attack3_two_colluders_as_the_whole_neighbourhood_is_refused(
    protocol: str, amortise: bool
) -> None:
    lab = Lab(8, _params(protocol, amortise), seed=5)
    lab.colluders |= {1, 2}  # they hand the server every share they hold
    lab.round(0, Lie(views={0: View(roster=(1, 2), partners=(1, 2))}))
    _assert_safe(lab, "DerivedMismatchError")


# -- 4. registry re-installed mid-job with sybils ----------------------------------------


@BOTH
@pytest.mark.parametrize("server", ["malicious", "honest_but_curious"])
def test_attack4_registry_reinstall_with_sybils_is_refused(
    protocol: str, amortise: bool, server: str
) -> None:
    lab = Lab(6, _params(protocol, amortise, server), seed=6)
    lab.round(0)
    sybils = lab.reinstall_with_sybils(2)
    lab.round(1, Lie(), members=[0, *sybils])  # the next "sum" is the victim's alone
    _assert_safe(lab, "RegistryPinnedError", "GroupMismatchError", "SignatureError")


# -- 7. resume re-runs a round with the same inputs ---------------------------------------


@BOTH
@pytest.mark.parametrize("server", ["malicious", "honest_but_curious"])
def test_attack7_resume_gives_no_differencing_pair(
    protocol: str, amortise: bool, server: str
) -> None:
    lab = Lab(6, _params(protocol, amortise, server), seed=7)
    lab.round(0)
    lab.resume()
    lab.round(0, Lie(drop={"begin": frozenset({4})}))  # the same round, one member fewer
    _assert_safe(lab)


def _left_out(n: int, victim: int, *, survivors: tuple[int, ...] | None = None) -> Lie:
    """Every other member masks without the victim (its partner list, and all but the
    first one's roster, leave it out), yet (``survivors=None``) is asked to confirm the
    whole group as the survivors; the victim is told a survivor set without the first
    one. The round releases the others' sum, not the one their view names."""
    others = tuple(u for u in range(n) if u != victim)
    views = {others[0]: View(partners=others[1:])}
    for a in others[1:]:
        nb = tuple(x for x in others if x != a)
        views[a] = View(roster=nb, partners=nb, survivors=survivors)
    views[others[0]] = replace(views[others[0]], survivors=survivors)
    views[victim] = View(survivors=tuple(u for u in range(n) if u != others[0]))
    return Lie(views=views)


def _resumed_twice(lab: Lab, first: Lie) -> tuple[int, set[tuple[int, str]], set[tuple[int, str]]]:
    """Round 0 under ``first``, a resume (participants restarted from what they
    persisted), round 0 again honestly. Returns how many sharings the first run made,
    and who refused at which stage with ``InconsistentViewError`` in each run."""
    lab.round(0, first)
    before, refused = len(lab.rec.sharings), len(lab.refusals)
    lab.resume()
    lab.round(0)
    runs = lab.refusals[:refused], lab.refusals[refused:]
    first_run, rerun = (
        {(u, st) for _, u, st, e in r if e == "InconsistentViewError"} for r in runs
    )
    return before, first_run, rerun


def _assert_nothing_reused(lab: Lab, before: int) -> None:
    """A restarted participant draws every secret afresh: no sharing or mask seed of
    the re-run is one of the first run's."""
    old = {m.secret for m in lab.rec.sharings[:before]}
    assert old and not old & {m.secret for m in lab.rec.sharings[before:]}
    first, again = ({g.digest for g in lab.received if g.session == s} for s in (0, 1))
    assert first and again and not first & again


@BOTH
@pytest.mark.parametrize("server", ["malicious", "honest_but_curious"])
def test_attack9_resume_after_a_victim_left_out_of_every_partner_list(
    protocol: str, amortise: bool, server: str
) -> None:
    """The lying-server fuzzer's find (slow tier): round 0 releases the sum of members
    0-3 (none masked with 4) while 0-3 confirm all five as survivors; after a resume the
    honest re-run releases the sum of all five, and the difference is 4's input. The
    survivor set a participant confirms must be the sum its input enters, so 0-3
    refuse that view in the first run (malicious; honest-but-curious participants'
    views are their alive partners, refused in the re-run)."""
    lab = Lab(5, _params(protocol, amortise, server, threshold=0.67))
    lie = _left_out(5, 4)
    if server == "honest_but_curious":  # no consistency round: only request-level lies
        lie = Lie(views={u: replace(v, survivors=None) for u, v in lie.views.items()})
    before, first_run, rerun = _resumed_twice(lab, lie)
    _assert_safe(lab, "InconsistentViewError")
    if server == "malicious":  # the first run's view is refused: it is not the sum
        assert {(u, "consistency") for u in range(4)} <= first_run
    else:  # the first run's view is the alive partners; the re-run names another
        assert {(u, "unmask") for u in range(4)} <= rerun
    _assert_nothing_reused(lab, before)


@BOTH
def test_attack9_a_view_true_to_the_masks_pins_the_rerun(protocol: str, amortise: bool) -> None:
    """The same lie with survivor sets true to the masks (0-3 confirm themselves): the
    first run releases their sum, and the journalled views make 0-3 refuse the re-run's
    larger set."""
    lab = Lab(5, _params(protocol, amortise, threshold=0.67))
    before, first_run, rerun = _resumed_twice(lab, _left_out(5, 4, survivors=(0, 1, 2, 3)))
    _assert_safe(lab, "InconsistentViewError")
    assert not {u for u, _ in first_run} & {0, 1, 2, 3}  # a true view: confirmed
    assert {(u, "consistency") for u in range(4)} <= rerun
    _assert_nothing_reused(lab, before)


# -- 8. smaller ones ---------------------------------------------------------------------


@pytest.mark.parametrize("amortise", KEYS)
@pytest.mark.parametrize("n", [6, 8])
def test_attack8_split_views_at_a_low_threshold_are_refused(amortise: bool, n: int) -> None:
    """Secagg at threshold 0.51 with an even group: half the group is told the other half
    dropped. Honest-but-curious mode concedes this (docs/threat-model.md); the
    malicious model's consistency round must refuse it."""
    lab = Lab(n, _params("secagg", amortise, threshold=0.51), seed=8)
    half = tuple(range(n // 2))
    other = tuple(range(n // 2, n))
    views = {u: View(survivors=half if u in half else other) for u in range(n)}
    lab.round(0, Lie(views=views))
    _assert_safe(lab, "InconsistentViewError", "TooFewAliveError", "UnsafeRosterError")


@BOTH
def test_attack8_adverts_of_another_job_are_refused(protocol: str, amortise: bool) -> None:
    """The same identity keys in two jobs: an advert from the first, substituted in the
    second, must not verify there."""
    params = _params(protocol, amortise)
    first = Lab(5, params, seed=9, job_id=b"job-A")
    first.round(0)
    identities = {pid: p._identity for pid, p in first.parts.items()}
    second = Lab(5, params, seed=9, job_id=b"job-B", identities=identities)
    second.substitute[0] = first.keys[0]  # participant 0's job-A advert, same round
    second.round(0)
    # refused where the advert is checked, not only later (wrong keys fail everything)
    assert second.refused("SignatureError", ("share_keys", "masked_input")), second.refusals


# -- 5. private layers shrink a sum ---------------------------------------------------


def _private_spec(others: int, **top: object) -> object:
    from fedcollab.spec import spec_from_dict

    return spec_from_dict(
        {
            "name": "t",
            "task": {"dataset": "digits", "model": "mlp"},
            "rounds": 2,
            "participants": [
                {
                    "name": "vendor",
                    "role": "vendor",
                    "count": 3,
                    "sharing": "secure",
                    "private_layers": ["head"],
                },
                {"name": "c", "count": others, "sharing": "secure"},
            ],
            **top,
        }
    )


@pytest.mark.parametrize("others", [1, 2, 3])
def test_attack5_a_private_layer_shared_by_few_is_no_secure_sum(others: int) -> None:
    """The head array's secure sum is over its sharers only (the vendor's sites put
    public zeros there): the oracle on that array, vendor inputs known, shows what
    ``validate`` must refuse, and it refuses exactly that."""
    from fedcollab.spec import SpecError

    lab = Lab(3 + others, _params("secaggplus", True), seed=10)
    lab.round(0)
    full = lab.transcript()
    head = [
        m if m.owner >= 3 else type(m)(m.round_id, m.owner, m.label, m.masks, False)
        for m in full.inputs
    ]  # the vendor's head coordinates: known zeros
    exposure = expose(
        type(full)(
            tuple(head),
            full.sharings,
            full.revealed,
            full.min_group,
            # the head array's sum is over its sharers: that is the round for it
            survivors={k: frozenset(p for p in v if p >= 3) for k, v in full.survivors.items()},
            registered=full.registered,
        )
    )
    assert exposure.ok == (others >= 3)
    if others >= 3:
        _private_spec(others)
    else:
        with pytest.raises(SpecError, match="head"):
            _private_spec(others)


def test_attack5_a_sampled_round_with_too_few_sharers_is_refused() -> None:
    from fedcollab.secure.errors import UnsafeRosterError
    from fedcollab.spec.roster import roster
    from fedcollab.worker.round_check import check_layer_sharers

    spec = _private_spec(4, fraction=0.5)
    people = roster(spec)  # type: ignore[arg-type]
    check_layer_sharers(spec, people, 3, [0, 1, 2, 3, 4, 5], round_id=1)  # type: ignore[arg-type]
    with pytest.raises(UnsafeRosterError):
        check_layer_sharers(spec, people, 3, [0, 1, 2, 3, 4], round_id=1)  # type: ignore[arg-type]


# -- 6. the server sets each member's distributed-DP noise -------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"noisy_participants": 10**12},
        {"dp_mode": "none"},
        {"noise_multiplier": 0.0},
        {"clip_norm": 1e-6},
    ],
)
def test_attack6_a_server_chosen_dp_setting_is_refused(change: dict[str, object]) -> None:
    import dataclasses

    from fedcollab.secure.errors import ParameterMismatchError
    from fedcollab.spec import spec_from_dict
    from fedcollab.worker.messages import RoundConfig
    from fedcollab.worker.round_check import check_round_config, own_dp

    spec = spec_from_dict(
        {
            "name": "t",
            "task": {"dataset": "digits", "model": "mlp"},
            "rounds": 3,
            "participants": [
                {"name": "c", "count": 6},
                {"name": "v", "role": "vendor", "count": 4, "sharing": "secure"},
            ],
            "privacy": {"dp": {"mode": "distributed", "noise_multiplier": 1.2, "clip_norm": 0.5}},
        }
    )
    own = own_dp(spec)
    honest = RoundConfig(own.mode, own.clip_norm, own.noise_multiplier, own.secure_members)
    check_round_config(honest, own)
    # what each member adds, z * C / sqrt(m), may not fall below the honest m's share
    assert own.noise_multiplier * own.clip_norm / own.secure_members**0.5 > 0.29
    with pytest.raises(ParameterMismatchError):
        check_round_config(dataclasses.replace(honest, **change), own)  # type: ignore[arg-type]


# -- the oracle's verdict is real --------------------------------------------------------


@BOTH
def test_what_the_oracle_isolates_the_server_really_computes(protocol: str, amortise: bool) -> None:
    """Beyond the collusion bound (here: the victim's holders collude), the oracle says
    the victim is isolated; its combination of the received vectors, minus the masks
    the server knows, is the victim's encoded input exactly."""
    from fedcollab.secure.prg import expand

    lab = Lab(6, _params(protocol, amortise), seed=11)
    lab.colluders |= {1, 2, 3, 4}  # t = 4 of participant 0's 5 holders: far past 2t - d
    lab.round(0)
    exposure = expose(lab.transcript())
    (labels, combo), *_ = exposure.isolable
    assert labels == frozenset({(0, 0)}) and not exposure.ok
    codec = lab.params.codec(6)
    total = np.zeros(3, dtype=codec.dtype)
    for i, c in combo.items():
        got = lab.received[i]
        assert c.denominator == 1
        y = np.frombuffer(got.vector, dtype=codec.dtype)
        total += codec.dtype.type(int(c) % 2**codec.ring_bits) * y
        for mask, coeff in lab.transcript().inputs[i].masks.items():
            if mask in exposure.known_masks:
                total -= codec.dtype.type((int(c) * coeff) % 2**codec.ring_bits) * expand(
                    mask[1], 3, codec.dtype
                )
        if got.owner != 0:  # a colluder's input: the server knows it
            total -= codec.dtype.type(int(c) % 2**codec.ring_bits) * codec.encode(
                lab.vector(got.owner, got.round_id)
            )
    assert np.array_equal(total, codec.encode(lab.vector(0, 0)))
