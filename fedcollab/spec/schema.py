"""The job spec: the user's API, as frozen dataclasses.

A spec is loaded from YAML or JSON (:func:`load_spec`), optionally patched with
``--set path.to.field=value`` overrides (list items addressed by index), and
validated field by field. Every problem a user can cause raises :class:`SpecError`
with one line that names the field, the bad value and what is allowed; the CLI
turns it into exit code 2.

The loader is driven by the dataclass annotations: ``Literal[...]`` fields list
their allowed values, ``Annotated[str, Choices("package.module:REGISTRY")]`` fields
take the names of a registry declared once, in the package that owns it (rules in
:mod:`fedcollab.aggregation`, attacks in :mod:`fedcollab.worker.outgoing`, ...), unknown
keys are rejected with the allowed ones, and each dataclass checks its own ranges
in ``__post_init__``.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence, Union

import yaml

from fedcollab.errors import FedcollabError
from fedcollab.spec.yamlsafe import safe_load

__all__ = [
    "SpecError", "JobSpec", "TaskSpec", "LocalSpec", "PartitionSpec", "GroupSpec",
    "AggregationSpec", "SecureSpec", "DpSpec", "PrivacySpec", "ResourcesSpec",
    "ReleaseSpec", "load_spec", "spec_from_dict", "spec_to_dict", "apply_overrides",
    "Choices", "GradingSpec", "MixSpec", "BUILTIN_MIXES",
]


@dataclass(frozen=True)
class Choices:
    """The allowed values of a string field: the keys of a registry, by import path.

    Resolved when a value is checked, so the spec imports no registry (and nothing
    heavy) until it needs to, and each name list exists once, where it is used.
    """

    source: str  # "package.module:NAME"

    def values(self) -> tuple[str, ...]:
        return tuple(_registered(self.source))

    def check(self, where: str, value: Any) -> None:
        allowed = self.values()
        if isinstance(value, bool) or value not in allowed:
            raise _fail(where, f"got {value!r}, expected one of "
                        + ", ".join(repr(a) for a in allowed))


def _policy(group: GroupSpec, where: str = "participants") -> Any:
    """The :class:`~fedcollab.spec.roster.SharingPolicy` of a group's ``sharing``. A
    JobSpec built in Python skips the loader's check, so an unknown word is refused here
    with a :class:`SpecError` too."""
    Choices("fedcollab.spec.roster:SHARING").check(f"{where}.sharing", group.sharing)
    return _registered("fedcollab.spec.roster:policy")(group.sharing)


def _registered(source: str) -> Any:
    """What ``"package.module:NAME"`` names. The spec sits below the packages that own
    the registries (models, rules), so it looks them up by name when a value is
    checked instead of importing them (import-linter's layers forbid that)."""
    module, _, name = source.partition(":")
    return getattr(importlib.import_module(module), name)


class SpecError(FedcollabError):
    """A job spec that cannot run: one line naming the field and what is allowed."""

    exit_code = 2


def _fail(where: str, message: str) -> SpecError:
    return SpecError(f"spec: {where}: {message}")


#: Upper bounds on counts no job can use (a typo's extra zeros, a number meant for
#: another field): refused by ``validate`` instead of a job that never ends or
#: allocates without bound. Far beyond what the benchmarks run.
MAX_ROUNDS = 1_000_000
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 1_000_000
MAX_WORKERS = 10_000


def _at_most(where: str, value: int, bound: int) -> None:
    if value > bound:
        raise _fail(where, f"got {value!r}, expected at most {bound:,}")


def _positive(where: str, value: float) -> None:
    if value <= 0:
        raise _fail(where, f"got {value!r}, expected a number > 0")


def _fraction(where: str, value: float, *, closed_low: bool = False) -> None:
    low_ok = value >= 0 if closed_low else value > 0
    if not (low_ok and value <= 1):
        bracket = "[0, 1]" if closed_low else "(0, 1]"
        raise _fail(where, f"got {value!r}, expected a fraction in {bracket}")


@dataclass(frozen=True)
class TaskSpec:
    """What is learnt: dataset, model and held-out share."""

    dataset: Annotated[str, Choices("fedcollab.data.datasets:DATASETS")] = "digits"
    model: str = "mlp"
    test_fraction: float = 0.2
    path: Optional[str] = None          # dataset: file (.npz with x, y; or .csv)
    label_column: Optional[str] = None  # .csv files: the column holding y
    # classification | regression | auto: for dataset file, auto takes text labels and
    # integer labels with at most 100 distinct values as classes (docs/spec.md)
    kind: Literal["auto", "classification", "regression"] = "auto"
    samples: int = 1000                 # dataset: regression (generated)
    noise: float = 0.1                  # dataset: regression: std of the noise on y
    # dataset: synthetic (a Gaussian mixture generated per participant when sampled)
    samples_per_participant: int = 32
    features: int = 20
    classes: int = 4

    def __post_init__(self) -> None:
        if not (0 < self.test_fraction < 1):
            raise _fail("task.test_fraction",
                        f"got {self.test_fraction!r}, expected a fraction in (0, 1)")
        models = _registered("fedcollab.worker.models:MODELS")
        if self.model not in models and not _is_import_path(self.model):
            raise _fail("task.model", f"got {self.model!r}, expected one of "
                        f"{', '.join(models)} or 'package.module:function'")
        if self.dataset == "file":
            if not self.path:
                raise _fail("task.path", "dataset 'file' needs a path to a .npz or .csv file")
            suffix = Path(self.path).suffix.lower()
            if suffix not in (".npz", ".csv"):
                raise _fail("task.path", f"got {self.path!r}, expected a .npz or .csv file")
            if suffix == ".csv" and not self.label_column:
                raise _fail("task.label_column", "a .csv dataset needs label_column")
        builtin_kind = {"digits": "classification", "regression": "regression",
                        "synthetic": "classification"}
        if self.kind != "auto" and builtin_kind.get(self.dataset, self.kind) != self.kind:
            raise _fail("task.kind", f"got {self.kind!r}, but dataset {self.dataset!r} is a "
                        f"{builtin_kind[self.dataset]} task")
        if self.samples < 10:
            raise _fail("task.samples", f"got {self.samples!r}, expected an integer >= 10")
        if self.noise < 0:
            raise _fail("task.noise", f"got {self.noise!r}, expected a number >= 0")
        for name, low in (("samples_per_participant", 1), ("features", 1), ("classes", 2)):
            value = getattr(self, name)
            if value < low:
                raise _fail(f"task.{name}", f"got {value!r}, expected an integer >= {low}")

    @property
    def is_classification(self) -> bool:
        if self.kind != "auto":
            return self.kind == "classification"
        return self.dataset != "regression" and self.model != "regression"


def _is_import_path(text: str) -> bool:
    module, sep, func = text.partition(":")
    return bool(sep and module and func.isidentifier()
                and all(part.isidentifier() for part in module.split(".")))


@dataclass(frozen=True)
class LocalSpec:
    """Local training on each participant."""

    epochs: int = 1
    batch_size: int = 16
    optimizer: Annotated[str, Choices("fedcollab.worker.training:OPTIMIZERS")] = "sgd"
    learning_rate: float = 0.1
    proximal_mu: float = 0.0  # FedProx's mu; 0 is plain local SGD

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise _fail("local.epochs", f"got {self.epochs!r}, expected an integer >= 1")
        if self.batch_size < 1:
            raise _fail("local.batch_size", f"got {self.batch_size!r}, expected an integer >= 1")
        _at_most("local.epochs", self.epochs, MAX_EPOCHS)
        _at_most("local.batch_size", self.batch_size, MAX_BATCH_SIZE)
        _positive("local.learning_rate", self.learning_rate)
        if self.proximal_mu < 0:
            raise _fail("local.proximal_mu", f"got {self.proximal_mu!r}, expected a number >= 0")


@dataclass(frozen=True)
class PartitionSpec:
    """How a group's share of the training data is split among its participants."""

    kind: Annotated[str, Choices("fedcollab.data.partition:PARTITIONERS")] = "iid"
    alpha: float = 0.5              # dirichlet: smaller is more label skew
    shards_per_participant: int = 2  # shards: label-sorted shards each participant gets

    def validate(self, where: str) -> None:
        if self.alpha <= 0:
            raise _fail(f"{where}.alpha", f"got {self.alpha!r}, expected a number > 0")
        if self.shards_per_participant < 1:
            raise _fail(f"{where}.shards_per_participant",
                        f"got {self.shards_per_participant!r}, expected an integer >= 1")


@dataclass(frozen=True)
class GroupSpec:
    """A group of `count` logical participants sharing a role and a policy."""

    name: str
    role: Annotated[str, Choices("fedcollab.spec.roster:ROLES")] = "community"
    count: int = 1
    sharing: Annotated[str, Choices("fedcollab.spec.roster:SHARING")] = "open"
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    data_fraction: Optional[float] = None
    private_layers: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)
    # For robustness experiments and grading: how this group's participants behave
    # (honest, an attack from fedcollab.worker.outgoing.ATTACKS, or a probe from its
    # PROBES: ``canary``, the grader's canary clients, which hold no data).
    behaviour: Annotated[str, Choices("fedcollab.worker.outgoing:BEHAVIOURS")] = "honest"
    attack_scale: float = 10.0


