from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.grading.differencing import SumSeen, across_rounds, vendor_by_differencing


def _updates(n: int, dim: int = 50) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {pid: rng.normal(size=dim) for pid in range(n)}


def test_differencing_vendor_only_secure_is_exact() -> None:
    ups = _updates(11)
    vendor = frozenset({8, 9, 10})
    open_ = {p: u for p, u in ups.items() if p not in vendor}
    secure = [(vendor, sum(ups[p] for p in vendor))]
    truth = sum(ups[p] for p in vendor)
    result = vendor_by_differencing(open_, secure, truth, vendor)
    assert result.relative_error < 1e-6 and result.exact
    assert result.min_group_seen == 3


def test_differencing_everyone_secure_is_not_exact() -> None:
    ups = _updates(11)
    vendor = frozenset({8, 9, 10})
    everyone = frozenset(ups)
    result = vendor_by_differencing({}, [(everyone, sum(ups.values()))],
                                    sum(ups[p] for p in vendor), vendor)
    assert not result.exact and result.relative_error > 0.5
    assert result.min_group_seen == 11


def test_differencing_across_rounds_changing_membership_isolates_one() -> None:
    ups = _updates(5)
    a, b = frozenset({0, 1, 2, 3}), frozenset({0, 1, 2, 3, 4})
    result = across_rounds([(a, sum(ups[p] for p in a)), (b, sum(ups[p] for p in b))], ups)
    assert result.exact and result.min_group_seen == 1


def test_differencing_across_rounds_fixed_membership_isolates_nothing() -> None:
    ups = _updates(5)
    a = frozenset(ups)
    result = across_rounds([(a, sum(ups.values())), (a, sum(ups.values()))], ups)
    assert not result.exact and result.min_group_seen == 5


# ------------------------------------------------------------------ across changing rounds
def _seen(rounds: list[frozenset[int]], drift: float = 0.0,
          noise: float = 0.0) -> list[SumSeen]:
    """Sums over `rounds`; each participant's contribution moves by `drift` per round."""

    rng = np.random.default_rng(1)
    base = {p: rng.normal(size=40) for p in range(12)}
    step = {p: rng.normal(size=40) for p in range(12)}
    out = []
    for r, members in enumerate(rounds, start=1):
        parts = {p: base[p] + drift * r * step[p] for p in members}
        total = sum(parts.values()) + noise * rng.normal(size=40)
        out.append(SumSeen(r, members, total, parts))
    return out


def test_cross_round_dropout_isolates_the_dropped_participant_exactly() -> None:
    from fedcollab.grading.differencing import across_changing_rounds

    full, dropped = frozenset({0, 1, 2, 3}), frozenset({0, 1, 2})
    result = across_changing_rounds(_seen([full, dropped]))
    assert result.isolated == 1 and result.members == (3,)
    assert result.exact and result.relative_error is not None and result.relative_error < 1e-9
    assert result.rounds == (1, 2)


def test_cross_round_drifting_updates_are_recovered_approximately() -> None:
    from fedcollab.grading.differencing import across_changing_rounds

    full, dropped = frozenset({0, 1, 2, 3}), frozenset({0, 1, 2})
    result = across_changing_rounds(_seen([full, dropped], drift=0.05))
    # the three who stayed moved a little between rounds: close, not exact
    assert result.isolated == 1 and not result.exact
    assert result.relative_error is not None and 1e-6 < result.relative_error < 0.5


def test_cross_round_fixed_size_samples_disaggregate_individuals() -> None:
    """Lam et al. 2021: same-size samples are never nested, but enough rounds of them
    span every participant, and least squares isolates each one."""
    from fedcollab.grading.differencing import across_changing_rounds, identifiable_sets

    rng = np.random.default_rng(3)
    rounds = [frozenset(rng.choice(6, size=3, replace=False).tolist()) for _ in range(12)]
    assert len(identifiable_sets(rounds)) >= 1
    result = across_changing_rounds(_seen(rounds))
    assert result.isolated == 1 and result.exact
    # with noise on each sum (DP) the same combination is far from exact
    noisy = across_changing_rounds(_seen(rounds, noise=5.0))
    assert noisy.isolated == 1 and not noisy.exact and (noisy.relative_error or 0) > 0.1


