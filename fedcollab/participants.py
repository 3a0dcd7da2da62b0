"""Ray worker actors, each hosting many logical participants.

A participant is cheap: an index into the roster, its group's policy, a seed, its
slice of the training data (loaded *inside* the worker from the job spec, never
shipped from the driver) and, for a vendor, its private-layer weights, which never
leave the worker: the driver only ever receives updates over shared layers.

One worker is one process with one TensorFlow thread and one traced
:class:`~fedcollab.training.LocalTrainer`; a round costs one call per worker.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fedcollab.errors import FedcollabError
from fedcollab.types import ParticipantId, Weights

__all__ = ["ParticipantInfo", "Update", "RoundConfig", "RoundOutput", "WorkerConfig",
           "ParticipantWorker", "roster", "secure_vector", "secure_dim", "split_secure_sum",
           "secagg_params"]

TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
          "TF_NUM_INTEROP_THREADS": "1", "PYTHONHASHSEED": "0"}


@dataclass(frozen=True)
class ParticipantInfo:
    """What the roster knows about a logical participant (no data, no keys)."""

    pid: ParticipantId
    group: int
    group_name: str
    role: str
    sharing: str
    private_layers: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)


def roster(spec: Any) -> list[ParticipantInfo]:
    """Every logical participant of the job, group by group, in a stable order."""
    people: list[ParticipantInfo] = []
    for g, group in enumerate(spec.participants):
        for _ in range(group.count):
            people.append(ParticipantInfo(len(people), g, group.name, group.role, group.sharing,
                                          tuple(group.private_layers), dict(group.resources)))
    return people


@dataclass
class Update:
    """A participant's update over the arrays it shares (None where private).

    ``norm`` is the L2 norm before any DP clipping (for adaptive clipping; an open
    participant's update is in the clear anyway).
    """

    pid: ParticipantId
    delta: list[Optional[np.ndarray]]
    num_samples: int
    loss: float
    norm: float = 0.0


@dataclass(frozen=True)
class RoundConfig:
    """Per-round settings the server sends with the global weights."""

    dp_mode: str = "none"           # none | central | distributed | local
    clip_norm: float = 1.0          # C this round (adaptive clipping moves it)
    noise_multiplier: float = 0.0   # z
    noisy_participants: int = 1     # m: distributed noise is z*C/sqrt(m) each
    weight_scale: float = 1.0       # secure weights are n_i / weight_scale (a public bound)
    clip_bit: bool = False          # secure vectors carry [norm <= C] for adaptive clipping


@dataclass
class RoundOutput:
    """What one worker sends back for a round: open updates and masked inputs."""

    updates: list[Update]
    masked: dict[int, bytes]
    failed: dict[int, str]          # secure participants that could not mask (reason)
    precomputed: int = 0            # masked inputs whose masks the offline phase made


@dataclass(frozen=True)
class WorkerConfig:
    spec: Mapping[str, Any]       # resolved spec as plain data
    pids: tuple[int, ...]         # participants hosted here
    out_dir: str                  # where vendor-private checkpoints go (this node)
    worker_index: int
    resume: bool = False          # reload private-layer checkpoints written by a previous run


def secagg_params(spec: Any) -> Any:
    """The SecAgg parameters of a job (same on the server and every participant)."""
    from fedcollab.secure.params import SecAggParams

    sec = spec.secure
    return SecAggParams(protocol=sec.protocol, threshold=sec.threshold,
                        min_group=sec.min_group, neighbours=sec.neighbours,
                        expected_dropout=sec.expected_dropout, clip=sec.clip,
                        amortise_keys=sec.amortise_keys)


def secure_vector(delta: Sequence[Optional[np.ndarray]], reference: Sequence[np.ndarray],
                  weight: float, *, clip_bit: Optional[bool] = None) -> np.ndarray:
    """The float64 vector a secure participant masks.

    Layout: ``weight * delta`` for every array (zeros where private), then one
    weight coordinate per array (``weight`` if shared, 0 if private), then the
    adaptive-clipping bit if asked. The server learns only the sum of each part.
    """
    parts = [np.zeros(np.size(r)) if d is None else weight * np.asarray(d, np.float64).ravel()
             for d, r in zip(delta, reference)]
    counts = [0.0 if d is None else weight for d in delta]
    if clip_bit is not None:
        counts.append(1.0 if clip_bit else 0.0)
    return np.concatenate(parts + [np.asarray(counts)])


def secure_dim(shapes: Sequence[tuple[int, ...]], *, clip_bit: bool) -> int:
    """Length of a :func:`secure_vector` for arrays of ``shapes``."""
    return sum(int(np.prod(s)) for s in shapes) + len(shapes) + int(clip_bit)


def split_secure_sum(total: np.ndarray, shapes: Sequence[tuple[int, ...]], *, scale: float,
                     clip_bit: bool) -> tuple[list[np.ndarray], list[float], Optional[float]]:
    """Invert :func:`secure_vector` on a sum: per-array sums, weights (x scale), bits."""
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0] + sizes)
    arrays = [total[offsets[i]:offsets[i + 1]].reshape(s) * scale for i, s in enumerate(shapes)]
    counts = [float(c) * scale for c in total[offsets[-1]:offsets[-1] + len(shapes)]]
    bits = float(total[-1]) if clip_bit else None
    return arrays, counts, bits


class _Participant:
    def __init__(self, info: ParticipantInfo, x: np.ndarray, y: np.ndarray,
                 private_index: Sequence[int]) -> None:
        self.info = info
        self.x = x
        self.y = y
        self.private_index = list(private_index)
        self.private: Optional[list[np.ndarray]] = None

    def local_start(self, global_weights: Sequence[Any]) -> list[Any]:
        """Global weights (arrays or tensors) with this participant's private layers in."""
        weights = list(global_weights)
        if self.private_index:
            if self.private is None:
                self.private = [np.array(global_weights[i]) for i in self.private_index]
            for i, value in zip(self.private_index, self.private):
                weights[i] = value
        return weights


class ParticipantWorker:
    """The body of the Ray actor (wrapped with ``ray.remote`` by the orchestrator).

    Kept as a plain class so unit tests and the benchmark can run it in-process.
    """

    def __init__(self, config: WorkerConfig) -> None:
        from fedcollab.training import configure_tensorflow

        configure_tensorflow(threads=1, deterministic=True)
        from fedcollab.data import load_dataset, participant_indices
        from fedcollab.models import build_model, private_weight_indices
        from fedcollab.spec import spec_from_dict
        from fedcollab.training import LocalTrainer

        self.spec = spec_from_dict(config.spec)
        self.worker_index = config.worker_index
        self.out_dir = Path(config.out_dir)
        data = load_dataset(self.spec.task, seed=self.spec.seed)
        self.x_test, self.y_test = data.x_test, data.y_test
        indices = participant_indices(self.spec, data.y_train)
        model = build_model(self.spec.task.model, input_shape=data.input_shape,
                            num_classes=data.num_classes, seed=self.spec.seed)
        local = self.spec.local
        self.trainer = LocalTrainer(model, classification=data.num_classes > 0,
                                    optimizer=local.optimizer, learning_rate=local.learning_rate,
                                    batch_size=local.batch_size, epochs=local.epochs,
                                    proximal_mu=local.proximal_mu)
        people = roster(self.spec)
        self.participants: dict[int, _Participant] = {}
        for pid in config.pids:
            info = people[pid]
            idx = indices[pid]
            private = private_weight_indices(
                model, info.private_layers,
                where=f"participants.{info.group}.private_layers") if info.private_layers else []
            self.participants[pid] = _Participant(info, data.x_train[idx], data.y_train[idx],
                                                  private)
        if config.resume:
            self._load_private()
        self.trainer.warm_up(data.x_train, data.y_train)  # trace now, not in round 1
        self._secure: dict[int, Any] = {}
        for pid, part in self.participants.items():
            if part.info.sharing == "secure":  # load the protocol now, not in round 1
                self._secure_participant(pid)

    # ----------------------------------------------------------------- info
    def ready(self) -> dict[str, Any]:
        """Where this worker runs and what it hosts (used by placement tests)."""
        node_id = ""
        try:
            import ray

            if ray.is_initialized():
                node_id = ray.get_runtime_context().get_node_id()
        except ImportError:  # pragma: no cover - ray is a dependency
            pass
        return {"worker": self.worker_index, "node_id": node_id, "host": socket.gethostname(),
                "pid": os.getpid(), "participants": sorted(self.participants),
                "roles": sorted({p.info.role for p in self.participants.values()})}

    # ----------------------------------------------------------------- training
    def _train_one(self, pid: int, global_weights: Sequence[Any],
                   round_id: int) -> tuple[_Participant, list[np.ndarray], float]:
        part = self.participants[pid]
        start = part.local_start(global_weights)
        rng = np.random.default_rng([self.spec.seed, round_id, pid])
        result = self.trainer.train(start, part.x, part.y, rng=rng)
        if part.private_index:
            part.private = [result.weights[i] for i in part.private_index]
        return part, result.weights, result.loss

    def train_round(self, global_weights: Weights, round_id: int, pids: Sequence[int],
                    config: RoundConfig = RoundConfig(),
                    secure_inbox: Optional[Mapping[int, bytes]] = None) -> RoundOutput:
        """Train the given participants and return what leaves this worker.

        Open participants return their update over shared arrays. Secure ones (those
        in `secure_inbox`, the server's mask requests) return only a masked vector.
        Honest participants clip and noise their own update when the round asks for
        DP (central mode: clip only; the server adds the noise). A group configured
        with an attack ``behaviour`` skips all that and sends the attack instead.
        """
        inbox = dict(secure_inbox or {})
        updates, masked, failed, precomputed = [], {}, {}, 0
        feed = self.trainer.feed(global_weights)  # converted once, not per participant
        for pid in pids:
            part, new, loss = self._train_one(pid, feed, round_id)
            private = set(part.private_index)
            shared = [i for i in range(len(new)) if i not in private]
            raw = [(new[i] - global_weights[i]).astype(np.float32) for i in shared]
            norm = float(np.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64)))
                                     for d in raw)))
            behaviour = self.spec.participants[part.info.group].behaviour
            if behaviour != "honest":
                raw = self._attack(raw, part.info.group)
            elif config.dp_mode != "none":
                # DP noise must be unpredictable to the server, which knows the job
                # seed: OS entropy, not the seed (DP runs are not bit-reproducible).
                raw = self._privatize(raw, config, np.random.default_rng())
            delta: list[Optional[np.ndarray]] = [None] * len(new)
            for i, d in zip(shared, raw):
                delta[i] = d
            if part.info.sharing != "secure":
                updates.append(Update(pid, delta, len(part.x), loss, norm))
            elif pid in inbox:
                weight = 1.0 if config.dp_mode != "none" else len(part.x) / config.weight_scale
                vector = secure_vector(delta, global_weights, weight,
                                       clip_bit=(norm <= config.clip_norm) if config.clip_bit
                                       else None)
                try:
                    secure = self._secure_participant(pid)
                    masked[pid] = secure.masked_input(round_id, vector, inbox[pid])
                    precomputed += secure.last_input_precomputed
                except FedcollabError as err:  # e.g. keys lost with a restarted worker
                    failed[pid] = f"{type(err).__name__}: {err}"
        return RoundOutput(updates, masked, failed, precomputed)

    # ----------------------------------------------------------------- secure stages
    def _secure_participant(self, pid: int) -> Any:
        from fedcollab.secure.participant import SecureParticipant
        from fedcollab.secure_round import secure_params

        if pid not in self._secure:
            self._secure[pid] = SecureParticipant(pid, secure_params(self.spec))
        return self._secure[pid]

    def secure_stage(self, stage: str, round_id: int, messages: Mapping[int, bytes], *,
                     registry: Optional[Mapping[int, bytes]] = None
                     ) -> dict[int, bytes | str]:
        """Run one key-setup, consistency or unmask stage for the hosted secure
        participants; at setup, ``identity`` (their identity public keys) and
        ``registry`` (install ``registry`` in every hosted secure participant).

        A participant that fails (bad message) is left out of the reply; the server
        treats it as dropped for that stage. One that refuses the request as a server
        lie (``ServerDeviationError``) answers the reason as a ``str``.
        """
        from fedcollab.secure.errors import ServerDeviationError

        if stage == "registry":
            for pid in self._secure:
                self._secure[pid].install_registry(registry or {})
            return {}
        replies: dict[int, bytes | str] = {}
        for pid, message in messages.items():
            if pid not in self.participants:
                continue
            participant = self._secure_participant(pid)
            try:
                if stage == "identity":
                    replies[pid] = participant.identity_public()
                elif stage == "advertise":
                    replies[pid] = participant.advertise_keys(round_id)
                elif stage == "share_keys":
                    replies[pid] = participant.share_keys(round_id, message)
                elif stage == "consistency":
                    replies[pid] = participant.confirm_survivors(round_id, message)
                elif stage == "unmask":
                    replies[pid] = participant.unmask(round_id, message)
                else:
                    raise ValueError(f"unknown secure stage {stage!r}")  # internal bug
            except ServerDeviationError as err:
                replies[pid] = f"{type(err).__name__}: {err}"
            except FedcollabError:
                continue
        return replies

    def secure_prepare(self, pids: Sequence[int]) -> int:
        """Offline phase: precompute the next round's masks of the hosted participants.

        Called right after an unmask stage, so it runs while the server unmasks and
        evaluates; the next masked input then only encodes and adds (see
        :meth:`fedcollab.secure.participant.SecureParticipant.prepare_next_round`).
        Returns how many participants prepared something.
        """
        done = 0
        for pid in pids:
            participant = self._secure.get(pid)
            if participant is None:
                continue
            try:
                done += participant.prepare_next_round()
            except FedcollabError:  # nothing prepared: the next round computes online
                continue
        return done

    def _privatize(self, raw: list[np.ndarray], config: RoundConfig,
                   rng: np.random.Generator) -> list[np.ndarray]:
        from fedcollab.privacy import privatize_update

        mode = "central" if config.dp_mode == "central" else config.dp_mode
        sent, _ = privatize_update(raw, mode=mode, noise_multiplier=config.noise_multiplier,  # type: ignore[arg-type]
                                   clip_norm=config.clip_norm, rng=rng,
                                   group_size=max(config.noisy_participants, 1))
        return [np.asarray(a, dtype=np.float32) for a in sent]

    def _attack(self, raw: list[np.ndarray], group: int) -> list[np.ndarray]:
        """What a misbehaving participant sends instead of its honest update."""
        spec = self.spec.participants[group]
        kind, scale = spec.behaviour, spec.attack_scale
        if kind == "sign_flip":
            return [-scale * d for d in raw]
        if kind == "scale":
            return [scale * d for d in raw]
        if kind == "nan":
            return [np.full_like(d, np.nan) for d in raw]
        if kind == "wrong_shape":
            return [np.zeros(d.size + 1, dtype=d.dtype) for d in raw]
        if kind == "huge_norm":
            return [1e6 * d for d in raw]
        return [np.zeros_like(d) for d in raw]  # zero

    def evaluate_personalised(self, global_weights: Weights) -> list[tuple[int, float, float]]:
        """(pid, loss, accuracy) on the test set of every participant with private layers."""
        results = []
        for pid, part in sorted(self.participants.items()):
            if part.private_index and part.private is not None:
                loss, acc = self.trainer.evaluate(part.local_start(global_weights),
                                                  self.x_test, self.y_test)
                results.append((pid, loss, acc))
        return results

    def _private_path(self, pid: int) -> Path:
        return self.out_dir / "checkpoints" / "private" / f"participant-{pid:05d}.npz"

    def _load_private(self) -> None:
        from fedcollab.io import load_npz

        for pid, part in self.participants.items():
            path = self._private_path(pid)
            if part.private_index and path.exists():
                arrays, _ = load_npz(path)
                part.private = [arrays[f"w{i}"] for i in part.private_index]

    def save_private(self, round_id: int) -> int:
        """Checkpoint private-layer weights on this worker's side; returns files written."""
        from fedcollab.io import atomic_save_npz

        written = 0
        for pid, part in sorted(self.participants.items()):
            if part.private is None:
                continue
            atomic_save_npz(self._private_path(pid), {f"w{i}": w for i, w in zip(part.private_index, part.private)},
                            meta={"round": round_id, "pid": pid})
            written += 1
        return written
