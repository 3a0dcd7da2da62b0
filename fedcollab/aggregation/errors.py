"""Errors raised by the aggregation package.

Messages name what was wrong (counts, shapes, dtypes, norms) and never include the
values of an update: an update is a participant's private contribution.
"""
from __future__ import annotations

from fedcollab.errors import FedcollabError

__all__ = [
    "AggregationError",
    "NotEnoughUpdatesError",
    "UnknownRuleError",
    "UpdateRejected",
    "ServerOptimizerError",
]


class AggregationError(FedcollabError):
    """Updates that cannot be aggregated (inconsistent shapes, bad counts, ...)."""


class NotEnoughUpdatesError(AggregationError):
    """A rule got fewer updates than it needs (e.g. Krum needs n > 2f + 2)."""


class UnknownRuleError(AggregationError):
    """An aggregation rule or an option of it that does not exist."""

    exit_code = 2


class ServerOptimizerError(AggregationError):
    """A server optimiser configured with values outside their range."""

    exit_code = 2


class UpdateRejected(AggregationError):
    """One participant's update failed validation; the round goes on without it.

    Attributes:
        reason: What was wrong, in words (never the update's values).
        kind: A short machine-readable tag: ``"type"``, ``"count"``, ``"shape"``,
            ``"dtype"``, ``"non_finite"`` or ``"norm"``.
    """

    def __init__(self, reason: str, *, kind: str = "invalid") -> None:
        super().__init__(f"update rejected: {reason}")
        self.reason = reason
        self.kind = kind
