"""The vendor's declarative policy: what may leave, to whom, and at what privacy cost.

A YAML file the vendor writes and the gateway enforces at its own boundary with
:func:`fedcollab.silo.check.check`. Its ``policy_sha256`` is the sha256 of the
file's bytes exactly as read, sent to the coordinator at join so the community can
see what the vendor promised to enforce. docs/cross-silo.md is the reference::

    party: vendor                      # this party's certificate name
    share_only: [dense, dense_1]       # allowlist: unlisted layers never leave, nor come in
    egress: masked_only                # the only value: updates leave masked or not at all
    min_group: 3                       # trusted identities needed at key sharing and unmask
    trusted_cas: [<sha256 of a CA certificate's DER>]   # `fedcollab certs` fingerprint
    dp: {min_noise_multiplier: 1.0, max_clip_norm: 1.0, epsilon_budget: 8.0, delta: 1.0e-5}
    fixed_point: {max_scale_bits: 24}  # ring overflow bound, checked locally
    approved_models: [<sha256 architecture hash>]   # others wait for `silo approve`

Unknown keys are refused (a typo must not switch a rule off).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fedcollab.silo.errors import PolicyError

__all__ = ["Policy", "DpFloor", "FixedPointBounds", "load_policy", "policy_from_bytes",
           "is_sha256"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOP = {"party", "share_only", "egress", "min_group", "trusted_cas", "dp", "fixed_point",
        "approved_models"}
_DP_KEYS = ("min_noise_multiplier", "max_clip_norm", "epsilon_budget", "delta")
_DP = set(_DP_KEYS)
_FP = {"max_scale_bits"}


def is_sha256(value: object) -> bool:
    """A lowercase hex sha256 digest."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


@dataclass(frozen=True)
class DpFloor:
    """The local DP floor: every contribution carries at least this much noise on at
    most this clip, and all contributions together stay within the epsilon budget
    (accounted by the vendor at sampling rate 1: the server knows who took part)."""

    min_noise_multiplier: float
    max_clip_norm: float
    epsilon_budget: float
    delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_noise_multiplier) and self.min_noise_multiplier >= 0):
            raise PolicyError(f"policy: dp.min_noise_multiplier={self.min_noise_multiplier}: "
                              "must be a finite number >= 0")
        if not self.max_clip_norm > 0:
            raise PolicyError(f"policy: dp.max_clip_norm={self.max_clip_norm}: must be a "
                              "number > 0 (.inf: no ceiling)")
        if not (self.epsilon_budget > 0) or math.isnan(self.epsilon_budget):
            raise PolicyError(f"policy: dp.epsilon_budget={self.epsilon_budget}: must be > 0")
        if self.min_noise_multiplier == 0 and math.isfinite(self.epsilon_budget):
            # a vendor without a DP floor must say so in both keys: a zero floor with a
            # finite budget would refuse every noiseless round as infinitely expensive
            raise PolicyError("policy: dp.min_noise_multiplier=0.0 with a finite "
                              "epsilon_budget: a round without noise costs an unbounded "
                              "epsilon; a vendor that adds no noise writes "
                              "epsilon_budget: .inf")
        if not 0 < self.delta < 1:
            raise PolicyError(f"policy: dp.delta={self.delta}: must be in (0, 1)")


@dataclass(frozen=True)
class FixedPointBounds:
    """Fixed-point encoding limits: no finer than ``2**-max_scale_bits``, and the
    offer's group may never overflow the ring (checked against the offer)."""

    max_scale_bits: int = 24

    def __post_init__(self) -> None:
        if not 1 <= self.max_scale_bits <= 52:
            raise PolicyError(f"policy: fixed_point.max_scale_bits={self.max_scale_bits}: "
                              "must be in [1, 52]")


