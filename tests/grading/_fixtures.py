"""Tiny real models and data for the grading tests (sklearn digits, no download)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def digits() -> Any:
    from fedcollab.data import load_digits

    return load_digits(seed=0)


def mlp_trainer(*, batch_size: int = 16, learning_rate: float = 0.1, epochs: int = 1,
                seed: int = 0) -> tuple[Any, Any]:
    from fedcollab.worker.models import build_model
    from fedcollab.worker.training import LocalTrainer, configure_tensorflow

    configure_tensorflow(threads=1, deterministic=True)
    model = build_model("mlp", input_shape=(64,), num_classes=10, seed=seed)
    return model, LocalTrainer(model, classification=True, batch_size=batch_size,
                               learning_rate=learning_rate, epochs=epochs)
