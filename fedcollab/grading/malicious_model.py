"""A malicious server's model: imprint neurons (Fowl et al.) and model inconsistency
(Pasquini et al.), pure functions over weights and updates.

* **Imprint** ("Robbing the Fed", Fowl et al., ICLR 2022): the server rewrites the first
  dense layer so that neuron ``i`` computes ``relu(v . x - q_i)``, one measurement ``v``
  with thresholds ``q_1 < q_2 < ...`` at quantiles of the measurement over data the
  server holds, and gives every such neuron the same outgoing weights, so the loss
  gradient reaching each is the same. Neuron ``i`` then fires for exactly the examples
  whose measurement exceeds ``q_i``; the difference of two neighbouring neurons' updates
  is the sum over the examples in one bin, and a bin holding one example gives it back:
  ``x = (dW_i - dW_{i+1}) / (db_i - db_{i+1})``. It works on a sum of updates too (the
  bins then hold everyone's examples).
* **Model inconsistency** (Pasquini, Francati, Ateniese, "Eluding Secure Aggregation in
  Federated Learning via Model Inconsistency", CCS 2022): the server sends the imprint
  model to one target and every other member of the secure sum a model whose imprint
  neurons never fire (bias far below any input's measurement), so their share of those
  neurons is exactly zero and the secure sum's imprint rows are the target's alone.
  Secure aggregation does not stop it unless the participants check that they all
  received the same model.

The participants' real local training (several SGD steps) moves the thresholds and the
outgoing weights a little between steps, so the recovery is approximate: the grader
reports how close it gets, not the ideal one-step figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedcollab.types import Weights

__all__ = ["Imprint", "imprint_weights", "dead_weights", "recover_imprint"]

#: the imprint's outgoing weight and measurement scales: small enough that the few SGD
#: steps of a local epoch move the bins and the outgoing weights only a little
OUTGOING_SCALE = 0.05
MEASUREMENT_SCALE = 0.05
DEAD_BIAS = -1e4


@dataclass(frozen=True)
class Imprint:
    """The crafted weights and where the imprint sits in them."""

    weights: Weights
    kernel: int        # index of the first dense layer's kernel in ``weights``
    bias: int          # and of its bias
    thresholds: np.ndarray  # one per neuron, in the layer's order


def imprint_weights(weights: Sequence[np.ndarray], *, kernel: int, bias: int,
                    reference: np.ndarray, rng: np.random.Generator) -> Imprint:
    """The server's imprint model from the global ``weights``.

    Args:
        weights: the global model; ``weights[kernel]`` is a Dense kernel (inputs, units)
            on the flat input followed by a ReLU, ``weights[bias]`` its bias, and
            ``weights[bias + 1]`` the next dense layer's kernel (units, outputs).
        reference: inputs the server holds (e.g. public data), flat (n, inputs): the
            thresholds are the measurement's quantiles over them.
        rng: draws the measurement direction and the shared outgoing weights.
    """
    out = [np.array(w, copy=True) for w in weights]
    inputs, units = out[kernel].shape
    nxt = bias + 1
    if nxt >= len(out) or out[nxt].ndim != 2 or out[nxt].shape[0] != units:
        raise ValueError("imprint needs a dense layer after the first one "
                         f"(got shape {out[nxt].shape if nxt < len(out) else None})")
    v = np.abs(rng.normal(size=inputs))  # a positive direction: brightness-like
    v = v / np.linalg.norm(v) * MEASUREMENT_SCALE
    m = np.asarray(reference, np.float64).reshape(len(reference), -1) @ v
    q = np.asarray(np.quantile(m, (np.arange(units) + 0.5) / units), np.float64)
    out[kernel] = np.tile(v[:, None], (1, units)).astype(out[kernel].dtype)
    out[bias] = (-q).astype(out[bias].dtype)
    shared = np.asarray(rng.normal(size=out[nxt].shape[1]), np.float64) * OUTGOING_SCALE
    out[nxt] = np.tile(shared[None, :], (units, 1)).astype(out[nxt].dtype)
    return Imprint(out, kernel, bias, q)


def dead_weights(imprint: Imprint) -> Weights:
    """The model inconsistency's second model: the imprint with every imprint neuron's
    bias far below any measurement, so those neurons never fire (and their updates are
    exactly zero) for the participants who receive it."""
    out = [np.array(w, copy=True) for w in imprint.weights]
    out[imprint.bias] = np.full_like(out[imprint.bias], DEAD_BIAS)
    return out


def recover_imprint(kernel_update: np.ndarray, bias_update: np.ndarray, *,
                    thresholds: np.ndarray, min_relative_bias: float = 1e-6) -> np.ndarray:
    """One reconstruction per bin: ``(dW_i - dW_{i+1}) / (db_i - db_{i+1})`` over the
    neurons in threshold order (the last neuron's bin alone), skipping bins whose bias
    difference is below ``min_relative_bias`` of the largest (empty bins).

    Returns:
        Array (candidates, inputs).
    """
    order = np.argsort(np.asarray(thresholds), kind="stable")  # ascending thresholds
    k = np.asarray(kernel_update, np.float64)[:, order]
    b = np.asarray(bias_update, np.float64)[order]
    dk = np.concatenate([k[:, :-1] - k[:, 1:], k[:, -1:]], axis=1)
    db = np.concatenate([b[:-1] - b[1:], b[-1:]])
    top = float(np.max(np.abs(db))) if db.size else 0.0
    if top == 0.0:
        return np.zeros((0, k.shape[0]))
    keep = np.abs(db) > min_relative_bias * top
    return (dk[:, keep] / db[keep]).T
