"""The exposure oracle (fedcollab.secure.exposure) on hand-built transcripts, and against
an independent reference (real Shamir reconstruction, floating-point ranks) with
Hypothesis on random transcripts."""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Hashable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcollab.secure.exposure import Masked, Sharing, Transcript, expose
from fedcollab.secure.shamir import PRIME, lagrange_at_zero, share_values


def _pair(u: int, v: int, r: int = 0) -> tuple[str, int, int, int]:
    return ("pair", min(u, v), max(u, v), r)


def _round(
    n: int,
    r: int = 0,
    *,
    partners: dict[int, tuple[int, ...]] | None = None,
    alive: set[int] | None = None,
    label: str = "",
) -> tuple[list[Masked], list[Sharing]]:
    """A complete-graph round: inputs of ``alive`` and each member's two sharings."""
    members = range(n)
    alive = set(members) if alive is None else alive
    graph = partners or {u: tuple(v for v in members if v != u) for u in members}
    inputs, sharings = [], []
    for u in members:
        nbrs = graph[u]
        t = len(nbrs) // 2 + 1
        if u in alive:
            masks: dict[Hashable, int] = {("self", u, r): 1}
            for v in nbrs:
                masks[_pair(u, v, r)] = 1 if u < v else -1
            inputs.append(Masked(r, u, f"x{u}{label}@{r}", masks))
        sharings.append(
            Sharing(("self", u, r), u, "self", r, t, frozenset(nbrs), frozenset({("self", u, r)}))
        )
        sharings.append(
            Sharing(
                ("rec", u, r),
                u,
                "recovery",
                r,
                t,
                frozenset(nbrs),
                frozenset(_pair(u, v, r) for v in nbrs),
            )
        )
    return inputs, sharings


def _honest_reveals(n: int, alive: set[int], r: int = 0) -> frozenset[tuple[Hashable, int]]:
    out = set()
    for u in range(n):
        kind = "self" if u in alive else "rec"
        out |= {((kind, u, r), h) for h in alive if h != u}
    return frozenset(out)


def test_an_honest_round_releases_only_the_full_sum() -> None:
    inputs, sharings = _round(5)
    tr = Transcript(
        tuple(inputs),
        tuple(sharings),
        _honest_reveals(5, set(range(5))),
        3,
        survivors={0: frozenset(range(5))},
    )
    exp = expose(tr)
    assert exp.ok and exp.rank == 1 and exp.isolable == ()


def test_an_honest_round_with_a_dropout_releases_only_the_survivors_sum() -> None:
    alive = {0, 1, 2, 3}
    inputs, sharings = _round(5, alive=alive)
    tr = Transcript(
        tuple(inputs),
        tuple(sharings),
        _honest_reveals(5, alive),
        3,
        survivors={0: frozenset(alive)},
    )
    exp = expose(tr)
    assert exp.ok and exp.rank == 1
    assert ("rec", 4, 0) in exp.reconstructed and ("self", 4, 0) not in exp.reconstructed


def test_a_victim_with_both_secrets_revealed_is_isolated_alone() -> None:
    inputs, sharings = _round(5)
    revealed = _honest_reveals(5, set(range(5))) | {(("rec", 0, 0), h) for h in (1, 2, 3)}
    exp = expose(
        Transcript(tuple(inputs), tuple(sharings), revealed, 3, survivors={0: frozenset(range(5))})
    )
    assert not exp.ok
    assert exp.violations == (frozenset({"x0@0"}),)
    ((labels, combo),) = exp.isolable
    assert combo == {0: 1}  # y_0 alone, once its masks are known


def test_below_threshold_shares_reveal_nothing() -> None:
    inputs, sharings = _round(5)
    revealed = _honest_reveals(5, set(range(5))) | {(("rec", 0, 0), h) for h in (1, 2)}
    assert expose(Transcript(tuple(inputs), tuple(sharings), revealed, 3)).ok


def test_colluders_holding_shares_count_and_their_inputs_are_known() -> None:
    # 4 members; 3 and 2 collude: their inputs are known, so the full sum minus theirs
    # is {x0, x1}: two honest inputs, an allowed set (the whole honest survivor set)
    inputs, sharings = _round(4)
    inputs = [
        m if m.owner in (0, 1) else Masked(m.round_id, m.owner, m.label, m.masks, False)
        for m in inputs
    ]
    tr = Transcript(
        tuple(inputs),
        tuple(sharings),
        _honest_reveals(4, set(range(4))),
        3,
        survivors={0: frozenset(range(4))},
        colluders=frozenset({2, 3}),
    )
    exp = expose(tr)
    # the colluders hold 2 of 0's 3 holders' shares, t = 2: both of 0's secrets: isolated
    assert exp.violations and frozenset({"x0@0"}) in exp.violations


