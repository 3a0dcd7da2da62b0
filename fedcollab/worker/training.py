"""LocalTrainer: one compiled training function shared by many participants.

A worker hosts many logical participants but builds one Keras model. Each
participant's local training is a single call of a ``tf.function`` that loads the
given weights into the model's variables, runs the epochs over the participant's
batches in-graph, and returns the new weights: no ``model.fit`` per participant,
no retracing (shapes are dynamic in the input signature), and the trace happens
once, when the worker starts (:meth:`LocalTrainer.warm_up`).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from fedcollab.types import Weights

__all__ = ["configure_tensorflow", "LocalTrainer", "TrainResult", "OPTIMIZERS",
           "remove_autograph_files", "stock_keras",
           "enable_gpu_memory_growth", "device_info"]

#: Local optimisers by the name ``local.optimizer`` uses.
OPTIMIZERS = ("sgd", "adam")


def configure_tensorflow(*, threads: int = 1, deterministic: bool = True,
                         gpu_memory_growth: bool = True) -> None:
    """Set TF's thread pools, op determinism and GPU memory growth (call first).

    Thread pools can only be set before TF's runtime starts; a second call is a no-op.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _quiet_stderr(os.environ["TF_CPP_MIN_LOG_LEVEL"] >= "2"):
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # runtime already initialised in this process
    if gpu_memory_growth:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass
    if deterministic:
        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def _quiet_stderr(enabled: bool) -> Iterator[None]:
    """Silence file descriptor 2 while TensorFlow starts.

    TensorFlow 2.20+ prints oneDNN/CUDA-probe lines through absl before its log
    level applies; TF_CPP_MIN_LOG_LEVEL cannot hide them. Python-level errors
    still propagate as exceptions.
    """
    if not enabled:
        yield
        return
    with _STDERR_LOCK:  # two threads swapping fd 2 at once could leave it silenced
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


_STDERR_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrainResult:
    weights: Weights
    loss: float


def remove_autograph_files() -> int:
    """Delete the source files AutoGraph wrote for the functions traced so far.

    AutoGraph writes each converted function to ``/tmp/__autograph_generated_file*.py``
    and imports it; the file is removed only by an exit handler, which a worker
    killed at the end of a job never runs (a day of jobs left 9,600 files in /tmp).
    The imported code no longer needs its file once traced (only a traceback through
    it loses its source lines). Returns the files removed.
    """
    removed = 0
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) if name.startswith(_AUTOGRAPH_PREFIX) else None
        if path and os.path.basename(path).startswith(_AUTOGRAPH_PREFIX):
            try:
                os.remove(path)
                removed += 1
            except OSError:  # already gone, or not ours to remove
                pass
    return removed


_AUTOGRAPH_PREFIX = "__autograph_generated_file"


