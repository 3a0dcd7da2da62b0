"""Checks that need the data or the protocol parameters, run before any training.

`fedcollab validate` and `fedcollab run` both call :func:`preflight`, so a spec that
validates also starts; neither imports TensorFlow or Ray here.
"""
from __future__ import annotations

from typing import Any

from fedcollab.errors import FedcollabError
from fedcollab.spec import JobSpec, SpecError

__all__ = ["preflight"]


def preflight(spec: JobSpec) -> dict[str, Any]:
    """Load the data, partition it, check the secure encoding and the release key.

    Returns:
        Facts for the user: training samples and the secure group's ring width.

    Raises:
        SpecError: too few samples for the participants, or a secure configuration
            whose fixed-point sum could overflow.
        fedcollab.release.ReleaseError: ``release.key`` is missing or not Ed25519.
    """
    from fedcollab.data import load_dataset, participant_indices

    data = load_dataset(spec.task, seed=spec.seed)
    participant_indices(spec, data.y_train)
    facts: dict[str, Any] = {"train_samples": len(data.y_train)}
    secure = sum(g.count for g in spec.participants if g.sharing == "secure")
    if secure:
        from fedcollab.secure_round import secagg_params

        try:
            codec = secagg_params(spec).codec(secure)
        except FedcollabError as err:
            raise SpecError(f"spec: secure: {err}") from None
        facts["secure_ring_bits"] = codec.ring_bits
    if spec.release.sign and spec.release.key:
        from fedcollab.release import load_key

        load_key(spec.release.key)
    return facts
