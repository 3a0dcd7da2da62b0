"""What a sealed share's associated data binds (issue #31): stage, round, sender,
recipient, the pinned job id and the hash of the global model the round trains from.

A server that gives members of one round different models (or pins them to different
jobs) cannot get them to open each other's shares: real participants, the honest
:class:`SecureServer` as the scripted server, only the models (or setups) differ.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcollab.secure import SecAggParams, SecureParticipant, SecureServer
from fedcollab.secure import keys as K
from fedcollab.secure._wire import (
    Stage,
    share_aad,
    share_aad_for_recipient,
    share_aad_prefix,
)
from fedcollab.secure.errors import (
    DecryptionError,
    ModelMismatchError,
    NotEnoughSharesError,
    SignatureError,
)
from fedcollab.secure.graph import graph_seed_for
from fedcollab.secure.identity import GroupSetup
from fedcollab.secure.model import model_sha256
from fedcollab.secure.result import SecureSumResult
from tests.secure._helpers import FAST_PARAMS, make_vectors, through_consistency

DIM = 4
N = 6
MODEL_A = hashlib.sha256(b"global model A").digest()
MODEL_B = hashlib.sha256(b"global model B").digest()
PROTOCOLS = ["secagg", "secaggplus"]
SERVERS = ["honest_but_curious", "malicious"]


def _group(params: SecAggParams, job_ids: Mapping[int, bytes]
           ) -> tuple[dict[int, SecureParticipant], SecureServer]:
    """``N`` participants, each pinned (members, graph seed, registry) to its own job id."""
    participants = {i: SecureParticipant(i, params) for i in range(N)}
    registry = {i: p.identity_public() for i, p in participants.items() if params.malicious}
    for i, p in participants.items():
        p.install_setup(GroupSetup.of(participants, graph_seed=graph_seed_for(0),
                                      job_id=job_ids[i], registry=registry))
    return participants, SecureServer(list(participants), params, rng_seed=0)


def _round(participants: Mapping[int, SecureParticipant], server: SecureServer,
           models: Mapping[int, bytes], round_id: int = 1) -> SecureSumResult:
    """One honest round; each participant's host gives it ``models[pid]`` as the
    round's model hash before it masks (as the worker does)."""
    need = server.begin_round(round_id, list(participants), dim=DIM)
    rosters = server.receive_advertisements(
        {p: participants[p].advertise_keys(round_id) for p in need})
    inbox = server.receive_key_shares(
        {p: participants[p].share_keys(round_id, rosters[p]) for p in rosters})
    vectors = make_vectors(list(participants), DIM)
    masked = {}
    for p, request in inbox.items():
        participants[p].set_round_model(round_id, models[p])
        masked[p] = participants[p].masked_input(round_id, vectors[p], request)
    requests = through_consistency(server, participants, round_id,
                                   server.receive_masked_inputs(masked))
    return server.receive_unmask_responses(
        {p: participants[p].unmask(round_id, requests[p]) for p in requests})


def _params(protocol: str, server: str = "honest_but_curious") -> SecAggParams:
    return SecAggParams(protocol=protocol, server=server, **FAST_PARAMS)  # type: ignore[arg-type]


def test_share_aad_differs_in_each_bound_field() -> None:
    base = dict(stage=Stage.MASKED_INPUT, round_id=3, sender=1, recipient=2, job_id=b"job",
                model=MODEL_A)
    changed = {"stage": Stage.SHARE_KEYS, "round_id": 4, "sender": 5, "recipient": 6,
               "job_id": b"other job", "model": MODEL_B}
    aads = {"base": share_aad(**base)}  # type: ignore[arg-type]
    for name, value in changed.items():
        aads[name] = share_aad(**{**base, name: value})  # type: ignore[arg-type]
    assert len(set(aads.values())) == len(aads)  # every field changes the bytes
    # length-prefixed: moving bytes between job id and model hash changes them too
    assert share_aad(Stage.MASKED_INPUT, 3, 1, 2, job_id=b"ab", model=b"c") != \
        share_aad(Stage.MASKED_INPUT, 3, 1, 2, job_id=b"a", model=b"bc")
    # the prefix the sealer builds once, plus the recipient, is what the opener computes
    assert share_aad_prefix(Stage.MASKED_INPUT, 3, 1, job_id=b"job", model=MODEL_A) \
        + (2).to_bytes(4, "big") == aads["base"]
    # and the opener's per-recipient maker gives each sender's the same bytes
    maker = share_aad_for_recipient(Stage.MASKED_INPUT, 3, 2, job_id=b"job", model=MODEL_A)
    assert maker(1) == aads["base"]
    for sender in (0, 5, 2**32 - 2):
        for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT):
            assert share_aad_for_recipient(stage, 2**40, 9, job_id=b"", model=b"m")(sender) \
                == share_aad(stage, 2**40, sender, 9, job_id=b"", model=b"m")


