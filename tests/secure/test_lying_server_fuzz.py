"""Hypothesis drives a lying server against the real participants; the exposure oracle
checks every run (issue 27).

Each example is one server strategy: a few rounds over 5-9 participants, each round a
:class:`~tests.secure.lying_server.Lie` drawn from the grammar below (a victim and
the views the server gives it, its claimed partners and the rest of the group:
shrunk or cliqued partner lists and rosters, lowered thresholds, survivor sets that
leave the victim out, every other member masking without the victim under survivor
sets that name it or not (the slow tier's find: with a resume, two sums that differ
by the victim), shares asked of the wrong kind (in the first unmask request
or a second one), a second roster with or without fresh keys, withheld deliveries,
replayed requests, adverts and sealed shares of earlier rounds, another
round config, sybils through a re-installed registry, honest dropouts), then
perhaps a resumed job that re-runs the last round with the same inputs. Whatever
participants refuse, the server carries on; at the end the oracle takes everything it
received and the test asserts the property: **every set of honest inputs the server
can isolate has at least min_group members or is a whole round's survivor set**.

Server models. ``malicious``: the whole grammar. ``honest_but_curious`` claims
only that a server which *follows the protocol* learns nothing but the sums, so the
fuzzer gives it what that mode claims to withstand: honest requests, participants that drop at any
stage, a resumed job re-running a round (attack 7: resume is the honest server's own
doing), and the request-level lies its participants check (partners, rosters,
thresholds, member sets, round config, re-shares, replays, withheld deliveries,
sybils: :func:`_request_level`). It concedes what docs/threat-model.md says it
concedes, and those are not asserted: split views (survivor sets or share kinds that
differ between participants: there is no consistency round), key substitution (no
signatures), and colluders beyond a passive server's bound.

Tiers, per configuration (8 configurations: secagg/secaggplus x amortised/per-round
keys x both models): the fast tier (``scripts/test --fast``) tries ``FUZZ_EXAMPLES``
strategies (400 in all, ~5 s); against the code before issue 27's fixes the first
violation came within 5 to 32 strategies in every configuration, so 50 catch each.
The resume differencing the ``left_out`` tactic draws is rarer (it needs that tactic
in the round a resume re-runs): against the code before its fix, one slow-tier run
failed 2 of the 4 malicious configurations; of two fast-tier runs, one failed 2 of 4.
The slow tier (CI) tries ``FUZZ_SLOW_EXAMPLES`` more (3,200 in all, ~35 s of one
core on an idle machine); the long tier (``FEDCOLLAB_LONG_TESTS=1``, not in CI)
``FUZZ_LONG_EXAMPLES`` (32,000 in all by default, a few minutes on 2 cores). The
environment variables ``FEDCOLLAB_FUZZ_EXAMPLES`` and ``FEDCOLLAB_FUZZ_LONG_EXAMPLES``
override the fast and long counts. A line at the end of the run says how many
strategies were tried.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import replace
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcollab.secure import SecAggParams
from fedcollab.secure.exposure import expose
from fedcollab.secure.messages import Kind
from tests.secure.lying_server import DIM, Lab, Lie, View

FUZZ_EXAMPLES = int(os.environ.get("FEDCOLLAB_FUZZ_EXAMPLES", "50"))
FUZZ_SLOW_EXAMPLES = 400
FUZZ_LONG_EXAMPLES = int(os.environ.get("FEDCOLLAB_FUZZ_LONG_EXAMPLES", "4000"))
STAGES = ("begin", "advertise", "share_keys", "masked_input", "consistency")
TRIED: Counter[str] = Counter()

CONFIGS = [
    (protocol, amortise, model)
    for protocol in ("secagg", "secaggplus")
    for amortise in (True, False)
    for model in ("malicious", "honest_but_curious")
]


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the session (output capture is over by then): how many strategies ran."""

    def line() -> None:
        runs = sum(v for k, v in TRIED.items() if k.startswith("run"))
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(TRIED.items()))
        sys.stderr.write(f"\nlying-server fuzzer: {runs} server strategies tried ({detail})\n")

    request.config.add_cleanup(line)
    yield


