from __future__ import annotations

import numpy as np
import pytest

from fedcollab.grading.membership import (
    attack_metrics,
    fresh_weights,
    lira_scores,
    logit_confidence,
    loss_scores,
    predictor,
    train_shadows,
    trainer_shadows,
)
from tests.grading._fixtures import digits, mlp_trainer


def test_attack_metrics_perfect_and_random_scores() -> None:
    members = np.array([1] * 500 + [0] * 500, bool)
    perfect = attack_metrics(members.astype(float), members)
    assert perfect.auc == 1.0 and perfect.tpr_at_0_1pct_fpr == 1.0
    noise = attack_metrics(np.random.default_rng(0).normal(size=1000), members)
    assert 0.4 < noise.auc < 0.6 and noise.tpr_at_1pct_fpr < 0.1


def test_logit_confidence_matches_definition() -> None:
    probs = np.array([[0.9, 0.1], [0.25, 0.75]])
    phi = logit_confidence(probs, np.array([0, 1]))
    assert phi == pytest.approx([np.log(9), np.log(3)])
    assert loss_scores(probs, np.array([0, 1])) == pytest.approx(np.log([0.9, 0.75]))


def test_lira_scores_separate_in_from_out_distributions() -> None:
    rng = np.random.default_rng(0)
    k, n = 8, 200
    inside = np.zeros((k, n), bool)
    inside[::2, :] = True
    shadow = np.where(inside, 3.0, 0.0) + rng.normal(0, 0.5, (k, n))
    member = np.arange(n) < n // 2
    target = np.where(member, 3.0, 0.0) + rng.normal(0, 0.5, n)
    assert attack_metrics(lira_scores(target, shadow, inside), member).auc > 0.95
    assert attack_metrics(lira_scores(target, shadow, inside, online=False), member).auc > 0.95


def _overfit_setup() -> tuple[object, list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    data = digits()
    _, trainer = mlp_trainer(batch_size=16, learning_rate=0.1)
    x = np.concatenate([data.x_train[:100], data.x_test[:100]])
    y = np.concatenate([data.y_train[:100], data.y_test[:100]])
    member = np.arange(200) < 100
    return trainer, trainer.get_weights(), x, y, member


def test_membership_overfitted_model_on_100_samples_auc_above_0_7() -> None:
    trainer, w0, x, y, member = _overfit_setup()
    weights = trainer.train(w0, x[member], y[member], rng=np.random.default_rng(0),
                            epochs=300).weights
    probs = predictor(trainer, weights)(x)
    loss = attack_metrics(loss_scores(probs, y), member)
    phi, inside = train_shadows(trainer_shadows(trainer, w0, epochs=300), x, y, shadows=8,
                                rng=np.random.default_rng(1))
    lira = attack_metrics(lira_scores(logit_confidence(probs, y), phi, inside), member)
    print(f"overfit: loss AUC {loss.auc:.3f}, LiRA AUC {lira.auc:.3f} "
          f"TPR@1%FPR {lira.tpr_at_1pct_fpr:.3f}")
    assert max(loss.auc, lira.auc) > 0.7


def _dp_fedavg_one_example_each(trainer: object, w0: list[np.ndarray], x: np.ndarray,
                                y: np.ndarray, *, epsilon_target: float, rounds: int,
                                q: float) -> tuple[list[np.ndarray], float]:
    """DP-FedAvg where each of the 100 members is a participant holding one example, so
    user-level DP is example-level DP; the noise and the epsilon are fedcollab.privacy's."""
    from fedcollab.privacy import central_dp_mean, epsilon, noise_multiplier_for_target

    z = noise_multiplier_for_target(target_epsilon=epsilon_target, sampling_rate=q,
                                    rounds=rounds, delta=1e-5)
    rng = np.random.default_rng(3)
    w = [np.array(a) for a in w0]
    for _ in range(rounds):
        chosen = np.flatnonzero(rng.uniform(size=len(x)) < q)
        if len(chosen) == 0:
            continue
        feed = trainer.feed(w)  # type: ignore[attr-defined]
        ups = []
        for i in chosen:
            new = trainer.train(feed, x[i:i + 1], y[i:i + 1],  # type: ignore[attr-defined]
                                rng=rng).weights
            ups.append([a - b for a, b in zip(new, w)])
        delta = central_dp_mean(ups, noise_multiplier=z, clip_norm=1.0, rng=rng,
                                denominator=q * len(x))
        w = [a + d for a, d in zip(w, delta)]
    return w, epsilon(noise_multiplier=z, sampling_rate=q, rounds=rounds, delta=1e-5)


def test_membership_dp_at_epsilon_1_auc_below_0_6() -> None:
    trainer, w0, x, y, member = _overfit_setup()
    weights, eps = _dp_fedavg_one_example_each(trainer, w0, x[member], y[member],
                                               epsilon_target=1.0, rounds=60, q=0.2)
    probs = predictor(trainer, weights)(x)
    loss = attack_metrics(loss_scores(probs, y), member)
    print(f"DP eps {eps:.2f}: loss AUC {loss.auc:.3f}")
    assert eps <= 1.0
    assert loss.auc < 0.6


def test_fresh_weights_shapes_and_zero_biases() -> None:
    out = fresh_weights([np.ones((4, 3), np.float32), np.ones(3, np.float32)],
                        np.random.default_rng(0))
    assert out[0].shape == (4, 3) and out[0].dtype == np.float32
    assert np.all(out[1] == 0) and np.abs(out[0]).max() <= np.sqrt(6 / 7)


def test_run_attacks_picks_up_a_new_registry_entry_and_keeps_the_graded_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One function plus one entry: a confidence-threshold attack registered here is run
    and reported beside the others; the graded attack stays the pre-registered one."""
    from fedcollab.grading.membership import (
        GRADED_ATTACK,
        MEMBERSHIP_ATTACKS,
        run_attacks,
    )

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    member = np.arange(400) < 200
    probs = rng.dirichlet(np.ones(3), 400)
    probs[member, labels[member]] += 2.0  # members are predicted confidently
    probs /= probs.sum(axis=1, keepdims=True)

    def confidence(p: np.ndarray, y: np.ndarray, shadows: object) -> np.ndarray:
        return p.max(axis=1)

    monkeypatch.setitem(MEMBERSHIP_ATTACKS, "max_confidence", confidence)
    got = run_attacks(probs, labels, member)  # no shadows: lira is left out
    assert set(got) == {GRADED_ATTACK, "max_confidence"}
    assert got["max_confidence"].auc > 0.75 and got[GRADED_ATTACK].auc > 0.9
    with pytest.raises(KeyError, match="graded attack"):
        run_attacks(probs, labels, member, attacks={"max_confidence": confidence})
