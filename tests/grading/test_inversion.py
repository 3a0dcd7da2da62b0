from __future__ import annotations

import math

import numpy as np
import pytest

from fedcollab.grading.inversion import (
    first_dense_indices,
    gradient_matching,
    invert_per_neuron,
    invert_single,
    mean_image_baseline,
    psnr,
    relative_error,
    score_reconstructions,
)
from tests.grading._fixtures import digits, mlp_trainer

Updates = list[list[np.ndarray]]


def _single_example_updates(count: int) -> tuple[Updates, np.ndarray, tuple[int, int],
                                                 list[np.ndarray]]:
    data = digits()
    model, trainer = mlp_trainer(batch_size=1)
    w0 = trainer.get_weights()
    ups = []
    for i in range(count):
        new = trainer.train(w0, data.x_train[i:i + 1], data.y_train[i:i + 1],
                            rng=np.random.default_rng(0)).weights
        ups.append([a - b for a, b in zip(new, w0)])
    idx = first_dense_indices(model)
    assert idx is not None
    return ups, data.x_train[:count], idx, w0


def test_psnr_and_relative_error_known_values() -> None:
    x = np.ones(4)
    assert psnr(x, x) == math.inf
    assert psnr(np.zeros(4), x) == pytest.approx(0.0)
    assert relative_error(2 * x, x) == pytest.approx(1.0)


def test_invert_single_open_update_recovers_input_exactly() -> None:
    ups, xs, (k, b), _ = _single_example_updates(1)
    result = score_reconstructions(invert_single(ups[0][k], ups[0][b])[None], xs)
    assert result.relative_error < 1e-3
    assert result.exact


def test_invert_single_secure_sum_of_three_no_better_than_mean_image() -> None:
    ups, xs, (k, b), _ = _single_example_updates(3)
    total = [sum(u[j] for u in ups) for j in range(len(ups[0]))]
    attack = score_reconstructions(invert_single(total[k], total[b])[None], xs)
    baseline = mean_image_baseline(xs, xs.mean(axis=0))
    print(f"sum of 3: attack rel err {attack.relative_error:.3f} psnr {attack.psnr_db:.1f} dB; "
          f"mean image rel err {baseline.relative_error:.3f} psnr {baseline.psnr_db:.1f} dB")
    assert not attack.exact
    assert attack.relative_error >= 0.9 * baseline.relative_error


def test_invert_per_neuron_separates_single_example_updates_inside_a_sum() -> None:
    # Fowl et al. 2022 / Kariyappa et al. 2023: neurons only one example activated give
    # that example back even from a sum, so a secure sum of one-example updates leaks.
    ups, xs, (k, b), _ = _single_example_updates(3)
    total = [sum(u[j] for u in ups) for j in range(len(ups[0]))]
    result = score_reconstructions(invert_per_neuron(total[k], total[b]), xs)
    assert result.candidates > 1
    assert result.exact


def test_invert_single_zero_bias_gives_zero_image() -> None:
    assert np.all(invert_single(np.ones((3, 2)), np.zeros(2)) == 0)
    assert invert_per_neuron(np.ones((3, 2)), np.zeros(2)).shape == (0, 3)


def test_first_dense_indices_cnn_has_no_direct_dense_view() -> None:
    from fedcollab.worker.models import build_model

    cnn = build_model("cnn", input_shape=(64,), num_classes=10, seed=0)
    assert first_dense_indices(cnn) is None


def test_gradient_matching_beats_random_guess_on_one_example() -> None:
    ups, xs, _, w0 = _single_example_updates(1)
    model, _ = mlp_trainer(batch_size=1)
    observed = [-u / 0.1 for u in ups[0]]
    recon = gradient_matching(model, w0, observed, batch=1, num_classes=10, steps=150,
                              learning_rate=0.05, seed=0)
    attack = score_reconstructions(recon, xs)
    guess = score_reconstructions(np.random.default_rng(1).uniform(0, 1, (1, 64)), xs)
    print(f"DLG rel err {attack.relative_error:.3f} vs random {guess.relative_error:.3f}")
    assert attack.relative_error < guess.relative_error


def test_inversion_on_view_runs_a_new_registry_entry_beside_the_graded_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One function plus one entry: an attack that only guesses the mean input is run on
    every update the server saw and reported under ``by_attack``; the grade's figures
    stay the pre-registered passive attack's (an open one-example update: exact)."""
    from fedcollab.grading.inversion import GRADED_INVERSION, INVERSION_ATTACKS
    from fedcollab.grading.replay import RoundView, inversion_on_view

    ups, xs, (k, b), _ = _single_example_updates(2)
    flat = xs.reshape(len(xs), -1)
    mean = flat.mean(axis=0)

    def mean_guess(kern: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return mean[None, :]

    monkeypatch.setitem(INVERSION_ATTACKS, "mean_guess", mean_guess)
    deltas = {p: list(u) for p, u in enumerate(ups)}
    view = RoundView(deltas, deltas, {0: 1.0, 1: 1.0}, [0, 1], [], [], False, True)
    parts = [(flat[i:i + 1], np.zeros(1)) for i in range(2)]
    row = inversion_on_view(view, (k, b), parts, mean, parties={"community": [0, 1]})
    assert row["attack"] == GRADED_INVERSION and row["exact"] is True
    assert set(row["by_attack"]) == {GRADED_INVERSION, "mean_guess"}
    assert row["by_attack"]["mean_guess"]["gain_db"] < 1.0  # the mean learns nothing
    assert row["parties"]["community"]["exact"] is True