def _subset(
    draw: st.DrawFn, pool: list[int], *, min_size: int = 0, max_size: int | None = None
) -> frozenset[int]:
    if not pool:
        return frozenset()
    return frozenset(draw(st.sets(st.sampled_from(pool), min_size=min_size, max_size=max_size)))


@st.composite
def _drops(draw: st.DrawFn, members: list[int]) -> dict[str, frozenset[int]]:
    if draw(st.integers(0, 2)) != 0:
        return {}
    return {draw(st.sampled_from(STAGES)): _subset(draw, members, max_size=2)}


TACTICS = (
    "split", "split", "reshare", "shrink", "members", "members_split", "left_out", "left_out",
    "random",
)


@st.composite
def _lie(
    draw: st.DrawFn, n: int, sybils: list[int], colluders: frozenset[int], t_full: int = 0
) -> Lie:
    """One round of the malicious grammar: a tactic (a coordinated lie around a
    victim), each of its parts varied, and in the ``random`` tactic every deviation
    drawn independently. ``t_full``: the threshold every member derives for a whole
    round (complete neighbourhoods at these sizes), named where a lie keeps it."""
    tactic = draw(st.sampled_from(TACTICS))
    group = list(range(n))
    v = draw(st.sampled_from([u for u in group if u not in colluders]))
    others = [u for u in group if u != v]
    inner = tuple(sorted(draw(st.sets(st.sampled_from(others), min_size=2, max_size=3))))
    rest = tuple(u for u in others if u not in inner)
    everyone = tuple(group + sybils)
    low_t = st.one_of(st.none(), st.integers(1, 3))
    if tactic == "left_out":
        # every other member masks without the victim (partner lists, some rosters),
        # at the threshold it derives, while the survivor sets they confirm name the
        # victim, leave it out, or are honest; with a resume, the re-run's sum differs
        # from this one by the victim
        named = draw(st.sampled_from(["all", "true", "honest"]))
        survivors = {"all": everyone, "true": tuple(x for x in everyone if x != v)}.get(named)
        return Lie(
            views={
                u: View(
                    roster=tuple(x for x in others if x != u) if draw(st.booleans()) else None,
                    roster_t=t_full,
                    partners=tuple(x for x in others if x != u),
                    request_t=t_full,
                    survivors=survivors,
                )
                for u in others
            }
        )
    coordinated = tactic in ("split", "reshare")
    views: dict[int, View] = {}
    # the victim is told the inner set is its whole neighbourhood
    shape = (
        "shrink"
        if coordinated
        else draw(st.sampled_from(["shrink", "shrink_both", "threshold", "honest"]))
    )
    if tactic in ("members", "members_split"):
        shape = "honest"
    if shape == "shrink":
        views[v] = View(partners=inner, request_t=draw(low_t) if not coordinated else None)
    elif shape == "shrink_both":
        views[v] = View(roster=inner, partners=inner, roster_t=draw(low_t), request_t=draw(low_t))
    elif shape == "threshold":
        views[v] = View(roster_t=draw(low_t), request_t=draw(low_t))
    # the inner set sees only itself and the victim; the rest, told the victim
    # dropped, see only each other and the victim
    if coordinated or draw(st.booleans()):
        for a in inner:
            clique = tuple(x for x in (v, *inner) if x != a)
            views[a] = View(roster=clique, partners=clique)
    hide = coordinated or draw(st.booleans())
    rest_shape = draw(st.sampled_from(["clique", "clique", "request", "honest"]))
    for h in rest:
        nb = tuple(x for x in (v, *rest) if x != h)
        survivors = tuple(x for x in everyone if x != v) if hide else None
        if rest_shape == "clique":
            views[h] = View(roster=nb, partners=nb, survivors=survivors)
        elif rest_shape == "request":
            views[h] = View(partners=nb, survivors=survivors)
        elif hide:
            views[h] = View(survivors=survivors)
    if tactic == "members_split":
        # the victim, the inner set and some of the rest are told a smaller member set
        # (their partner lists are what it derives); the others the whole group, with
        # the victim dropped
        small = tuple(sorted({v, *inner, *_subset(draw, list(rest))}))
        for u in small:
            views[u] = View(members=small)
        for h in rest:
            if h not in small:
                views[h] = View(survivors=tuple(x for x in everyone if x != v))
    elif tactic == "members" or (tactic == "random" and draw(st.booleans())):
        # another member set, or another round config, for some participants
        for who in sorted(_subset(draw, group, min_size=1, max_size=3)):
            old = views.get(who, View())
            change = draw(st.sampled_from(["members", "members", "dim", "group_size"]))
            if change == "members":
                views[who] = replace(old, members=tuple(sorted({who, v, *_subset(draw, group)})))
            elif change == "dim":
                views[who] = replace(old, dim=DIM + 1)
            else:
                views[who] = replace(old, group_size=draw(st.sampled_from([n - 1, n + 3, 10**6])))
    noisy = tactic == "random"
    sometimes = st.sampled_from([False, True]) if noisy else st.just(False)
    reshare = frozenset({v}) if tactic == "reshare" or draw(sometimes) else frozenset()
    views2 = {v: View(roster=draw(st.sampled_from([inner, rest or inner])))} if reshare else {}
    return Lie(
        views=views,
        ask_recovery=frozenset((h, v) for h in _subset(draw, others))
        if draw(sometimes)
        else frozenset(),
        ask_self=frozenset((h, v) for h in _subset(draw, others, max_size=2))
        if draw(sometimes)
        else frozenset(),
        reshare=reshare,
        views2=views2,
        fresh_keys_for_reshare=draw(st.booleans()) if reshare else False,
        withhold=frozenset((h, v) for h in _subset(draw, others, max_size=3))
        if draw(sometimes)
        else frozenset(),
        replay=_subset(draw, group, max_size=2) if draw(sometimes) else frozenset(),
        replay_adverts=draw(sometimes),
        replay_deliveries=_subset(draw, group, max_size=3) if draw(sometimes) else frozenset(),
        second_unmask=frozenset(
            (h, v, draw(st.sampled_from([Kind.SELF, Kind.RECOVERY])))
            for h in _subset(draw, others, max_size=4)
        )
        if tactic in ("split", "random") and draw(st.booleans())
        else frozenset(),
        sybil_partners=frozenset({v, *inner}) if sybils else frozenset(),
        drop=draw(_drops(group)) if noisy else {},
    )


