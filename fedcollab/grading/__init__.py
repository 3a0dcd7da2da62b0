"""Grading: what each way of collaborating costs and protects, measured by attacks.

The attacks are pure functions over numpy arrays and models (no Ray):
:mod:`~fedcollab.grading.inversion`, :mod:`~fedcollab.grading.differencing`,
:mod:`~fedcollab.grading.membership`, :mod:`~fedcollab.grading.poisoning`,
:mod:`~fedcollab.grading.lying_server`. :func:`grade` runs the task under each
policy mix on one Ray session and writes the scorecard; thresholds are in
docs/grading.md. Lazy: importing this package loads neither TensorFlow nor Ray.
"""
from __future__ import annotations

from typing import Any

__all__ = ["grade", "Scorecard", "GradeError", "BUDGETS"]


def __getattr__(name: str) -> Any:
    if name in ("grade", "GradeError", "BUDGETS"):
        from fedcollab.grading import runner

        return getattr(runner, name)
    if name == "Scorecard":
        from fedcollab.grading.report import Scorecard

        return Scorecard
    raise AttributeError(f"module 'fedcollab.grading' has no attribute {name!r}")
