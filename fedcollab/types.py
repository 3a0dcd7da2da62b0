"""Domain types named once and shared by every module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

__all__ = ["Weights", "ParticipantId", "Number", "Update", "GRADE_BUDGETS"]

#: The grader's budgets, cheapest first (``fedcollab grade --budget``, the service's
#: GradeJob); grading.measure.BUDGETS defines each, the service only checks the name.
GRADE_BUDGETS = ("fast", "standard", "full")

#: Model weights (or an update to them): one array per Keras weight, in model order.
Weights = list[np.ndarray]

#: A logical participant's index in the job's roster (0-based, stable for a job).
ParticipantId = int

Number = Union[int, float]


@dataclass(frozen=True)
class Update:
    """An open participant's update over the arrays it shares (``None`` where private).

    This is what the server sees of an open participant, in the clear. Without DP,
    ``loss`` and ``norm`` (the L2 norm before any clipping) travel with it; under DP
    both are 0 and only ``clip_bit`` (norm <= C, for adaptive clipping) is sent.
    """

    pid: ParticipantId
    delta: list[Optional[np.ndarray]]
    num_samples: int
    loss: float
    norm: float = 0.0
    clip_bit: Optional[float] = None  # [norm <= C]; noised by the sender unless central DP
