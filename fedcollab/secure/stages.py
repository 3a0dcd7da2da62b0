"""The secure round's stages, written once.

One row per stage: what the participants are asked, which
:class:`~fedcollab.secure.participant.SecureParticipant` method answers, which
:class:`~fedcollab.secure.server.SecureServer` method reads the answers (and returns
the next stage's messages), and when the stage runs. Every driver iterates this
table: the in-process :func:`~fedcollab.secure.driver.run_secure_round`, the job's
coordinator (:class:`fedcollab.job.secure.SecureCoordinator`, over any pool), and
the worker that hosts participants (:func:`participant_reply`). A protocol with a new
stage adds a row here, the participant's method and the server's method.

The server opens a round with ``begin_round`` (it names who must advertise keys);
each stage's server method then turns the participants' replies into the next
stage's requests, and the last one into the round's result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fedcollab.secure.params import SecAggParams
    from fedcollab.secure.participant import SecureParticipant

__all__ = ["Stage", "STAGES", "STAGE_NAMES", "BY_NAME", "before_training", "after_training",
           "participant_reply"]

#: When a stage runs: ``key_setup`` only for participants that need (new) keys this
#: round (none in a steady round with amortised keys); ``training``: with each
#: participant's training (its masked input); ``malicious``: only when participants
#: defend against a lying server; ``always``: every round.
When = Literal["key_setup", "training", "malicious", "always"]


@dataclass(frozen=True)
class Stage:
    """One stage of a secure round.

    Attributes:
        name: The stage's name (keys of the per-stage byte and time counters).
        participant: The participant's method, called as ``(round_id, request)``
            (``(round_id)`` where ``takes_request`` is false; the masked input gets
            the participant's vector too).
        server: The server's method that reads the stage's replies.
        when: When the stage runs (see :data:`When`).
        takes_request: Whether the participant's method reads the server's request.
    """

    name: str
    participant: str
    server: str
    when: When
    takes_request: bool = True

    def runs(self, params: SecAggParams) -> bool:
        """Whether this stage runs under ``params`` (consistency: malicious model only)."""
        return self.when != "malicious" or params.malicious


STAGES: tuple[Stage, ...] = (
    Stage("advertise", "advertise_keys", "receive_advertisements", "key_setup",
          takes_request=False),
    Stage("share_keys", "share_keys", "receive_key_shares", "key_setup"),
    Stage("masked_input", "masked_input", "receive_masked_inputs", "training"),
    Stage("consistency", "confirm_survivors", "receive_consistency", "malicious"),
    Stage("unmask", "unmask", "receive_unmask_responses", "always"),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
_TRAINING = next(i for i, s in enumerate(STAGES) if s.when == "training")


def before_training(params: SecAggParams) -> tuple[Stage, ...]:
    """The stages that run before the participants train (key setup)."""
    return tuple(s for s in STAGES[:_TRAINING] if s.runs(params))


def after_training(params: SecAggParams) -> tuple[Stage, ...]:
    """The stages after the masked inputs, whose server method reads those first."""
    return tuple(s for s in STAGES[_TRAINING + 1:] if s.runs(params))


def participant_reply(participant: SecureParticipant, stage: Stage, round_id: int,
                      request: bytes) -> Any:
    """A participant's answer to ``stage``'s request (not the masked input: that
    needs the participant's vector, and comes from its training)."""
    method = getattr(participant, stage.participant)
    return method(round_id, request) if stage.takes_request else method(round_id)