@dataclass(frozen=True)
class AggregationSpec:
    """The server's rule over open updates and its optimiser."""

    rule: Annotated[str, Choices("fedcollab.aggregation.registry:RULES")] = "fedavg"
    server_optimizer: Annotated[str, Choices(
        "fedcollab.aggregation.server_optimizers:SERVER_OPTIMIZERS")] = "none"
    server_learning_rate: Optional[float] = None  # None: the optimiser's default
    momentum: float = 0.9
    trim_beta: float = 0.1
    krum_f: int = 1
    multi_krum_m: Optional[int] = None
    norm_bound: Optional[float] = None  # reject open updates with a larger L2 norm
    clip_bound: Optional[float] = None  # norm_bounded: scale each open update down to this norm

    def __post_init__(self) -> None:
        if self.server_learning_rate is not None:
            _positive("aggregation.server_learning_rate", self.server_learning_rate)
        if not 0 <= self.trim_beta < 0.5:
            raise _fail("aggregation.trim_beta",
                        f"got {self.trim_beta!r}, expected a fraction in [0, 0.5)")
        if self.krum_f < 0:
            raise _fail("aggregation.krum_f", f"got {self.krum_f!r}, expected an integer >= 0")
        if self.norm_bound is not None:
            _positive("aggregation.norm_bound", self.norm_bound)
        if self.clip_bound is not None:
            _positive("aggregation.clip_bound", self.clip_bound)
        if self.rule == "norm_bounded" and self.clip_bound is None:
            raise _fail("aggregation.clip_bound", "rule 'norm_bounded' needs clip_bound, the L2 "
                        "norm each open update is scaled down to")
        if self.rule == "multi_krum" and self.multi_krum_m is not None and self.multi_krum_m < 1:
            raise _fail("aggregation.multi_krum_m",
                        f"got {self.multi_krum_m!r}, expected an integer >= 1")
        if not 0 <= self.momentum < 1:
            raise _fail("aggregation.momentum",
                        f"got {self.momentum!r}, expected a number in [0, 1)")


