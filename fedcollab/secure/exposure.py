"""The exposure oracle: what a server can isolate from everything it received.

A pure function (Python only, exact rational arithmetic) over a symbolic transcript
of one or more rounds, as the server saw them:

* every masked vector it received, ``y = x[label] + sum(coeff * mask)``, with the
  masks named (a self-mask seed, a pairwise seed) and each input named by a
  ``label`` (two vectors with one label carry the same input: a resumed round);
* every Shamir sharing a participant made (owner, kind, threshold, holders) and what
  reconstructing it unlocks (the self mask it seeds, or the pairwise masks a
  recovery secret opens);
* every share the server obtained: revealed by its holder, or held by a colluder;
* the colluders (their inputs and every mask they know are the server's too).

From these it computes the sharings with at least ``t`` distinct shares in the
server's hands (across every sharing and round it saw: two sharings of one secret's
seeds count separately), hence the masks the server knows, and then, by linear
algebra over the masked vectors, the space ``W`` of honest-input combinations the
server can compute: ``sum(c_i * y_i)`` is known exactly when every unknown mask
cancels, and it equals ``sum(c_i * x_i)``. An **isolable set** is the support of a
nonzero vector of ``W``. The property secure aggregation must keep:

    every isolable set of honest inputs has at least ``min_group`` members, or it is
    exactly the honest part of one round's survivor set (the sum the round releases)
    and that survivor set has at least ``min_group`` registered members.

The exception concedes what no protocol can hide: registered members that collude
with the server subtract their own inputs from a released sum. Identities the
server minted (sybils, not in ``registered``) do not count towards a round.

Arithmetic is over the rationals: a combination that cancels only modulo ``2**bits``
(coefficients divisible by the ring's characteristic) is not modelled; no
protocol message produces one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Hashable, Iterable, Mapping, Sequence

__all__ = ["Masked", "Sharing", "Transcript", "Exposure", "expose"]

Label = Hashable
MaskId = Hashable


@dataclass(frozen=True)
class Masked:
    """One masked vector the server received: ``x[label] + sum(coeff * mask)``.

    Attributes:
        round_id: The round it was sent in.
        owner: The participant that sent it.
        label: Names the input: equal labels mean equal inputs (a re-run round).
        masks: Mask id -> coefficient (+1 or -1 for a real masked input).
        honest: ``False`` for a colluder's (or sybil's) vector: its input is known.
    """

    round_id: int
    owner: int
    label: Label
    masks: Mapping[MaskId, int]
    honest: bool = True


@dataclass(frozen=True)
class Sharing:
    """One Shamir sharing a participant made.

    Attributes:
        sid: Names the sharing (unique in the transcript).
        owner: The participant whose secret it is.
        kind: ``"self"`` or ``"recovery"`` (for reports only).
        round_id: The round whose masks the secret seeds or unlocks.
        threshold: ``t``: any ``t`` distinct shares reconstruct the secret.
        holders: Participant ids the shares were made for.
        unlocks: Mask ids the server learns by reconstructing it.
    """

    sid: Hashable
    owner: int
    kind: str
    round_id: int
    threshold: int
    holders: frozenset[int]
    unlocks: frozenset[MaskId]


@dataclass(frozen=True)
class Transcript:
    """Everything the server received, symbolically (see the module docstring).

    Attributes:
        inputs: The masked vectors.
        sharings: Every sharing made.
        revealed: ``(sid, holder)`` for every share the server obtained.
        colluders: Participants working with the server: it holds every share made
            for them, and their inputs (``honest=False`` vectors).
        known_masks: Masks the server knows otherwise (seeds a colluder holds).
        survivors: Round id -> the participants whose inputs that round releases in
            its sum (the honest ones among them form the allowed set).
        min_group: The smallest set of honest inputs a sum may reveal.
        registered: The group's members as registered at setup (``None``: everyone
            in ``survivors`` counts).
    """

    inputs: tuple[Masked, ...]
    sharings: tuple[Sharing, ...]
    revealed: frozenset[tuple[Hashable, int]]
    min_group: int
    survivors: Mapping[int, frozenset[int]] = field(default_factory=dict)
    colluders: frozenset[int] = frozenset()
    known_masks: frozenset[MaskId] = frozenset()
    registered: frozenset[int] | None = None


@dataclass(frozen=True)
class Exposure:
    """What the server can isolate.

    Attributes:
        reconstructed: Sids of the sharings the server holds ``t`` shares of.
        known_masks: Every mask the server knows.
        rank: Dimension of the space of honest-input combinations it can compute.
        isolable: Minimal isolable sets below ``min_group`` (any sum over fewer than
            ``min_group`` honest inputs it can compute), smallest first, each with
            the combination of received vectors (index into ``inputs`` ->
            coefficient) that computes it.
        allowed: The honest survivor sets (per round) a sum may reveal.
        violations: The isolable sets that break the property (not an allowed set,
            or an allowed set the server gets with other weights than the sum).
    """

    reconstructed: frozenset[Hashable]
    known_masks: frozenset[MaskId]
    rank: int
    isolable: tuple[tuple[frozenset[Label], Mapping[int, Fraction]], ...]
    allowed: tuple[frozenset[Label], ...]
    violations: tuple[frozenset[Label], ...]

    @property
    def ok(self) -> bool:
        """Whether the property holds."""
        return not self.violations

    def describe(self) -> str:
        """One line for a failing assertion."""
        if self.ok:
            return f"no isolable set below min_group (rank {self.rank})"
        sets = ", ".join(
            "{" + ", ".join(map(str, sorted(s, key=str))) + "}" for s in self.violations
        )
        return (
            f"the server isolates {sets} (reconstructed {len(self.reconstructed)} "
            f"sharings: {sorted(map(str, self.reconstructed))})"
        )


def expose(transcript: Transcript) -> Exposure:
    """Compute what the server can isolate from ``transcript`` (see the module docstring)."""
    reconstructed, known = _knowledge(transcript)
    honest_labels = sorted({m.label for m in transcript.inputs if m.honest}, key=repr)
    basis, combos = _combinations(transcript.inputs, known, honest_labels)
    allowed = _allowed_sets(transcript)
    isolable: list[tuple[frozenset[Label], Mapping[int, Fraction]]] = []
    violations: list[frozenset[Label]] = []
    if basis:
        index = {lab: j for j, lab in enumerate(honest_labels)}
        support = sorted({j for row in basis for j in row}, key=int)
        found: list[frozenset[int]] = []
        for size in range(1, transcript.min_group):
            for cols in itertools.combinations(support, size):
                t = frozenset(cols)
                if any(f <= t for f in found):
                    continue  # not minimal
                dim = len(basis) - _rank(
                    [{j: v for j, v in row.items() if j not in t} for row in basis]
                )
                if dim == 0:
                    continue
                found.append(t)
                labels = frozenset(honest_labels[j] for j in t)
                vec = _vector_within(basis, combos, t)
                isolable.append((labels, vec[1]))
                if not _is_allowed(labels, dim, vec[0], index, allowed):
                    violations.append(labels)
    return Exposure(
        frozenset(reconstructed),
        frozenset(known),
        len(basis),
        tuple(isolable),
        tuple(allowed),
        tuple(violations),
    )


def _knowledge(tr: Transcript) -> tuple[set[Hashable], set[MaskId]]:
    """The sharings with ``t`` shares in the server's hands and every mask it knows."""
    by_sid: dict[Hashable, set[int]] = {}
    for sid, holder in tr.revealed:
        by_sid.setdefault(sid, set()).add(holder)
    known: set[MaskId] = set(tr.known_masks)
    for m in tr.inputs:
        if not m.honest:
            known.update(m.masks)  # a colluder knows every seed it masked with
    done: set[Hashable] = set()
    for s in tr.sharings:
        got = (by_sid.get(s.sid, set()) | set(tr.colluders)) & s.holders
        if len(got) >= s.threshold:
            done.add(s.sid)
            known.update(s.unlocks)
    return done, known


