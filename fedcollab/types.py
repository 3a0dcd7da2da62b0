"""Domain types named once and shared by every module."""
from __future__ import annotations

from typing import Union

import numpy as np

__all__ = ["Weights", "ParticipantId"]

#: Model weights (or an update to them): one array per Keras weight, in model order.
Weights = list[np.ndarray]

#: A logical participant's index in the job's roster (0-based, stable for a job).
ParticipantId = int

Number = Union[int, float]
