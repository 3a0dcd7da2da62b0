"""Everything the gateway does with one inbound frame: parse, check, persist, audit.

:class:`FrameDecider` is the gateway's decision path without the socket, so the
fuzzer and the tests drive exactly what ``fedcollab silo serve`` runs. For every
frame, whatever its bytes: parse it at the edge (:mod:`.wire`; what does not parse
is refused as ``malformed``), decide it with the pure :func:`.check.check`, persist
the next state before anything acts on it (an Allow's, or a Pending's with the
offer recorded as pending), and append the decision to the hash-chained audit log.
Approvals that `fedcollab silo approve` wrote since the last offer are read
before an offer is decided.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from fedcollab.silo.approvals import load_approvals
from fedcollab.silo.audit import AuditLog, decision_fields
from fedcollab.silo.check import Allow, Decision, Pending, Refuse, check
from fedcollab.silo.frames import Egress, Offer
from fedcollab.silo.policy import Policy
from fedcollab.silo.state import SiloState, load_state, save_state
from fedcollab.silo.wire import Inbound, MalformedFrameError, from_message, parse_frame

__all__ = ["FrameDecider", "Outcome", "STATE_FILE", "AUDIT_FILE"]

STATE_FILE = "state.json"
AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True)
class Outcome:
    """One frame's decision, as the gateway answers it."""

    decision: Decision
    verdict: str          # "allow" | "refuse" | "pending"
    kind: str             # the frame's body ("offer", ...), "unknown" or "malformed"
    job_id: str
    round_id: int
    seq: int              # the CoordinatorFrame.seq this answers (0 if it did not parse)
    deadline_unix: float  # a RoundStart's deadline; 0.0 for none (or not finite)
    message: Any = None   # the parsed CoordinatorFrame (None if it did not parse), for
    inbound: Optional[Inbound] = None   # whatever acts on an allowed frame, and its Inbound


class FrameDecider:
    """The gateway's state, audit log and decision path for one state directory."""

    def __init__(self, *, policy: Policy, state_dir: Path, trusted_cas: Mapping[str, Any],
                 coordinator: Optional[str] = None) -> None:
        """`coordinator`: when given, every frame's ``sender`` must be that name (the
        party the coordinator's certificate names); others are refused."""
        import dp_accounting  # noqa: F401 - loaded now (seconds), not while a round waits

        self.policy, self.coordinator = policy, coordinator
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._state_path = self.state_dir / STATE_FILE
        self._cas = dict(trusted_cas)
        self.state: SiloState = load_state(self._state_path)
        self.audit = AuditLog(self.state_dir / AUDIT_FILE)
        self._approvals_seen: Optional[tuple[int, int]] = None
        #: Checks of a parsed frame before the policy's (the vendor's own copy of the
        #: job: :meth:`fedcollab.silo.vendor.VendorHost.before`): a Refuse, or the
        #: Inbound to decide (possibly rewritten).
        self.before: Optional[Callable[[Any, Inbound], Union[Inbound, Refuse]]] = None

    def decide_bytes(self, data: bytes, now: datetime.datetime) -> Outcome:
        """Decide one CoordinatorFrame as it came off the wire (any bytes at all)."""
        try:
            message = parse_frame(data)
            inbound = from_message(message, trusted_cas=self._cas, now=now)
        except MalformedFrameError as err:
            return self._record(data, Refuse("malformed", str(err)), "malformed", "", 0, 0,
                                0.0, now)
        return self._decide(data, inbound, now, message)

    def decide_message(self, message: Any, now: datetime.datetime) -> Outcome:
        """Decide one parsed CoordinatorFrame (the same path as :meth:`decide_bytes`)."""
        data = message.SerializeToString()
        try:
            inbound = from_message(message, trusted_cas=self._cas, now=now)
        except MalformedFrameError as err:
            return self._record(data, Refuse("malformed", str(err)), "malformed", "", 0, 0,
                                0.0, now)
        return self._decide(data, inbound, now, message)

    def decide_egress(self, frame: Egress, data: bytes, now: datetime.datetime) -> Decision:
        """Decide an update about to leave (`data`, its bytes): the same check, the
        state persisted before the bytes go, one audit entry (direction "out"). Only an
        Allow may be sent."""
        decision = check(self.policy, self.state, frame)
        if isinstance(decision, Allow) and decision.state != self.state:
            save_state(self._state_path, decision.state)
            self.state = decision.state
        self.audit.append(frame=data, decision=decision, direction="out", kind="egress",
                          job_id=frame.job_id, round_id=frame.round_id, time=now.timestamp())
        return decision

    def refuse_after(self, data: bytes, outcome: Outcome, decision: Decision,
                     now: datetime.datetime) -> None:
        """Audit that a frame the policy allowed was not carried out (the vendor's
        participants could not do it): a second entry for the same bytes."""
        self.audit.append(frame=data, decision=decision, direction="in", kind=outcome.kind,
                          job_id=outcome.job_id, round_id=outcome.round_id,
                          time=now.timestamp())

    def note(self, decision: Decision, *, kind: str, job_id: str, round_id: int,
             now: datetime.datetime) -> None:
        """Audit an event that is no frame (a deadline that passed)."""
        self.audit.append(frame=b"", decision=decision, direction="local", kind=kind,
                          job_id=job_id, round_id=round_id, time=now.timestamp())

    def close(self) -> None:
        self.audit.close()

    def _decide(self, data: bytes, inbound: Inbound, now: datetime.datetime,
                message: Any) -> Outcome:
        decision: Decision
        if self.coordinator is not None and inbound.sender != self.coordinator:
            decision = Refuse("sender", f"a frame from {inbound.sender[:64]!r}: the "
                              f"coordinator is {self.coordinator!r}")
        elif inbound.frame is None:
            decision = Allow(self.state)  # Welcome, Abort: logged, not ruled on
        else:
            if isinstance(inbound.frame, Offer):
                self._refresh_approvals()
            checked = self.before(message, inbound) if self.before is not None else inbound
            if isinstance(checked, Refuse):
                decision = checked
            else:
                inbound = checked
                decision = check(self.policy, self.state, inbound.frame)
            after = decision.state if isinstance(decision, (Allow, Pending)) else None
            if after is not None and after != self.state:
                save_state(self._state_path, after)  # before anything acts on it
                self.state = after
        deadline = inbound.deadline_unix if math.isfinite(inbound.deadline_unix) else 0.0
        return self._record(data, decision, inbound.kind, inbound.job_id, inbound.round_id,
                            inbound.seq, max(deadline, 0.0), now, message, inbound)

    def _record(self, data: bytes, decision: Decision, kind: str, job_id: str, round_id: int,
                seq: int, deadline: float, now: datetime.datetime, message: Any = None,
                inbound: Optional[Inbound] = None) -> Outcome:
        self.audit.append(frame=data, decision=decision, direction="in", kind=kind,
                          job_id=job_id, round_id=round_id, time=now.timestamp())
        return Outcome(decision, decision_fields(decision)["decision"], kind, job_id,
                       round_id, seq, deadline, message, inbound)

    def _refresh_approvals(self) -> None:
        path = self.state_dir / "approvals.json"
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._approvals_seen:
            return
        approved = load_approvals(self.state_dir)
        self._approvals_seen = stamp
        if not approved <= self.state.approved_offers:
            self.state = replace(self.state,
                                 approved_offers=self.state.approved_offers | approved)