@dataclass(frozen=True)
class Policy:
    """A parsed vendor policy; ``sha256`` is that of the file's bytes."""

    party: str
    share_only: frozenset[str]
    min_group: int
    trusted_cas: frozenset[str]
    dp: DpFloor
    fixed_point: FixedPointBounds
    approved_models: frozenset[str]
    sha256: str
    egress: str = "masked_only"

    def __post_init__(self) -> None:
        if not self.party or not self.party.isprintable() or len(self.party) > 64:
            raise PolicyError(f"policy: party={self.party!r}: a plain name (the certificate's)")
        if self.egress != "masked_only":
            raise PolicyError(f"policy: egress={self.egress!r}: the only value is masked_only")
        if self.min_group < 2:
            raise PolicyError(f"policy: min_group={self.min_group}: must be >= 2 (a sum of one "
                              "update is that update)")
        if not self.share_only:
            raise PolicyError("policy: share_only is empty: nothing could ever leave; list the "
                              "layers the vendor shares")
        if not self.trusted_cas:
            raise PolicyError("policy: trusted_cas is empty: no identity would count toward "
                              "min_group; list the sha256 of each CA certificate you trust")
        for name, values in (("trusted_cas", self.trusted_cas),
                             ("approved_models", self.approved_models)):
            bad = sorted(v for v in values if not is_sha256(v))
            if bad:
                raise PolicyError(f"policy: {name}: {bad[0]!r} is not a lowercase hex sha256")


def _section(raw: Any, name: str, allowed: set[str]) -> Mapping[str, Any]:
    where = "policy" if name == "policy" else f"policy: {name}"  # the file, or a section
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r} (allowed: "
                          f"{', '.join(sorted(allowed))})")
    return raw


def _number(raw: Mapping[str, Any], key: str, where: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"policy: {where}.{key}: expected a number, got {value!r}")
    return float(value)


def _names(raw: Mapping[str, Any], key: str) -> frozenset[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"policy: {key}: expected a list of names")
    return frozenset(value)


def policy_from_bytes(data: bytes) -> Policy:
    """Parse a policy file's bytes (pure); ``Policy.sha256`` is sha256(data)."""
    import yaml

    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise PolicyError(f"policy: not valid YAML ({err.__class__.__name__})") from None
    top = _section(raw, "policy", _TOP)
    for key in ("party", "share_only", "min_group", "trusted_cas", "dp"):
        if key not in top:
            raise PolicyError(f"policy: {key} is required (docs/cross-silo.md)")
    dp = _section(top["dp"], "dp", _DP)
    for key in _DP_KEYS:
        if key not in dp:
            raise PolicyError(f"policy: dp.{key} is required")
    fixed = _section(top.get("fixed_point") or {}, "fixed_point", _FP)
    min_group, scale = top["min_group"], fixed.get("max_scale_bits", 24)
    for where, value in (("min_group", min_group), ("fixed_point.max_scale_bits", scale)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"policy: {where}: expected an integer, got {value!r}")
    party = top["party"]
    if not isinstance(party, str):
        raise PolicyError(f"policy: party: expected a name, got {party!r}")
    return Policy(
        party=party, share_only=_names(top, "share_only"), min_group=min_group,
        trusted_cas=_names(top, "trusted_cas"),
        dp=DpFloor(min_noise_multiplier=_number(dp, "min_noise_multiplier", "dp"),
                   max_clip_norm=_number(dp, "max_clip_norm", "dp"),
                   epsilon_budget=_number(dp, "epsilon_budget", "dp"),
                   delta=_number(dp, "delta", "dp")),
        fixed_point=FixedPointBounds(max_scale_bits=scale),
        approved_models=_names(top, "approved_models"),
        egress=str(top.get("egress", "masked_only")),
        sha256=hashlib.sha256(data).hexdigest())


def load_policy(path: str | Path) -> Policy:
    """Read and parse a policy file (one line and exit 2 when it cannot be used)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PolicyError(f"policy: cannot read {path} ({err.strerror or err})") from None
    return policy_from_bytes(data)
