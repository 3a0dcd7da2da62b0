"""The :class:`~fedcollab.worker.messages.Pool` protocol with every worker in this
process: the test double of the Ray pool, a way to run a job without Ray (debugging,
a single host), and the proof that a transport is one file.

Each worker is a plain :class:`~fedcollab.worker.worker.ParticipantWorker`, hosting
the participants the caller assigns it (the same assignment as the Ray pool's plan
gives the same updates in the same order, so the same weights to the bit). Calls run
when they are made; nothing is lost in transit, so no worker ever needs healing.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fedcollab.spec.roster import roster
from fedcollab.types import Weights
from fedcollab.worker.hosting import (
    Hosting,
    personalised_means,
    private_save_failed,
    stage_replies,
)
from fedcollab.worker.messages import (
    ModelInfo,
    RoundConfig,
    RoundOutput,
    StageReplies,
    TrainCalls,
    WorkerConfig,
)

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec
    from fedcollab.worker.worker import ParticipantWorker

__all__ = ["InProcessPool"]


class InProcessPool(Hosting):
    """Workers in this process, as many as ``hosted`` has entries.

    Args:
        spec: The job spec.
        out_dir: The job's output directory (private checkpoints go there).
        hosted: The participants of each worker (default: one worker hosting all).
        resume_round: The committed round a resumed job continues from (0: fresh).

    Raises:
        fedcollab.spec.SpecError: The model does not build or fit the data.
    """

    def __init__(self, spec: JobSpec, out_dir: Path, *,
                 hosted: Optional[Sequence[Sequence[int]]] = None,
                 resume_round: int = 0) -> None:
        from fedcollab.spec import SpecError, spec_to_dict
        from fedcollab.worker.worker import ParticipantWorker

        self._host(spec, hosted if hosted is not None else [range(len(roster(spec)))])
        self.committed = resume_round
        self.replaced = 0
        data = spec_to_dict(spec)
        self.workers: list[ParticipantWorker] = []
        self.placement: list[dict[str, Any]] = []
        for index, pids in enumerate(self.hosted):
            worker = ParticipantWorker()
            self.placement.append(worker.configure(WorkerConfig(
                data, tuple(pids), str(out_dir), index, resume_round=resume_round)))
            self.workers.append(worker)
            if self.placement[-1].get("error"):
                raise SpecError(self.placement[-1]["error"])

    # ------------------------------------------------------------------ the model
    @property
    def needs_heal(self) -> bool:
        return False

    def wait_ready(self) -> None:
        return None

    def model_info(self) -> ModelInfo:
        return self.workers[-1].model_info()

    def submit_evaluate(self, weights: Weights
                        ) -> Callable[[], tuple[float, float]]:
        loss, acc = self.evaluate(weights)
        return lambda: (loss, acc)

    def evaluate(self, weights: Weights) -> tuple[float, float]:
        loss, acc = self.workers[-1].evaluate(list(weights))
        return float(loss), float(acc)

    def export_model(self, weights: Weights) -> Any:
        return self.workers[-1].export_model(list(weights))

    # ------------------------------------------------------------------ rounds
    def _start_training(self, weights: Weights, round_id: int, chosen: Sequence[int],
                config: RoundConfig, inbox: Mapping[int, bytes]) -> TrainCalls:
        """Train now (this process has nothing else to do meanwhile); the calls
        carry the workers' outputs."""
        calls = [(w, mine, self.workers[w].train_round(
            list(weights), round_id, mine, config, {p: inbox[p] for p in mine if p in inbox}))
            for w, mine in self._by_worker(chosen)]
        return TrainCalls(round_id, calls)

    def _collect_training(self, pending: TrainCalls) -> RoundOutput:
        total = RoundOutput([], {}, {})
        for index, _, output in pending.calls:
            total.merge(output, worker=index)
        return total

    def heal(self) -> list[int]:
        return []

    def evaluate_personalised(self, weights: Weights, *,
                              classification: bool = True) -> dict[str, float]:
        if not self.private_pids:
            return {}
        return personalised_means([r for worker in self.workers
                                   for r in worker.evaluate_personalised(list(weights))],
                                  classification=classification)

    # ------------------------------------------------------------------ checkpoints
    def save_private(self, round_id: int) -> Callable[[], None]:
        if self.private_pids:
            for worker in self.workers:
                try:
                    worker.save_private(round_id, self.committed)
                except OSError as err:
                    raise private_save_failed(round_id, self.committed, err) from None
        return lambda: None

    def commit(self, round_id: int) -> None:
        self.committed = round_id

    # ------------------------------------------------------------------ secure stages
    def _setup_calls(self, calls: Sequence[tuple[int, Mapping[str, Any]]], method: str
                     ) -> list[Any]:
        return [getattr(self.workers[w], method)(**kwargs) for w, kwargs in calls]

    def secure_stage(self, stage: str, round_id: int, messages: Mapping[int, bytes], *,
                     prepare_next: bool = False) -> StageReplies:
        by_worker = self._messages_by_worker(messages)
        if prepare_next:
            self._offline_next = [(w, sorted(sub)) for w, sub in by_worker]
        out = StageReplies()
        for w, sub in by_worker:
            stage_replies(stage, out, self.workers[w].secure_stage(stage, round_id, sub))
        return out

    def secure_prepare(self) -> None:
        pending, self._offline_next = self._offline_next, []
        for w, pids in pending:
            self.workers[w].secure_prepare(pids)

    def shutdown(self) -> None:
        self.workers.clear()
