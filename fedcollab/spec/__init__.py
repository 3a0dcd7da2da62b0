"""What to run: the job spec (:mod:`~fedcollab.spec.schema`) and the roster's nouns
(:mod:`~fedcollab.spec.roster`). Shared by the driver, the workers and the
applications; imports nothing of theirs."""
from fedcollab.spec.schema import (
    BUILTIN_MIXES,
    AggregationSpec,
    Choices,
    DpSpec,
    GradingSpec,
    GroupSpec,
    JobSpec,
    LocalSpec,
    MixSpec,
    PartitionSpec,
    PrivacySpec,
    ReleaseSpec,
    ResourcesSpec,
    SecureSpec,
    SpecError,
    TaskSpec,
    apply_overrides,
    load_spec,
    read_spec_data,
    spec_from_dict,
    spec_to_dict,
)

__all__ = [
    "SpecError", "JobSpec", "TaskSpec", "LocalSpec", "PartitionSpec", "GroupSpec",
    "AggregationSpec", "SecureSpec", "DpSpec", "PrivacySpec", "ResourcesSpec",
    "ReleaseSpec", "load_spec", "read_spec_data", "spec_from_dict", "spec_to_dict",
    "apply_overrides", "Choices", "GradingSpec", "MixSpec", "BUILTIN_MIXES",
]
