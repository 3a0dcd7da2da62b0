"""The job<->worker contract: what crosses between the driver and wherever its
participants run (Ray actors, this process, a remote silo).

Like Flower's ``flwr/common`` FitIns/FitRes: plain dataclasses, no Ray, no TensorFlow.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from fedcollab.types import Update, Weights

__all__ = ["WorkerConfig", "RoundConfig", "RoundOutput", "TrainCalls", "ModelInfo", "StageReplies",
           "Attendance", "Pool"]


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker is created with."""

    spec: Mapping[str, Any]       # resolved spec as plain data
    pids: tuple[int, ...]         # participants hosted here
    out_dir: str                  # where vendor-private checkpoints go (this node)
    worker_index: int
    resume_round: int = 0         # reload private layers saved after this round (0: none)


@dataclass
class RoundOutput:
    """What workers send back for a round: open updates and masked inputs."""

    updates: list[Update]
    masked: dict[int, bytes]
    failed: dict[int, str]          # secure participants that could not mask (reason)
    precomputed: int = 0            # masked inputs whose masks the offline phase made
    dropped: list[int] = field(default_factory=list)  # hosted by a worker that died
    seconds: dict[int, float] = field(default_factory=dict)  # training time per participant
    worker_of: dict[int, int] = field(default_factory=dict)  # which worker trained whom
    # secure participants: the largest coordinate of the vector they masked (before the
    # fixed-point encoding): what a cross-silo gateway checks against the offer's clip
    max_abs: dict[int, float] = field(default_factory=dict)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled (by Ray, from a worker to the driver) with the updates' arrays in
        one buffer: 50 updates of four arrays each were 200 buffers to serialise,
        store and read back, each with its own overhead; packed, put and get cost less.
        The driver gets views of that buffer with the same values, shapes and dtypes."""
        return (_unpack_output, (*_pack_updates(self.updates), self.masked, self.failed,
                                 self.precomputed, self.dropped, self.seconds, self.worker_of,
                                 self.max_abs))

    def merge(self, other: RoundOutput, *, worker: int) -> None:
        self.updates.extend(other.updates)
        self.masked.update(other.masked)
        self.failed.update(other.failed)
        self.precomputed += other.precomputed
        self.dropped.extend(other.dropped)
        self.seconds.update(other.seconds)
        self.worker_of.update({pid: worker for pid in other.seconds})
        self.max_abs.update(other.max_abs)


class _AsSent:
    """An entry of an update that is not a float32 array (a private ``None``, or what a
    misbehaving participant sent): it travels as it is, for the server to judge."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return (_AsSent, (self.value,))


def _pack_updates(updates: Sequence[Update]) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """The updates' float32 arrays as one flat buffer, and per update its other fields
    and, per entry, the array's shape (its values are next in the buffer) or the
    entry itself (:class:`_AsSent`)."""
    arrays: list[np.ndarray] = []
    layout: list[tuple[Any, ...]] = []
    for u in updates:
        entries: list[Any] = []
        for a in u.delta:
            if type(a) is np.ndarray and a.dtype == _F32:
                arrays.append(a.reshape(-1))
                entries.append(a.shape)
            else:
                entries.append(_AsSent(a))
        layout.append((u.pid, entries, u.num_samples, u.loss, u.norm, u.clip_bit))
    flat = np.concatenate(arrays) if arrays else np.zeros(0, _F32)
    return flat, layout


def _unpack_output(flat: np.ndarray, layout: Sequence[tuple[Any, ...]],
                   *rest: Any) -> RoundOutput:
    updates = []
    offset = 0
    for pid, entries, *fields in layout:
        delta: list[Any] = []
        for entry in entries:
            if isinstance(entry, _AsSent):
                delta.append(entry.value)
                continue
            size = math.prod(entry)
            delta.append(flat[offset:offset + size].reshape(entry))
            offset += size
        updates.append(Update(pid, delta, *fields))
    return RoundOutput(updates, *rest)


_F32 = np.dtype(np.float32)


@dataclass(frozen=True)
class TrainCalls:
    """A round's training calls in flight (inside a pool, between starting and
    collecting them): per
    worker, its index, the participants it trains and the call's reference."""

    round_id: int
    calls: list[tuple[int, list[int], Any]]


