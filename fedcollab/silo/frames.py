"""What the policy check sees: the cross-silo frames as plain frozen dataclasses.

The gateway converts ``silo.proto`` messages into these at its edge (and verifies
roster certificates there: a member whose certificate does not chain to a CA gets
``ca_sha256=""``), so :func:`fedcollab.silo.check.check` never touches protobuf,
sockets or files. Inbound frames come from the coordinator; :class:`Egress` is
what the gateway is about to send out.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Union

__all__ = ["SecAggTerms", "DpTerms", "LayerEntry", "Offer", "RoundStart", "Member", "Roster",
           "UnmaskRequest", "Egress", "Stage", "GroupSetup", "Frame", "MASKED",
           "SECURE_PROTOCOLS", "ROUND_STAGES", "SETUP_STAGES", "offer_to_json",
           "offer_from_json", "offer_canonical", "offer_sha256", "secure_job_id"]

MASKED = "masked"
SECURE_PROTOCOLS = frozenset({"secagg", "secaggplus"})   # the only ways an update leaves


@dataclass(frozen=True)
class SecAggTerms:
    protocol: str
    threshold: float
    min_group: int
    max_group: int      # the most members a sum can have: the fixed-point overflow bound
    ring_bits: int      # 32 or 64
    scale_bits: int
    clip: float         # coordinates clipped to [-clip, clip] before encoding


@dataclass(frozen=True)
class DpTerms:
    mode: str
    noise_multiplier: float
    clip_norm: float
    delta: float = 0.0  # the coordinator's; the vendor accounts with its policy's own


@dataclass(frozen=True)
class LayerEntry:
    """One weight tensor of the offered model's layer manifest."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Offer:
    """A typed offer: a model by name and architecture hash, never code."""

    job_id: str
    model_name: str
    model_sha256: str
    layers: tuple[str, ...]      # the layer manifest's names
    rounds: int
    secagg: SecAggTerms
    dp: DpTerms
    manifest: tuple[LayerEntry, ...] = ()   # every tensor: name, shape, dtype


@dataclass(frozen=True)
class RoundStart:
    job_id: str
    round_id: int
    global_model_sha256: str
    layers: tuple[str, ...]      # the layers whose global weights come in


@dataclass(frozen=True)
class Member:
    party: str
    ca_sha256: str               # the CA its certificate verified against; "" if none
    simulated: bool = False      # a participant the coordinator simulates


@dataclass(frozen=True)
class Roster:
    """Key sharing: the group the vendor's masked update will be summed in."""

    job_id: str
    round_id: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class UnmaskRequest:
    job_id: str
    round_id: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class Egress:
    """An update about to leave the vendor, as the gateway produced it."""

    job_id: str
    round_id: int
    global_model_sha256: str
    encoding: str                # MASKED is the only one a policy allows
    layers: tuple[str, ...]
    noise_multiplier: float      # the noise the vendor's sites actually added
    clip_norm: float             # the clip they actually applied
    max_abs: float               # the largest coordinate before fixed-point encoding


#: A round's stages for the vendor's participants, in order ("train": train and mask).
ROUND_STAGES = ("advertise", "share_keys", "train", "consistency", "unmask")
#: Setup stages, before rounds: the participants' identity public keys.
SETUP_STAGES = ("identities",)


@dataclass(frozen=True)
class Stage:
    """A request for the vendor's participants: a setup stage or one of a round's."""

    job_id: str
    round_id: int
    stage: str
    participants: tuple[int, ...]   # those it is addressed to


@dataclass(frozen=True)
class GroupSetup:
    """The secure group's setup, pinned once in the vendor's participants."""

    job_id: str
    members: tuple[int, ...]
    secure_job_id: bytes            # what signed key adverts bind: secure_job_id(job_id)


Frame = Union[Offer, RoundStart, Roster, UnmaskRequest, Egress, Stage, GroupSetup]


def secure_job_id(job_id: str) -> bytes:
    """The secure group's job id (what every signed key advert binds): derived from
    the silo job id, so a vendor can check it."""
    return hashlib.sha256(job_id.encode()).digest()[:16]


def offer_to_json(offer: Offer) -> dict[str, Any]:
    """The offer's full typed content as JSON values (what a human approves)."""
    return {"job_id": offer.job_id, "model_name": offer.model_name,
            "model_sha256": offer.model_sha256, "layers": list(offer.layers),
            "rounds": offer.rounds, "secagg": vars(offer.secagg), "dp": vars(offer.dp),
            "manifest": [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype}
                         for e in offer.manifest]}


def offer_from_json(raw: Mapping[str, Any]) -> Offer:
    """The inverse of :func:`offer_to_json` (KeyError/TypeError/ValueError on bad input)."""
    return Offer(job_id=str(raw["job_id"]), model_name=str(raw["model_name"]),
                 model_sha256=str(raw["model_sha256"]), layers=tuple(raw["layers"]),
                 rounds=int(raw["rounds"]), secagg=SecAggTerms(**raw["secagg"]),
                 dp=DpTerms(**raw["dp"]),
                 manifest=tuple(LayerEntry(str(e["name"]), tuple(int(d) for d in e["shape"]),
                                           str(e["dtype"])) for e in raw.get("manifest", [])))


def offer_canonical(offer: Offer) -> bytes:
    """The offer's canonical JSON (sorted keys, no spaces, ASCII): what is hashed."""
    return json.dumps(offer_to_json(offer), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def offer_sha256(offer: Offer) -> str:
    """sha256 of the offer's canonical JSON: what an approval binds (a changed offer,
    in any field, has another hash and waits again)."""
    return hashlib.sha256(offer_canonical(offer)).hexdigest()
