#!/usr/bin/env python3
"""The benchmark's plain single-process reference loop (no Ray, no fedcollab runtime).

Workload (keep it exactly; others compare against it): sklearn digits, stratified
80/20 split with seed 0, Dirichlet alpha=0.5 label skew over N participants
(numpy default_rng(0)), model Input(64) -> Dense(64, relu) -> Dense(10, softmax),
SGD lr 0.1, batch 16, one local epoch, every participant every round, 20 rounds,
weighted FedAvg, evaluation on the test set after every round. One model,
``set_weights`` per participant, one TF thread, and a compiled train step:

* ``--mode step`` (the benchmark's reference, as the foundation issue defines it):
  a ``tf.function`` train step called once per batch from Python.
* ``--mode epoch``: a ``tf.function`` running the whole epoch in-graph, the
  fastest plain loop we know (fedcollab's workers use the same trick); the bench
  reports it too, so nobody mistakes a slow reference for a fast framework.

Prints one JSON object: {"clients", "rounds", "mode", "rounds_seconds", "accuracy"}.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(clients: int, rounds: int = 20, seed: int = 0, mode: str = "step") -> dict[str, float]:
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from fedcollab.data.partition import dirichlet  # the workload's partition, not the runtime

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    parts = dirichlet(y_tr, clients, 0.5, np.random.default_rng(seed))
    data = [(x_tr[p], y_tr[p]) for p in parts]

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(hidden))
    opt = keras.optimizers.SGD(learning_rate=0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_weights
    opt.build(variables)

    @tf.function(input_signature=[tf.TensorSpec((None, 64), tf.float32),
                                  tf.TensorSpec((None,), tf.int64)])
    def epoch(xs: tf.Tensor, ys: tf.Tensor) -> tf.Tensor:
        n = tf.shape(xs)[0]
        loss = tf.constant(0.0)
        for b in tf.range((n + 15) // 16):
            with tf.GradientTape() as tape:
                loss = loss_fn(ys[b * 16:(b + 1) * 16], model(xs[b * 16:(b + 1) * 16],
                                                               training=True))
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(input_signature=[tf.TensorSpec((None, 64), tf.float32),
                                  tf.TensorSpec((None,), tf.int64)])
    def step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def python_epoch(xs: np.ndarray, ys: np.ndarray) -> None:
        for b in range(0, len(xs), 16):
            step(xs[b:b + 16], ys[b:b + 16])

    train = epoch if mode == "epoch" else python_epoch

    @tf.function
    def accuracy(xs: tf.Tensor, ys: tf.Tensor) -> tf.Tensor:
        pred = tf.argmax(model(xs, training=False), axis=-1)
        return tf.reduce_mean(tf.cast(tf.equal(pred, ys), tf.float32))

    weights = model.get_weights()
    train(data[0][0], data[0][1])  # trace outside the timed loop
    accuracy(x_te, y_te)
    acc = 0.0
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        total = [np.zeros_like(w, dtype=np.float64) for w in weights]
        count = 0
        for i, (xs, ys) in enumerate(data):
            model.set_weights(weights)
            perm = np.random.default_rng([seed, r, i]).permutation(len(xs))
            train(xs[perm], ys[perm])
            for t, new, old in zip(total, model.get_weights(), weights):
                t += len(xs) * (new - old)
            count += len(xs)
        weights = [w + (t / count).astype(w.dtype) for w, t in zip(weights, total)]
        model.set_weights(weights)
        acc = float(accuracy(x_te, y_te))
    seconds = time.perf_counter() - start
    return {"clients": clients, "rounds": rounds, "mode": mode, "rounds_seconds": seconds,
            "accuracy": acc}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--mode", choices=("step", "epoch"), default="step")
    args = parser.parse_args()
    print(json.dumps(run(args.clients, args.rounds, mode=args.mode)))