@dataclass(frozen=True)
class RoundConfig:
    """Per-round settings the server sends with the global weights."""

    dp_mode: str = "none"           # none | central | distributed | local
    clip_norm: float = 1.0          # C this round (adaptive clipping moves it)
    noise_multiplier: float = 0.0   # z
    noisy_participants: int = 1     # m: secure members this round; each adds z*C/sqrt(m)
    weight_scale: float = 1.0       # secure weights are n_i / weight_scale (a public bound)
    clip_bit: bool = False          # secure vectors carry [norm <= C] for adaptive clipping
    count_noise_std: float = 0.0    # adaptive clipping, distributed or local DP: the bits' noise
    secure_clip: float = 0.0        # > 0 (no DP): secure vectors carry their share of
                                    # coordinates beyond this fixed-point range
    secure_norm_bound: float = 0.0  # > 0 (robust rules): a secure member clips its update
                                    # to this L2 norm before masking
    ddg_seed: int = 0               # distributed discrete Gaussian: the round's public
                                    # rotation seed,
    ddg_bits: int = 0               # its modulus 2**ddg_bits (divides the secure ring),
    ddg_embed_bits: int = 0         # and the codec's fractional bits that integers pass

    @property
    def dp_on(self) -> bool:
        return self.dp_mode != "none"


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs of the model without loading TensorFlow itself: the
    initial weights (built from the job's seed, as every worker builds them), whether
    the task classifies, and the data's public bound on a dataset size."""

    weights: list[np.ndarray]
    classification: bool
    max_samples: float
    # group index -> the model indices its private_layers cover (groups without
    # private layers are left out): what the server expects an open update to omit
    private_arrays: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    # per entry of ``weights``, the Keras layer holding it (a cross-silo offer's manifest)
    layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageReplies:
    """The answers to one secure stage (:meth:`Pool.secure_stage`).

    Attributes:
        replies: Participant -> its reply (the bytes the server reads).
        refused: Participant -> why it refused the request as a server's lie.
    """

    replies: dict[int, bytes] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Attendance:
    """Who of a round's sample will not take part, known when the round starts.

    A remote party may decline a round (its policy refuses the round's start: it
    already took part in that round id, or contributed to that global model, before a
    restart) or come back from a restart with its participants' session keys gone.
    """

    #: sampled participants that sit this round out, and why (they count as dropped)
    absent: Mapping[int, str] = field(default_factory=dict)
    #: participants whose host restarted: they must run key setup again
    fresh_keys: frozenset[int] = frozenset()


class Pool(Protocol):
    """Where a job's participants run: the one seam between the job and its workers.

    Shaped like Ray Train's ``WorkerGroupInterface`` and Flower's ``ClientProxy``:
    the round loop, the secure coordinator and the checkpointer call only these
    methods, with the dataclasses of this module, so a transport (Ray actors in
    :class:`fedcollab.cluster.pool.WorkerPool`, this process in
    :class:`fedcollab.worker.inprocess.InProcessPool`, a remote silo) is one class.

    A worker lost during a call takes its participants out of that call (they count
    as dropped); :attr:`needs_heal` is then true and :meth:`heal` replaces it before
    the next round.
    """

    #: Per worker, where it runs (``node_id``, ``device``, ...), as summary.json lists it.
    placement: list[dict[str, Any]]
    #: Workers recreated over the job.
    replaced: int
    #: Participants with private layers (their state lives in the workers).
    private_pids: list[int]

    @property
    def needs_heal(self) -> bool:
        """A worker failed a call since the last :meth:`heal`."""
        ...

    def wait_ready(self) -> None:
        """Block until every worker has loaded the job (idempotent)."""
        ...

    def begin_round(self, round_id: int, weights: Weights, chosen: Sequence[int],
                    config: RoundConfig) -> Optional[Attendance]:
        """Round ``round_id`` starts from ``weights`` with ``chosen`` (before any of its
        secure stages): a remote silo sends its participants the round's start then
        and says who of them sits the round out; pools whose workers get the weights
        with training do nothing (None: everyone sampled takes part)."""
        ...

    def model_info(self) -> ModelInfo:
        """The model's initial weights and facts."""
        ...

    def submit_evaluate(self, weights: Weights
                        ) -> Callable[[], tuple[float, float]]:
        """Start evaluating ``weights`` on the held-out set; the function waits for
        ``(loss, accuracy)``."""
        ...

    def evaluate(self, weights: Weights) -> tuple[float, float]:
        """``(loss, accuracy)`` of ``weights`` on the held-out set."""
        ...

    def export_model(self, weights: Weights) -> Any:
        """The release's model file (:class:`fedcollab.worker.models.ModelFile`)."""
        ...

    def submit_train(self, weights: Weights, round_id: int,
                     chosen: Sequence[int], config: RoundConfig,
                     inbox: Mapping[int, bytes]) -> None:
        """Start round ``round_id``'s training now (pipelining: the job starts a round
        while it still logs the one before); :meth:`train` of that round collects it."""
        ...

    def train(self, weights: Weights, round_id: int, chosen: Sequence[int],
              config: RoundConfig, inbox: Mapping[int, bytes]) -> RoundOutput:
        """Train the chosen participants (secure ones mask for ``inbox``): what
        :meth:`submit_train` started for this round, or started now."""
        ...

    def heal(self) -> list[int]:
        """Replace the workers that failed since the last heal; their indices."""
        ...

    def where(self, out: RoundOutput) -> dict[str, Any]:
        """Where a round trained: each worker's node and device, seconds per participant."""
        ...

    def evaluate_personalised(self, weights: Weights, *,
                              classification: bool = True) -> dict[str, float]:
        """Mean test loss (and accuracy) of the participants with private layers."""
        ...

    def save_private(self, round_id: int) -> Callable[[], None]:
        """Start saving private layers after ``round_id``; the function waits for it."""
        ...

    def commit(self, round_id: int) -> None:
        """Round ``round_id`` is committed: a replaced worker reloads its private
        layers from it, and older private files may go."""
        ...

    def setup_identities(self) -> None:
        """Setup channel (not a round message): pin the secure group once in every
        worker (members, graph seed, job id and, malicious model, the identity registry
        collected from the workers hosting each participant); workers started since
        get the same pinned setup. A worker that fails stays pending for the next call."""
        ...

    def secure_stage(self, stage: str, round_id: int, messages: Mapping[int, bytes], *,
                     prepare_next: bool = False) -> StageReplies:
        """Deliver one secure stage's requests to their participants; gather replies.

        ``prepare_next``: the workers called here precompute the next round's masks,
        queued by :meth:`secure_prepare` (a pool may queue part of it at once, behind
        the stage's calls)."""
        ...

    def secure_prepare(self) -> None:
        """Queue the offline phase on the workers the last ``prepare_next`` stage called."""
        ...

    def shutdown(self) -> None:
        """End the job's workers."""
        ...
