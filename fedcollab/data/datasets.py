"""Datasets: sklearn's bundled digits, generated regression data, user files.

Nothing is downloaded: digits ships inside scikit-learn, regression data is
generated from the job seed, and user data comes from a local .npz or .csv file.
Every loader returns the same stratified (classification) or shuffled split for
the same seed, so a worker can reload the data itself instead of receiving it
from the driver.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from fedcollab.spec import SpecError, TaskSpec

__all__ = ["Dataset", "load_dataset", "load_digits", "make_regression", "DATASETS",
           "infer_kind", "MAX_AUTO_CLASSES"]


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
    """sklearn's 8x8 digits, scaled to [0, 1], stratified split.

    The split is cached on disk (:func:`_split_cache`): importing scikit-learn to
    make it again costs every process of a job (the driver's checks, each worker)
    about a CPU-second while they all start at once.
    """
    cache = _split_cache("digits", test_fraction=test_fraction, seed=seed)
    arrays = _read_split(cache) if cache is not None else None
    if arrays is None:
        from sklearn.datasets import load_digits as _load

        bunch = _load()
        x = (bunch.data / 16.0).astype(np.float32)
        y = bunch.target.astype(np.int64)
        arrays = _split(x, y, test_fraction=test_fraction, seed=seed, stratify=True)
        if cache is not None:
            _write_split(cache, arrays)
    return Dataset(*arrays, num_classes=10)


#: Where split datasets are cached: ``$FEDCOLLAB_CACHE_DIR`` (``off``: no cache),
#: else ``$XDG_CACHE_HOME/fedcollab``, else ``~/.cache/fedcollab``.
CACHE_ENV = "FEDCOLLAB_CACHE_DIR"
_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _split_cache(name: str, *, test_fraction: float, seed: int) -> Path | None:
    """The cache file of a bundled dataset's split; ``None`` when caching is off or
    scikit-learn's version is unknown. The name holds every input of the split
    (scikit-learn's version, the fraction, the seed), so a file is never stale."""
    import importlib.metadata
    import os

    setting = os.environ.get(CACHE_ENV)
    if setting == "off":
        return None
    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        return None
    root = Path(setting) if setting else (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedcollab")
    return root / "datasets" / f"{name}-sklearn{version}-test{test_fraction!r}-seed{seed}.npz"


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """A cached split, or ``None`` (missing, unreadable or damaged: make it again)."""
    import zipfile

    from fedcollab.io import load_npz

    try:
        arrays, _ = load_npz(path)
        x_tr, y_tr, x_te, y_te = (arrays[k] for k in _SPLIT_KEYS)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return x_tr, y_tr, x_te, y_te


def _write_split(path: Path, arrays: tuple[np.ndarray, ...]) -> None:
    """Cache a split atomically (concurrent writers leave one whole file); a cache
    that cannot be written (read-only home) only costs the next process the import."""
    from fedcollab.io import atomic_save_npz

    try:
        atomic_save_npz(path, dict(zip(_SPLIT_KEYS, arrays)))
    except OSError:
        pass


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
    """Numeric feature columns and the label column (numbers, or text class names)."""
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
    ragged = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if ragged:
        raise SpecError(f"spec: task.path: {path.name}: row {ragged[0]} has a different number "
                        f"of columns than the header ({len(header)})")
    col = header.index(label_column)
    labels = np.array([r[col].strip() for r in body])
    try:
        y = labels.astype(np.float64)
    except ValueError:
        y = labels  # text class names, as .npz files may hold
    features = [[v for j, v in enumerate(r) if j != col] for r in body]
    try:
        x = np.array(features, dtype=np.float64)
    except ValueError:
        raise SpecError(f"spec: task.path: {path.name}: feature columns must be numeric "
                        "(only the label column may hold text)") from None
    return x, y


def _check_finite(name: str, what: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise SpecError(f"spec: task.path: {name}: {what} has {bad} NaN or infinite value(s)")


#: Integer-valued labels with at most this many distinct values are taken as classes
#: when ``task.kind`` is ``auto`` (more distinct values: a regression target).
MAX_AUTO_CLASSES = 100


def infer_kind(y: np.ndarray, task: TaskSpec) -> str:
    """``classification`` or ``regression`` for a file's labels (see ``task.kind``).

    ``auto``: text labels are classes; with ``model: regression``, a regression; integer
    values with at most :data:`MAX_AUTO_CLASSES` distinct ones are classes; anything
    else is a regression target.
    """
    if task.kind != "auto":
        return task.kind
    if y.dtype.kind in "USOb":
        return "classification"
    if task.model == "regression":
        return "regression"
    integral = bool(np.all(np.equal(np.mod(y, 1), 0)))
    return "classification" if integral and len(np.unique(y)) <= MAX_AUTO_CLASSES \
        else "regression"


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
    _check_finite(path.name, "x", x)
    text = y.dtype.kind in "USOb"
    if not text:
        try:
            y = y.astype(np.float64)
        except (ValueError, TypeError):
            raise SpecError(f"spec: task.path: {path.name}: y must be numbers or class "
                            "names") from None
        _check_finite(path.name, "y", y)
    kind = infer_kind(y, task)
    if kind == "regression":
        if text:
            raise SpecError(f"spec: task.kind: regression needs numeric labels, but "
                            f"{path.name} has text labels")
        x_tr, y_tr, x_te, y_te = _split(x, y.astype(np.float32),
                                        test_fraction=task.test_fraction, seed=seed,
                                        stratify=False)
        return Dataset(x_tr, y_tr, x_te, y_te, num_classes=0)
    if not text and not np.all(np.equal(np.mod(y, 1), 0)):
        raise SpecError(f"spec: task.kind: classification needs class labels, but "
                        f"{path.name} has non-integer values in y; use kind: regression")
    labels, y_idx = np.unique(y.astype(str) if text else y, return_inverse=True)
    counts = np.bincount(y_idx)
    if counts.min() < 2:
        rare = labels[int(np.argmin(counts))]
        guess = "" if task.kind == "classification" else \
            (f" (task.kind auto took the {len(labels)} distinct integer values of y as "
             "classes; set task.kind: regression if y is a quantity)")
        raise SpecError(f"spec: task.path: {path.name}: class {rare!r} has only "
                        f"{int(counts.min())} example; every class needs at least 2 to "
                        f"split train and test{guess}")
    x_tr, y_tr, x_te, y_te = _split(x, y_idx.astype(np.int64), test_fraction=task.test_fraction,
                                    seed=seed, stratify=True)
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=len(labels))


def _digits(task: TaskSpec, seed: int) -> Dataset:
    return load_digits(test_fraction=task.test_fraction, seed=seed)


def _regression(task: TaskSpec, seed: int) -> Dataset:
    return make_regression(samples=task.samples, noise=task.noise,
                           test_fraction=task.test_fraction, seed=seed)


def _synthetic(task: TaskSpec, seed: int) -> Dataset:
    raise SpecError("spec: task.dataset: 'synthetic' data is generated per participant "
                    "when it is sampled (fedcollab.data.load_federation); there is no pooled "
                    "training set to load")


#: Datasets by the name ``task.dataset`` uses: ``loader(task, seed) -> Dataset``.
#: ``synthetic`` is generated per participant (:mod:`fedcollab.data.federation`).
DATASETS: Mapping[str, Callable[[TaskSpec, int], Dataset]] = MappingProxyType({
    "digits": _digits, "regression": _regression, "file": _load_file,
    "synthetic": _synthetic})


def load_dataset(task: TaskSpec, *, seed: int) -> Dataset:
    """Load the task's dataset and split it deterministically from `seed`."""
    return DATASETS[task.dataset](task, seed)