def _request_level(lie: Lie) -> Lie:
    """The lies honest-but-curious mode claims to refuse (docs/threat-model.md): about
    partners, rosters, thresholds, members, the round config, re-shares, replays and
    withheld deliveries; not who survived (split views), the kind of share asked for
    (a claimed dropout is a split view without the consistency round), or keys."""
    views = {u: replace(v, survivors=None) for u, v in lie.views.items()}
    return replace(
        lie,
        views=views,
        ask_recovery=frozenset(),
        ask_self=frozenset(),
        second_unmask=frozenset(),
        replay_adverts=False,
    )


@st.composite
def scenarios(
    draw: st.DrawFn, malicious: bool
) -> tuple[int, float, frozenset[int], list[tuple[Any, ...]]]:
    """A server strategy over ``n`` participants at a share ``threshold``, with
    ``colluders`` among them (fewer than the protocol's bound ``2t - d`` in the smallest
    round a participant accepts, docs/threat-model.md: the server may leave members out
    down to the floor, so ``d`` is the floor's neighbourhood, not the whole group's):
    ``[("round", round_id, lie, members) | ("sybils", k) | ("resume",)]``."""
    n = draw(st.integers(5, 9))
    threshold = draw(st.sampled_from([0.51, 0.51, 0.67, 0.9]))
    from fedcollab.secure.graph import threshold_for

    # neighbourhood: complete for secagg, and secaggplus's auto degree at n <= 9; a
    # round of the floor's size (at n = 5: 3 members, d = 2, t = 2) tolerates one
    # colluder, so two (the long tier found it: victim + two colluders as the whole
    # round) are beyond the documented bound
    d = SecAggParams().floor(n) - 1
    bound = max(0, 2 * threshold_for(d, threshold) - d - 1)
    colluders = (
        frozenset(draw(st.sets(st.integers(0, n - 1), max_size=min(bound, 2))))
        if malicious
        else frozenset()
    )
    steps: list[tuple[Any, ...]] = []
    sybils: list[int] = []
    r = 0
    for _ in range(draw(st.integers(1, 3))):
        members = None
        if draw(st.integers(0, 4)) and (malicious or draw(st.booleans())):
            lie = draw(_lie(n, sybils, colluders, threshold_for(n - 1, threshold)))
            if not malicious:
                lie = _request_level(lie)
            if not sybils and draw(st.integers(0, 6)) == 0:
                sybils = [n, n + 1]
                steps.append(("sybils", 2))
                victim = draw(st.sampled_from([u for u in range(n) if u not in colluders]))
                members = (victim, *sybils)  # the next "sum" is the victim and the sybils
                lie = Lie()
        else:
            lie = Lie(drop=draw(_drops(list(range(n)))))
        steps.append(("round", r, lie, members))
        r += draw(st.sampled_from([1, 1, 1, 2]))
    if draw(st.integers(0, 2)) == 0:  # resume: re-run the last round, same inputs
        steps.append(("resume",))
        last = max(s[1] for s in steps if s[0] == "round")
        steps.append(("round", last, Lie(drop=draw(_drops(list(range(n))))), None))
    return n, threshold, colluders, steps