def test_the_same_input_in_two_rounds_with_different_survivors_is_differenced() -> None:
    a_in, a_sh = _round(4, 0, alive={0, 1, 2, 3}, label="")
    b_in, b_sh = _round(4, 1, alive={0, 1, 2}, label="")
    relabel = [Masked(m.round_id, m.owner, f"x{m.owner}", m.masks) for m in a_in + b_in]
    revealed = _honest_reveals(4, {0, 1, 2, 3}, 0) | _honest_reveals(4, {0, 1, 2}, 1)
    exp = expose(
        Transcript(
            tuple(relabel),
            tuple(a_sh + b_sh),
            revealed,
            3,
            survivors={0: frozenset(range(4)), 1: frozenset({0, 1, 2})},
        )
    )
    assert exp.violations == (frozenset({"x3"}),)


def test_a_survivor_set_below_min_group_releases_nothing() -> None:
    inputs, sharings = _round(3)
    revealed = _honest_reveals(3, {0, 1, 2})
    tr = Transcript(tuple(inputs), tuple(sharings), revealed, 4, survivors={0: frozenset(range(3))})
    exp = expose(tr)
    assert exp.violations == (frozenset({"x0@0", "x1@0", "x2@0"}),)


def test_registered_colluders_count_towards_a_round_and_sybils_do_not() -> None:
    inputs, sharings = _round(4)
    inputs = [
        m if m.owner < 2 else Masked(m.round_id, m.owner, m.label, m.masks, False) for m in inputs
    ]
    revealed = _honest_reveals(4, set(range(4)))
    tr = Transcript(
        tuple(inputs),
        tuple(sharings),
        revealed,
        3,
        survivors={0: frozenset(range(4))},
        registered=frozenset(range(4)),
    )
    exp = expose(tr)  # {x0, x1} is the round's sum minus two registered colluders' inputs
    assert exp.ok and [set(s) for s, _ in exp.isolable] == [{"x0@0", "x1@0"}]
    sybils = dataclasses.replace(tr, registered=frozenset({0, 1}))
    assert expose(sybils).violations == (frozenset({"x0@0", "x1@0"}),)


# -- against an independent reference ------------------------------------------------


def _reference(tr: Transcript, rng: random.Random) -> set[frozenset[Hashable]]:
    """Violating sets, computed independently: real Shamir shares and reconstruction for
    the knowledge step, and column ranks in floating point for the linear algebra:
    ``dim(W restricted to T) = rank[U|A] - rank[U|A without T]``."""
    known = set(tr.known_masks)
    for m in tr.inputs:
        if not m.honest:
            known |= set(m.masks)
    got: dict[Hashable, set[int]] = {}
    for sid, h in tr.revealed:
        got.setdefault(sid, set()).add(h)
    for s in tr.sharings:
        secret = rng.randrange(PRIME)
        holders = sorted(s.holders)
        ys = dict(
            zip(holders, share_values(secret, threshold=s.threshold, xs=[h + 1 for h in holders]))
        )
        have = sorted((got.get(s.sid, set()) | set(tr.colluders)) & s.holders)
        if len(have) >= s.threshold:
            xs = tuple(h + 1 for h in have[: s.threshold])
            value = sum(c * ys[h] for c, h in zip(lagrange_at_zero(xs), have)) % PRIME
            assert value == secret
            known |= s.unlocks
    masks = sorted({k for m in tr.inputs for k in m.masks if k not in known}, key=repr)
    labels = sorted({m.label for m in tr.inputs if m.honest}, key=repr)
    mat_u = np.array([[m.masks.get(k, 0) for k in masks] for m in tr.inputs], float)
    mat_a = np.array(
        [[1.0 if m.honest and m.label == lab else 0.0 for lab in labels] for m in tr.inputs]
    )
    full = np.linalg.matrix_rank(np.hstack([mat_u, mat_a])) if len(tr.inputs) else 0
    allowed = set()
    for r, pids in tr.survivors.items():
        if len(pids if tr.registered is None else pids & tr.registered) < tr.min_group:
            continue
        labs = frozenset(
            m.label for m in tr.inputs if m.honest and m.round_id == r and m.owner in pids
        )
        if labs:
            allowed.add(labs)
    minimal: list[frozenset[Hashable]] = []
    bad: set[frozenset[Hashable]] = set()
    for size in range(1, tr.min_group):
        for t in itertools.combinations(range(len(labels)), size):
            if any(f <= set(t) for f in minimal):
                continue
            keep = [j for j in range(len(labels)) if j not in t]
            dim = full - np.linalg.matrix_rank(np.hstack([mat_u, mat_a[:, keep]]))
            if dim > 0:
                minimal.append(frozenset(t))
                labs = frozenset(labels[j] for j in t)
                if labs not in allowed or dim > 1:
                    bad.add(labs)
                elif size > 1:  # allowed only as the plain sum: equal weights in T
                    idx = list(t)
                    diffs = np.stack([mat_a[:, i] - mat_a[:, idx[0]] for i in idx[1:]], 1)
                    base = np.hstack([mat_u, mat_a[:, keep]])
                    if np.linalg.matrix_rank(np.hstack([base, diffs])) != np.linalg.matrix_rank(
                        base
                    ):
                        bad.add(labs)
    return bad