def layer_sharers(groups: Sequence[GroupSpec], counts: Sequence[int]) -> dict[str, int]:
    """For every layer some of ``groups`` keep private: how many members (``counts[i]``
    of ``groups[i]``) share it, i.e. put it into the sum. A secure sum of an array is
    over exactly its sharers, so each must be 0 or at least ``secure.min_group``."""
    layers = {name for g in groups for name in g.private_layers}
    return {name: sum(c for g, c in zip(groups, counts) if name not in g.private_layers)
            for name in layers}


@dataclass(frozen=True)
class SecureSpec:
    """Secure aggregation for the groups with ``sharing: secure``."""

    protocol: Annotated[str, Choices("fedcollab.secure.graph:PROTOCOLS")] = "secaggplus"
    threshold: float = 0.67
    min_group: int = 3
    neighbours: Optional[int] = None  # secaggplus: graph degree; None sizes it (below)
    # dropout rate the automatic secaggplus degree survives (a round aborts with
    # probability <= 1% when each member drops independently at this rate); 5% is
    # Bell et al.'s headline setting: 16 neighbours at n=100, 34 for 10%
    expected_dropout: float = 0.05
    clip: float = 8.0                 # fixed-point range per coordinate of n_i * delta_i
    amortise_keys: bool = True
    on_abort: Literal["continue", "fail"] = "continue"
    # Who the protocol must withstand. "malicious" (default): participants verify
    # signed key adverts (Ed25519 identity keys provisioned at setup, not by the
    # aggregating server) and sign/check the survivor set before revealing any
    # share, so a server that lies is refused and the round aborts. The default,
    # because the server is the very party a vendor hides its updates from, and the
    # price is small: one extra stage and a few HMACs per participant per round, an
    # Ed25519 signature and one verification per neighbour only at key setup
    # (scripts/bench prints a "secure_round" line per server model; the target is
    # at most 1.5x honest_but_curious). "honest_but_curious" trusts the server to
    # follow the protocol (participants still refuse request-level lies).
    server: Literal["honest_but_curious", "malicious"] = "malicious"
    # Forward secrecy of amortised keys: fresh X25519 keys (old ones erased) at
    # least every this many rounds, so a leaked key opens at most this many past
    # rounds of its owner; null = only after a dropout (unbounded window)
    key_rotation_rounds: Optional[int] = 10
    # The floor of a secure round: every participant refuses a round (or survivor set)
    # with fewer than max(min_group, ceil(min_round_fraction * k)) members, k the secure
    # members the spec samples per round, so a lying server cannot shrink a round to a
    # victim and a few colluders (docs/threat-model.md)
    min_round_fraction: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.min_round_fraction, bool) or not (
                isinstance(self.min_round_fraction, (int, float))
                and 0 < self.min_round_fraction <= 1):
            raise _fail("secure.min_round_fraction", f"got {self.min_round_fraction!r}, "
                        "expected a fraction in (0, 1] of the secure members sampled per "
                        "round")
        if not 0.5 < self.threshold <= 1:
            raise _fail("secure.threshold", f"got {self.threshold!r}, expected a fraction in "
                        "(0.5, 1] (at a half or below, the server could collect both kinds "
                        "of share of one participant)")
        if self.min_group < 3:
            raise _fail("secure.min_group", f"got {self.min_group!r}, expected an integer >= 3: "
                        "a sum of one or two updates is no secret")
        _positive("secure.clip", self.clip)
        if not 0 <= self.expected_dropout < 1 - self.threshold:
            raise _fail("secure.expected_dropout",
                        f"got {self.expected_dropout!r}, expected a rate in [0, 1 - threshold) "
                        f"= [0, {1 - self.threshold:.2f}): a threshold of {self.threshold} "
                        "cannot survive more dropouts")
        if self.neighbours is not None and self.neighbours < 2:
            raise _fail("secure.neighbours", f"got {self.neighbours!r}, expected an integer "
                        ">= 2 (or leave it out to size it from secure.expected_dropout)")
        if self.key_rotation_rounds is not None and (
                isinstance(self.key_rotation_rounds, bool) or self.key_rotation_rounds < 1):
            raise _fail("secure.key_rotation_rounds",
                        f"got {self.key_rotation_rounds!r}, expected an integer >= 1 (rounds "
                        "a leaked key can open), or null to rotate only after a dropout")


