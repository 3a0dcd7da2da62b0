"""The round loop: broadcast, train, aggregate, evaluate, checkpoint, log.

The orchestrator plays the server. It holds the global weights, puts them in
the Ray object store once per round, makes one call per worker, validates and
combines what comes back (open updates in the clear, the secure group's sum
through :mod:`fedcollab.secure_round`), applies the server optimiser, evaluates
on the held-out set and writes one line to ``metrics.jsonl``. Checkpoints are
written atomically by a background thread so the disk never stalls a round.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from fedcollab.combine import OpenUpdate, SecureSum, combine
from fedcollab.io import atomic_save_npz, atomic_write_bytes, atomic_write_json, load_npz
from fedcollab.participants import (ParticipantInfo, RoundConfig, RoundOutput, Update,
                                   WorkerConfig, roster, secure_dim, split_secure_sum)
from fedcollab.spec import JobSpec, spec_to_dict
from fedcollab.types import Weights

__all__ = ["RunOptions", "JobResult", "run_job", "default_out_dir", "sample_participants",
           "plan_workers"]


@dataclass(frozen=True)
class RunOptions:
    out_dir: Optional[Path] = None
    address: Optional[str] = None
    quiet: bool = False
    progress: Optional[bool] = None   # None: on when stderr is a terminal and not quiet
    resume: bool = False
    release: bool = True
    keep_checkpoints: int = 2
    on_round: Optional[Callable[[dict[str, Any]], None]] = None  # e.g. the job service
    # Test hook for fault injection: called as (phase, round_id, worker handles).
    on_phase: Optional[Callable[[str, int, Sequence[Any]], None]] = None


@dataclass
class JobResult:
    out_dir: Path
    summary: dict[str, Any]
    weights: Weights
    metrics: list[dict[str, Any]] = field(default_factory=list)


def default_out_dir(spec: JobSpec) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{spec.name}-{stamp}"


def sample_participants(people: Sequence[ParticipantInfo], spec: JobSpec,
                        round_id: int) -> list[int]:
    """Per-group sampling of ceil(fraction * count), deterministic from (seed, round)."""
    if spec.fraction >= 1:
        return [p.pid for p in people]
    rng = np.random.default_rng([spec.seed, round_id, 7])
    chosen: list[int] = []
    for g, group in enumerate(spec.participants):
        members = [p.pid for p in people if p.group == g]
        k = max(1, math.ceil(spec.fraction * group.count))
        if group.sharing == "secure":
            k = max(k, min(group.count, spec.secure.min_group))
        chosen.extend(sorted(rng.choice(members, size=k, replace=False).tolist()))
    return sorted(chosen)


def plan_workers(spec: JobSpec, people: Sequence[ParticipantInfo],
                 cluster_cpus: float) -> list[tuple[dict[str, float], list[int]]]:
    """Worker pools: (custom resources, participants) per worker, deterministic.

    Groups pinned with ``resources`` get their own worker(s); the rest share a
    general pool of ``resources.workers`` workers (auto: the CPUs left over).
    """
    pools: dict[tuple[tuple[str, float], ...], list[int]] = {}
    for p in people:
        pools.setdefault(tuple(sorted(p.resources.items())), []).append(p.pid)
    general = pools.pop((), [])
    plan: list[tuple[dict[str, float], list[int]]] = []
    for key, pids in sorted(pools.items()):
        plan.append((dict(key), pids))
    if general:
        per = spec.resources.cpus_per_worker or 1.0
        if spec.resources.workers == "auto":
            count = max(1, int((cluster_cpus - len(plan) * per) // per))
        else:
            count = int(spec.resources.workers)
        count = min(count, len(general))
        for chunk in np.array_split(np.asarray(general), count):
            plan.append(({}, chunk.tolist()))
    return plan


def _sha256(delta: Sequence[Optional[np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for array in delta:
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _nbytes(delta: Sequence[Optional[np.ndarray]]) -> int:
    return int(sum(a.nbytes for a in delta if a is not None))


class _Job:
    def __init__(self, spec: JobSpec, options: RunOptions, ray: Any) -> None:
        from fedcollab.data import load_dataset
        from fedcollab.models import build_model
        from fedcollab.training import LocalTrainer, configure_tensorflow

        configure_tensorflow(threads=1, deterministic=True)
        self.spec = spec
        self.options = options
        self.ray = ray
        self.out = Path(options.out_dir or default_out_dir(spec)).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.people = roster(spec)
        data = load_dataset(spec.task, seed=spec.seed)
        self.x_test, self.y_test = data.x_test, data.y_test
        self.classification = data.num_classes > 0
        self.model = build_model(spec.task.model, input_shape=data.input_shape,
                                 num_classes=data.num_classes, seed=spec.seed)
        self.evaluator = LocalTrainer(self.model, classification=self.classification)
        self.weights: Weights = [np.array(v.numpy()) for v in self.model.weights]
        self.evaluator.evaluate(self.weights, self.x_test[:2], self.y_test[:2])  # trace now
        self.shapes = [w.shape for w in self.weights]
        self.writer = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                            thread_name_prefix="checkpoint")
        self.pending: list[concurrent.futures.Future[Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.start_round = 1
        self.server_state: Any = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.rejected_total = 0
        self.private_pids = [p.pid for p in self.people if p.private_layers]
        from fedcollab.data import participant_indices

        # Secure weights are n_i / weight_scale so they fit the fixed-point range; the
        # server only needs this public bound on a participant's dataset size.
        self.weight_scale = float(max(len(i) for i in participant_indices(spec, data.y_train)))
        self._init_dp()

    def _init_dp(self) -> None:
        """Resolve the noise multiplier once; z = 0 means DP is off (see README)."""
        from fedcollab.privacy import PrivacyLedger

        dp = self.spec.privacy.dp
        self.dp_on = dp.mode != "none"
        self.noise_multiplier = 0.0
        self.clip_norm = dp.clip_norm
        self.ledger = PrivacyLedger()
        if not self.dp_on:
            return
        if dp.target_epsilon is not None:
            from fedcollab.privacy import noise_multiplier_for_target

            self.noise_multiplier = noise_multiplier_for_target(
                target_epsilon=dp.target_epsilon, sampling_rate=self.spec.fraction,
                rounds=self.spec.rounds, delta=dp.delta)
        else:
            self.noise_multiplier = float(dp.noise_multiplier or 0.0)
        if self.noise_multiplier == 0.0:
            self.dp_on = False  # no noise: identical to a run without DP

    # ------------------------------------------------------------ set-up
    def start_workers(self) -> None:
        ray = self.ray
        from fedcollab.participants import ParticipantWorker

        cpus = float(ray.cluster_resources().get("CPU", 1))
        plan = plan_workers(self.spec, self.people, cpus)
        missing = {k for resources, _ in plan for k in resources} - set(ray.cluster_resources())
        if missing:
            from fedcollab.cluster import ClusterError

            raise ClusterError(f"the cluster has no node with resource(s) "
                               f"{', '.join(sorted(missing))} that the spec pins groups to")
        actor_cls = ray.remote(ParticipantWorker)
        spec_data = spec_to_dict(self.spec)
        self.workers: list[Any] = []
        self.hosted: list[list[int]] = []
        for index, (resources, pids) in enumerate(plan):
            actor = actor_cls.options(
                num_cpus=self.spec.resources.cpus_per_worker,
                num_gpus=self.spec.resources.gpus_per_worker,
                resources=resources or None, max_restarts=1, max_task_retries=0,
            ).remote(WorkerConfig(spec_data, tuple(pids), str(self.out), index,
                                  resume=self.start_round > 1))
            self.workers.append(actor)
            self.hosted.append(pids)
        self.placement = ray.get([w.ready.remote() for w in self.workers])
        self.suspect: set[int] = set()
        self.secure: Any = None
        if any(p.sharing == "secure" for p in self.people):
            from fedcollab.secure_round import SecureCoordinator

            self.secure = SecureCoordinator(self.spec, self.people, self.workers, self.hosted,
                                            ray, self.suspect)

    def maybe_resume(self) -> None:
        pointer = self.out / "checkpoints" / "latest.json"
        if not (self.options.resume and pointer.exists()):
            return
        latest = json.loads(pointer.read_text())
        arrays, meta = load_npz(self.out / "checkpoints" / latest["file"])
        self.weights = [arrays[f"w{i}"] for i in range(len(self.shapes))]
        self.start_round = int(meta["round"]) + 1
        self.bytes_up, self.bytes_down = int(meta["bytes_up"]), int(meta["bytes_down"])
        self.clip_norm = float(meta.get("clip_norm", self.clip_norm))
        self.rejected_total = int(meta.get("rejected_total", 0))
        if meta.get("ledger"):
            from fedcollab.privacy import PrivacyLedger

            self.ledger = PrivacyLedger.from_dict(meta["ledger"])
        server = {k[len("server."):]: v for k, v in arrays.items() if k.startswith("server.")}
        if server:
            from fedcollab.aggregation import state_from_arrays

            self.server_state = state_from_arrays(server)
        metrics_path = self.out / "metrics.jsonl"
        if metrics_path.exists():
            lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
            self.metrics = [m for m in lines if m.get("round", 0) < self.start_round]
            atomic_write_bytes(metrics_path, "".join(json.dumps(m) + "\n"
                                                     for m in self.metrics).encode())

    # ------------------------------------------------------------ one round
    def _train(self, ref: Any, round_id: int, chosen: set[int], config: RoundConfig,
               inbox: Mapping[int, bytes]) -> tuple[RoundOutput, list[int]]:
        calls, owners, indices = [], [], []
        for index, (worker, pids) in enumerate(zip(self.workers, self.hosted)):
            mine = [p for p in pids if p in chosen]
            if mine:
                sub = {p: inbox[p] for p in mine if p in inbox}
                calls.append(worker.train_round.remote(ref, round_id, mine, config, sub))
                owners.append(mine)
                indices.append(index)
        total = RoundOutput([], {}, {})
        dropped: list[int] = []
        for call, mine, index in zip(calls, owners, indices):
            try:
                out = self.ray.get(call)
            except self.ray.exceptions.RayError:
                dropped.extend(mine)  # the worker died: its participants drop this round
                self.suspect.add(index)
                continue
            total.updates.extend(out.updates)
            total.masked.update(out.masked)
            total.failed.update(out.failed)
            total.precomputed += out.precomputed
        return total, dropped

    def heal(self, *, timeout: float = 60.0) -> None:
        """Wait for workers that failed last round to come back (Ray restarts them once).

        Their participants rejoin with fresh state (secure ones run key setup again);
        a worker that stays down keeps dropping its participants, round after round.
        """
        deadline = time.monotonic() + timeout
        for index in sorted(self.suspect):
            while time.monotonic() < deadline:
                try:
                    self.ray.get(self.workers[index].ready.remote(), timeout=10)
                    self.suspect.discard(index)
                    break
                except (self.ray.exceptions.RayError, self.ray.exceptions.GetTimeoutError):
                    time.sleep(0.5)

    def _validate(self, updates: Sequence[Update]) -> tuple[list[Update], dict[int, str]]:
        bound = self.spec.aggregation.norm_bound
        valid, rejected = [], {}
        for u in updates:
            reason = _check_update(u, self.shapes, bound)
            if reason:
                rejected[u.pid] = reason
            else:
                valid.append(u)
        return valid, rejected

    def run_round(self, round_id: int) -> dict[str, Any]:
        from fedcollab.secure.errors import RoundAbortedError
        from fedcollab.secure_round import SecurePhases

        if self.suspect:
            self.heal()
        t0 = time.perf_counter()
        chosen = sample_participants(self.people, self.spec, round_id)
        dp = self.spec.privacy.dp
        clip_bit = self.dp_on and dp.adaptive_clipping
        config = RoundConfig(dp.mode if self.dp_on else "none", self.clip_norm,
                             self.noise_multiplier, len(chosen),
                             1.0 if self.dp_on else self.weight_scale, clip_bit)
        secure_members = [p for p in chosen if self.people[p].sharing == "secure"]
        phases = SecurePhases()
        line: dict[str, Any] = {"round": round_id, "participants": len(chosen)}
        try:
            inbox: Mapping[int, bytes] = {}
            if secure_members:
                dim = secure_dim(self.shapes, clip_bit=clip_bit)
                inbox = self.secure.prepare(round_id, secure_members, dim, phases,
                                            self.options.on_phase)
            t_train = time.perf_counter()
            ref = self.ray.put(self.weights)
            out, dropped = self._train(ref, round_id, set(chosen), config, inbox)
            phases.add("train", time.perf_counter() - t_train)
            secure_sum, bits, survivors = None, None, 0
            if secure_members:
                result = self.secure.finish(round_id, out.masked, phases,
                                            last=round_id == self.spec.rounds)
                line["secure"] = _secure_log(result, phases, out.failed)
                line["secure"]["precomputed"] = out.precomputed
                arrays, counts, bits = split_secure_sum(
                    result.total, self.shapes, scale=config.weight_scale, clip_bit=clip_bit)
                line["secure"]["weight_sum"] = max(counts)  # survivors' samples (a sum)
                secure_sum = SecureSum(arrays, counts)
                survivors = len(result.survivors)
        except RoundAbortedError as err:
            return self._aborted(line, round_id, str(err), t0, phases)
        valid, rejected = self._validate(out.updates)
        deltas, weights = self._aggregate(valid, secure_sum)
        if any(w > 0 for w in weights):
            self.weights = self._server_step(deltas, weights)
        loss, acc = self.evaluator.evaluate(self.weights, self.x_test, self.y_test)
        up = sum(_nbytes(u.delta) + 16 for u in out.updates)
        down = sum(w.nbytes for w in self.weights) * len(chosen)
        if "secure" in line:
            up += sum(line["secure"]["bytes_up"].values())
            down += sum(line["secure"]["bytes_down"].values())
        self.bytes_up += up
        self.bytes_down += down
        self.rejected_total += len(rejected)
        line.update({
            "loss": loss, "trained": len(out.updates) + len(out.masked), "dropped": dropped,
            "rejected": {str(k): v for k, v in sorted(rejected.items())},
            "bytes_up": up, "bytes_down": down,
            "seconds": time.perf_counter() - t0, "train_seconds": phases.seconds["train"],
            "update_sha256": {str(u.pid): _sha256(u.delta) for u in out.updates},
        })
        if self.classification:
            line["accuracy"] = acc
        if self.dp_on:
            line.update(self._account(valid, secure_bits=bits, secure_count=survivors))
        if self.private_pids:
            line.update(self._personalised())
        return line

    def _aborted(self, line: dict[str, Any], round_id: int, reason: str, t0: float,
                 phases: Any) -> dict[str, Any]:
        """A secure round that cannot finish: the global model stays as it was."""
        if self.spec.secure.on_abort == "fail":
            from fedcollab.errors import FedcollabError

            raise FedcollabError(f"round {round_id} aborted: {reason}")
        loss, acc = self.evaluator.evaluate(self.weights, self.x_test, self.y_test)
        line.update({"loss": loss, "aborted": reason, "trained": 0, "dropped": [],
                     "rejected": {}, "bytes_up": 0, "bytes_down": 0,
                     "seconds": time.perf_counter() - t0,
                     "train_seconds": phases.seconds.get("train", 0.0), "update_sha256": {},
                     "phase_seconds": dict(phases.seconds)})
        if self.classification:
            line["accuracy"] = acc
        return line

    def _aggregate(self, valid: Sequence[Update], secure_sum: Optional[SecureSum]
                   ) -> tuple[list[np.ndarray], list[float]]:
        """Combine the valid open updates (and the secure sum) with the spec's rule.

        Under DP every participant counts once (its clipped update is what the
        noise is calibrated to), and central mode adds the noise to the sum here.
        """
        from fedcollab.aggregation import rule_options

        agg = self.spec.aggregation
        options = rule_options(agg.rule, trim_beta=agg.trim_beta, krum_f=agg.krum_f,
                               multi_krum_m=agg.multi_krum_m, norm_bound=agg.clip_bound)
        opened = [OpenUpdate(u.delta, 1 if self.dp_on else u.num_samples) for u in valid]
        noise = None
        if self.dp_on and self.spec.privacy.dp.mode == "central":
            from fedcollab.privacy import clip_update, gaussian_noise_like

            # The server sees open updates, so it clips them itself rather than trust them.
            opened = [OpenUpdate(_clip_shared(o.delta, self.clip_norm, clip_update), 1)
                      for o in opened]
            noise = gaussian_noise_like([np.zeros(s) for s in self.shapes],
                                        self.noise_multiplier * self.clip_norm,
                                        np.random.default_rng())
        return combine(self.shapes, opened, secure_sum, rule=agg.rule, options=options,
                       noise=noise)

    def _account(self, valid: Sequence[Update], *, secure_bits: Optional[float] = None,
                 secure_count: int = 0) -> dict[str, Any]:
        """Record this round in the privacy ledger; adapt the clip norm if asked."""
        dp = self.spec.privacy.dp
        self.ledger = self.ledger.record(noise_multiplier=self.noise_multiplier,
                                         sampling_rate=self.spec.fraction)
        eps = self.ledger.epsilon(delta=dp.delta)
        out: dict[str, Any] = {"epsilon": eps if math.isfinite(eps) else None,
                               "delta": dp.delta, "noise_multiplier": self.noise_multiplier,
                               "clip_norm": self.clip_norm}
        if dp.adaptive_clipping and (valid or secure_count):
            from fedcollab.privacy import adaptive_clip_step, default_count_noise_std

            # Secure participants reveal only how many fit under C (summed bits), so
            # they enter as norms 0 (fits) or infinity (does not).
            norms = [u.norm for u in valid]
            fits = int(round(secure_bits or 0.0))
            norms += [0.0] * fits + [float("inf")] * max(secure_count - fits, 0)
            m = len(norms)
            self.clip_norm = adaptive_clip_step(
                self.clip_norm, norms, target_quantile=dp.target_quantile,
                learning_rate=dp.clip_learning_rate,
                count_noise_std=default_count_noise_std(m), rng=np.random.default_rng())
        return out

    def _server_step(self, deltas: list[np.ndarray], weights: list[float]) -> Weights:
        from fedcollab.aggregation import ServerOptimizer, server_step

        agg = self.spec.aggregation
        casted = [d.astype(w.dtype) for d, w in zip(deltas, self.weights)]
        if agg.server_optimizer == "none":
            return [w + d for w, d in zip(self.weights, casted)]
        kwargs: dict[str, Any] = {"name": agg.server_optimizer, "momentum": agg.momentum}
        if agg.server_learning_rate is not None:
            kwargs["learning_rate"] = agg.server_learning_rate
        new, self.server_state = server_step(ServerOptimizer(**kwargs), self.server_state,
                                             self.weights, casted)
        return [np.asarray(n, dtype=w.dtype) for n, w in zip(new, self.weights)]

    def _personalised(self) -> dict[str, Any]:
        calls = [w.evaluate_personalised.remote(self.weights) for w, pids in
                 zip(self.workers, self.hosted) if set(pids) & set(self.private_pids)]
        results = [r for batch in self.ray.get(calls) for r in batch]
        if not results:
            return {}
        out = {"vendor_loss": float(np.mean([r[1] for r in results]))}
        if self.classification:
            out["vendor_accuracy"] = float(np.mean([r[2] for r in results]))
        return out

    # ------------------------------------------------------------ outputs
    def checkpoint(self, round_id: int) -> None:
        weights = [np.array(w) for w in self.weights]
        meta = {"round": round_id, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "clip_norm": self.clip_norm, "ledger": self.ledger.to_dict(),
                "rejected_total": self.rejected_total}
        arrays = {f"w{i}": w for i, w in enumerate(weights)}
        if self.server_state is not None:
            from fedcollab.aggregation import state_to_arrays

            arrays.update({f"server.{k}": np.array(v)
                           for k, v in state_to_arrays(self.server_state).items()})
        ckpt_dir = self.out / "checkpoints"
        keep = self.options.keep_checkpoints

        def write() -> None:
            name = f"round-{round_id:05d}.npz"
            atomic_save_npz(ckpt_dir / name, arrays, meta=meta)
            atomic_write_json(ckpt_dir / "latest.json", {"round": round_id, "file": name})
            for old in sorted(ckpt_dir.glob("round-*.npz"))[:-keep]:
                old.unlink(missing_ok=True)

        self.pending.append(self.writer.submit(write))
        if self.private_pids:
            self.pending.append(self.writer.submit(
                lambda: self.ray.get([w.save_private.remote(round_id) for w, pids in
                                      zip(self.workers, self.hosted)
                                      if set(pids) & set(self.private_pids)])))

    def flush(self) -> None:
        for future in self.pending:
            future.result()
        self.pending.clear()


def _secure_log(result: Any, phases: Any, failed: Mapping[int, str]) -> dict[str, Any]:
    """What metrics.jsonl records of a secure round (no keys, shares or values)."""
    rejected = {str(k): v for k, v in sorted(result.rejected.items())}
    rejected.update({str(k): v for k, v in sorted(failed.items())})
    return {"survivors": list(result.survivors), "dropped": list(result.dropped),
            "unresponsive": list(result.unresponsive), "rejected": rejected,
            "excluded": {str(k): v for k, v in sorted(result.excluded.items())},
            "key_setup": len(result.key_setup),
            "bytes_up": dict(result.bytes_up), "bytes_down": dict(result.bytes_down),
            "server_seconds": dict(result.seconds), "phase_seconds": dict(phases.seconds)}


def _clip_shared(delta: Sequence[Optional[np.ndarray]], clip_norm: float,
                 clip: Callable[..., Any]) -> list[Optional[np.ndarray]]:
    """Clip the shared arrays of an update to L2 norm `clip_norm` (None stays None)."""
    shared = [i for i, d in enumerate(delta) if d is not None]
    clipped, _ = clip([delta[i] for i in shared], clip_norm)
    out: list[Optional[np.ndarray]] = [None] * len(delta)
    for i, c in zip(shared, clipped):
        out[i] = c
    return out


def _check_update(update: Update, shapes: Sequence[tuple[int, ...]],
                  norm_bound: Optional[float]) -> str:
    """Why an update is rejected ("" when it is fine). Never includes values."""
    from fedcollab.aggregation import UpdateRejected, validate_update

    if len(update.delta) != len(shapes):
        return f"count: expected {len(shapes)} arrays, got {len(update.delta)}"
    if update.num_samples <= 0:
        return f"samples: sample count must be positive, got {update.num_samples}"
    shared = [(d, s) for d, s in zip(update.delta, shapes) if d is not None]
    try:
        validate_update([d for d, _ in shared], [s for _, s in shared],
                        dtypes=[np.float32] * len(shared), norm_bound=norm_bound)
    except UpdateRejected as err:
        return f"{err.kind}: {err.reason}"
    return ""


def _write_plots(out: Path, metrics: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [m["round"] for m in metrics]
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for key, label in (("accuracy", "test accuracy"), ("loss", "test loss")):
        values = [m.get(key) for m in metrics]
        if not any(v is not None for v in values):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(rounds, values, marker="o", label="global model")
        vendor = [m.get(f"vendor_{key}") for m in metrics]
        if any(v is not None for v in vendor):
            ax.plot(rounds, vendor, marker=".", linestyle="--", label="vendor (private layers)")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = plots / f".{key}.png.tmp"
        fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        tmp.replace(plots / f"{key}.png")


def run_job(spec: JobSpec, options: RunOptions = RunOptions()) -> JobResult:
    """Run a whole job against Ray (embedded when ``options.address`` is None).

    Raises:
        fedcollab.errors.FedcollabError: a spec, cluster or data problem a user can fix.
    """
    from fedcollab.cluster import connect

    wall0 = time.perf_counter()
    custom: dict[str, float] = {}
    for group in spec.participants:
        for key, amount in group.resources.items():
            custom[key] = max(custom.get(key, 0.0), float(amount))
    with connect(options.address, resources=custom,
                 num_cpus=_embedded_cpus(spec)) as ray:
        job = _Job(spec, options, ray)
        try:
            return _run(job, wall0)
        finally:
            job.writer.shutdown(wait=True)


def _embedded_cpus(spec: JobSpec) -> int:
    pinned = len({tuple(sorted(g.resources.items())) for g in spec.participants if g.resources})
    return max(os.cpu_count() or 1, pinned + 1)


def _run(job: _Job, wall0: float) -> JobResult:
    from fedcollab.progress import RoundProgress

    spec, out = job.spec, job.out
    atomic_write_bytes(out / "spec.yaml", _yaml(spec_to_dict(spec)).encode())
    job.maybe_resume()
    job.start_workers()
    tb = _TensorBoard(out)
    metrics_path = out / "metrics.jsonl"
    rounds_seconds = 0.0
    with RoundProgress(spec.rounds, enabled=job.options.progress, quiet=job.options.quiet,
                       classification=job.classification) as bar:
        bar.advance_to(job.start_round - 1)
        for round_id in range(job.start_round, spec.rounds + 1):
            t0 = time.perf_counter()
            line = job.run_round(round_id)
            rounds_seconds += time.perf_counter() - t0
            with metrics_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, allow_nan=False) + "\n")
            job.metrics.append(line)
            job.checkpoint(round_id)
            tb.log(line)
            bar.update(line)
            if job.options.on_round:
                job.options.on_round(line)
    job.flush()
    tb.close()
    summary = _summary(job, wall0, rounds_seconds)
    if job.options.release:
        from fedcollab.release import write_release

        release = write_release(out / "release", model=job.model, weights=job.weights,
                                spec=spec, participants=job.people, summary=summary,
                                key_path=spec.release.key, sign=spec.release.sign)
        summary["release"] = str(release)
    _write_plots(out, job.metrics)
    summary["wall_seconds"] = time.perf_counter() - wall0
    atomic_write_json(out / "summary.json", summary)
    return JobResult(out, summary, job.weights, job.metrics)


def _summary(job: _Job, wall0: float, rounds_seconds: float) -> dict[str, Any]:
    spec = job.spec
    last = job.metrics[-1] if job.metrics else {}
    groups = [{"name": g.name, "role": g.role, "count": g.count, "sharing": g.sharing,
               "private_layers": list(g.private_layers)} for g in spec.participants]
    summary: dict[str, Any] = {
        "name": spec.name, "out_dir": str(job.out),
        "rounds": spec.rounds, "rounds_completed": len(job.metrics),
        "wall_seconds": time.perf_counter() - wall0, "rounds_seconds": rounds_seconds,
        "seconds_per_round": rounds_seconds / max(len(job.metrics), 1),
        "participants": {"total": len(job.people), "groups": groups},
        "workers": job.placement,
        "bytes_up": int(job.bytes_up), "bytes_down": int(job.bytes_down),
        "rejected_updates": job.rejected_total,
        "final_loss": last.get("loss"),
        "seed": spec.seed,
    }
    if job.classification:
        summary["final_accuracy"] = last.get("accuracy")
    if "vendor_accuracy" in last:
        summary["vendor_accuracy"] = last["vendor_accuracy"]
    dp = spec.privacy.dp
    summary["privacy"] = {"mode": dp.mode if job.dp_on else "none",
                          "noise_multiplier": job.noise_multiplier, "delta": dp.delta,
                          "epsilon": last.get("epsilon") if job.dp_on else None,
                          "clip_norm": job.clip_norm if job.dp_on else None}
    summary["aggregation"] = {"rule": spec.aggregation.rule,
                              "server_optimizer": spec.aggregation.server_optimizer}
    reasons: dict[str, int] = {}
    for m in job.metrics:
        for reason in m["rejected"].values():
            kind = reason.split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    summary["rejected_by_reason"] = reasons
    return summary


def _yaml(data: Any) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False))


class _TensorBoard:
    """Scalars per round as TensorBoard event files (pure Python, no TF ops)."""

    KEYS = ("accuracy", "loss", "vendor_accuracy", "vendor_loss", "seconds", "bytes_up",
            "epsilon")

    def __init__(self, out: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(out / "tensorboard"))

    def log(self, line: dict[str, Any]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k, simple_value=float(line[k])) for k in self.KEYS
                  if isinstance(line.get(k), (int, float))]
        self._writer.add_event(Event(wall_time=time.time(), step=int(line["round"]),
                                     summary=Summary(value=values)))

    def close(self) -> None:
        self._writer.close()