@st.composite
def transcripts(draw: st.DrawFn) -> tuple[Transcript, int]:
    n = draw(st.integers(3, 6))
    rounds = draw(st.integers(1, 2))
    same_inputs = draw(st.booleans())
    inputs: list[Masked] = []
    sharings: list[Sharing] = []
    revealed: set[tuple[Hashable, int]] = set()
    survivors: dict[int, frozenset[int]] = {}
    colluders = frozenset(draw(st.sets(st.integers(0, n - 1), max_size=1)))
    pair_pool = [_pair(u, v) for u, v in itertools.combinations(range(n), 2)]
    for r in range(rounds):
        alive = draw(st.sets(st.integers(0, n - 1), min_size=1))
        survivors[r] = frozenset(alive)
        for u in sorted(alive):
            nbrs = draw(st.sets(st.integers(0, n - 1).filter(lambda v, u=u: v != u), min_size=1))
            # pairwise masks may repeat across rounds (same keys, same round id: replays)
            masks: dict[Hashable, int] = {("self", u, r): 1}
            for v in nbrs:
                key = _pair(u, v, draw(st.integers(0, rounds - 1)))
                masks[key] = 1 if u < v else -1
            label = f"x{u}" if same_inputs else f"x{u}@{r}"
            inputs.append(Masked(r, u, label, masks, honest=u not in colluders))
            for kind in ("self", "rec"):
                holders = frozenset(
                    draw(st.sets(st.integers(0, n - 1).filter(lambda v, u=u: v != u), min_size=1))
                )
                t = draw(st.integers(1, len(holders)))
                unlocks = (
                    frozenset({("self", u, r)})
                    if kind == "self"
                    else frozenset(draw(st.sets(st.sampled_from(pair_pool), max_size=4)))
                )
                sid = (kind, u, r)
                sharings.append(Sharing(sid, u, kind, r, t, holders, unlocks))
                for h in sorted(holders):
                    if draw(st.booleans()):
                        revealed.add((sid, h))
    min_group = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**32))
    registered = frozenset(draw(st.sets(st.integers(0, n - 1)))) if draw(st.booleans()) else None
    return Transcript(
        tuple(inputs),
        tuple(sharings),
        frozenset(revealed),
        min_group,
        survivors=survivors,
        colluders=colluders,
        registered=registered,
    ), seed


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transcripts())
def test_oracle_matches_an_independent_reference(case: tuple[Transcript, int]) -> None:
    tr, seed = case
    exp = expose(tr)
    assert set(exp.violations) == _reference(tr, random.Random(seed)), exp.describe()


@settings(max_examples=60, deadline=None)
@given(transcripts())
def test_every_isolable_set_comes_with_a_combination_that_computes_it(
    case: tuple[Transcript, int],
) -> None:
    """Soundness, concretely: give every mask and input a random vector mod 2**32; the
    oracle's combination of received vectors, minus the known masks, is exactly the
    combination of the isolated inputs."""
    tr, seed = case
    exp = expose(tr)
    rng = np.random.default_rng(seed)
    dim, mod = 4, 2**32
    value: dict[Hashable, np.ndarray] = {}

    def v(key: Hashable) -> np.ndarray:
        if key not in value:
            value[key] = rng.integers(0, mod, dim, dtype=np.int64)
        return value[key]

    ys = [
        (v(("in", m.label)) + sum((c * v(k) for k, c in m.masks.items()), np.zeros(dim, np.int64)))
        % mod
        for m in tr.inputs
    ]
    for labels, combo in exp.isolable:
        den = int(np.lcm.reduce([f.denominator for f in combo.values()]))
        total = np.zeros(dim, dtype=object)
        expected = np.zeros(dim, dtype=object)
        for i, f in combo.items():
            c = int(f * den)
            m = tr.inputs[i]
            total = total + c * ys[i].astype(object)
            for k, mc in m.masks.items():
                if k in exp.known_masks:
                    total = total - c * mc * v(k).astype(object)
            if m.honest:
                expected = expected + c * v(("in", m.label)).astype(object)
            else:
                total = total - c * v(("in", m.label)).astype(object)
        assert np.array_equal(total % mod, expected % mod)
        assert labels  # nonzero: only inputs of these labels appear