@dataclass(frozen=True)
class DpSpec:
    """User-level differential privacy (DP-FedAvg)."""

    mode: Annotated[str, Choices("fedcollab.privacy.noise:DP_MODES")] = "none"
    noise_multiplier: Optional[float] = None
    clip_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: Optional[float] = None
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    # the neighbouring relation every epsilon is accounted under (docs/privacy.md)
    adjacency: Annotated[str, Choices("fedcollab.privacy.observers:ADJACENCIES")] = "add_remove"

    def __post_init__(self) -> None:
        _positive("privacy.dp.clip_norm", self.clip_norm)
        if not 0 < self.delta < 1:
            raise _fail("privacy.dp.delta", f"got {self.delta!r}, expected a number in (0, 1)")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise _fail("privacy.dp.noise_multiplier",
                        f"got {self.noise_multiplier!r}, expected a number >= 0")
        if self.target_epsilon is not None:
            _positive("privacy.dp.target_epsilon", self.target_epsilon)
            if self.noise_multiplier is not None:
                raise _fail("privacy.dp", "give noise_multiplier or target_epsilon, not both")
        if self.mode != "none" and self.noise_multiplier is None and self.target_epsilon is None:
            raise _fail("privacy.dp",
                        f"mode {self.mode!r} needs noise_multiplier or target_epsilon")
        if self.mode == "distributed_discrete_gaussian" and self.adaptive_clipping:
            raise _fail("privacy.dp.adaptive_clipping", "not with mode "
                        "'distributed_discrete_gaussian': the clip count would need integer "
                        "noise in the ring too, which is not implemented; use a fixed clip_norm")
        _fraction("privacy.dp.target_quantile", self.target_quantile)
        _positive("privacy.dp.clip_learning_rate", self.clip_learning_rate)


