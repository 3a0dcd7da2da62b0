"""LocalTrainer: a participant's local training and the held-out evaluation."""
from __future__ import annotations

import numpy as np

from fedcollab.worker.models import build_model
from fedcollab.worker.training import LocalTrainer, configure_tensorflow, stock_keras


def _trainer() -> tuple[LocalTrainer, list[np.ndarray], np.ndarray, np.ndarray]:
    configure_tensorflow(threads=1, deterministic=True)
    model = build_model("mlp", input_shape=(64,), num_classes=10, seed=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=40).astype(np.int64)
    trainer = LocalTrainer(model, classification=True, batch_size=8)
    return trainer, [np.array(w) for w in model.get_weights()], x, y


def test_fast_calls_after_the_first_give_the_checked_calls_results_to_the_bit() -> None:
    """The first call of each graph goes through the signature's checks; later ones
    pass flat tensors straight to the same graph: same weights, loss and metrics."""
    trainer, weights, x, y = _trainer()
    first = trainer.train(weights, x, y, rng=np.random.default_rng(7))   # checked
    assert trainer._train_flat is not None
    again = trainer.train(weights, x, y, rng=np.random.default_rng(7))   # flat
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, again.weights))
    assert first.loss == again.loss
    assert not all(np.array_equal(a, b) for a, b in zip(first.weights, weights))  # it trained
    feed = trainer.feed(weights)  # tensors (a worker's round) train the same as arrays
    from_feed = trainer.train(feed, x, y, rng=np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, from_feed.weights))
    tx, ty = trainer.tensors(x, y)  # a participant's data converted once, for every round
    from_tensors = trainer.train(feed, tx, ty, rng=np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, from_tensors.weights))
    assert first.loss == from_tensors.loss
    wrong = trainer.tensors(x, y.astype(np.int32))  # still the trainer's dtypes
    assert [t.dtype.name for t in wrong] == ["float32", "int64"]

    checked = trainer.evaluate(first.weights, x, y)
    flat = trainer.evaluate(first.weights, x, y)
    assert checked == flat and 0.0 <= flat[1] <= 1.0
    chunked = trainer.evaluate(first.weights, x, y, chunk=16)   # three chunks, weighted
    assert np.isclose(chunked[0], flat[0], rtol=1e-6) and np.isclose(chunked[1], flat[1])


def test_models_of_keras_own_layers_trace_without_autograph_and_others_with_it() -> None:
    """The training loops are written as tf.while_loop: a model of Keras' own layers is
    traced as it is (no AutoGraph rewrite: 0.3-0.4 s of a worker's start); a model with a
    layer of the user's own keeps AutoGraph, and both train."""
    configure_tensorflow(threads=1, deterministic=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 64)).astype(np.float32)
    y = (np.arange(20) % 10).astype(np.int64)
    for name, stock in (("mlp", True), ("cnn", True),
                        ("tests.user_models:custom_layer", False)):
        shape = (8, 8, 1) if name == "cnn" else (64,)
        model = build_model(name, input_shape=shape, num_classes=10, seed=1)
        assert stock_keras(model) is stock
        trainer = LocalTrainer(model, classification=True, batch_size=8, epochs=2)
        assert trainer._train_fn._autograph is not stock
        start = [np.array(w) for w in model.get_weights()]
        result = trainer.train(start, x.reshape((-1, *shape)), y, rng=np.random.default_rng(0))
        assert np.isfinite(result.loss)
        assert not all(np.array_equal(a, b) for a, b in zip(start, result.weights))
