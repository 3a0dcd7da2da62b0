"""Errors raised by the privacy package (messages never carry update values)."""
from __future__ import annotations

from fedcollab.errors import FedcollabError

__all__ = ["PrivacyError", "UnreachableEpsilonError"]


class PrivacyError(FedcollabError):
    """A differential-privacy computation that cannot be done as asked."""


class UnreachableEpsilonError(PrivacyError):
    """No noise multiplier in the searched range meets the target epsilon."""

    exit_code = 2