@dataclass(frozen=True)
class PrivacySpec:
    dp: DpSpec = field(default_factory=DpSpec)


@dataclass(frozen=True)
class ResourcesSpec:
    """Ray worker pool: workers host many logical participants each."""

    workers: Union[int, Literal["auto"]] = "auto"
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers != "auto" and (not isinstance(self.workers, int) or self.workers < 1):
            raise _fail("resources.workers",
                        f"got {self.workers!r}, expected 'auto' or an integer >= 1")
        if self.workers != "auto":
            _at_most("resources.workers", self.workers, MAX_WORKERS)
        if self.cpus_per_worker < 0:
            raise _fail("resources.cpus_per_worker",
                        f"got {self.cpus_per_worker!r}, expected a number >= 0")
        if self.gpus_per_worker < 0:
            raise _fail("resources.gpus_per_worker",
                        f"got {self.gpus_per_worker!r}, expected a number >= 0")


@dataclass(frozen=True)
class ReleaseSpec:
    sign: bool = True
    key: Optional[str] = None  # PEM Ed25519 private key; None: a fresh key per job


BUILTIN_MIXES = ("open", "secure-vendor", "secure-all", "secure-vendor-dp", "private-layers",
                 "robust-median")


@dataclass(frozen=True)
class MixSpec:
    """A user's own policy mix for `fedcollab grade`: spec overrides, like ``--set``."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GradingSpec:
    """The ``grading:`` section: extra policy mixes graded next to the built-in ones."""

    mixes: tuple[MixSpec, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, mix in enumerate(self.mixes):
            where = f"grading.mixes.{i}"
            if not mix.name or not all(c.isalnum() or c in "-_." for c in mix.name):
                raise _fail(f"{where}.name", f"got {mix.name!r}, expected letters, digits, "
                            "'-', '_' or '.'")
            if mix.name in BUILTIN_MIXES or mix.name in seen:
                raise _fail(f"{where}.name", f"got {mix.name!r}, which is already a "
                            f"{'built-in' if mix.name in BUILTIN_MIXES else 'mix'} name; "
                            "pick another")
            seen.add(mix.name)
            for path in mix.overrides:
                if not path or any(not part for part in str(path).split(".")):
                    raise _fail(f"{where}.overrides", f"got path {path!r}, expected a dotted "
                                "spec path like participants.0.sharing")
                if str(path).split(".")[0] in ("grading", "name"):
                    raise _fail(f"{where}.overrides", f"{path!r}: a mix may not change "
                                "the spec's name or grading section")


@dataclass(frozen=True)
class JobSpec:
    """A whole collaboration job. Field names are a contract (DESIGN.md)."""

    name: str
    participants: tuple[GroupSpec, ...]
    seed: int = 0
    task: TaskSpec = field(default_factory=TaskSpec)
    rounds: int = 20
    fraction: float = 1.0
    local: LocalSpec = field(default_factory=LocalSpec)
    aggregation: AggregationSpec = field(default_factory=AggregationSpec)
    secure: SecureSpec = field(default_factory=SecureSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    release: ReleaseSpec = field(default_factory=ReleaseSpec)
    grading: GradingSpec = field(default_factory=GradingSpec)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise _fail("name", f"got {self.name!r}, expected letters, digits, '-', '_' or '.'")
        if not 0 <= self.seed < 2**32:
            raise _fail("seed", f"got {self.seed!r}, expected an integer in [0, 2**32 - 1]")
        if self.rounds < 1:
            raise _fail("rounds", f"got {self.rounds!r}, expected an integer > 0")
        _at_most("rounds", self.rounds, MAX_ROUNDS)
        _fraction("fraction", self.fraction)
        if not self.participants:
            raise _fail("participants", "expected at least one group")
        self._check_groups()

    def _check_groups(self) -> None:
        names: set[str] = set()
        claimed = 0.0
        vendor = _registered("fedcollab.spec.roster:Role").VENDOR
        holds_data = _registered("fedcollab.spec.roster:holds_data")
        for i, group in enumerate(self.participants):
            where = f"participants.{i}"
            sharing = _policy(group, where)
            if group.name in names:
                raise _fail(f"{where}.name", f"got {group.name!r} twice; group names must differ")
            names.add(group.name)
            if group.count < 1:
                raise _fail(f"{where}.count", f"got {group.count!r}, expected an integer >= 1")
            group.partition.validate(f"{where}.partition")
            if group.data_fraction is not None:
                _fraction(f"{where}.data_fraction", group.data_fraction)
                claimed += group.data_fraction
            if group.private_layers and group.role != vendor:
                raise _fail(f"{where}.private_layers",
                            "only a vendor group keeps private layers (role: vendor)")
            dataless = not holds_data(group)
            if dataless and group.data_fraction is not None:
                raise _fail(f"{where}.data_fraction", f"a {group.behaviour!r} group holds no "
                            "training data; leave data_fraction out")
            if group.behaviour != "honest" and not dataless and not sharing.in_clear:
                raise _fail(f"{where}.behaviour", "attacks are simulated for open groups only; "
                            "a secure sum cannot be inspected per participant")
            for key, amount in group.resources.items():
                if amount <= 0:
                    raise _fail(f"{where}.resources.{key}", f"got {amount!r}, expected > 0")
        if claimed > 1 + 1e-9:
            raise _fail("participants", f"data_fraction adds up to {claimed:g}, expected <= 1")
        if claimed >= 1 - 1e-9 and any(g.data_fraction is None and holds_data(g)
                                       for g in self.participants):
            raise _fail("participants", "data_fraction adds up to 1, leaving no data for the "
                        "groups without one")
        secure = [g for g in self.participants if _policy(g).in_secure_sum]
        secure_count = sum(g.count for g in secure)
        if secure and secure_count < self.secure.min_group:
            raise _fail("participants", f"the secure group has {secure_count} member(s), "
                        f"expected at least secure.min_group={self.secure.min_group}: a sum of "
                        "one or two updates is no secret, so the server would read them")
        if secure:
            sharers = layer_sharers(secure, [g.count for g in secure])
            for layer, count in sorted(sharers.items()):
                if 0 < count < self.secure.min_group:
                    raise _fail("participants", f"layer {layer!r} is kept private by some "
                                f"secure groups; the {count} secure member(s) that share it "
                                f"are fewer than secure.min_group={self.secure.min_group}, so "
                                "its secure sum would be their update; make it private in "
                                "those groups too, or add secure members that share it")
        needs_individual = _registered(
            "fedcollab.aggregation.registry:rule_needs_individual_updates")
        if needs_individual(self.aggregation.rule) and secure and \
                not any(_policy(g).in_clear for g in self.participants):
            raise _fail("aggregation.rule", f"{self.aggregation.rule!r} must see individual "
                        "updates, but every group is secure; use fedavg (or make some groups open)")
        self._check_rule_fits(secure)
        if self.privacy.dp.mode != "none" and self.aggregation.rule != "fedavg":
            raise _fail("aggregation.rule", f"{self.aggregation.rule!r} with DP: the epsilon "
                        "accounting assumes a clipped sum (fedavg); robust rules change the "
                        "sensitivity")
        if self.privacy.dp.mode in ("distributed", "distributed_discrete_gaussian") \
                and not secure:
            raise _fail("privacy.dp.mode", f"{self.privacy.dp.mode!r} noise is added inside "
                        "the secure sum, so it needs a group with sharing: secure")

    def _check_rule_fits(self, secure: Sequence[GroupSpec]) -> None:
        """A robust rule's f must fit the open groups, and with a secure group each
        member needs the rule's norm bound to clip to (it cannot be inspected)."""
        agg = self.aggregation
        if not _registered("fedcollab.aggregation.registry:rule_needs_individual_updates")(
                agg.rule):
            return
        need, why = _registered("fedcollab.aggregation.registry:min_updates")(agg.rule, agg)
        open_groups = [g for g in self.participants if _policy(g).in_clear]
        # the rule runs once per set of arrays with the same sharers: every open
        # participant, and for each private layer those that do not keep it
        layers = {name for g in open_groups for name in g.private_layers}
        sizes = [sum(g.count for g in open_groups if name not in g.private_layers)
                 for name in sorted(layers)] + [sum(g.count for g in open_groups)]
        fewest = min((n for n in sizes if n > 0), default=0)
        if 0 < fewest < need:
            raise _fail("aggregation.krum_f",
                        f"rule {agg.rule!r} with krum_f={agg.krum_f} needs {why}, but the open "
                        f"groups send at most {fewest}; lower krum_f or add open participants")
        if agg.rule == "multi_krum" and agg.multi_krum_m is not None and \
                fewest and agg.multi_krum_m > fewest:
            raise _fail("aggregation.multi_krum_m",
                        f"got {agg.multi_krum_m}, but the open groups send at most {fewest} "
                        "updates to choose from")
        bound = _registered("fedcollab.aggregation.registry:secure_member_bound")(agg.rule, agg)
        if secure and bound is None:
            raise _fail("aggregation.norm_bound",
                        f"rule {agg.rule!r} cannot see a secure member's update, so each "
                        "member clips its update to a norm bound before masking; set "
                        "aggregation.norm_bound (open updates above it are rejected too)")

    @property
    def total_participants(self) -> int:
        return sum(g.count for g in self.participants)


