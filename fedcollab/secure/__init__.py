"""Secure aggregation: the server learns only the sum over a secure group.

Pure Python + numpy + ``cryptography`` (no Ray, no TensorFlow). Implements SecAgg
(Bonawitz et al., CCS 2017) and its sparse-graph variant SecAgg+ (Bell et al., CCS
2020) with X25519 key agreement, HKDF-SHA256, AES-GCM-sealed Shamir shares
(GF(2^521-1)) and AES-CTR mask expansion, over fixed-point vectors in Z_(2^32) or
Z_(2^64).

Public API (everything else in the package is private primitives, used only by the
two state machines, in the spirit of ``cryptography.hazmat``):

* :class:`SecAggParams` - protocol, threshold, ``min_group``, SecAgg+ degree (and the
  ``expected_dropout`` the automatic degree is sized for), clip/scale of the
  fixed-point encoding, ``amortise_keys``.
* :class:`SecureParticipant` - one per logical participant, hosted by a worker (its
  state must persist across rounds for amortised keys):
  ``needs_keys(round_id)``, ``advertise_keys(round_id) -> bytes``,
  ``share_keys(round_id, roster) -> bytes``, ``masked_input(round_id, vector, inbox)
  -> bytes``, (malicious-server model) ``confirm_survivors(round_id, request) -> bytes``,
  ``unmask(round_id, request) -> bytes``, and between rounds (amortised keys)
  ``prepare_next_round()``, which precomputes the next masked input's masks. Its host
  calls ``set_round_model(round_id, model_hash)`` (:func:`fedcollab.secure.model.
  model_sha256` of the weights it received) before the masked input: the shares'
  AES-GCM associated data binds it and the pinned job id. With
  ``server="malicious"`` it needs the identity registry first
  (``identity_public()`` / ``install_registry()``; :func:`provision_identities`).
* :class:`SecureServer` - in the driver, one per secure group for the whole job:
  ``begin_round(round_id, participants, dim=)`` returns who must advertise keys; then
  ``receive_advertisements``, ``receive_key_shares``, ``receive_masked_inputs``,
  ``receive_consistency`` (malicious-server model only) (each
  maps ``{pid: bytes}`` received to ``{pid: bytes}`` to deliver for the next stage;
  call every stage, with ``{}`` when nobody is asked) and
  ``receive_unmask_responses`` -> :class:`SecureSumResult`.
* :func:`run_secure_round` - the same, routed in process, with simulated dropouts.
* :func:`weighted_vector` / :func:`split_weighted_sum` - weighted averaging without
  revealing weights: mask ``w_i * delta_i`` with ``w_i`` appended, divide the sums.
* :func:`validate_group_size`, :data:`MIN_GROUP` - a sum of one or two updates is
  no secret.
* Errors: :class:`RoundAbortedError` (and its :class:`NotEnoughSharesError`,
  :class:`TooFewSurvivorsError`, :class:`InconsistentSharesError`) mean "leave the
  global model unchanged"; :class:`ProtocolError` subclasses are the reasons messages
  are rejected (a participant method raising one means: treat it as dropped), except
  :class:`ServerDeviationError` subclasses: the participant caught the server lying;
  at the consistency or unmask stage the round must abort (:class:`UnmaskRefusedError`).

Security model and the amortised-key argument: see :mod:`fedcollab.secure.participant`
and docs/threat-model.md.
"""
from __future__ import annotations

from fedcollab.secure.driver import LocalRound, provision_identities, run_secure_round
from fedcollab.secure.encoding import FixedPointCodec, split_weighted_sum, weighted_vector
from fedcollab.secure.errors import (
    DecryptionError,
    EncodingError,
    GroupTooSmallError,
    InconsistentSharesError,
    InconsistentViewError,
    MalformedMessageError,
    ModelMismatchError,
    NotAPartnerError,
    NotEnoughSharesError,
    ProtocolError,
    RoundAbortedError,
    SecAggConfigError,
    SecAggError,
    ServerDeviationError,
    ShareRevealRefusedError,
    ShareVerificationError,
    SignatureError,
    StaleMessageError,
    TooFewAliveError,
    TooFewSurvivorsError,
    UnknownParticipantError,
    UnmaskRefusedError,
    UnsafeRosterError,
)
from fedcollab.secure.params import MIN_GROUP, SERVER_MODELS, SecAggParams, validate_group_size
from fedcollab.secure.participant import SecureParticipant
from fedcollab.secure.result import STAGES, SecureSumResult
from fedcollab.secure.server import SecureServer

__all__ = [
    "SecAggParams", "SecureParticipant", "SecureServer", "SecureSumResult",
    "run_secure_round", "LocalRound", "STAGES", "weighted_vector", "split_weighted_sum",
    "FixedPointCodec", "validate_group_size", "MIN_GROUP",
    "SecAggError", "SecAggConfigError", "GroupTooSmallError", "EncodingError",
    "RoundAbortedError", "NotEnoughSharesError", "TooFewSurvivorsError",
    "ShareVerificationError", "InconsistentSharesError", "ProtocolError",
    "MalformedMessageError", "StaleMessageError", "UnknownParticipantError",
    "DecryptionError", "ShareRevealRefusedError", "ServerDeviationError", "NotAPartnerError",
    "TooFewAliveError", "UnsafeRosterError", "SignatureError", "InconsistentViewError",
    "UnmaskRefusedError", "ModelMismatchError", "SERVER_MODELS", "provision_identities",
]
