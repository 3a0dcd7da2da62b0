"""Update inversion: what a server reconstructs from the update it is shown.

Analytic recovery from a dense layer (Phong et al., "Privacy-Preserving Deep
Learning via Additively Homomorphic Encryption", IEEE TIFS 2017/2018): for a dense
layer ``z = x W + b`` trained on one example, the
gradient of column ``i`` of the kernel is ``x * dL/dz_i`` and that of the bias is
``dL/dz_i``, so ``x = dW[:, i] / db[i]`` for any neuron with ``db[i] != 0``. After
one SGD step the update is ``-lr`` times the gradient and the ratio is unchanged.
For a batch (or a sum of several participants' updates) each neuron's ratio is the
average of the inputs that activated it, weighted by their gradients; neurons that
only one example activated give that example back exactly, the others a blend. This
is the *passive* per-neuron attack on an honestly trained model (Pan et al.,
"Exploring the Security Boundary of Data Reconstruction via Neuron Exclusivity
Analysis", USENIX Security 2022: exclusively activated neurons). Fowl et al.'s
"Robbing the Fed" (ICLR 2022) is the malicious-server variant, which plants a layer
built to make such neurons; it is not what this module runs.

Gradient matching (Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019)
optimises a dummy input and soft label until their gradient matches the observed
one; it works on small batches and needs autodiff, so it takes a Keras model.

Figures: PSNR in dB over the data range, and the relative L2 error
``||x_hat - x|| / ||x||``. A reconstruction is scored against every true example
and the best match is reported: that is what an attacker who recognises an input
would get.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["InversionResult", "psnr", "relative_error", "invert_single", "invert_per_neuron",
           "score_reconstructions", "mean_image_baseline", "first_dense_indices",
           "gradient_matching", "INVERSION_ATTACKS", "InversionAttack", "GRADED_INVERSION",
           "passive_recovery"]


@dataclass(frozen=True)
class InversionResult:
    """The best reconstruction of any true example."""

    psnr_db: float
    relative_error: float
    example: int            # index of the true example best recovered
    candidates: int         # reconstructions the attack produced

    @property
    def exact(self) -> bool:
        return self.relative_error < 1e-3


def psnr(estimate: np.ndarray, truth: np.ndarray, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for a perfect reconstruction)."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / mse)


def relative_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """``||estimate - truth|| / ||truth||`` (inf when truth is zero and estimate is not)."""
    t = np.asarray(truth, np.float64).ravel()
    diff = float(np.linalg.norm(np.asarray(estimate, np.float64).ravel() - t))
    norm = float(np.linalg.norm(t))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / norm


def invert_single(kernel_update: np.ndarray, bias_update: np.ndarray) -> np.ndarray:
    """``x = dW[:, i] / db[i]`` for the neuron with the largest ``|db[i]|``.

    Args:
        kernel_update: the update of a Keras Dense kernel, shape (inputs, units).
        bias_update: the update of its bias, shape (units,).

    Returns:
        The reconstructed input, shape (inputs,). Exact for one example and one step.
    """
    kernel = np.asarray(kernel_update, np.float64)
    bias = np.asarray(bias_update, np.float64)
    i = int(np.argmax(np.abs(bias)))
    if bias[i] == 0.0:
        return np.zeros(kernel.shape[0])
    return kernel[:, i] / bias[i]


def invert_per_neuron(kernel_update: np.ndarray, bias_update: np.ndarray, *,
                      min_relative_bias: float = 1e-6) -> np.ndarray:
    """One reconstruction per neuron whose bias moved: ``dW[:, i] / db[i]``.

    Neurons whose ``|db[i]|`` is below ``min_relative_bias`` times the largest are
    skipped (a ratio of two rounding errors says nothing).

    Returns:
        Array (candidates, inputs).
    """
    kernel = np.asarray(kernel_update, np.float64)
    bias = np.asarray(bias_update, np.float64)
    top = float(np.max(np.abs(bias))) if bias.size else 0.0
    if top == 0.0:
        return np.zeros((0, kernel.shape[0]))
    keep = np.abs(bias) > min_relative_bias * top
    return (kernel[:, keep] / bias[keep]).T


def passive_recovery(kernel_update: np.ndarray, bias_update: np.ndarray) -> np.ndarray:
    """The passive analytic attack: the largest-bias neuron's ratio and every moved
    neuron's (Phong et al. 2017; Pan et al. 2022), one candidate per row."""
    return np.concatenate([invert_single(kernel_update, bias_update)[None, :],
                           invert_per_neuron(kernel_update, bias_update)])


