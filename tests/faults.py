"""Fault injection for tests: act on a job's Ray pool at a point inside a round.

Kept out of the product: the job has no test hooks; a test patches the pool's own
method for the duration of one test (pytest's ``monkeypatch`` undoes it)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fedcollab.cluster.pool import WorkerPool


def before_training(monkeypatch: pytest.MonkeyPatch, round_id: int,
                    act: Callable[[WorkerPool], None]) -> None:
    """Call ``act(pool)`` once round ``round_id``'s key setup is done, right before it
    trains (secure rounds never start ahead, so this is after the round's secure
    stages before training)."""
    train = WorkerPool.train

    def train_after(self: WorkerPool, weights: Any, r: int, *args: Any, **kwargs: Any) -> Any:
        if r == round_id:
            act(self)
        return train(self, weights, r, *args, **kwargs)

    monkeypatch.setattr(WorkerPool, "train", train_after)
