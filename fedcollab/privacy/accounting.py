"""User-level (epsilon, delta) accounting for DP-FedAvg with Google's ``dp_accounting``.

Each round is a Poisson-sampled Gaussian mechanism: every participant takes part
independently with probability ``q`` (the sampling rate) and the sum of clipped
updates gets noise of std ``z * C`` (McMahan et al., ICLR 2018; Abadi et al., "Deep
Learning with Differential Privacy", CCS 2016). ``T`` rounds compose.

The default accountant is Rényi DP (Mironov, "Rényi Differential Privacy", CSF 2017;
``dp_accounting.rdp.RdpAccountant``, with its improved RDP-to-DP conversion); the
PLD accountant (``"pld"``) is tighter, especially for small ``q`` and ``delta``.

Amplification by sampling holds only if participants really are sampled at random
and the sample stays secret. A fixed cohort every round (typical cross-silo) must
use ``sampling_rate=1`` (Ponomareva et al., "How to DP-fy ML", JAIR 2023).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from fedcollab.privacy.errors import PrivacyError, UnreachableEpsilonError

if TYPE_CHECKING:  # dp_accounting is slow to import: load it only when accounting
    import dp_accounting

__all__ = [
    "AccountantKind",
    "dp_fedavg_event",
    "epsilon",
    "noise_multiplier_for_target",
    "PrivacyLedger",
]

AccountantKind = Literal["rdp", "pld"]

#: Largest noise multiplier :func:`noise_multiplier_for_target` tries.
_MAX_NOISE_MULTIPLIER = 1e4


def _check_rate(sampling_rate: float) -> None:
    if not (isinstance(sampling_rate, (int, float)) and 0 < sampling_rate <= 1):
        raise PrivacyError(f"dp accounting: got sampling_rate={sampling_rate!r}, "
                           "expected a number in (0, 1]")


def _check_rounds(rounds: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise PrivacyError(f"dp accounting: got rounds={rounds!r}, expected an integer >= 0")


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise PrivacyError(f"dp accounting: got delta={delta!r}, expected a number in (0, 1)")


def _check_z(noise_multiplier: float) -> None:
    if not (isinstance(noise_multiplier, (int, float)) and math.isfinite(noise_multiplier)
            and noise_multiplier >= 0):
        raise PrivacyError(f"dp accounting: got noise_multiplier={noise_multiplier!r}, "
                           "expected a finite number >= 0")


def _accountant(kind: AccountantKind) -> Any:
    from dp_accounting import pld, rdp

    if kind == "rdp":
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant(value_discretization_interval=1e-3)
    raise PrivacyError(f"dp accounting: got accountant={kind!r}, expected 'rdp' or 'pld'")


def dp_fedavg_event(*, noise_multiplier: float, sampling_rate: float,
                    rounds: int) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event for ``rounds`` rounds of Poisson-sampled Gaussian noise."""
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_rate,
                                            dp_accounting.GaussianDpEvent(noise_multiplier)),
        rounds)


def epsilon(*, noise_multiplier: float, sampling_rate: float, rounds: int, delta: float,
            accountant: AccountantKind = "rdp") -> float:
    """The user-level epsilon spent after ``rounds`` rounds of DP-FedAvg.

    Args:
        noise_multiplier: ``z``: noise std over clip norm (>= 0).
        sampling_rate: ``q``: each participant's chance of taking part in a round,
            in (0, 1]; 1 when every participant takes part every round.
        rounds: ``T`` (>= 0).
        delta: The target delta, in (0, 1); keep it well below 1 / participants.
        accountant: ``"rdp"`` (default) or ``"pld"``.

    Returns:
        epsilon; ``0.0`` for zero rounds and ``inf`` when ``z == 0`` (no noise, no
        privacy).

    Raises:
        PrivacyError: A value out of range.
    """
    _check_z(noise_multiplier)
    _check_rate(sampling_rate)
    _check_rounds(rounds)
    _check_delta(delta)
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = _accountant(accountant)
    acc.compose(dp_fedavg_event(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate,
                                rounds=rounds))
    return float(acc.get_epsilon(delta))


def least_noise(eps: Callable[[float], float], target: float, *, high: float = 1.0,
                ceiling: float = _MAX_NOISE_MULTIPLIER, tolerance: float = 1e-3,
                unreachable: Callable[[float], str]) -> float:
    """The least noise multiplier ``z`` (within ``tolerance``, relative) with
    ``eps(z) <= target``, for any ``eps`` that falls as ``z`` grows; bisection, on the
    safe side (the answer always meets the target). ``high`` is a first guess;
    ``unreachable(z)`` words the error when even ``z >= ceiling`` spends too much."""
    while eps(high) > target:
        if high >= ceiling:
            raise UnreachableEpsilonError(unreachable(high))
        high *= 2.0
    low = high / 2.0
    while low > 0.0 and eps(low) <= target:
        high, low = low, (low / 2.0 if low >= 2e-3 else 0.0)  # below 1e-3: eps(0) = inf
    # Invariant: eps(high) <= target < eps(low).
    while high - low > tolerance * high:
        middle = (low + high) / 2.0
        if eps(middle) <= target:
            high = middle
        else:
            low = middle
    return high