# --------------------------------------------------------------------------- loading

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        choices = [m for m in tp.__metadata__ if isinstance(m, Choices)]
        if choices:
            return "one of " + ", ".join(repr(a) for a in choices[0].values())
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (tuple, list, Sequence):
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against annotation `tp`, converting YAML shapes to dataclasses."""
    if tp is Any:  # free-form values (grading mix overrides), checked when applied
        return value
    origin = typing.get_origin(tp)
    if origin is Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, Choices):
                meta.check(where, value)
        return _convert(typing.get_args(tp)[0], value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool):
            raise _fail(where, f"got {value!r}, expected {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except SpecError:
                continue
        raise _fail(where, f"got {value!r}, expected {_type_name(tp)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _fail(where, f"got {value!r}, expected a mapping")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(where, f"got {value!r}, expected a list")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{where}.{i}") for i, v in enumerate(value))
    if origin in (dict, Mapping, typing.get_origin(Mapping[str, float])):
        if not isinstance(value, Mapping):
            raise _fail(where, f"got {value!r}, expected a mapping")
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, f"got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, f"got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise _fail(where, f"got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, f"got {value!r}, expected a string")
        return value
    raise TypeError(f"spec field {where} has unsupported annotation {tp!r}")  # internal bug


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise _fail(f"{prefix}{unknown[0]}", f"unknown key; allowed: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(f"{prefix}{name}", "missing; this field is required")
    return cls(**kwargs)


def spec_from_dict(data: Mapping[str, Any]) -> JobSpec:
    """Build and validate a :class:`JobSpec` from plain YAML/JSON data."""
    if not isinstance(data, Mapping):
        raise SpecError(f"spec: expected a mapping at the top level, got {type(data).__name__}")
    spec: JobSpec = _build(JobSpec, data, "")
    return spec


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):  # Sharing.SECURE given in Python is written "secure"
        return _jsonable(value.value)
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """The resolved spec (every default filled in) as plain data; round-trips."""
    result: dict[str, Any] = _jsonable(spec)
    return result


def _parse_scalar(text: str) -> Any:
    """An override's value as YAML would read it; '1e9' (YAML 1.1 says str) is a float."""
    try:
        value = safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+",
                                               value.strip()):
        return float(value)
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``path.to.field=value`` overrides (list items by index) to raw spec data."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise SpecError(f"--set {item!r}: expected path.to.field=value")
        keys = path.split(".")
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            node = _step(node, key, ".".join(keys[: depth + 1]))
        last = keys[-1]
        value = _parse_scalar(raw)
        if isinstance(node, list):
            index = _index(node, last, path)
            node[index] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SpecError(f"--set {item!r}: {'.'.join(keys[:-1])} is not a mapping or list")
    return data


