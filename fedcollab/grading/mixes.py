"""Policy mixes: the same task under different ways of collaborating.

A mix is a list of spec overrides (``path=value``, as ``--set`` takes them) applied
to the user's spec with :func:`fedcollab.spec.apply_overrides`. The built-in ones
are written against the spec's groups by role, so they fit any spec:

``open``             every group shares in the clear, no private layers, no DP, FedAvg
``secure-vendor``    vendor groups secure, community open
``secure-all``       every group secure (one secure sum)
``secure-vendor-dp`` secure-vendor plus distributed DP noise (each participant adds
                     its share of ``N(0, (zC)^2)`` to its clipped update)
``private-layers``   secure-vendor, and vendors keep their output layer (``head``) private
``robust-median``    every group open, coordinate-wise median
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from fedcollab.spec import JobSpec, SpecError, apply_overrides, spec_from_dict
from fedcollab.spec.roster import Role, Sharing

__all__ = ["Mix", "builtin_mixes", "select_mixes", "mix_spec", "DP_NOISE_MULTIPLIER",
           "frontier_mixes", "FRONTIER_EPSILONS", "frontier_point"]

DP_NOISE_MULTIPLIER = 1.0  # z of the built-in DP mix; its epsilon is what the accountant says


@dataclass(frozen=True)
class Mix:
    name: str
    overrides: tuple[tuple[str, Any], ...]
    description: str

    def as_set(self) -> list[str]:
        """The overrides as ``--set`` strings (JSON values, which YAML reads back)."""
        return [f"{path}={json.dumps(value)}" for path, value in self.overrides]

    def policy(self) -> dict[str, Any]:
        return {"description": self.description, "overrides": dict(self.overrides)}


def _groups(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    groups = data.get("participants") or []
    return [g for g in groups if isinstance(g, Mapping)]


def builtin_mixes(data: Mapping[str, Any]) -> list[Mix]:
    """The built-in mixes for this spec's groups (raw spec data, before validation)."""
    groups = _groups(data)
    vendor = [i for i, g in enumerate(groups) if g.get("role") == Role.VENDOR]

    def sharing(secure: Sequence[int]) -> list[tuple[str, Any]]:
        return [(f"participants.{i}.sharing",
                 Sharing.SECURE.value if i in secure else Sharing.OPEN.value)
                for i in range(len(groups))]

    def private(keep: bool) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for i, g in enumerate(groups):
            if keep and i in vendor:
                out.append((f"participants.{i}.private_layers",
                            list(g.get("private_layers") or ["head"])))
            elif g.get("role") == Role.VENDOR or g.get("private_layers"):
                out.append((f"participants.{i}.private_layers", []))
        return out

    plain = [("aggregation.rule", "fedavg"), ("privacy.dp.mode", "none")]
    dp = [("aggregation.rule", "fedavg"), ("privacy.dp.mode", "distributed"),
          ("privacy.dp.noise_multiplier", DP_NOISE_MULTIPLIER),
          ("privacy.dp.target_epsilon", None)]
    everyone = list(range(len(groups)))
    return [
        Mix("open", tuple(sharing([]) + private(False) + plain),
            "every group shares its updates in the clear; FedAvg"),
        Mix("secure-vendor", tuple(sharing(vendor) + private(False) + plain),
            "the vendor's sites behind secure aggregation, the community open"),
        Mix("secure-all", tuple(sharing(everyone) + private(False) + plain),
            "every participant inside one secure sum"),
        Mix("secure-vendor-dp", tuple(sharing(vendor) + private(False) + dp),
            f"secure-vendor plus distributed DP (noise multiplier {DP_NOISE_MULTIPLIER})"),
        Mix("private-layers", tuple(sharing(vendor) + private(True) + plain),
            "secure-vendor, and the vendor keeps its output layer private"),
        Mix("robust-median", tuple(sharing([]) + private(False) +
                                   [("aggregation.rule", "median"), ("privacy.dp.mode", "none")]),
            "every group open; coordinate-wise median (Yin et al. 2018)"),
    ]