#: An inversion attack on what the server sees of a first dense layer: ``f(kernel update
#: (features, units), bias update (units,)) -> candidate inputs (n, features)``.
InversionAttack = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: Inversion attacks by name, one function plus one entry each. The grader runs every
#: entry on every update and sum the server saw and reports each one's best
#: reconstruction; the grade is taken on :data:`GRADED_INVERSION` alone.
INVERSION_ATTACKS: dict[str, InversionAttack] = {
    "passive": passive_recovery,
}
#: The inversion attack the grade is taken on, fixed before any run.
GRADED_INVERSION = "passive"


def score_reconstructions(candidates: np.ndarray, truths: np.ndarray, *,
                          data_range: float = 1.0) -> InversionResult:
    """The best (candidate, true example) pair by relative error.

    Candidates are clipped to the data range first, as an attacker who knows it
    would do.
    """
    cands = np.clip(np.asarray(candidates, np.float64).reshape(len(candidates), -1),
                    0.0, data_range) if len(candidates) else np.zeros((0, 1))
    xs = np.asarray(truths, np.float64).reshape(len(truths), -1)
    best = (math.inf, -math.inf, 0)
    for c in cands:
        if not np.all(np.isfinite(c)):
            continue
        for j, x in enumerate(xs):
            err = relative_error(c, x)
            if err < best[0]:
                best = (err, psnr(c, x, data_range=data_range), j)
    if best[0] == math.inf:  # nothing usable: score the zero image
        zero = np.zeros_like(xs[0])
        errs = [relative_error(zero, x) for x in xs]
        j = int(np.argmin(errs))
        return InversionResult(psnr(zero, xs[j], data_range=data_range), errs[j], j, 0)
    return InversionResult(best[1], best[0], best[2], len(cands))


def mean_image_baseline(truths: np.ndarray, mean_image: np.ndarray, *,
                        data_range: float = 1.0) -> InversionResult:
    """What guessing the mean image gets: the bar an attack must beat to have learnt anything."""
    return score_reconstructions(np.asarray(mean_image)[None, :], truths,
                                 data_range=data_range)


def first_dense_indices(model: Any) -> Optional[tuple[int, int]]:
    """Indices into ``model.weights`` of the first Dense layer's (kernel, bias)
    whose input is the flattened model input, or None when the model has none."""
    import keras

    position = {id(v): i for i, v in enumerate(model.weights)}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            if len(layer.weights) < 2:
                return None
            kernel, bias = layer.weights[0], layer.weights[1]
            inputs = int(np.prod(model.inputs[0].shape[1:]))
            if kernel.shape[0] != inputs:
                return None  # a convolution sits in front: not a direct view of the input
            return position[id(kernel)], position[id(bias)]
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.Flatten,
                              keras.layers.Reshape)):
            continue
        if layer.weights:
            return None
    return None


def gradient_matching(model: Any, weights: Sequence[np.ndarray], observed: Sequence[np.ndarray],
                      *, batch: int, num_classes: int, steps: int = 300, learning_rate: float = 0.1,
                      seed: int = 0) -> np.ndarray:
    """Deep Leakage from Gradients: dummy inputs whose gradient matches `observed`.

    Args:
        model: the Keras model the gradient came from (its variables are overwritten).
        weights: the weights the gradient was taken at.
        observed: the gradient of the mean cross-entropy over the hidden batch (for an
            SGD update ``u`` with learning rate ``lr``, pass ``-u / lr``).
        batch: how many examples the attacker assumes.
        steps: Adam steps on the matching loss (Zhu et al. use L-BFGS; Adam is the
            common stable substitute, e.g. Geiping et al. 2020).

    Returns:
        Array (batch, inputs) of reconstructed inputs.
    """
    import tensorflow as tf

    for var, value in zip(model.weights, weights):
        var.assign(value)
    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(model.inputs[0].shape[1:])
    x = tf.Variable(rng.uniform(0, 1, size=shape).astype(np.float32))
    y = tf.Variable(rng.normal(size=(batch, num_classes)).astype(np.float32))
    target = [tf.constant(np.asarray(g, np.float32)) for g in observed]
    opt = tf.keras.optimizers.Adam(learning_rate=learning_rate)
    params = list(model.trainable_weights)

    @tf.function
    def step() -> Any:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                pred = model(x, training=False)
                labels = tf.nn.softmax(y)
                loss = tf.reduce_mean(tf.reduce_sum(
                    -labels * tf.math.log(tf.clip_by_value(pred, 1e-7, 1.0)), axis=-1))
            grads = inner.gradient(loss, params)
            match = tf.add_n([tf.reduce_sum(tf.square(g - t)) for g, t in zip(grads, target)])
        dx, dy = outer.gradient(match, [x, y])
        opt.apply_gradients([(dx, x), (dy, y)])
        x.assign(tf.clip_by_value(x, 0.0, 1.0))
        return match

    for _ in range(steps):
        step()
    return np.asarray(x.numpy()).reshape(batch, -1)