Row = dict[int, Fraction]


def _combinations(
    inputs: Sequence[Masked], known: set[MaskId], labels: Sequence[Label]
) -> tuple[list[Row], list[Row]]:
    """A basis (echelon rows over honest-label indices) of the combinations of honest
    inputs the server can compute, and for each the combination of ``inputs`` giving it.

    Gaussian elimination over [unknown masks | honest inputs | identity], unknown-mask
    columns first: the rows left with no unknown mask span exactly the computable
    combinations.
    """
    index = {lab: j for j, lab in enumerate(labels)}
    unknown = sorted(
        {k for m in inputs for k, c in m.masks.items() if c and k not in known}, key=repr
    )
    mask_col = {k: j for j, k in enumerate(unknown)}
    rows: list[tuple[Row, Row, Row]] = []  # (masks part, labels part, combination)
    for i, m in enumerate(inputs):
        mrow: Row = {mask_col[k]: Fraction(c) for k, c in m.masks.items() if k in mask_col and c}
        lrow: Row = {index[m.label]: Fraction(1)} if m.honest else {}
        rows.append((mrow, lrow, {i: Fraction(1)}))
    pending = rows
    for col in range(len(unknown)):
        pivot = next((r for r in pending if col in r[0]), None)
        if pivot is None:
            continue
        rest = []
        for r in pending:
            if r is pivot:
                continue
            if col in r[0]:
                f = r[0][col] / pivot[0][col]
                r = (_axpy(r[0], pivot[0], f), _axpy(r[1], pivot[1], f), _axpy(r[2], pivot[2], f))
            rest.append(r)
        pending = rest
    free = [r for r in pending if not r[0]]
    # echelon form of the label parts (keeping the combinations alongside)
    basis: list[Row] = []
    combos: list[Row] = []
    work = [(r[1], r[2]) for r in free if r[1]]
    for col in range(len(labels)):
        lead = next((w for w in work if col in w[0]), None)
        if lead is None:
            continue
        left = []
        for w in work:
            if w is lead:
                continue
            if col in w[0]:
                f = w[0][col] / lead[0][col]
                w = (_axpy(w[0], lead[0], f), _axpy(w[1], lead[1], f))
            if w[0]:
                left.append(w)
        basis.append(lead[0])
        combos.append(lead[1])
        work = left
    return basis, combos


