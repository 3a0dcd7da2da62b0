"""The one seam where open updates and secure sums become a global step.

Updates may cover different arrays: a vendor keeps its private layers, so its
update has ``None`` there. Every array is therefore averaged over the participants
that share it:

    delta_j = (W_open_j * r_j + S_j) / (W_open_j + C_j)

where ``r_j`` is the rule's estimate over the open updates sharing array j (the
weighted mean for fedavg, or a robust rule), ``W_open_j`` their total weight, and
``S_j`` / ``C_j`` the secure group's sum of ``w_i * delta_ij`` and of ``w_i`` (all the
server learns about the secure group). Robust rules run over **whole updates** as
their papers define them: the open updates' arrays are grouped by who shares them
(all open participants share most arrays; an open vendor does not share its private
ones) and each group of arrays is one update to the rule, so Krum picks one
participant, and norms and distances are over everything it sent.

:class:`Aggregator` validates each open update (whole: an update that leaves out an
array its participant shares is rejected, so no rule is split per array), applies the
rule, adds the secure sum after checking it against what its members can send (each
held to one participant's weight and, under a robust rule, the rule's norm bound), and
central DP noise (drawn by the caller), then the server optimiser, whose state it
holds. It is pure numpy: no Ray, no TensorFlow, no randomness of its own.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fedcollab.aggregation.errors import NotEnoughUpdatesError, UnknownRuleError
from fedcollab.aggregation.registry import (
    RULES,
    aggregate,
    options_from_spec,
    secure_member_bound,
)
from fedcollab.aggregation.server_optimizers import ServerOptimizer, ServerState, server_step
from fedcollab.aggregation.validation import check_secure_sum, check_update
from fedcollab.types import ParticipantId, Update, Weights

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["OpenUpdate", "SecureSum", "AggregateStep", "Aggregator", "compose"]


@dataclass(frozen=True)
class OpenUpdate:
    """An open update as the rule sees it: arrays (``None`` where private) and a weight."""

    delta: Sequence[Optional[np.ndarray]]
    num_samples: float


@dataclass(frozen=True)
class SecureSum:
    """The unmasked sum over the secure survivors, per array.

    ``members``, ``weight_cap`` and ``quantum`` let the server check the sum against
    what that many bounded members can produce (:func:`check_secure_sum`); with
    ``members = 0`` it is taken unchecked.
    """

    weighted_delta: Sequence[np.ndarray]  # sum_i w_i * delta_ij (zeros where not shared)
    counts: Sequence[float]               # sum_i w_i over those sharing array j
    members: int = 0                      # the survivors whose inputs are in the sum
    weight_cap: float = 1.0               # the largest weight one member may declare
    quantum: float = 0.0                  # one member's fixed-point rounding per coordinate


def _sharer_groups(open_updates: Sequence[OpenUpdate],
                   n_arrays: int) -> dict[tuple[int, ...], list[int]]:
    """Arrays grouped by the set of open updates that share them."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for j in range(n_arrays):
        who = tuple(i for i, u in enumerate(open_updates) if u.delta[j] is not None)
        if who:
            groups.setdefault(who, []).append(j)
    return groups


def _robust_totals(shapes: Sequence[tuple[int, ...]], open_updates: Sequence[OpenUpdate],
                   rule: str, options: Mapping[str, Any]) -> dict[int, np.ndarray]:
    """``W_open_j * r_j`` per array, the rule applied to whole (sub-)updates."""
    totals: dict[int, np.ndarray] = {}
    for who, arrays in _sharer_groups(open_updates, len(shapes)).items():
        updates = [[np.asarray(open_updates[i].delta[j]) for j in arrays] for i in who]
        counts = [open_updates[i].num_samples for i in who]
        estimate = aggregate(rule, updates, counts, **options)
        weight = float(sum(counts))
        for j, value in zip(arrays, estimate):
            totals[j] = weight * np.asarray(value, dtype=np.float64).reshape(shapes[j])
    return totals


