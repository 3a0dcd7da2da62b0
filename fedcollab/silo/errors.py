"""The cross-silo package's errors."""
from __future__ import annotations

from fedcollab.errors import FedcollabError

__all__ = ["SiloError", "PolicyError", "StateError", "AuditChainError", "SiloUsageError"]


class SiloError(FedcollabError):
    """Something on the cross-silo link a user can cause or fix."""


class PolicyError(SiloError):
    """A vendor policy file that cannot be used (bad input: exit 2)."""

    exit_code = 2


class StateError(SiloError):
    """The gateway's persisted state cannot be read; it is never silently reset."""


class AuditChainError(SiloError):
    """An audit log whose hash chain does not verify."""


class SiloUsageError(SiloError):
    """A command line that cannot be acted on: an option out of range, an unknown job
    (bad input: exit 2)."""

    exit_code = 2