def test_share_sealed_for_one_model_does_not_open_for_another() -> None:
    cipher = AESGCM(AESGCM.generate_key(bit_length=128))
    aad = share_aad(Stage.MASKED_INPUT, 1, 0, 1, job_id=b"job", model=MODEL_A)
    blob = K.seal(cipher, b"share", aad)
    assert K.open_sealed(cipher, blob, aad, what="control") == b"share"
    for other in (share_aad(Stage.MASKED_INPUT, 1, 0, 1, job_id=b"job", model=MODEL_B),
                  share_aad(Stage.MASKED_INPUT, 1, 0, 1, job_id=b"job2", model=MODEL_A)):
        with pytest.raises(DecryptionError, match="AES-GCM authentication failed"):
            K.open_sealed(cipher, blob, other, what="share")


@pytest.mark.parametrize("server_model", SERVERS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_members_given_different_models_cannot_open_each_others_shares(
        protocol: str, server_model: str, caplog: pytest.LogCaptureFixture) -> None:
    """Half the members train from model A, half from B: every share sealed across the
    split fails AES-GCM (a DecryptionError, logged and left out of the reply), so no
    survivor's self mask can be reconstructed and the round aborts."""
    params = _params(protocol, server_model)
    participants, server = _group(params, {i: b"job" for i in range(N)})
    split = {i: MODEL_A if i < N // 2 else MODEL_B for i in range(N)}
    with caplog.at_level(logging.WARNING, logger="fedcollab.secure.participant"):
        with pytest.raises(NotEnoughSharesError):
            _round(participants, server, split)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped and all("AES-GCM authentication failed" in m for m in skipped)
    # each refused share was sealed across the split, never within a half
    for message in skipped:
        me = int(message.split()[1].rstrip(":"))
        sender = int(message.split("share from participant ")[1].split(":")[0])
        assert (me < N // 2) != (sender < N // 2)


@pytest.mark.parametrize("server_model", SERVERS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_members_given_one_model_unmask_the_sum(protocol: str, server_model: str) -> None:
    """Control for the test above: the same round, one model for all, sums exactly."""
    params = _params(protocol, server_model)
    participants, server = _group(params, {i: b"job" for i in range(N)})
    result = _round(participants, server, {i: MODEL_A for i in range(N)})
    assert sorted(result.survivors) == list(range(N))
    codec = params.codec(N)
    vectors = make_vectors(list(participants), DIM)
    expected = sum(codec.encode(vectors[i]) for i in range(N))
    np.testing.assert_array_equal(np.asarray(result.integer_sum), expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_members_pinned_to_different_jobs_cannot_open_each_others_shares(
        protocol: str, caplog: pytest.LogCaptureFixture) -> None:
    """Honest-but-curious adverts are unsigned, so nothing else stops a server from
    mixing two jobs' members in one round: the job id in the AAD does."""
    participants, server = _group(_params(protocol),
                                  {i: b"job A" if i < N // 2 else b"job B" for i in range(N)})
    with caplog.at_level(logging.WARNING, logger="fedcollab.secure.participant"):
        with pytest.raises(NotEnoughSharesError):
            _round(participants, server, {i: MODEL_A for i in range(N)})
    assert any("AES-GCM authentication failed" in r.getMessage() for r in caplog.records)


def test_members_pinned_to_different_jobs_refuse_adverts_when_signed() -> None:
    """Malicious-server model: adverts are signed over the job id, so the mix is
    refused earlier, at key setup."""
    params = _params("secaggplus", "malicious")
    participants, server = _group(params,
                                  {i: b"job A" if i < N // 2 else b"job B" for i in range(N)})
    need = server.begin_round(1, list(participants), dim=DIM)
    rosters = server.receive_advertisements({p: participants[p].advertise_keys(1) for p in need})
    with pytest.raises(SignatureError):
        participants[0].share_keys(1, rosters[0])


def test_set_round_model_refuses_a_second_model_for_the_same_round() -> None:
    p = SecureParticipant(0, _params("secagg"))
    p.set_round_model(1, MODEL_A)
    p.set_round_model(1, MODEL_A)  # the same model again: fine
    with pytest.raises(ModelMismatchError, match="second, different global model"):
        p.set_round_model(1, MODEL_B)
    p.set_round_model(2, MODEL_B)  # the next round has its own


def test_model_sha256_covers_layer_names_shapes_and_values() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = model_sha256([("dense", a)])
    assert len(base) == 32
    assert model_sha256([("dense", a.astype(np.float64))]) == base  # hashed as float32
    assert model_sha256([("head", a)]) != base
    assert model_sha256([("dense", a.reshape(3, 2))]) != base
    assert model_sha256([("dense", a + 1)]) != base
