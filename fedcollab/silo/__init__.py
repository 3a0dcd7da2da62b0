"""Cross-silo collaboration: a vendor on its own infrastructure, its policy enforced at
its own boundary (docs/cross-silo.md).

The vendor's gateway checks every frame with the pure :func:`check` against its
declarative :class:`Policy`, persists :class:`SiloState`, and appends every
decision to a hash-chained audit log. An application layer: it may use everything
below it, nothing below uses it.
"""
from __future__ import annotations

from fedcollab.silo.check import Allow, Decision, Pending, Refuse, check, epsilon_spent
from fedcollab.silo.errors import AuditChainError, PolicyError, SiloError, StateError
from fedcollab.silo.frames import (
    MASKED,
    DpTerms,
    Egress,
    Member,
    Offer,
    Roster,
    RoundStart,
    SecAggTerms,
    UnmaskRequest,
)
from fedcollab.silo.policy import Policy, load_policy, policy_from_bytes
from fedcollab.silo.state import SiloState, approve, load_state, save_state

__all__ = ["Allow", "Decision", "Pending", "Refuse", "check", "epsilon_spent",
           "AuditChainError", "PolicyError", "SiloError", "StateError", "MASKED", "DpTerms",
           "Egress", "Member", "Offer", "Roster", "RoundStart", "SecAggTerms", "UnmaskRequest",
           "Policy", "load_policy", "policy_from_bytes", "SiloState", "approve", "load_state",
           "save_state"]