def noise_multiplier_for_target(*, target_epsilon: float, sampling_rate: float, rounds: int,
                                delta: float, accountant: AccountantKind = "rdp",
                                tolerance: float = 1e-3) -> float:
    """The smallest noise multiplier (to within ``tolerance``, relative) whose epsilon
    after ``rounds`` rounds is at most ``target_epsilon``.

    Bisection over ``z`` with the same accountant as :func:`epsilon`; the returned
    ``z`` is on the safe side: ``epsilon(z) <= target_epsilon``.

    Args:
        target_epsilon: The budget (> 0).
        sampling_rate: ``q`` in (0, 1].
        rounds: ``T`` (>= 1).
        delta: In (0, 1).
        accountant: ``"rdp"`` or ``"pld"``.
        tolerance: Relative width of the final bracket on ``z``.

    Returns:
        The noise multiplier ``z``.

    Raises:
        PrivacyError: A value out of range.
        UnreachableEpsilonError: Even ``z = 1e4`` spends more than the target (the
            accountant's epsilon floor at this delta; raise delta or the budget).
    """
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon)
            and target_epsilon > 0):
        raise PrivacyError(f"dp accounting: got target_epsilon={target_epsilon!r}, "
                           "expected a number > 0")
    _check_rounds(rounds)
    if rounds == 0:
        raise PrivacyError("dp accounting: got rounds=0; a noise multiplier for zero rounds "
                           "is meaningless (any value spends nothing)")
    if not (0 < tolerance < 1):
        raise PrivacyError(f"dp accounting: got tolerance={tolerance!r}, expected (0, 1)")

    def eps(z: float) -> float:
        return epsilon(noise_multiplier=z, sampling_rate=sampling_rate, rounds=rounds,
                       delta=delta, accountant=accountant)

    # Bracket: eps(high) <= target < eps(low). The PLD accountant is slow for tiny z,
    # so start it from the (more conservative) RDP answer instead of from below.
    if accountant == "pld":
        high = noise_multiplier_for_target(target_epsilon=target_epsilon,
                                           sampling_rate=sampling_rate, rounds=rounds,
                                           delta=delta, accountant="rdp", tolerance=tolerance)
    else:
        high = 1.0
    return least_noise(
        eps, target_epsilon, high=high, tolerance=tolerance,
        unreachable=lambda z: (
            f"target_epsilon={target_epsilon:g} is out of reach: even noise_multiplier="
            f"{z:g} spends epsilon={eps(z):.4g} over {rounds} round(s) at "
            f"sampling_rate={sampling_rate:g}, delta={delta:g}; raise the budget or delta, "
            "or run fewer rounds"))


@dataclass(frozen=True)
class PrivacyLedger:
    """An incremental accountant: the rounds spent so far, as immutable state.

    ``ledger = ledger.record(noise_multiplier=z, sampling_rate=q)`` after each round
    returns a new ledger; ``ledger.epsilon(delta=1e-5)`` is what has been spent.
    Consecutive rounds with the same ``(z, q)`` are merged, so the cost of
    :meth:`epsilon` does not grow with the number of rounds. :meth:`to_dict` /
    :meth:`from_dict` round-trip through JSON for checkpoints.

    Attributes:
        entries: ``(noise_multiplier, sampling_rate, rounds)`` runs, oldest first.
        accountant: ``"rdp"`` or ``"pld"``.
    """

    entries: tuple[tuple[float, float, int], ...] = ()
    accountant: AccountantKind = "rdp"

    def __post_init__(self) -> None:
        if self.accountant not in ("rdp", "pld"):
            raise PrivacyError(f"privacy ledger: got accountant={self.accountant!r}, "
                               "expected 'rdp' or 'pld'")
        for z, q, count in self.entries:
            _check_z(z)
            _check_rate(q)
            _check_rounds(count)

    @property
    def rounds(self) -> int:
        """How many rounds have been recorded."""
        return sum(count for _, _, count in self.entries)

    def record(self, *, noise_multiplier: float, sampling_rate: float,
               rounds: int = 1) -> PrivacyLedger:
        """A new ledger with ``rounds`` more rounds at ``(noise_multiplier, sampling_rate)``.

        Raises:
            PrivacyError: A value out of range.
        """
        _check_z(noise_multiplier)
        _check_rate(sampling_rate)
        _check_rounds(rounds)
        if rounds == 0:
            return self
        entry = (float(noise_multiplier), float(sampling_rate))
        if self.entries and self.entries[-1][:2] == entry:
            last = self.entries[-1]
            entries = self.entries[:-1] + ((last[0], last[1], last[2] + rounds),)
        else:
            entries = self.entries + ((entry[0], entry[1], rounds),)
        return PrivacyLedger(entries=entries, accountant=self.accountant)

    def epsilon(self, *, delta: float) -> float:
        """epsilon spent so far at ``delta`` (0 before any round; inf after a noiseless one).

        Raises:
            PrivacyError: ``delta`` out of range.
        """
        _check_delta(delta)
        if self.rounds == 0:
            return 0.0
        if any(z == 0 and count > 0 for z, _, count in self.entries):
            return math.inf
        import dp_accounting

        acc = _accountant(self.accountant)
        acc.compose(dp_accounting.ComposedDpEvent([
            dp_fedavg_event(noise_multiplier=z, sampling_rate=q, rounds=count)
            for z, q, count in self.entries if count > 0]))
        return float(acc.get_epsilon(delta))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: ``{"accountant": ..., "entries": [[z, q, rounds], ...]}``."""
        return {"accountant": self.accountant, "entries": [list(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyLedger:
        """Rebuild a ledger written by :meth:`to_dict`.

        Raises:
            PrivacyError: Missing keys or malformed entries.
        """
        try:
            entries = tuple((float(z), float(q), int(n)) for z, q, n in data["entries"])
            return cls(entries=entries, accountant=data.get("accountant", "rdp"))
        except (KeyError, TypeError, ValueError):
            raise PrivacyError("privacy ledger: expected {'accountant': 'rdp'|'pld', "
                               "'entries': [[noise_multiplier, sampling_rate, rounds], ...]}"
                               ) from None