def compose(shapes: Sequence[tuple[int, ...]], open_updates: Sequence[OpenUpdate],
            secure: Optional[SecureSum] = None, *, rule: str = "fedavg",
            options: Optional[Mapping[str, Any]] = None,
            noise: Optional[Sequence[np.ndarray]] = None) -> tuple[list[np.ndarray], list[float]]:
    """The aggregated delta per array and the total weight behind it.

    Arrays nobody shared this round get a zero delta (and weight 0). ``noise``
    (central DP) is added to each shared array's weighted sum before dividing.

    Raises:
        NotEnoughUpdatesError: The rule needs more open updates than there are.
        AggregationError: From the rule (bad options, inconsistent shapes).
    """
    options = dict(options or {})
    robust = {} if rule == "fedavg" else _robust_totals(shapes, open_updates, rule, options)
    deltas: list[np.ndarray] = []
    weights: list[float] = []
    for j, shape in enumerate(shapes):
        sharers = [(u.delta[j], u.num_samples) for u in open_updates if u.delta[j] is not None]
        open_weight = float(sum(n for _, n in sharers))
        total = np.zeros(shape, dtype=np.float64)
        if sharers:
            if rule == "fedavg":
                for d, n in sharers:
                    total += n * np.asarray(d, dtype=np.float64)
            else:
                total = robust[j]
        weight = open_weight
        if secure is not None and secure.counts[j] > 0:
            total = total + np.asarray(secure.weighted_delta[j], dtype=np.float64).reshape(shape)
            weight += float(secure.counts[j])
        if noise is not None and weight > 0:
            total = total + np.asarray(noise[j], dtype=np.float64).reshape(shape)
        deltas.append(total / weight if weight > 0 else total)
        weights.append(weight)
    return deltas, weights


def _clip_shared(delta: Sequence[Optional[np.ndarray]],
                 clip_norm: float) -> list[Optional[np.ndarray]]:
    """Clip the shared arrays of an update to L2 norm ``clip_norm`` (None stays None)."""
    from fedcollab.privacy.clipping import clip_update

    shared = [i for i, d in enumerate(delta) if d is not None]
    clipped, _ = clip_update([np.asarray(delta[i]) for i in shared], clip_norm)
    out: list[Optional[np.ndarray]] = [None] * len(delta)
    for i, c in zip(shared, clipped):
        out[i] = c
    return out


@dataclass(frozen=True)
class AggregateStep:
    """The outcome of one aggregation: the new global weights and what went into them."""

    weights: Weights
    accepted: tuple[ParticipantId, ...]
    rejected: Mapping[ParticipantId, str]
    applied: bool                  # False: nothing (valid) to aggregate, weights unchanged
    skipped: str = ""              # why the rule could not run (weights unchanged)
    deltas: list[np.ndarray] = field(default_factory=list)
    secure_rejected: str = ""      # why the secure sum was left out (it broke its bound)


