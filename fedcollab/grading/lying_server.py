"""Lying server: what a server that deviates from the protocol recovers.

Scripted replay against fedcollab.secure's real participant code (no Ray): the
server answers the target's key setup with public keys of *sybils*, participants
it runs itself (real :class:`~fedcollab.secure.SecureParticipant` objects whose
inputs are zero), instead of the target's real neighbours. Nothing in the
honest-but-curious protocol lets the target tell (Bonawitz et al., CCS 2017, §6:
the active-adversary model needs authenticated key adverts; Pasquini et al., CCS
2022, isolate a target the same way with inconsistent models). The round completes
and the "secure sum" is the target's input alone.

Under ``secure.server: malicious`` (signed key adverts from identity keys the
server does not provision, and a consistency round; being added to fedcollab.secure
at the time of writing) the target must refuse the sybils' unsigned keys: the same
replay then ends with the target refusing or the round aborting, and is reported
as not recovered. The replay goes through :meth:`fedcollab.secure.params.SecAggParams.from_spec`
so it runs whatever parameters the spec's secure section produces.

A second known deviation, claiming a participant dropped after its masked input
arrived to collect both kinds of share, is refused by the participant code
(``ShareRevealRefusedError``, double masking) and tested in tests/secure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from fedcollab.grading.inversion import relative_error

__all__ = ["LyingServerResult", "sybil_key_substitution", "lying_server"]


@dataclass(frozen=True)
class LyingServerResult:
    recovered: bool
    relative_error: Optional[float]
    server: str
    attack: str = "sybil_key_substitution"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"recovered": self.recovered, "relative_error": self.relative_error,
                "server": self.server, "attack": self.attack, "note": self.note}


def sybil_key_substitution(target_vector: np.ndarray, params: Any, *, group_size: int,
                           server_model: str, round_id: int = 1) -> LyingServerResult:
    """Run one secure round in which every partner of the target is the server's sybil.

    Args:
        target_vector: the target's real weighted vector (update, weight appended).
        params: the group's SecAggParams (from the spec).
        group_size: members the target expects in its group (>= min_group).
        server_model: the spec's secure server model, reported with the result.

    Returns:
        recovered=True with the relative error of what the server read, or False
        when the target's real code refused or the round aborted.
    """
    import dataclasses

    from fedcollab.secure import SecAggError, SecureParticipant, run_secure_round
    from fedcollab.secure.driver import provision_identities

    target = 0
    pids = list(range(group_size))
    params = dataclasses.replace(params, server=server_model)
    participants = {p: SecureParticipant(p, params) for p in pids}
    if params.malicious:
        # Setup, not the server, provisions identities: the real members' keys are in
        # the registry the target holds. The server's sybils know the registry but not
        # the identity keys behind it, so their adverts cannot carry a valid signature.
        genuine = {p: SecureParticipant(p, params) for p in pids if p != target}
        genuine[target] = participants[target]
        provision_identities(genuine)
        for p in pids:
            if p != target:  # the sybils hold the genuine setup, not its identity keys
                participants[p]._registry = participants[target]._registry
                participants[p]._setup = participants[target].setup
    else:
        provision_identities(participants)
    vectors = {p: np.zeros_like(target_vector) for p in pids}
    vectors[target] = np.asarray(target_vector, np.float64)
    try:
        result = run_secure_round(participants, vectors, params, round_id, rng_seed=0)
    except SecAggError as err:
        return LyingServerResult(False, None, server_model,
                                 note=f"round aborted: {type(err).__name__}")
    if target not in result.survivors or target in result.rejected:
        return LyingServerResult(False, None, server_model, note="the target refused")
    error = relative_error(result.total, vectors[target])
    return LyingServerResult(error < 1e-3, error, server_model,
                             note="the server ran every partner of the target")


def lying_server(spec: Any, target_vector: Optional[np.ndarray] = None) -> dict[str, Any]:
    """The lying-server row of a mix: the replay above against its secure group."""
    from fedcollab.secure.params import SecAggParams
    from fedcollab.spec.roster import policy

    secure = [g for g in spec.participants if policy(g.sharing).in_secure_sum]
    server_model = str(getattr(spec.secure, "server", "honest_but_curious"))
    if not secure:
        return {"recovered": None, "relative_error": None, "server": server_model,
                "attack": "none", "note": "no secure group: every update is in the clear"}
    if target_vector is None:
        target_vector = np.append(np.random.default_rng(0).normal(0, 0.1, 64), 1.0)
    size = max(sum(g.count for g in secure), spec.secure.min_group)
    return sybil_key_substitution(target_vector, SecAggParams.from_spec(spec), group_size=size,
                                  server_model=server_model).to_json()