def _axpy(a: Row, b: Row, f: Fraction) -> Row:
    """``a - f * b`` (sparse)."""
    out = dict(a)
    for j, v in b.items():
        w = out.get(j, Fraction(0)) - f * v
        if w:
            out[j] = w
        else:
            out.pop(j, None)
    return out


def _rank(rows: Iterable[Row]) -> int:
    """Rank of sparse rational rows."""
    work = [dict(r) for r in rows if r]
    rank = 0
    while work:
        pivot = work.pop()
        if not pivot:
            continue
        col = next(iter(pivot))
        rank += 1
        work = [
            r2
            for r2 in (_axpy(r, pivot, r[col] / pivot[col]) if col in r else r for r in work)
            if r2
        ]
    return rank


def _vector_within(
    basis: Sequence[Row], combos: Sequence[Row], t: frozenset[int]
) -> tuple[Row, Row]:
    """A nonzero vector of span(basis) supported within ``t``, and its combination."""
    # eliminate every column outside t, carrying the combinations
    work = [(dict(b), dict(c)) for b, c in zip(basis, combos)]
    outside = sorted({j for b in basis for j in b if j not in t})
    for col in outside:
        pivot = next((r for r in work if col in r[0]), None)
        if pivot is None:
            continue
        work = [
            r
            if col not in r[0] or r is pivot
            else (
                _axpy(r[0], pivot[0], r[0][col] / pivot[0][col]),
                _axpy(r[1], pivot[1], r[0][col] / pivot[0][col]),
            )
            for r in work
        ]
        work.remove(pivot)
    for vec, combo in work:
        if vec and all(j in t for j in vec):
            return vec, combo
    raise AssertionError("no vector within the support although the rank says so")


def _allowed_sets(tr: Transcript) -> list[frozenset[Label]]:
    out = []
    for round_id, pids in sorted(tr.survivors.items()):
        counted = pids if tr.registered is None else pids & tr.registered
        if len(counted) < tr.min_group:
            continue  # not a round that may release a sum
        labels = frozenset(
            m.label for m in tr.inputs if m.honest and m.round_id == round_id and m.owner in pids
        )
        if labels and labels not in out:
            out.append(labels)
    return out


def _is_allowed(
    labels: frozenset[Label],
    dim: int,
    vec: Row,
    index: Mapping[Label, int],
    allowed: Sequence[frozenset[Label]],
) -> bool:
    """An isolable set is allowed only as a whole survivor set's plain sum."""
    if labels not in allowed or dim != 1:
        return False
    values = {vec.get(index[lab], Fraction(0)) for lab in labels}
    return len(values) == 1