class Aggregator:
    """Validates open updates, applies the rule, adds the secure sum, steps the server.

    Args:
        shapes: Every model array's shape, in model order.
        rule: A key of :data:`fedcollab.aggregation.RULES`.
        options: The rule's options (see :func:`options_from_spec`).
        norm_bound: Reject open updates whose L2 norm exceeds this.
        max_samples: Reject open updates claiming more examples than this.
        server_optimizer: ``none`` or a key of ``SERVER_OPTIMIZERS``.
        server_learning_rate: The server's step size (``None``: the optimiser's
            default; with ``none``, 1: plain FedAvg).
        momentum: For ``fedavgm``.
        private: Participant -> the model indices it keeps private (its group's
            ``private_layers``); an open update must carry every other array.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], *, rule: str = "fedavg",
                 options: Optional[Mapping[str, Any]] = None,
                 norm_bound: Optional[float] = None, max_samples: Optional[float] = None,
                 server_optimizer: str = "none", server_learning_rate: Optional[float] = None,
                 momentum: float = 0.9,
                 private: Optional[Mapping[ParticipantId, Collection[int]]] = None) -> None:
        if rule not in RULES:
            raise UnknownRuleError(f"aggregation rule: got {rule!r}, expected one of "
                                   f"{', '.join(sorted(RULES))}")
        self.shapes = [tuple(s) for s in shapes]
        self.rule = rule
        self.options = dict(options or {})
        self.norm_bound = norm_bound
        self.max_samples = max_samples
        self.server_optimizer = server_optimizer
        self.server_learning_rate = server_learning_rate
        self.momentum = momentum
        self.private = {pid: frozenset(p) for pid, p in (private or {}).items()}
        self.state: Optional[ServerState] = None

    @classmethod
    def from_spec(cls, spec: JobSpec, shapes: Sequence[tuple[int, ...]], *,
                  max_samples: Optional[float] = None,
                  private: Optional[Mapping[ParticipantId, Collection[int]]] = None,
                  ) -> Aggregator:
        agg = spec.aggregation
        return cls(shapes, rule=agg.rule, options=options_from_spec(agg.rule, agg),
                   norm_bound=agg.norm_bound, max_samples=max_samples,
                   server_optimizer=agg.server_optimizer,
                   server_learning_rate=agg.server_learning_rate, momentum=agg.momentum,
                   private=private)

    def validate(self, updates: Sequence[Update]) -> tuple[list[Update], dict[int, str]]:
        """Split open updates into the valid ones and the rejected ones (with reasons)."""
        valid: list[Update] = []
        rejected: dict[int, str] = {}
        for u in updates:
            reason = check_update(u, self.shapes, norm_bound=self.norm_bound,
                                  max_samples=self.max_samples,
                                  private=self.private.get(u.pid, frozenset()))
            if reason:
                rejected[u.pid] = reason
            else:
                valid.append(u)
        return valid, rejected

    def step(self, weights: Sequence[np.ndarray], updates: Sequence[Update],
             secure: Optional[SecureSum] = None, *, count_once: bool = False,
             clip_norm: Optional[float] = None,
             noise: Optional[Sequence[np.ndarray]] = None) -> AggregateStep:
        """One server step from this round's open updates and the secure sum.

        Args:
            weights: The current global weights.
            updates: The open updates as received (validated here).
            secure: The secure group's unmasked sum, if any.
            count_once: Weigh each participant 1 instead of its sample count (DP: the
                noise is calibrated to one clipped update per participant).
            clip_norm: Clip each open update to this L2 norm first (central DP: the
                server clips what it sees rather than trust participants).
            noise: Central DP noise per array, added to the sum before dividing.
        """
        valid, rejected = self.validate(updates)
        secure_rejected = self.check_secure(secure) if secure is not None else ""
        if secure_rejected:
            secure = None
        opened = [OpenUpdate(u.delta, 1 if count_once else u.num_samples) for u in valid]
        if clip_norm is not None:
            opened = [OpenUpdate(_clip_shared(o.delta, clip_norm), o.num_samples) for o in opened]
        accepted = tuple(u.pid for u in valid)
        current = list(weights)
        try:
            deltas, totals = compose(self.shapes, opened, secure, rule=self.rule,
                                     options=self.options, noise=noise)
        except NotEnoughUpdatesError as err:
            return AggregateStep(current, accepted, rejected, False, skipped=str(err),
                                 secure_rejected=secure_rejected)
        if not any(w > 0 for w in totals):
            return AggregateStep(current, accepted, rejected, False, deltas=deltas,
                                 secure_rejected=secure_rejected)
        return AggregateStep(self._server_step(current, deltas), accepted, rejected, True,
                             deltas=deltas, secure_rejected=secure_rejected)

    @property
    def secure_bound(self) -> Optional[float]:
        """The L2 norm each secure member clips its update to (robust rules), or None."""
        fields = {"norm_bound": self.norm_bound, "clip_bound": self.options.get("bound")}
        return secure_member_bound(self.rule, fields)

    def check_secure(self, secure: SecureSum) -> str:
        """Why the decoded secure sum must be left out this round, or ``""``: its total
        weight or (under a robust rule) its norm exceeds what ``secure.members``
        members, each held to one participant's share and the rule's bound, can send."""
        return check_secure_sum(secure.weighted_delta, secure.counts, members=secure.members,
                                weight_cap=secure.weight_cap, norm_bound=self.secure_bound,
                                quantum=secure.quantum)

    def _server_step(self, weights: Weights, deltas: Sequence[np.ndarray]) -> Weights:
        casted = [d.astype(w.dtype) for d, w in zip(deltas, weights)]
        if self.server_optimizer == "none":
            if self.server_learning_rate is None:
                return [w + d for w, d in zip(weights, casted)]
            lr = self.server_learning_rate
            return [(w + lr * d).astype(w.dtype) for w, d in zip(weights, casted)]
        kwargs: dict[str, Any] = {"name": self.server_optimizer, "momentum": self.momentum}
        if self.server_learning_rate is not None:
            kwargs["learning_rate"] = self.server_learning_rate
        new, self.state = server_step(ServerOptimizer(**kwargs), self.state, weights, casted)
        return [np.asarray(n, dtype=w.dtype) for n, w in zip(new, weights)]
