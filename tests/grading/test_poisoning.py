from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.grading.poisoning import (
    BYZANTINE_ATTACKS,
    Simulation,
    apply_trigger,
    backdoor_experiment,
    byzantine_experiment,
)
from tests.grading._fixtures import digits, mlp_trainer


def _simulation(n: int = 10) -> Simulation:
    data = digits()
    _, trainer = mlp_trainer(batch_size=16, learning_rate=0.1)
    parts = [(x, y) for x, y in zip(np.array_split(data.x_train[:800], n),
                                    np.array_split(data.y_train[:800], n))]
    return Simulation(trainer, trainer.get_weights(), parts, data.x_test, data.y_test, seed=0)


def test_apply_trigger_sets_bottom_right_patch_only() -> None:
    x = np.zeros((2, 64), np.float32)
    img = apply_trigger(x).reshape(2, 8, 8)
    assert np.all(img[:, 6:, 6:] == 1.0) and img.sum() == 2 * 4
    assert np.all(x == 0)


def test_backdoor_model_replacement_fedavg_succeeds_defences_lower() -> None:
    result = backdoor_experiment(_simulation(), pretrain_rounds=5, target=0, seed=0)
    for name, row in result.items():
        print(f"backdoor {name}: success {row['success_rate']:.3f}, "
              f"main accuracy {row['main_accuracy']:.3f}")
    assert result["fedavg"]["success_rate"] > 0.8
    assert result["clean"]["success_rate"] < 0.3
    assert result["norm_bounding"]["success_rate"] < result["fedavg"]["success_rate"] - 0.3
    assert result["dp"]["success_rate"] < result["fedavg"]["success_rate"] - 0.3


def test_byzantine_sign_flip_hurts_fedavg_more_than_median() -> None:
    result = byzantine_experiment(_simulation(), rounds=4, fraction=0.3,
                                  defences=["fedavg", "median"], seed=0)
    print(result)
    assert result["fedavg"]["sign_flip"] < result["fedavg"]["baseline"] - 0.2
    assert result["median"]["sign_flip"] > result["fedavg"]["sign_flip"]
    # the graded figure is the worst of every registered attack, adaptive ones included
    for row in result.values():
        assert row["accuracy"] == min(row[a] for a in BYZANTINE_ATTACKS)


def _updates(seed: int, n: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, 2))
    return [[(base + rng.normal(0, 0.3, base.shape)).astype(np.float32),
             rng.normal(size=4).astype(np.float32)] for _ in range(n)]


def test_alie_z_follows_baruch_et_al() -> None:
    from scipy.stats import norm

    from fedcollab.grading.poisoning import alie_z

    assert alie_z(50, 12) == pytest.approx(norm.ppf(36 / 50))  # s = 26 - 12 = 14
    assert alie_z(11, 2) == pytest.approx(norm.ppf(7 / 11))
    assert alie_z(4, 3) == 0.0  # no honest majority left to hide in


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(4, 20), f=st.integers(1, 3))
@settings(max_examples=50, deadline=None)
def test_adaptive_attacks_from_the_honest_statistics(seed: int, n: int, f: int) -> None:
    """ALIE sends mean - z * std of the honest updates (recomputed here); IPM points
    against the honest mean; honest participants' updates pass untouched."""
    from fedcollab.grading.poisoning import BYZANTINE_ATTACKS, alie_z

    ups = _updates(seed, n)
    bad = list(range(f))
    rng = np.random.default_rng(0)
    alie = BYZANTINE_ATTACKS["alie"](ups, bad, rng, 4.0, 1.0)
    ipm = BYZANTINE_ATTACKS["ipm"](ups, bad, rng, 4.0, 1.0)
    honest = ups[f:]
    z = alie_z(n, f)
    for j in range(2):
        stack = np.stack([u[j] for u in honest]).astype(np.float64)
        want = stack.mean(0) - z * stack.std(0)
        np.testing.assert_allclose(alie[0][j], want, rtol=1e-5, atol=1e-5)
        mean = stack.mean(0).ravel()
        assert float(np.dot(np.asarray(ipm[0][j], np.float64).ravel(), mean)) <= 1e-9
    for i in range(f, n):
        for j in range(2):
            np.testing.assert_array_equal(alie[i][j], ups[i][j])


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(5, 20), f=st.integers(1, 3))
@settings(max_examples=50, deadline=None)
def test_fang_trim_sends_values_past_the_honest_extremes_against_their_direction(
        seed: int, n: int, f: int) -> None:
    """Fang et al. 2020: where the honest mean is positive every crafted value is at or
    below the honest minimum, elsewhere at or above the maximum; honest updates untouched."""
    from fedcollab.grading.poisoning import BYZANTINE_ATTACKS

    ups = _updates(seed, n)
    bad = list(range(f))
    sent = BYZANTINE_ATTACKS["fang_trim"](ups, bad, np.random.default_rng(seed), 4.0, 1.0)
    honest = ups[f:]
    for j in range(2):
        stack = np.stack([u[j] for u in honest]).astype(np.float64)
        mean, lo, hi = stack.mean(0), stack.min(0), stack.max(0)
        for i in bad:
            got = np.asarray(sent[i][j], np.float64)
            assert np.all(np.where(mean > 0, got <= lo + 1e-6, got >= hi - 1e-6))
        for i in range(f, n):
            np.testing.assert_array_equal(sent[i][j], ups[i][j])