def test_cross_round_unchanged_membership_isolates_nothing() -> None:
    from fedcollab.grading.differencing import across_changing_rounds, identifiable_sets

    group = frozenset({0, 1, 2})
    assert identifiable_sets([group] * 5) == []
    result = across_changing_rounds(_seen([group] * 5))
    assert result.isolated == 0 and result.relative_error is None and not result.exact
    assert result.to_json()["identifiable"] == 0


def test_cross_round_targets_restrict_to_sets_holding_a_target() -> None:
    from fedcollab.grading.differencing import across_changing_rounds, identifiable_sets

    full, dropped = frozenset({0, 1, 2, 3}), frozenset({0, 1, 2})
    assert identifiable_sets([full, dropped], targets=frozenset({0})) == []
    result = across_changing_rounds(_seen([full, dropped]), targets=frozenset({3}))
    assert result.members == (3,) and result.exact


def test_cross_round_targets_together_are_a_candidate() -> None:
    """The vendor's three sites always sit in the sum together: none of them alone is
    isolated, but with the community's sample size changing (Poisson sampling, as
    under DP) their aggregate is. With fixed-size community samples it is not."""
    from fedcollab.grading.differencing import across_changing_rounds

    rng = np.random.default_rng(5)
    vendor = frozenset({9, 10, 11})
    rounds = [vendor | frozenset(rng.choice(9, size=int(rng.integers(4, 7)),
                                            replace=False).tolist()) for _ in range(14)]
    result = across_changing_rounds(_seen(rounds), targets=vendor)
    assert result.members == (9, 10, 11) and result.isolated == 3 and result.exact
    fixed = [vendor | frozenset(rng.choice(9, size=4, replace=False).tolist())
             for _ in range(14)]
    assert across_changing_rounds(_seen(fixed), targets=vendor).isolated == 0


def _fedavg_view(seed: int, n_open: int, n_secure: int) -> tuple[Any, list[np.ndarray]]:
    from fedcollab.grading.replay import RoundView

    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (3,)]
    pids = list(range(n_open + n_secure))
    deltas = {p: [rng.normal(size=s).astype(np.float32) for s in shapes] for p in pids}
    weights = {p: float(rng.integers(5, 50)) for p in pids}
    view = RoundView(deltas, deltas, weights, pids[:n_open], pids[n_open:], pids[n_open:],
                     False, True)
    return view, [rng.normal(size=s) for s in shapes]


@given(seed=st.integers(0, 2**32 - 1), n_open=st.integers(0, 5), n_secure=st.integers(1, 4))
@settings(max_examples=50, deadline=None)
def test_secure_sum_read_off_the_run_is_the_vendor_sum_and_noise_is_not(
        seed: int, n_open: int, n_secure: int) -> None:
    """The vendor's sum is read off the run's FedAvg step (independent of the replay's
    secure vectors): exact on a float32 checkpoint of the true step, and no longer exact
    when the run's step differs from the replay's (e.g. the run's own DP noise)."""
    from types import SimpleNamespace

    from fedcollab.grading.replay import differencing_on_view, observed_secure_sum

    view, start = _fedavg_view(seed, n_open, n_secure)
    spec = SimpleNamespace(aggregation=SimpleNamespace(
        rule="fedavg", server_optimizer="none", server_learning_rate=None))
    total = sum(view.weights.values())
    step = [sum(view.weights[p] * view.deltas[p][j].astype(np.float64) for p in view.deltas)
            / total for j in range(2)]
    checkpoint = [(w + d).astype(np.float32) for w, d in zip(start, step)]
    shapes = [(4, 3), (3,)]
    observed = observed_secure_sum(spec, view, [w.astype(np.float32) for w in start], checkpoint)
    found = differencing_on_view(view, shapes, observed=observed)
    assert found.exact and found.cosine > 0.999
    noisy = [c + np.random.default_rng(seed).normal(0, 0.5, c.shape) for c in checkpoint]
    observed = observed_secure_sum(spec, view, [w.astype(np.float32) for w in start], noisy)
    assert not differencing_on_view(view, shapes, observed=observed).exact
    robust = SimpleNamespace(aggregation=SimpleNamespace(
        rule="median", server_optimizer="none", server_learning_rate=None))
    assert observed_secure_sum(robust, view, start, checkpoint) is None


def test_cosine_bounds_and_scale_free() -> None:
    from fedcollab.grading.differencing import cosine

    v = np.arange(1.0, 6.0)
    assert cosine(3 * v, v) == pytest.approx(1.0)
    assert cosine(-v, v) == pytest.approx(-1.0)
    assert cosine(np.zeros(5), v) == 0.0
