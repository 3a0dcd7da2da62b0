"""The server's bookkeeping for one round, and what it keeps between rounds."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from fedcollab.secure.errors import MalformedMessageError, ProtocolError, UnknownParticipantError
from fedcollab.secure.messages import Kind, MaskedInput, Sealed
from fedcollab.secure.result import STAGES

__all__ = ["Package", "RoundState", "addressed"]


@dataclass
class Package:
    """A participant's recovery package: which keys it covers and who holds shares."""

    for_round: int
    covered: dict[int, bytes]
    holders: set[int]
    table: bytes
    owner_s_pk: bytes
    #: Everyone the owner sealed shares to (the one holder set of both its secrets).
    sealed_to: frozenset[int] = frozenset()


@dataclass
class RoundState:
    """Everything the server knows about the round in progress."""

    round_id: int
    dim: int
    members: set[int]
    advertisers: set[int]
    group: tuple[int, ...] = ()  # the round's member set as named to participants
    stage: str = "advertise"
    sharers: dict[int, set[int]] = field(default_factory=dict)
    key_blobs: dict[int, dict[int, bytes]] = field(default_factory=dict)
    input_blobs: dict[int, dict[int, bytes]] = field(default_factory=dict)
    packages: dict[int, Package] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)
    partners: dict[int, tuple[int, ...]] = field(default_factory=dict)
    covered_next: dict[int, dict[int, bytes]] = field(default_factory=dict)
    inputs: dict[int, MaskedInput] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)
    dangling: set[int] = field(default_factory=set)
    requested: dict[int, dict[int, Kind]] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    excluded: dict[int, str] = field(default_factory=dict)
    key_setup: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    base: tuple[int, ...] = ()
    bytes_up: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    bytes_down: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def accept(self, stage: str, messages: Mapping[int, bytes], expected: set[int]
               ) -> list[tuple[int, bytes]]:
        """Count the bytes; reject senders outside the round or not asked this stage."""
        accepted = []
        for pid, data in sorted(messages.items()):
            self.bytes_up[stage] += len(data) if isinstance(data, (bytes, bytearray)) else 0
            if pid not in self.members:
                self.rejected[pid] = (f"{stage}: participant {pid} is not in round "
                                      f"{self.round_id} (or already dropped from it)")
            elif pid not in expected:
                self.reject(pid, ProtocolError(
                    f"participant {pid} was not asked for a {stage} message"))
            else:
                accepted.append((pid, data))
        return accepted

    def reject(self, pid: int, exc: Exception) -> None:
        """Record why ``pid``'s message was rejected; before masking it leaves the round.

        A participant rejected up to the masked input may be out of step with the
        server's view of its keys, so it is marked for fresh keys (``failed``).
        """
        self.rejected[pid] = f"{self.stage}: {type(exc).__name__}: {exc}"
        if self.stage not in ("consistency", "unmask"):
            self.failed.add(pid)
        if self.stage in ("advertise", "share_keys"):
            self.members.discard(pid)

    def exclude(self, pid: int, reason: str, *, failed: bool = False) -> None:
        """Leave ``pid`` out of the rest of the round (``failed``: it went silent)."""
        self.excluded.setdefault(pid, reason)
        if failed:
            self.failed.add(pid)
        self.members.discard(pid)
        self.active.discard(pid)

    def leave(self, stage: str, following: str, t0: float, out: dict[int, bytes]
              ) -> dict[int, bytes]:
        """Close ``stage``: count bytes sent and seconds spent, move to ``following``."""
        self.bytes_down[following] += sum(len(b) for b in out.values())
        self.seconds[stage] += time.perf_counter() - t0
        self.stage = following
        return out


def addressed(shares: Sequence[Sealed], allowed: set[int], t: int, pid: int
              ) -> dict[int, bytes]:
    """Check a participant's sealed shares go to distinct allowed holders, at least ``t``.

    Raises:
        MalformedMessageError: Two shares for one holder.
        UnknownParticipantError: A holder that is not a neighbour this round.
        ProtocolError: Fewer than ``t`` shares.
    """
    out = {s.peer: s.blob for s in shares}
    if len(out) != len(shares):
        raise MalformedMessageError(f"participant {pid} addressed two shares to one peer")
    stray = sorted(out.keys() - allowed)
    if stray:
        raise UnknownParticipantError(f"participant {pid} addressed a share to participant "
                                      f"{stray[0]}, not one of its neighbours this round")
    if len(out) < t:
        raise ProtocolError(f"participant {pid} sent {len(out)} shares, need at least {t}")
    return out
