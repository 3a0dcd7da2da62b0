"""Datasets: sklearn's bundled digits, generated regression data, user files.

Nothing is downloaded: digits ships inside scikit-learn, regression data is
generated from the job seed, and user data comes from a local .npz or .csv file.
Every loader returns the same stratified (classification) or shuffled split for
the same seed, so a worker can reload the data itself instead of receiving it
from the driver.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcollab.spec import SpecError, TaskSpec

__all__ = ["Dataset", "load_dataset", "load_digits", "make_regression"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split as float32 features and int64 (or float32) labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int  # 0 for regression

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int,
           stratify: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=test_fraction, random_state=seed,
            stratify=y if stratify else None)
    except ValueError as err:  # too few samples of a class to stratify, and the like
        raise SpecError(f"spec: task.test_fraction: cannot split the data: {err}") from None
    return x_tr, y_tr, x_te, y_te


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """sklearn's 8x8 digits, scaled to [0, 1], stratified split."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, y_tr, x_te, y_te = _split(x, y, test_fraction=test_fraction, seed=seed, stratify=True)
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=10)


def make_regression(*, samples: int = 1000, noise: float = 0.1, test_fraction: float = 0.2,
                    seed: int = 0) -> Dataset:
    """1-D data for the classic Keras regression example: y = sin(3x) + x/2 + noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=(samples, 1)).astype(np.float32)
    y = (np.sin(3.0 * x[:, 0]) + 0.5 * x[:, 0] + rng.normal(0.0, noise, samples))
    x_tr, y_tr, x_te, y_te = _split(x, y.astype(np.float32), test_fraction=test_fraction,
                                    seed=seed, stratify=False)
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=0)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise SpecError(f"spec: task.path: {path.name} needs arrays named x and y, "
                                f"found {', '.join(archive.files) or 'none'}")
            return np.asarray(archive["x"]), np.asarray(archive["y"])
    except (OSError, ValueError) as err:
        raise SpecError(f"spec: task.path: {path.name} is not a readable .npz file "
                        f"({err.__class__.__name__})") from None


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"spec: task.path: cannot read {path.name} ({err.__class__.__name__})") \
            from None
    if len(rows) < 2:
        raise SpecError(f"spec: task.path: {path.name} needs a header row and data rows")
    header, body = rows[0], [r for r in rows[1:] if r]
    if label_column not in header:
        raise SpecError(f"spec: task.label_column: got {label_column!r}, expected one of "
                        f"{', '.join(header)}")
    try:
        table = np.array(body, dtype=np.float64)
    except ValueError:
        raise SpecError(f"spec: task.path: {path.name} has non-numeric or ragged rows") from None
    col = header.index(label_column)
    return np.delete(table, col, axis=1), table[:, col]


def _load_file(task: TaskSpec, seed: int) -> Dataset:
    assert task.path is not None  # TaskSpec.__post_init__ guarantees it
    path = Path(task.path)
    if not path.is_file():
        raise SpecError(f"spec: task.path: {task.path}: no such file")
    if path.suffix.lower() == ".npz":
        x, y = _read_npz(path)
    else:
        x, y = _read_csv(path, task.label_column or "")
    if len(x) != len(y) or len(x) == 0:
        raise SpecError(f"spec: task.path: {path.name}: x has {len(x)} rows and y {len(y)}; "
                        "expected the same non-zero number")
    try:
        x = x.astype(np.float32)
    except (ValueError, TypeError):
        raise SpecError(f"spec: task.path: {path.name}: x must be numeric") from None
    if y.dtype.kind in "USOb":
        labels, y_idx = np.unique(y.astype(str), return_inverse=True)
        x_tr, y_tr, x_te, y_te = _split(x, y_idx.astype(np.int64), test_fraction=task.test_fraction,
                                        seed=seed, stratify=True)
        return Dataset(x_tr, y_tr, x_te, y_te, num_classes=len(labels))
    if not np.all(np.isfinite(x)):
        raise SpecError(f"spec: task.path: {path.name}: x has NaN or infinite values")
    integral = np.all(np.equal(np.mod(y, 1), 0)) if np.issubdtype(y.dtype, np.number) else False
    classification = integral and task.model != "regression"
    if classification:
        labels, y_idx = np.unique(y, return_inverse=True)
        x_tr, y_tr, x_te, y_te = _split(x, y_idx.astype(np.int64), test_fraction=task.test_fraction,
                                        seed=seed, stratify=True)
        return Dataset(x_tr, y_tr, x_te, y_te, num_classes=len(labels))
    x_tr, y_tr, x_te, y_te = _split(x, y.astype(np.float32), test_fraction=task.test_fraction,
                                    seed=seed, stratify=False)
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=0)


def load_dataset(task: TaskSpec, *, seed: int) -> Dataset:
    """Load the task's dataset and split it deterministically from `seed`."""
    if task.dataset == "digits":
        return load_digits(test_fraction=task.test_fraction, seed=seed)
    if task.dataset == "regression":
        return make_regression(samples=task.samples, noise=task.noise,
                               test_fraction=task.test_fraction, seed=seed)
    return _load_file(task, seed)