def run_scenario(
    params: SecAggParams,
    n: int,
    steps: list[tuple[Any, ...]],
    seed: int = 0,
    colluders: frozenset[int] = frozenset(),
) -> Lab:
    lab = Lab(n, params, seed=seed)
    lab.colluders |= colluders
    for step in steps:
        if step[0] == "sybils":
            lab.reinstall_with_sybils(step[1])
        elif step[0] == "resume":
            lab.resume()
        else:
            _, round_id, lie, members = step
            lab.round(round_id, lie, members)
    return lab


Case = tuple[int, float, frozenset[int], list[tuple[Any, ...]]]


def _check(params: SecAggParams, case: Case) -> None:
    n, threshold, colluders, steps = case
    params = replace(params, threshold=threshold)
    lab = run_scenario(params, n, steps, colluders=colluders)
    TRIED[
        f"run {params.protocol}/{'amortised' if params.amortise_keys else 'per-round'}"
        f"/{params.server}"
    ] += 1
    TRIED["rounds"] += sum(s[0] == "round" for s in steps)
    TRIED["refusals"] += len(lab.refusals)
    exposure = expose(lab.transcript())
    TRIED["sums computable"] += exposure.rank  # the protocol still delivers sums
    assert exposure.ok, (
        f"{exposure.describe()}; refusals: {lab.refusals}; "
        f"strategy: n={n} threshold={threshold} colluders={set(colluders)} {steps}"
    )


def _params(protocol: str, amortise: bool, model: str) -> SecAggParams:
    return SecAggParams(
        protocol=protocol, amortise_keys=amortise, server=model, clip=4.0, scale_bits=20
    )


TIERS = [
    pytest.param(FUZZ_EXAMPLES, id="fast"),
    pytest.param(FUZZ_SLOW_EXAMPLES, id="slow", marks=pytest.mark.slow),
    pytest.param(FUZZ_LONG_EXAMPLES, id="long", marks=[pytest.mark.slow, pytest.mark.long]),
]


@pytest.mark.parametrize("examples", TIERS)
@pytest.mark.parametrize(("protocol", "amortise", "model"), CONFIGS)
def test_no_lying_server_isolates_a_small_set(protocol: str, amortise: bool, model: str,
                                              examples: int) -> None:
    params = _params(protocol, amortise, model)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenarios(params.malicious))
    def fuzz(case: Case) -> None:
        _check(params, case)

    fuzz()
