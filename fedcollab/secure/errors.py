"""Errors raised by secure aggregation.

Every message says what was got, what was expected and what to do. None of them
ever contains a key, a share, a seed, a mask or a (masked or plain) vector value:
only participant ids, round ids, stage names, counts and lengths.
"""
from __future__ import annotations

from fedcollab.errors import FedcollabError

__all__ = [
    "SecAggError",
    "SecAggConfigError",
    "GroupTooSmallError",
    "EncodingError",
    "RoundAbortedError",
    "NotEnoughSharesError",
    "TooFewSurvivorsError",
    "ShareVerificationError",
    "InconsistentSharesError",
    "ProtocolError",
    "MalformedMessageError",
    "StaleMessageError",
    "UnknownParticipantError",
    "DecryptionError",
    "ShareRevealRefusedError",
    "ServerDeviationError",
    "NotAPartnerError",
    "TooFewAliveError",
    "UnsafeRosterError",
    "SignatureError",
    "InconsistentViewError",
    "DerivedMismatchError",
    "GroupMismatchError",
    "PartnerMismatchError",
    "ThresholdMismatchError",
    "ParameterMismatchError",
    "ReshareRefusedError",
    "RegistryPinnedError",
    "ModelMismatchError",
    "UnmaskRefusedError",
]


class SecAggError(FedcollabError):
    """Base class of every secure-aggregation error."""


class SecAggConfigError(SecAggError):
    """The secure-aggregation parameters cannot work (bad threshold, ring overflow...)."""

    exit_code = 2


class GroupTooSmallError(SecAggConfigError):
    """A secure group smaller than ``min_group``: its sum would reveal the members."""


class EncodingError(SecAggError):
    """A vector cannot be encoded (non-finite values, wrong shape or dtype)."""


class RoundAbortedError(SecAggError):
    """The round cannot produce a sum; the caller must leave the global model unchanged."""

    def __init__(self, message: str, *, round_id: int | None = None) -> None:
        super().__init__(message)
        self.round_id = round_id


class NotEnoughSharesError(RoundAbortedError):
    """Fewer than ``t`` shares of a secret are available, so it cannot be reconstructed."""


class TooFewSurvivorsError(RoundAbortedError):
    """Fewer participants than ``min_group`` (or a neighbourhood threshold) are left."""


class ShareVerificationError(SecAggError):
    """Shares reconstruct a secret that fails its check: a share was tampered with."""


class InconsistentSharesError(RoundAbortedError, ShareVerificationError):
    """The shares of a needed secret reconstruct nothing valid; the round is aborted."""


class ProtocolError(SecAggError):
    """A protocol message was rejected; its sender is treated as dropped."""


class MalformedMessageError(ProtocolError):
    """The bytes do not parse as the expected message (bad magic, length, field)."""


class StaleMessageError(ProtocolError):
    """A message bound to another round, stage, sender or recipient: a replay."""


class UnknownParticipantError(ProtocolError):
    """A message from or about a participant that is not part of this round."""


class DecryptionError(ProtocolError):
    """AES-GCM authentication failed: the ciphertext or its binding was tampered with."""


class ServerDeviationError(ProtocolError):
    """The server asked for something an honest server never asks: the participant refuses.

    Raised by a participant, never by the server. Unlike a plain dropout, a refusal
    of this kind means the server lied (or is broken): the caller must abort the
    round (:class:`UnmaskRefusedError`) and leave the global model unchanged.
    """


class ShareRevealRefusedError(ServerDeviationError):
    """An honest participant refuses to reveal both kinds of share of one peer."""


class NotAPartnerError(ServerDeviationError, UnknownParticipantError):
    """A request names a participant that is not a partner of this one in this round."""


class TooFewAliveError(ServerDeviationError):
    """Fewer than ``t`` of the participant's partners (itself included) are claimed alive."""


class UnsafeRosterError(ServerDeviationError):
    """A roster, threshold or neighbourhood below what the participant's own parameters
    require (``t`` or ``min_group`` recomputed locally)."""


class SignatureError(ServerDeviationError):
    """A key advert or consistency signature does not verify against the identity
    registry (malicious-server mode): the server substituted or forged it."""


class InconsistentViewError(ServerDeviationError):
    """The server's survivor set, or its unmask request, disagrees with what the
    participant signed or with what its partners signed (malicious-server mode)."""


class DerivedMismatchError(UnsafeRosterError):
    """The server named something the participant derives itself (member set, partner
    list, threshold, ring, protocol, DP parameters) and named it differently: the
    participant never accepts the server's word for what protects it."""


class GroupMismatchError(DerivedMismatchError):
    """A round's member set that is not a subset of the group pinned at setup, leaves
    out the participant, or is below the floor ``min_members`` of that group."""


class PartnerMismatchError(DerivedMismatchError, NotAPartnerError):
    """A partner or holder list that is not what the participant derives from the
    round's member set and the graph seed pinned at setup."""


class ThresholdMismatchError(DerivedMismatchError):
    """A share threshold other than the one the participant derives from its own
    ``threshold`` and its derived neighbourhood."""


class ParameterMismatchError(DerivedMismatchError):
    """A round parameter (ring width, protocol, DP mode, z, C, member count) other than
    the participant's own."""


class ReshareRefusedError(ServerDeviationError):
    """A second recovery sharing for one (round, key epoch): the participant shares a
    round's recovery secret once per key pair; a re-share needs fresh keys."""


class RegistryPinnedError(ServerDeviationError):
    """A registry (or group setup) install that adds, drops or replaces an identity, or
    changes the graph seed or job id, after the participant pinned the first one."""


class ModelMismatchError(ServerDeviationError):
    """The participant's host was given two different global models in one round."""


class UnmaskRefusedError(RoundAbortedError):
    """Participants refused the server's requests (it lied): the round is aborted."""