def test_fang_krum_attack_is_what_krum_selects() -> None:
    """The crafted -lambda * sign(mean) is picked by Krum itself, so the aggregate moves
    against the honest direction."""
    from fedcollab.aggregation.rules import krum_select
    from fedcollab.grading.poisoning import BYZANTINE_ATTACKS, fang_krum_lambda

    rng = np.random.default_rng(3)  # non-IID-like: spread larger than the common direction
    base = rng.normal(0, 0.1, size=6)
    ups = [[(base + rng.normal(0, 0.5, 6)).astype(np.float32)] for _ in range(11)]
    bad = [0, 1, 2]
    lam = fang_krum_lambda(ups, bad)
    sent = BYZANTINE_ATTACKS["fang_krum"](ups, bad, np.random.default_rng(0), 4.0, 1.0)
    assert lam > 1e-5
    assert krum_select(sent, f=3)[0] in bad
    mean = np.mean([u[0] for u in ups[3:]], axis=0)
    chosen = np.concatenate([np.asarray(a).ravel() for a in sent[0]])
    assert float(np.dot(chosen, mean)) < 0


@given(seed=st.integers(0, 2**32 - 1), bound=st.floats(0.01, 10.0))
@settings(max_examples=50, deadline=None)
def test_constrain_and_scale_sends_exactly_the_bound(seed: int, bound: float) -> None:
    """Constrain-and-scale lands on the norm bound, so norm bounding lets it through whole."""
    from fedcollab.aggregation.rules import norm_bounded_mean
    from fedcollab.grading.poisoning import constrain_and_scale

    (delta,) = _updates(seed, 1)
    sent = constrain_and_scale(delta, bound=bound)
    norm = float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in sent)))
    assert norm == pytest.approx(bound, rel=1e-5)
    through = norm_bounded_mean([sent], [1.0], bound=bound * (1 + 1e-5))
    for a, b in zip(through, sent):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_backdoor_constrain_and_scale_near_convergence_with_durability() -> None:
    """From a converged model every defence faces both attacks; the graded figure is the
    stronger one, and success is followed over the honest rounds after the attack."""
    sim = _simulation()
    start = sim.pretrain(5)
    result = backdoor_experiment(sim, pretrain_rounds=0, start=start, durability_rounds=2,
                                 attack_rounds=2, defences=["fedavg", "norm_bounding"], seed=0)
    for name in ("fedavg", "norm_bounding"):
        row = result[name]
        assert set(row["attacks"]) == {"model_replacement", "constrain_and_scale"}
        assert row["success_rate"] == max(a["success_rate"] for a in row["attacks"].values())
        assert all(len(a["success_after"]) == 2 for a in row["attacks"].values())
    assert result["fedavg"]["worst_attack"] == "model_replacement"
    assert result["fedavg"]["success_rate"] > 0.8
    # the backdoor fades once the attacker stops, but not at once under plain FedAvg
    assert result["fedavg"]["attacks"]["model_replacement"]["success_after"][0] > 0.5
    assert len(result["clean"]["success_after"]) == 2


def test_a_backdoor_attack_is_one_function_plus_one_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered attack runs against every chosen rule for as many rounds as it sends
    something; one that sends nothing leaves the round as the clean one."""
    from fedcollab.grading import poisoning

    calls: list[int] = []

    def silent(a: poisoning.BackdoorRound) -> None:
        calls.append(a.k)
        return None

    monkeypatch.setattr(poisoning, "BACKDOOR_ATTACKS", {"silent": silent})
    result = backdoor_experiment(_simulation(), pretrain_rounds=1, defences=["fedavg"], seed=0)
    assert calls == [0]
    assert result["fedavg"]["worst_attack"] == "silent"
    assert result["fedavg"]["success_rate"] == pytest.approx(result["clean"]["success_rate"],
                                                             abs=0.02)
