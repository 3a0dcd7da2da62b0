"""The Ray worker actor: one process hosting many logical participants.

A participant is cheap: an index into the roster, its group's policy, a seed, its
slice of the training data (loaded *inside* the worker from the job spec, never
shipped from the driver) and, for a vendor, its private-layer weights, which never
leave the worker: the driver only ever receives updates over shared layers.

One worker is one process with one TensorFlow thread and one traced
:class:`~fedcollab.worker.training.LocalTrainer`; a round costs one call per worker. What
leaves a participant is decided by :func:`fedcollab.worker.outgoing.outgoing` (pure); the
worker trains, calls it, and masks secure vectors.
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fedcollab.errors import FedcollabError
from fedcollab.privacy.server import fresh_rng
from fedcollab.spec.roster import ParticipantInfo, roster
from fedcollab.types import Update, Weights
from fedcollab.worker.messages import ModelInfo, RoundConfig, RoundOutput, WorkerConfig
from fedcollab.worker.outgoing import PROBES, outgoing

log = logging.getLogger(__name__)

__all__ = ["ParticipantWorker"]


class _Participant:
    def __init__(self, info: ParticipantInfo, x: np.ndarray, y: np.ndarray,
                 private_index: Sequence[int]) -> None:
        self.info = info
        self.x = x
        self.y = y
        self.private_index = list(private_index)
        self.private: Optional[list[np.ndarray]] = None
        self.tensors: Any = None  # (x, y) as the trainer's tensors, once trained

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
    """The body of the Ray actor (wrapped with ``ray.remote`` by the worker pool).

    Kept as a plain class so unit tests and the benchmark can run it in-process.
    """

    def __init__(self, config: Optional[WorkerConfig] = None) -> None:
        """Start TensorFlow's runtime; with ``config``, :meth:`configure` for a job too.

        A worker started without a config is a *spare*: a process that has already
        paid TensorFlow's import, kept by a warm job service until a job gives it
        its participants.
        """
        from fedcollab.worker.training import configure_tensorflow

        configure_tensorflow(threads=1, deterministic=True)
        self._blank()
        if config is not None:
            self.configure(config)

    def _blank(self) -> None:
        self.configured = False
        self.worker_index: int = -1
        self.sorted_pids: list[int] = []
        self.setup_error: Optional[str] = None

    def release(self) -> bool:
        """Forget the job, so that another job of the same driver process can configure
        this worker (:func:`fedcollab.cluster.reuse.worker_reuse`) as if it were a spare.

        Drops everything :meth:`configure` loaded (data, model, trainer, participants,
        secure state) and what ``keras.backend.clear_session()`` resets (among it the
        counters behind layer names), so the next job builds and names its model as a
        fresh process would; :meth:`configure` seeds the model's initialisers from the
        job's seed either way. TensorFlow's threading and determinism settings stay:
        every worker uses the same.
        """
        import gc

        import keras

        self.__dict__.clear()
        keras.backend.clear_session()
        gc.collect()
        self._blank()
        return True

    def configure(self, config: WorkerConfig) -> dict[str, Any]:
        """Load the job: data, model (traced), hosted participants; returns :meth:`ready`.

        Raises:
            FedcollabError: The worker was already configured for a job.
        """
        if self.configured:
            raise FedcollabError(f"worker {self.worker_index} is already configured for a job")
        from fedcollab.data import load_federation
        from fedcollab.spec import SpecError, spec_from_dict
        from fedcollab.worker.models import build_checked_model, misfit_as_spec_error
        from fedcollab.worker.training import LocalTrainer, remove_autograph_files

        self.spec = spec_from_dict(config.spec)
        self.worker_index = config.worker_index
        self.out_dir = Path(config.out_dir)
        self.sorted_pids = sorted(config.pids)
        self.data = load_federation(self.spec)
        self.x_test, self.y_test = self.data.x_test, self.data.y_test
        local = self.spec.local
        try:  # the user's mistakes in the model come back as one line, not a dead actor
            self.model = build_checked_model(self.spec, self.data)
            self.initial_weights = _initial_weights(self.spec, self.data, self.model)
            with misfit_as_spec_error(self.spec, self.data):
                self.trainer = LocalTrainer(
                    self.model, classification=self.data.num_classes > 0,
                    optimizer=local.optimizer, learning_rate=local.learning_rate,
                    batch_size=local.batch_size, epochs=local.epochs,
                    proximal_mu=local.proximal_mu)
                # the held-out set through the checked call first: its shapes are
                # what every later (unchecked, faster) evaluation relies on
                self.trainer.evaluate(self.initial_weights, self.x_test[:2], self.y_test[:2])
        except SpecError as err:
            self.setup_error = str(err)
            self.configured = True
            remove_autograph_files()
            return self.ready()
        self.trainer.warm_up(*self.data.warm_up_data())  # trace now, not in round 1
        self.shapes = [tuple(w.shape) for w in self.model.weights]
        self.people = roster(self.spec)
        self.hosted = frozenset(config.pids)
        self.pids = tuple(config.pids)
        # Participants are materialised when first sampled. Those with state that must
        # outlive a round (private layers) are kept; the others are kept only while
        # few, so a worker hosting 50,000 registered participants holds only the
        # ones that take part.
        self.participants: dict[int, _Participant] = {}
        for g, group in enumerate(self.spec.participants):
            if group.private_layers:
                for pid in self.people.group_range(g):
                    if pid in self.hosted:
                        self._participant(pid)
        if config.resume_round:
            self._load_private(config.resume_round)
        self._secure: dict[int, Any] = {}
        self._registry: Optional[Mapping[int, Any]] = None  # parsed identity keys
        self._setup: Any = None  # the group setup pinned once (secure.identity.GroupSetup)
        self._own_dp: Any = None  # the DP settings of this worker's spec (round_check.OwnDp)
        self._hashed: Optional[list[tuple[int, str]]] = None  # arrays the model hash covers
        self._views_cache: Optional[dict[str, dict[str, list[int]]]] = None
        self._views_sync: Any = None  # the consistency stage's fsync (a Future)
        self._views_syncer: Any = None  # its one thread, made on first use
        self._views_lines = 0  # journal lines this process appended (compaction's clock)
        secure = [pid for pid in self.people.pids_where(in_secure_sum=True) if pid in self.hosted]
        self._secure_pids = frozenset(secure)
        for pid in secure[:_KEEP]:  # load the protocol now, not in round 1
            self._secure_participant(pid)
        remove_autograph_files()  # traced: a killed worker would leave them in /tmp
        self.configured = True
        return self.ready()

    def _participant(self, pid: int) -> _Participant:
        part = self.participants.get(pid)
        if part is not None:
            return part
        from fedcollab.worker.models import private_weight_indices

        info = self.people[pid]
        private = private_weight_indices(
            self.model, info.private_layers,
            where=f"participants.{info.group}.private_layers") if info.private_layers else []
        x, y = self.data.data(pid)
        part = _Participant(info, x, y, private)
        if private or len(self.participants) < _KEEP:
            self.participants[pid] = part
        return part

    # ----------------------------------------------------------------- info
    def ready(self) -> dict[str, Any]:
        """Where this worker runs and what it hosts (used by placement tests); with
        ``error``, the spec's mistake that stopped it loading the job. A worker without
        a job (a spare, or parked) hosts nothing."""
        from fedcollab.worker.training import device_info

        info = {"worker": self.worker_index, **device_info(), "pid": os.getpid(),
                "participants": self.sorted_pids}
        if self.setup_error is not None:
            return {**info, "error": self.setup_error}
        if not self.configured:
            return info
        return {**info,
                "roles": sorted({group.role for g, group in enumerate(self.spec.participants)
                                 if _hosts_any(self.sorted_pids, self.people.group_range(g))})}

    # ----------------------------------------------------------------- the model
    def model_info(self) -> ModelInfo:
        """What the driver needs of the model without loading TensorFlow itself."""
        from fedcollab.worker.models import private_arrays_by_group, weight_layers

        return ModelInfo(self.initial_weights, self.data.num_classes > 0,
                         float(self.data.max_samples()),
                         private_arrays_by_group(self.model, self.spec),
                         weight_layers(self.model))

    def evaluate(self, global_weights: Weights) -> tuple[float, float]:
        """(loss, accuracy) of the global weights on the held-out set."""
        return self.trainer.evaluate(global_weights, self.x_test, self.y_test)

    def export_model(self, global_weights: Weights) -> Any:
        """The model with the global weights as ``model.keras`` bytes (for the release)."""
        from fedcollab.worker.models import export_model

        return export_model(self.model, global_weights)

    # ----------------------------------------------------------------- training
    def _train_one(self, pid: int, global_weights: Sequence[Any],
                   round_id: int) -> tuple[_Participant, list[np.ndarray], float]:
        part = self._participant(pid)
        start = part.local_start(global_weights)
        if self.spec.participants[part.info.group].behaviour in PROBES:
            # a probe (a canary client) trains nothing: its update is replaced anyway
            return part, [np.asarray(w) for w in start], 0.0
        rng = np.random.default_rng([self.spec.seed, round_id, pid])
        if part.tensors is None:
            part.tensors = self.trainer.tensors(part.x, part.y)
        result = self.trainer.train(start, *part.tensors, rng=rng)
        if part.private_index:
            part.private = [result.weights[i] for i in part.private_index]
        return part, result.weights, result.loss

    def train_round(self, global_weights: Weights, round_id: int, pids: Sequence[int],
                    config: Optional[RoundConfig] = None,
                    secure_inbox: Optional[Mapping[int, bytes]] = None) -> RoundOutput:
        """Train the given participants and return what leaves this worker.

        Open participants return their update over shared arrays. Secure ones (those
        in ``secure_inbox``, the server's mask requests) return only a masked vector.
        What each sends (attack, clipping, DP noise, open or secure) is decided by
        :func:`fedcollab.worker.outgoing.outgoing`.
        """
        config = config or RoundConfig()
        inbox = dict(secure_inbox or {})
        updates: list[Update] = []
        masked: dict[int, bytes] = {}
        failed: dict[int, str] = {}
        max_abs: dict[int, float] = {}
        refused = self._refuse_config(config)
        if refused is not None:  # DP settings not the participants' own: none trains
            return RoundOutput(updates, masked, {pid: refused for pid in pids})
        precomputed = 0
        seconds: dict[int, float] = {}
        # Secure participants' updates are encoded and masked after a batch of
        # trainings, not between them: the masking's keystreams and vectors evicted
        # TensorFlow's working set from the caches, and the next participant's
        # training ran measurably slower.
        held: list[tuple[int, _Participant, list[int], list[np.ndarray], float]] = []
        held_bytes = 0

        def send(pid: int, part: _Participant, shared: list[int], raw: list[np.ndarray],
                 loss: float) -> None:
            nonlocal precomputed
            group = self.spec.participants[part.info.group]
            # DP noise must be unpredictable to the server, which knows the job
            # seed: OS entropy, not the seed (DP runs are not bit-reproducible).
            # a probe holds no data; it weighs what the heaviest participant may (the
            # public bound), as it moves the sum by the most a clipped update may
            samples = self.data.max_samples() if group.behaviour in PROBES else len(part.x)
            sent = outgoing(raw, pid=pid, shared=shared, shapes=self.shapes,
                            num_samples=samples, loss=loss, sharing=part.info.sharing,
                            behaviour=group.behaviour, attack_scale=group.attack_scale,
                            config=config,
                            rng=fresh_rng() if config.dp_on else _NO_RNG,
                            seed=self.spec.seed)
            if sent.update is not None:
                updates.append(sent.update)
            elif pid in inbox and sent.secure_vector is not None:
                # one pass when all is finite: the largest |value| is NaN or inf iff some
                # value is, and only then are the culprits counted (the first cause,
                # named as an open update's would be)
                largest = float(np.max(np.abs(sent.secure_vector), initial=0.0))
                if not math.isfinite(largest):
                    bad = int(np.size(sent.secure_vector)
                              - np.count_nonzero(np.isfinite(sent.secure_vector)))
                    failed[pid] = (f"non_finite: the update has {bad} non-finite value(s) "
                                   "(NaN or inf)")
                    return
                max_abs[pid] = largest
                try:
                    self._check_layer_sharers(pid, round_id, inbox[pid])
                    secure = self._secure_participant(pid)
                    secure.set_round_model(round_id, round_model())
                    masked[pid] = secure.masked_input(round_id, sent.secure_vector, inbox[pid])
                    precomputed += secure.last_input_precomputed
                except FedcollabError as err:  # e.g. keys lost with a restarted worker
                    failed[pid] = f"{type(err).__name__}: {err}"

        model_hash: list[bytes] = []

        def round_model() -> bytes:  # hashed once per worker and round, when first needed
            if not model_hash:
                model_hash.append(self._model_sha256(global_weights))
            return model_hash[0]

        feed = self.trainer.feed(global_weights)  # converted once, not per participant
        for pid in pids:
            t0 = time.perf_counter()
            part, new, loss = self._train_one(pid, feed, round_id)
            seconds[pid] = time.perf_counter() - t0
            private = set(part.private_index)
            shared = [i for i in range(len(new)) if i not in private]
            raw = [(new[i] - global_weights[i]).astype(np.float32) for i in shared]
            if pid not in inbox:
                send(pid, part, shared, raw, loss)
                continue
            held.append((pid, part, shared, raw, loss))
            held_bytes += sum(a.nbytes for a in raw)
            if held_bytes > _HELD_BYTES:
                for item in held:
                    send(*item)
                held, held_bytes = [], 0
        for item in held:
            send(*item)
        return RoundOutput(updates, masked, failed, precomputed, seconds=seconds,
                           max_abs=max_abs)

    def _model_sha256(self, global_weights: Weights) -> bytes:
        """The hash of the round's global model a secure share's associated data binds
        (:mod:`fedcollab.secure.model`): over the arrays no group of the job keeps
        private, i.e. what every member receives, a vendor's gateway included."""
        from fedcollab.secure.model import model_sha256

        if self._hashed is None:
            from fedcollab.worker.models import private_arrays_by_group, weight_layers

            private = {i for arrays in private_arrays_by_group(self.model, self.spec).values()
                       for i in arrays}
            layers = weight_layers(self.model)
            self._hashed = [(i, layers[i]) for i in range(len(layers)) if i not in private]
        return model_sha256([(layer, global_weights[i]) for i, layer in self._hashed])

    def _refuse_config(self, config: RoundConfig) -> Optional[str]:
        """Why this worker's participants refuse ``config`` (its DP settings are not the
        ones their spec gives: :mod:`fedcollab.worker.round_check`), or ``None``."""
        from fedcollab.secure.errors import ParameterMismatchError
        from fedcollab.worker.round_check import check_round_config, own_dp

        if self._own_dp is None:
            self._own_dp = own_dp(self.spec, sum(int(np.prod(s)) for s in self.shapes))
        try:
            check_round_config(config, self._own_dp)
        except ParameterMismatchError as err:
            return f"{type(err).__name__}: {err}"
        return None

    def _check_layer_sharers(self, pid: int, round_id: int, request: bytes) -> None:
        """Private layers under sampling: refuse to mask if a layer ``pid`` shares is shared
        by fewer than ``secure.min_group`` of the round's secure members (the member set
        of its mask request, checked against the pinned group when it masks): that
        array's secure sum would be theirs alone (issue 27, finding 5).

        Raises:
            UnsafeRosterError: Such a layer.
        """
        if not any(g.private_layers for g in self.spec.participants):
            return
        from fedcollab.secure.messages import SERVER, MaskRequest, unpack
        from fedcollab.worker.round_check import check_layer_sharers

        members = unpack(request, MaskRequest, round_id=round_id, sender=SERVER,
                         recipient=pid).members
        check_layer_sharers(self.spec, self.people, pid, members, round_id=round_id)

    # ----------------------------------------------------------------- secure stages
    def _secure_participant(self, pid: int) -> Any:
        from fedcollab.secure.params import SecAggParams
        from fedcollab.secure.participant import SecureParticipant

        if pid not in self._secure:
            params = SecAggParams.from_spec(self.spec)
            participant = SecureParticipant(
                pid, params, identity=self._identity(pid) if params.malicious else None)
            if self._setup is not None:
                self._pin(participant)
            participant.restore_views(self._saved_views().get(str(pid), {}))
            self._secure[pid] = participant
        return self._secure[pid]

    def _identity(self, pid: int) -> Any:
        """``pid``'s Ed25519 identity key: drawn here the first time, kept on this node
        (mode 0600, beside the private-layer checkpoints) so that a worker Ray restarts
        comes back with the identity the group pinned at setup (a new one would be
        refused: the registry is pinned once). docs/threat-model.md says what a reader
        of that file can do (sign adverts for ``pid``; it opens no past round)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from fedcollab.io import atomic_write_bytes

        path = self.out_dir / "checkpoints" / "secure" / "identity" / f"participant-{pid:05d}.key"
        try:
            return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
        except (OSError, ValueError):
            key = Ed25519PrivateKey.generate()
            atomic_write_bytes(path, key.private_bytes_raw(), mode=0o600)
            return key

    def _pin(self, participant: Any) -> bool:
        """Install the pinned group setup in one participant; False if it cannot pin
        it (a participant whose identity is not the registry's: it sits out)."""
        from fedcollab.secure.errors import RegistryPinnedError, SecAggConfigError

        try:
            participant.install_setup(self._setup, self._registry)
        except RegistryPinnedError:
            raise
        except SecAggConfigError as err:
            log.warning("secure participant %d cannot pin the group setup: %s",
                        participant.participant_id, err)
            return False
        return True

    def secure_identities(self, pids: Sequence[int]) -> dict[int, bytes]:
        """Setup channel (not a round message): the Ed25519 identity public keys of the
        hosted secure participants among ``pids`` (each drawn here, inside the worker)."""
        return {pid: self._secure_participant(pid).identity_public()
                for pid in pids if pid in self.hosted and self._hosts_secure(pid)}

    def secure_setup(self, members: Sequence[int], graph_seed: bytes, job_id: bytes,
                     registry: Mapping[int, bytes]) -> list[int]:
        """Setup channel (its own method, never a round message): pin the secure group
        (members, graph seed, job id, identity registry) in this worker and every
        secure participant it hosts, once. Installing the same setup again is a no-op.

        Returns:
            The hosted secure participants that could not pin it (a worker started
            after setup draws identities the group never registered: they sit out).

        Raises:
            RegistryPinnedError: A different setup was pinned here before (a re-install
                that adds, drops or replaces an identity, or another seed or job id).
            SecAggConfigError: A registry entry that is not an Ed25519 public key.
        """
        from fedcollab.secure import identity
        from fedcollab.secure.errors import RegistryPinnedError, SecAggConfigError

        try:
            setup = identity.GroupSetup.of(members, graph_seed=graph_seed, job_id=job_id,
                                           registry=registry)
            loaded = identity.load_registry(registry) if registry else None
        except ValueError as err:
            raise SecAggConfigError(str(err)) from None
        if self._setup is not None:
            if self._setup.digest() != setup.digest() or self._setup.members != setup.members:
                raise RegistryPinnedError("worker: a group setup that differs from the one "
                                          "pinned at setup; the group is pinned once")
            return []
        self._setup, self._registry = setup, loaded
        return [pid for pid, p in sorted(self._secure.items()) if not self._pin(p)]

    def _hosts_secure(self, pid: int) -> bool:
        return pid in self._secure_pids

    def secure_stage(self, stage: str, round_id: int, messages: Mapping[int, bytes]
                     ) -> dict[int, bytes | str]:
        """Run one key-setup, consistency or unmask stage for the hosted secure
        participants (setup has its own methods: :meth:`secure_identities`,
        :meth:`secure_setup`).

        A participant that fails (bad message) is left out of the reply; the server
        treats it as dropped for that stage. One that refuses the request as a server
        lie (``ServerDeviationError``) answers the reason as a ``str``.
        """
        replies: dict[int, bytes | str] = {}
        if stage != "consistency":
            self._views_durable()  # what this stage reveals relies on views on disk
        try:
            for pid, message in messages.items():
                if pid not in self.hosted:
                    continue
                reply = self._secure_reply(pid, stage, round_id, message)
                if reply is not None:
                    replies[pid] = reply
        finally:
            if stage in ("consistency", "unmask"):
                self._save_views(messages, sync_later=stage == "consistency")
        return replies

    def _secure_reply(self, pid: int, stage: str, round_id: int, message: bytes
                      ) -> Optional[bytes | str]:
        from fedcollab.secure.errors import ServerDeviationError
        from fedcollab.secure.stages import BY_NAME, participant_reply

        participant = self._secure_participant(pid)
        try:
            return participant_reply(participant, BY_NAME[stage], round_id, message)
        except ServerDeviationError as err:
            return f"{type(err).__name__}: {err}"
        except FedcollabError:
            return None

    def _views_path(self) -> Path:
        return (self.out_dir / "checkpoints" / "secure"
                / f"views-worker-{self.worker_index}.jsonl")

    def _saved_views(self) -> dict[str, dict[str, list[int]]]:
        """Every worker's journalled views, by participant id (read once)."""
        if self._views_cache is None:
            views: dict[str, dict[str, list[int]]] = {}
            for path in sorted(self._views_path().parent.glob("views-worker-*.jsonl")):
                for pid, keyed in _read_views_journal(path).items():
                    views.setdefault(pid, {}).update(keyed)
            self._views_cache = views
        return self._views_cache

    def _save_views(self, touched: Mapping[int, bytes], *, sync_later: bool = False) -> None:
        """Journal the views the participants of this stage confirmed: a resumed job
        re-runs rounds, and a participant must not confirm another view of one. One line
        per stage that confirmed any, each survivor set written once (every hosted
        participant usually confirms the same one); only the new views are formatted
        (``take_new_views``).

        The line is written (in the page cache: a killed worker keeps it) before the
        replies leave. It is on disk (fsync) before any later stage of this worker
        answers: with ``sync_later`` (malicious consistency, whose confirmations reveal
        nothing) the fsync runs in the background while the server gathers the
        confirmations, and :meth:`_views_durable` waits for it before the unmask stage
        reveals a share; otherwise (honest-but-curious: the view and the reveals leave
        together) before this stage's replies."""
        sets: list[list[int]] = []
        index: dict[tuple[int, ...], int] = {}
        fresh: dict[str, dict[str, int]] = {}
        for pid in sorted(touched):
            participant = self._secure.get(pid)
            if participant is None:
                continue
            for key, view in participant.take_new_views().items():
                i = index.setdefault(tuple(view), len(sets))
                if i == len(sets):
                    sets.append(view)
                fresh.setdefault(str(pid), {})[key] = i
        if not fresh:
            return
        from fedcollab.io import append_line_durably, fsync_file

        self._views_durable()  # one sync in flight at a time, lines in order
        path = self._views_path()
        self._views_lines += 1
        if self._views_lines % _VIEWS_COMPACT_EVERY == 0:
            _compact_views_journal(path)  # durable; the new line is appended after it
        append_line_durably(path, _views_line(sets, fresh), mode=0o600, sync=not sync_later)
        if sync_later:
            if self._views_syncer is None:
                from concurrent.futures import ThreadPoolExecutor

                self._views_syncer = ThreadPoolExecutor(1, thread_name_prefix="views-fsync")
            self._views_sync = self._views_syncer.submit(fsync_file, path)

    def _views_durable(self) -> None:
        """Wait for the journal's background fsync (:meth:`_save_views`), if any."""
        pending, self._views_sync = self._views_sync, None
        if pending is not None:
            pending.result()  # its OSError: no share is revealed on a view not on disk

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

    def evaluate_personalised(self, global_weights: Weights) -> list[tuple[int, float, float]]:
        """(pid, loss, accuracy) on the test set of every participant with private layers."""
        results = []
        for pid, part in sorted(self.participants.items()):
            if part.private_index and part.private is not None:
                loss, acc = self.trainer.evaluate(part.local_start(global_weights),
                                                  self.x_test, self.y_test)
                results.append((pid, loss, acc))
        return results

    # ----------------------------------------------------------------- private checkpoints
    def _private_path(self, pid: int, round_id: int) -> Path:
        return (self.out_dir / "checkpoints" / "private"
                / f"participant-{pid:05d}-round-{round_id:05d}.npz")

    def _load_private(self, round_id: int) -> None:
        """Private layers as they were after committed round ``round_id``; a
        participant whose worker was lost before it saved that round takes the last
        round it did save (its layers never left this node, so that is where they are)."""
        from fedcollab.io import load_npz

        for pid, part in self.participants.items():
            path = self._private_path(pid, round_id)
            if part.private_index and not path.exists():
                saved = [(int(p.stem.rsplit("-", 1)[1]), p) for p in path.parent.glob(
                    f"participant-{pid:05d}-round-*.npz") if p.stem.rsplit("-", 1)[1].isdigit()]
                path = max((s for s in saved if s[0] <= round_id), default=(0, path))[1]
            if part.private_index and path.exists():
                arrays, _ = load_npz(path)
                part.private = [arrays[f"w{i}"] for i in part.private_index]

    def save_private(self, round_id: int, keep_from: int = 0) -> int:
        """Checkpoint private-layer weights after ``round_id``, on this worker's node.

        One file per participant and round, so a resumed job loads exactly the round
        it commits to. Files of rounds before ``keep_from`` (the last round the driver
        has committed) are removed: the committed round's files are never deleted.
        Returns the files written.
        """
        from fedcollab.io import atomic_save_npz

        written = 0
        for pid, part in sorted(self.participants.items()):
            if part.private is None:
                continue
            atomic_save_npz(self._private_path(pid, round_id),
                            {f"w{i}": w for i, w in zip(part.private_index, part.private)},
                            meta={"round": round_id, "pid": pid})
            written += 1
            for old in self._private_path(pid, 0).parent.glob(f"participant-{pid:05d}-round-*.npz"):
                if int(old.stem.rsplit("-", 1)[1]) < min(keep_from, round_id):
                    old.unlink(missing_ok=True)
        return written


#: Secure participants' raw updates held back from masking until this many bytes.
_HELD_BYTES = 64 << 20


def _initial_weights(spec: Any, data: Any, model: Any) -> list[np.ndarray]:
    """The model's initial weights as the job's seed gives them on a CPU.

    On a CPU worker, ``model``'s own. A GPU worker builds the model once more on its
    CPU for them: TensorFlow promises the same random numbers from a seed only on
    the same kind of device, and a job's start must not depend on where it ran.
    """
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return [np.array(w) for w in model.get_weights()]
    from fedcollab.worker.models import build_model

    with tf.device("/CPU:0"):  # the same model, checked already: only its weights differ
        again = build_model(spec.task.model, input_shape=data.input_shape,
                            num_classes=data.num_classes, seed=spec.seed)
    return [np.array(w) for w in again.get_weights()]


def _hosts_any(sorted_pids: Sequence[int], members: range) -> bool:
    i = bisect.bisect_left(sorted_pids, members.start)
    return i < len(sorted_pids) and sorted_pids[i] < members.stop


_NO_RNG = np.random.default_rng(0)  # never drawn from: only DP rounds use randomness
#: Participants without state kept materialised per worker (beyond: built when sampled).
_KEEP = 4096


#: The views journal is compacted every this many lines a worker appends: it keeps only
#: the views a participant still holds (the last ``VIEW_ROUNDS`` rounds), so a long job's
#: journal, and the read a resume makes of it, stay bounded.
_VIEWS_COMPACT_EVERY = 256


def _views_line(sets: Sequence[Sequence[int]], views: Mapping[str, Mapping[str, int]]) -> str:
    """One journal line: each survivor set once, each participant's views indexing them."""
    import json

    return json.dumps({"sets": sets, "views": views}, separators=(",", ":"))


def _read_views_journal(path: Path) -> dict[str, dict[str, list[int]]]:
    """A views journal's views, ``pid -> "round:digest" -> survivors`` (later lines win;
    a torn or unreadable line is skipped: that stage's replies never left)."""
    import json

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    views: dict[str, dict[str, list[int]]] = {}
    for line in lines:
        try:
            entry = json.loads(line)
            sets = entry["sets"]
            for pid, keyed in entry["views"].items():
                views.setdefault(pid, {}).update(
                    {key: [int(v) for v in sets[i]] for key, i in keyed.items()})
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue
    return views


def _compact_views_journal(path: Path) -> None:
    """Rewrite the journal at ``path`` as one line holding the views of its last
    ``VIEW_ROUNDS`` rounds, every participant's (whoever hosts it now: a view must
    survive until the participant can no longer be asked about that round), atomically
    and durably. Participants drop older views themselves (``_remember_view``), and a
    resume re-runs only the rounds after the last checkpoint, so nothing it needs goes."""
    from fedcollab.io import atomic_write_bytes
    from fedcollab.secure.participant import VIEW_ROUNDS

    views = _read_views_journal(path)
    latest = max((int(key.split(":", 1)[0]) for keyed in views.values() for key in keyed),
                 default=0)
    sets: list[list[int]] = []
    index: dict[tuple[int, ...], int] = {}
    kept: dict[str, dict[str, int]] = {}
    for pid, keyed in sorted(views.items()):
        for key, view in sorted(keyed.items()):
            if int(key.split(":", 1)[0]) > latest - VIEW_ROUNDS:
                i = index.setdefault(tuple(view), len(sets))
                if i == len(sets):
                    sets.append(view)
                kept.setdefault(pid, {})[key] = i
    atomic_write_bytes(path, (_views_line(sets, kept) + "\n").encode() if kept else b"",
                       mode=0o600)
