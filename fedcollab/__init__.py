"""fedcollab: federated collaborations between open community contributors and a
proprietary vendor, on Ray, graded for the privacy and security they cost.

The public API is resolved lazily (PEP 562), so ``import fedcollab`` loads neither
TensorFlow nor Ray; they load when a job runs.

    >>> import fedcollab
    >>> result = fedcollab.run("examples/community-vendor.yaml", rounds=5)  # doctest: +SKIP
    >>> result.final_accuracy                                              # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcollab.api import run
    from fedcollab.cluster.reuse import worker_reuse
    from fedcollab.errors import FedcollabError
    from fedcollab.grading import grade
    from fedcollab.job.callbacks import CallbackList, RoundCallback
    from fedcollab.job.records import JobInfo, RoundRecord
    from fedcollab.job.release import verify_release as verify
    from fedcollab.job.run import JobResult, RunOptions
    from fedcollab.spec import JobSpec, SpecError, load_spec

__all__ = ["run", "grade", "load_spec", "verify", "JobSpec", "JobResult", "RunOptions",
           "RoundRecord", "RoundCallback", "CallbackList", "JobInfo", "FedcollabError",
           "SpecError", "worker_reuse"]

_WHERE = {
    "run": ("fedcollab.api", "run"),
    "grade": ("fedcollab.grading", "grade"),
    "load_spec": ("fedcollab.spec", "load_spec"),
    "verify": ("fedcollab.job.release", "verify_release"),
    "JobSpec": ("fedcollab.spec", "JobSpec"),
    "SpecError": ("fedcollab.spec", "SpecError"),
    "JobResult": ("fedcollab.job.run", "JobResult"),
    "RunOptions": ("fedcollab.job.run", "RunOptions"),
    "RoundRecord": ("fedcollab.job.records", "RoundRecord"),
    "RoundCallback": ("fedcollab.job.callbacks", "RoundCallback"),
    "CallbackList": ("fedcollab.job.callbacks", "CallbackList"),
    "JobInfo": ("fedcollab.job.records", "JobInfo"),
    "FedcollabError": ("fedcollab.errors", "FedcollabError"),
    "worker_reuse": ("fedcollab.cluster.reuse", "worker_reuse"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'fedcollab' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
