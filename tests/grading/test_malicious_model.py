from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.grading.malicious_model import dead_weights, imprint_weights, recover_imprint


def _model(rng: np.random.Generator, inputs: int = 16, units: int = 12,
           outputs: int = 4) -> list[np.ndarray]:
    return [rng.normal(size=(inputs, units)).astype(np.float32), np.zeros(units, np.float32),
            rng.normal(size=(units, outputs)).astype(np.float32), np.zeros(outputs, np.float32)]


def _one_step_update(w: list[np.ndarray], x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """The first layer's gradient for a batch when each example's loss gradient at every
    imprint neuron is the same scalar g(x) (the outgoing weights are equal)."""
    active = (x @ w[0].astype(np.float64) + w[1]) > 0          # (n, units)
    kernel = np.einsum("ni,nu->iu", x * g[:, None], active)
    bias = (active * g[:, None]).sum(0)
    return kernel, bias


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 10))
@settings(max_examples=50, deadline=None)
def test_imprint_recovers_every_example_alone_in_its_bin(seed: int, n: int) -> None:
    """Fowl et al. 2022: with one step, an example alone in its bin comes back exactly
    (a known answer computed from the gradient's closed form)."""
    rng = np.random.default_rng(seed)
    reference = rng.uniform(size=(500, 16))
    imp = imprint_weights(_model(rng), kernel=0, bias=1, reference=reference, rng=rng)
    w = imp.weights
    assert np.all(w[2] == w[2][0])  # equal outgoing weights: the same gradient per neuron
    x = rng.uniform(size=(n, 16))
    g = rng.uniform(0.5, 1.5, size=n)
    kernel, bias = _one_step_update(w, x, g)
    cands = recover_imprint(kernel, bias, thresholds=imp.thresholds)
    m = x @ w[0][:, 0].astype(np.float64)
    bins = np.searchsorted(np.sort(imp.thresholds), m)  # bin index per example
    for i in range(n):
        alone = np.sum(bins == bins[i]) == 1 and bins[i] > 0
        if alone:
            err = np.min(np.linalg.norm(cands - x[i], axis=1)) / np.linalg.norm(x[i])
            assert err < 1e-6


def test_dead_weights_never_fire_so_their_update_is_zero() -> None:
    """Pasquini et al. 2022: the other members' share of the imprint neurons is zero, so a
    secure sum's imprint rows are the target's alone."""
    rng = np.random.default_rng(0)
    imp = imprint_weights(_model(rng), kernel=0, bias=1,
                          reference=rng.uniform(size=(200, 16)), rng=rng)
    dead = dead_weights(imp)
    x = rng.uniform(size=(50, 16))
    kernel, bias = _one_step_update(dead, x, np.ones(50))
    assert not kernel.any() and not bias.any()
    target_x = rng.uniform(size=(3, 16))
    tk, tb = _one_step_update(imp.weights, target_x, np.ones(3))
    np.testing.assert_array_equal(recover_imprint(tk + kernel, tb + bias,
                                                  thresholds=imp.thresholds),
                                  recover_imprint(tk, tb, thresholds=imp.thresholds))


def test_recover_imprint_of_zero_update_is_empty() -> None:
    assert recover_imprint(np.zeros((4, 3)), np.zeros(3), thresholds=np.arange(3.0)).shape == (0, 4)


def test_imprint_on_a_real_local_epoch_recovers_examples_passive_cannot() -> None:
    """On fedcollab's own LocalTrainer (8 SGD steps of a real epoch) the imprint recovers
    several of a participant's examples to within 10%, more than the passive per-neuron
    attack on the honest model does."""
    from fedcollab.grading.inversion import invert_per_neuron
    from tests.grading._fixtures import digits, mlp_trainer

    data = digits()
    _, trainer = mlp_trainer()
    w = trainer.get_weights()
    imp = imprint_weights(w, kernel=0, bias=1, reference=data.x_test.reshape(360, -1),
                          rng=np.random.default_rng(0))
    x, y = data.x_train[:130], data.y_train[:130]

    def recovered(cands: np.ndarray) -> int:
        c = np.clip(cands[np.all(np.isfinite(cands), axis=1)], 0, 1)
        rel = np.linalg.norm(c[:, None] - x[None], axis=-1) / np.linalg.norm(x, axis=1)
        return int(np.sum(rel.min(0) < 0.1))

    new = trainer.train(trainer.feed(imp.weights), x, y, rng=np.random.default_rng(1)).weights
    d = [a - b for a, b in zip(new, imp.weights)]
    honest = trainer.train(trainer.feed(w), x, y, rng=np.random.default_rng(1)).weights
    p = [a - b for a, b in zip(honest, w)]
    malicious = recovered(recover_imprint(d[0], d[1], thresholds=imp.thresholds))
    passive = recovered(invert_per_neuron(p[0], p[1]))
    print(f"imprint recovered {malicious} of 130, passive {passive}")
    assert malicious >= 8 and malicious > passive
