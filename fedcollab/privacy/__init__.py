"""User-level differential privacy for federated rounds: clipping, Gaussian noise
(central, distributed or local), adaptive clipping and epsilon accounting.

Pure numpy plus Google's ``dp_accounting``; randomness always comes in as a
``np.random.Generator``, except the distributed discrete Gaussian's noise, sampled
exactly from the OS's CSPRNG (:mod:`~fedcollab.privacy.discrete`,
:mod:`~fedcollab.privacy.ddg`, accounted by :mod:`~fedcollab.privacy.ddg_accounting`).
The settings are :class:`fedcollab.spec.DpSpec` (the
``privacy.dp`` section, validated there), the only definition of them. McMahan
et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
"""
from __future__ import annotations

from fedcollab.privacy.accounting import (
    AccountantKind,
    PrivacyLedger,
    dp_fedavg_event,
    epsilon,
    noise_multiplier_for_target,
)
from fedcollab.privacy.adaptive import (
    adaptive_clip_step,
    default_count_noise_std,
    update_noise_multiplier,
)
from fedcollab.privacy.clipping import clip_update
from fedcollab.privacy.ddg_accounting import DdgLedger, ddg_epsilon
from fedcollab.privacy.errors import PrivacyError, UnreachableEpsilonError
from fedcollab.privacy.noise import (
    DDG_MODE,
    DP_MODES,
    DpMode,
    add_central_noise,
    add_noise,
    aggregate_noise_std,
    central_dp_mean,
    gaussian_noise_like,
    noise_std_for,
    privatize_update,
)

__all__ = [
    "PrivacyError", "UnreachableEpsilonError",
    "DpMode", "DP_MODES", "DDG_MODE",
    "clip_update", "gaussian_noise_like", "add_noise", "noise_std_for", "aggregate_noise_std",
    "privatize_update", "add_central_noise", "central_dp_mean",
    "AccountantKind", "dp_fedavg_event", "epsilon", "noise_multiplier_for_target",
    "PrivacyLedger", "DdgLedger", "ddg_epsilon",
    "adaptive_clip_step", "update_noise_multiplier", "default_count_noise_std",
]