#: The privacy-utility sweep's target epsilons (``--budget standard``): strong (1), common
#: practice (3, 8: the DP-SGD benchmark's), and a loose bound (30).
FRONTIER_EPSILONS = (1.0, 3.0, 8.0, 30.0)
#: The sweep's secure encoding range: room for epsilon 1's noise over the default job's
#: rounds with 3 secure members (preflight: C + 4 z C / sqrt(m)).
FRONTIER_SECURE_CLIP = 128.0


def frontier_mixes(data: Mapping[str, Any],
                   epsilons: Sequence[float] = FRONTIER_EPSILONS) -> list[Mix]:
    """The sweep behind the frontier: secure-all-dp and secure-vendor-dp with distributed
    DP whose noise the accountant solves for each target epsilon over the spec's rounds
    (named ``<mix>@eps=<epsilon>``)."""
    groups = _groups(data)
    vendor = [i for i, g in enumerate(groups) if g.get("role") == Role.VENDOR]
    everyone = list(range(len(groups)))
    out = []
    for base, secure in (("secure-all-dp", everyone), ("secure-vendor-dp", vendor)):
        sharing: list[tuple[str, Any]] = [(f"participants.{i}.sharing",
                    Sharing.SECURE.value if i in secure else Sharing.OPEN.value)
                   for i in range(len(groups))]
        private: list[tuple[str, Any]] = [
            (f"participants.{i}.private_layers", []) for i, g in enumerate(groups)
                   if g.get("role") == Role.VENDOR or g.get("private_layers")]
        for eps in epsilons:
            out.append(Mix(f"{base}@eps={eps:g}", tuple(sharing + private + [
                ("aggregation.rule", "fedavg"), ("privacy.dp.mode", "distributed"),
                ("privacy.dp.noise_multiplier", None), ("privacy.dp.target_epsilon", eps),
                # the fixed-point range must hold C + 4 noise std (preflight): a small
                # epsilon's noise needs more room than the default range
                ("secure.clip", FRONTIER_SECURE_CLIP)]),
                f"{base} with the noise solved for epsilon {eps:g} (the frontier sweep)"))
    return out


def frontier_point(name: str) -> Optional[tuple[str, float]]:
    """``(base mix, target epsilon)`` of a sweep mix's name, else None."""
    base, sep, eps = name.partition("@eps=")
    if not sep:
        return None
    try:
        return base, float(eps)
    except ValueError:
        return None


def select_mixes(data: Mapping[str, Any], spec: JobSpec, which: str) -> list[Mix]:
    """``all`` or a comma-separated list of built-in and user mix names.

    Raises:
        SpecError: an unknown name (one line listing the known ones).
    """
    known = {m.name: m for m in builtin_mixes(data)}
    for user in spec.grading.mixes:
        known[user.name] = Mix(user.name, tuple(user.overrides.items()),
                               "the spec's own mix (grading.mixes)")
    if which.strip() in ("", "all"):
        return list(known.values())
    chosen: list[Mix] = []
    for name in (n.strip() for n in which.split(",") if n.strip()):
        if name not in known:
            raise SpecError(f"--mixes: unknown mix {name!r}; known: {', '.join(known)}")
        if name not in [m.name for m in chosen]:
            chosen.append(known[name])
    return chosen


def mix_spec(data: Mapping[str, Any], mix: Mix) -> tuple[Optional[JobSpec], str]:
    """The spec under a mix, or (None, why it cannot run) for a mix the task rules out
    (e.g. a vendor of two sites cannot form a secure group)."""
    raw = copy.deepcopy(dict(data))
    raw.pop("grading", None)
    try:
        patched = apply_overrides(raw, mix.as_set())
        dp = patched.get("privacy", {}).get("dp", {})
        if isinstance(dp, dict):
            for key in ("target_epsilon", "noise_multiplier"):
                if key in dp and dp[key] is None:
                    dp.pop(key)
        return spec_from_dict(patched), ""
    except SpecError as err:
        return None, str(err)