def stock_keras(model: Any) -> bool:
    """Whether ``model`` and every layer in it are Keras' own classes (no subclass of
    the user's, no ``Lambda`` wrapping the user's function): code that AutoGraph need
    not rewrite, since Keras' layers run under JAX's tracing too, where Python control
    flow over tensors cannot work."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is None:  # pragma: no cover - another Keras: assume the user's code
        return False
    for layer in flatten(include_self=True, recursive=True):
        kind = type(layer)
        if not kind.__module__.startswith("keras.") or kind.__name__ == "Lambda":
            return False
    return True


def _flat_call(concrete: Any, dtypes: Sequence[Any]) -> Optional[Callable[..., Any]]:
    """Call a traced function with its inputs as flat tensors of the traced dtypes.

    A ``ConcreteFunction``'s own call binds its arguments to the signature on every
    call (in Python: a sizeable share of a small participant's training); its
    ``_call_flat`` runs the same graph on the same tensors, so the results are the
    same to the bit. The first call of each function goes the
    checked way (its errors are the clear ones); without ``_call_flat`` (another
    TensorFlow) every call goes the checked way (None here).
    """
    import tensorflow as tf

    call_flat = getattr(concrete, "_call_flat", None)
    if call_flat is None:  # pragma: no cover - a TensorFlow without the private call
        return None

    eager = type(tf.constant(0))

    def call(*args: Any) -> Any:
        # tensors made by LocalTrainer.tensors pass as they are: a participant's data
        # is converted once, not at every call (a conversion costs most between two
        # trainings, whose working set has evicted its own)
        tensors = [a if type(a) is eager and a.dtype == d else tf.convert_to_tensor(a, dtype=d)
                   for a, d in zip(args, dtypes)]
        return call_flat(tensors, concrete.captured_inputs)
    return call


class LocalTrainer:
    """Compiled local training and evaluation for one model architecture.

    Args:
        model: an uncompiled Keras model (its variables are reused for everyone).
        classification: sparse categorical cross-entropy and accuracy if True, else MSE.
        optimizer: "sgd" or "adam"; its state is reset for every participant.
        learning_rate, batch_size, epochs: local training settings.
        proximal_mu: FedProx (Li et al. 2020) term mu/2 ||w - w_global||^2; 0 disables it.
    """

    def __init__(self, model: Any, *, classification: bool, optimizer: str = "sgd",
                 learning_rate: float = 0.1, batch_size: int = 16, epochs: int = 1,
                 proximal_mu: float = 0.0) -> None:
        import keras
        import tensorflow as tf

        self.model = model
        self.classification = classification
        self.batch_size = int(batch_size)
        self.epochs = int(epochs)
        self.proximal_mu = float(proximal_mu)
        self._variables = list(model.weights)
        self._trainable = list(model.trainable_weights)
        self._trainable_index = [next(i for i, v in enumerate(self._variables) if v is t)
                                 for t in self._trainable]
        opt_cls = keras.optimizers.SGD if optimizer == "sgd" else keras.optimizers.Adam
        self._optimizer = opt_cls(learning_rate=learning_rate)
        self._optimizer.build(self._trainable)
        # Slots and the step counter restart for every participant; the learning rate
        # is an optimizer variable too in Keras 3 and must keep its value.
        self._optimizer_state = [v for v in self._optimizer.variables
                                 if v.name != "learning_rate"]
        if classification:
            self._loss_fn = keras.losses.SparseCategoricalCrossentropy()
        else:
            self._loss_fn = keras.losses.MeanSquaredError()
        weight_specs = [tf.TensorSpec(v.shape, v.dtype) for v in self._variables]
        x_shape = (None,) + tuple(model.inputs[0].shape[1:])
        y_dtype = tf.int64 if classification else tf.float32
        # A participant's start weights wait in these variables: set once a round for
        # everyone who starts from the global weights (see _set_start), so a training
        # call passes only its data; fewer arguments to bind on every call.
        self._start = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)
                       for v in self._variables]
        self._started: list[Any] = [None] * len(self._start)
        # The loops are written as tf.while_loop, so a model of Keras' own layers is
        # traced without AutoGraph's rewrite of Keras' code (a visible part of a
        # worker's start, for the same graph); a model with a layer of the user's own
        # keeps it, as model.fit would, for Python control flow over tensors.
        autograph = not stock_keras(model)
        self._train_fn = tf.function(
            self._train_graph, reduce_retracing=True, autograph=autograph,
            input_signature=[tf.TensorSpec(x_shape, tf.float32),
                             tf.TensorSpec((None,), y_dtype),
                             tf.TensorSpec((None, None), tf.int32)])
        # one graph (the signature is fixed): call it directly, skipping the polymorphic
        # function's per-call signature matching and cache lookup. Traced at the first
        # training call (a worker's warm_up), never in a process that only evaluates
        # (the driver, whose start-up it would only slow).
        self._train_concrete: Any = None
        self._eval_fn = tf.function(
            self._eval_graph, autograph=autograph,
            input_signature=[weight_specs, tf.TensorSpec(x_shape, tf.float32),
                             tf.TensorSpec((None,), y_dtype)])
        self._eval_concrete = self._eval_fn.get_concrete_function()
        self._train_dtypes = [tf.float32, y_dtype, tf.int32]
        self._eval_dtypes = [v.dtype for v in self._variables] + [tf.float32, y_dtype]
        self._train_flat: Any = None
        self._eval_flat: Any = None

    # ------------------------------------------------------------------ graphs
    def _load(self, weights: Sequence[Any]) -> None:
        for var, value in zip(self._variables, weights):
            var.assign(value)

    def _train_graph(self, x: Any, y: Any, perms: Any) -> Any:
        import tensorflow as tf

        weights = [s.read_value() for s in self._start]
        self._load(weights)
        for var in self._optimizer_state:
            var.assign(tf.zeros_like(var))
        anchors = [weights[i] for i in self._trainable_index]
        n = tf.shape(x)[0]
        batches = (n + self.batch_size - 1) // self.batch_size

        def step(xs: Any, ys: Any, b: Any) -> Any:
            start = b * self.batch_size
            xb = xs[start:start + self.batch_size]
            yb = ys[start:start + self.batch_size]
            with tf.GradientTape() as tape:
                pred = self.model(xb, training=True)
                if not self.classification:
                    pred = tf.reshape(pred, tf.shape(yb))
                loss = self._loss_fn(yb, pred)
                if self.proximal_mu > 0:
                    loss += 0.5 * self.proximal_mu * tf.add_n(
                        [tf.reduce_sum(tf.square(v - a))
                         for v, a in zip(self._trainable, anchors)])
            grads = tape.gradient(loss, self._trainable)
            self._optimizer.apply_gradients(zip(grads, self._trainable))
            return tf.cast(loss, tf.float32)

        def epoch(e: Any, last_loss: Any) -> tuple[Any, Any]:
            xs = tf.gather(x, perms[e])
            ys = tf.gather(y, perms[e])
            _, last_loss = tf.while_loop(lambda b, _: b < batches,
                                         lambda b, _: (b + 1, step(xs, ys, b)),
                                         (tf.constant(0), last_loss))
            return e + 1, last_loss

        _, last_loss = tf.while_loop(lambda e, _: e < tf.shape(perms)[0], epoch,
                                     (tf.constant(0), tf.constant(0.0)))
        return [tf.identity(v) for v in self._variables], last_loss

    def _eval_graph(self, weights: list[Any], x: Any, y: Any) -> Any:
        import tensorflow as tf

        self._load(weights)
        pred = self.model(x, training=False)
        if self.classification:
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, pred))
            correct = tf.cast(tf.equal(tf.argmax(pred, axis=-1), y), tf.float32)
            return loss, tf.reduce_mean(correct)
        pred = tf.reshape(pred, tf.shape(y))
        return tf.reduce_mean(tf.square(pred - y)), tf.constant(float("nan"))

    # ------------------------------------------------------------------ API
    def feed(self, weights: Sequence[np.ndarray]) -> list[Any]:
        """``weights`` as tensors, to pass to many :meth:`train` calls (one conversion)."""
        import tensorflow as tf

        return [tf.convert_to_tensor(w) for w in weights]

    def tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """``(x, y)`` as the tensors :meth:`train` takes, for a participant trained in
        many rounds: converted once, not at every call."""
        import tensorflow as tf

        return (tf.convert_to_tensor(x, dtype=self._train_dtypes[0]),
                tf.convert_to_tensor(y, dtype=self._train_dtypes[1]))

    def _set_start(self, weights: Sequence[Any]) -> None:
        """Put ``weights`` in the start variables; a tensor already there (the same
        object: :meth:`feed` output reused for many participants) is not assigned again."""
        import tensorflow as tf

        for i, (var, value) in enumerate(zip(self._start, weights)):
            if value is not self._started[i]:
                var.assign(value)
                self._started[i] = value if isinstance(value, tf.Tensor) else None

    def get_weights(self) -> Weights:
        return [np.array(v.numpy()) for v in self._variables]

    def warm_up(self, x: np.ndarray, y: np.ndarray) -> None:
        """Trace both functions now, outside the round loop."""
        weights = self.get_weights()
        k = min(len(x), self.batch_size * 2)
        self.train(weights, x[:k], y[:k], rng=np.random.default_rng(0))
        self.evaluate(weights, x[:k], y[:k])
        self._load(weights)

    def train(self, weights: Sequence[Any], x: Any, y: Any, *,
              rng: np.random.Generator, epochs: Optional[int] = None) -> TrainResult:
        """Train from `weights` (arrays, or tensors from :meth:`feed`) on (x, y) (arrays,
        or tensors from :meth:`tensors`); batches are shuffled by `rng` each epoch."""
        n = len(x)
        perms = np.stack([rng.permutation(n) for _ in range(epochs or self.epochs)]) \
            .astype(np.int32)
        self._set_start(weights)
        if self._train_concrete is None:  # the first call traces, with every check
            self._train_concrete = self._train_fn.get_concrete_function()
            new_weights, loss = self._train_concrete(x, y, perms)
            self._train_flat = (_flat_call(self._train_concrete, self._train_dtypes)
                                or self._train_concrete)
        else:
            new_weights, loss = self._train_flat(x, y, perms)
        return TrainResult([w.numpy() for w in new_weights], float(loss.numpy()))

    def _eval(self, weights: Sequence[Any], x: np.ndarray, y: np.ndarray) -> Any:
        if self._eval_flat is None:  # the first call with every check
            result = self._eval_concrete(list(weights), x, y)
            self._eval_flat = (_flat_call(self._eval_concrete, self._eval_dtypes)
                               or (lambda *a: self._eval_concrete(list(a[:-2]), *a[-2:])))
            return result
        return self._eval_flat(*weights, x, y)

    def evaluate(self, weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, *,
                 chunk: int = 8192) -> tuple[float, float]:
        """(loss, accuracy) of `weights` on (x, y); accuracy is NaN for regression."""
        if len(x) <= chunk:
            loss, acc = self._eval(weights, x, y)
            return float(loss.numpy()), float(acc.numpy())
        total_loss = total_acc = 0.0
        for start in range(0, len(x), chunk):
            loss, acc = self._eval(weights, x[start:start + chunk], y[start:start + chunk])
            size = len(x[start:start + chunk])
            total_loss += float(loss.numpy()) * size
            total_acc += float(acc.numpy()) * size
        return total_loss / len(x), total_acc / len(x)


# ------------------------------------------------------------------ inside a worker
def enable_gpu_memory_growth() -> list[str]:
    """Let TensorFlow grow GPU memory on demand on every visible GPU (no-op on CPU).

    Without it, the first worker on a GPU reserves nearly all its memory and the
    other fractional workers sharing that GPU fail. Call before any TF op runs.

    Returns:
        The names of the GPUs configured (empty on a CPU-only worker).
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth can no longer change
            pass
    return [g.name for g in gpus]


def device_info() -> dict[str, Any]:
    """Where this process trains: host and TensorFlow device (the transport adds
    where that is in its own terms, e.g. Ray's node id and GPU ids)."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    device = gpus[0].name if gpus else "/device:CPU:0"
    return {"node_id": "", "host": socket.gethostname(), "device": device, "gpu_ids": []}