def _index(node: list[Any], key: str, path: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise SpecError(f"--set {path}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def _step(node: Any, key: str, path: str) -> Any:
    """One level down an override path, creating missing mappings on the way."""
    if isinstance(node, list):
        return node[_index(node, key, path)]
    if isinstance(node, dict):
        if key not in node or node[key] is None:
            node[key] = {}
        return node[key]
    raise SpecError(f"--set {path}: not a mapping or list")


def read_spec_data(path: str | Path) -> dict[str, Any]:
    """Read raw spec data from a YAML or JSON file, with one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec: {p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"spec: {p}: cannot read ({err.__class__.__name__})") from None
    try:
        data = json.loads(text, object_pairs_hook=functools.partial(_json_object, p)) \
            if p.suffix.lower() == ".json" else safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else \
            (f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else "")
        problem = getattr(err, "problem", None) or getattr(err, "msg", "syntax error")
        raise SpecError(f"spec: {p}: invalid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}"
                        f"{line}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec: {p}: expected a mapping at the top level")
    return data


def _json_object(path: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json.loads keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"spec: {path}: invalid JSON: duplicate key {key!r}")
        out[key] = value
    return out


def load_spec(path: str | Path, overrides: Sequence[str] = (), *,
              seed: Optional[int] = None) -> JobSpec:
    """Load, override and validate a job spec file.

    Raises:
        SpecError: the file is missing or unreadable, or a field is invalid.
    """
    data = apply_overrides(read_spec_data(path), overrides)
    if seed is not None:
        data["seed"] = seed
    spec = spec_from_dict(data)
    if spec.task.dataset == "file":
        assert spec.task.path is not None
        data_path = Path(spec.task.path)
        if not data_path.is_absolute():
            data_path = (Path(path).parent / data_path)
            if not data_path.exists() and Path(spec.task.path).exists():
                data_path = Path(spec.task.path)
        if not data_path.is_file():
            raise SpecError(f"spec: task.path: {spec.task.path}: no such file")
        spec = dataclasses.replace(spec, task=dataclasses.replace(spec.task,
                                                                  path=str(data_path.resolve())))
    return spec
