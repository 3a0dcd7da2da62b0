"""Pure-numpy aggregation: FedAvg, Byzantine-robust rules, update validation and
server optimisers.

An update is ``list[np.ndarray]`` (one array per shared model weight). Nothing here
imports Ray or TensorFlow; randomness is never used.
"""
from __future__ import annotations

from fedcollab.aggregation.aggregator import (  # noqa: E402  (uses the modules above)
    AggregateStep,
    Aggregator,
    OpenUpdate,
    SecureSum,
    compose,
)
from fedcollab.aggregation.errors import (
    AggregationError,
    NotEnoughUpdatesError,
    ServerOptimizerError,
    UnknownRuleError,
    UpdateRejected,
)
from fedcollab.aggregation.fedprox import proximal_gradient, proximal_term
from fedcollab.aggregation.registry import (
    INDIVIDUAL_UPDATE_RULES,
    RULES,
    SECURE_SUM_RULES,
    Rule,
    aggregate,
    options_from_spec,
    rule_needs_individual_updates,
    secure_compatibility_message,
)
from fedcollab.aggregation.rules import (
    bulyan,
    bulyan_select,
    krum,
    krum_scores,
    krum_select,
    median,
    multi_krum,
    norm_bounded_mean,
    trimmed_mean,
    weighted_mean,
)
from fedcollab.aggregation.server_optimizers import (
    DEFAULT_SERVER_LEARNING_RATES,
    SERVER_OPTIMIZERS,
    ServerOptimizer,
    ServerOptimizerName,
    ServerState,
    init_server_state,
    server_step,
    state_from_arrays,
    state_to_arrays,
)
from fedcollab.aggregation.validation import (
    check_update,
    partition_valid,
    reference_of,
    validate_update,
)
from fedcollab.arrays import global_norm

__all__ = [
    # errors
    "AggregationError", "NotEnoughUpdatesError", "ServerOptimizerError", "UnknownRuleError",
    "UpdateRejected",
    # rules
    "weighted_mean", "median", "trimmed_mean", "krum", "krum_scores", "krum_select",
    "multi_krum", "norm_bounded_mean", "bulyan", "bulyan_select", "global_norm",
    # registry
    "Rule", "RULES", "SECURE_SUM_RULES", "INDIVIDUAL_UPDATE_RULES", "aggregate",
    "options_from_spec", "rule_needs_individual_updates", "secure_compatibility_message",
    # the one seam that composes open updates with secure sums
    "Aggregator", "AggregateStep", "OpenUpdate", "SecureSum", "compose", "check_update",
    # validation
    "validate_update", "partition_valid", "reference_of",
    # server optimisers
    "ServerOptimizer", "ServerOptimizerName", "ServerState", "SERVER_OPTIMIZERS",
    "DEFAULT_SERVER_LEARNING_RATES", "init_server_state", "server_step", "state_to_arrays",
    "state_from_arrays",
    # fedprox
    "proximal_gradient", "proximal_term",
]
