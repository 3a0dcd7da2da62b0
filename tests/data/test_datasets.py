"""Tests for fedcollab.data.datasets: digits, generated regression, .npz and .csv files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcollab.data.datasets import load_dataset, load_digits, make_regression
from fedcollab.spec import SpecError, TaskSpec


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _file_task(path: Path, **fields: object) -> TaskSpec:
    return TaskSpec(dataset="file", path=str(path), **fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- digits

def test_load_digits_seed_0_splits_1437_train_360_test() -> None:
    data = load_digits(test_fraction=0.2, seed=0)

    assert (len(data.y_train), len(data.y_test)) == (1437, 360)
    assert data.x_train.shape == (1437, 64)
    assert data.num_classes == 10


def test_load_digits_split_is_stratified() -> None:
    data = load_digits(test_fraction=0.2, seed=0)

    train = np.bincount(data.y_train, minlength=10)
    test = np.bincount(data.y_test, minlength=10)
    expected = (train + test) * 0.2
    assert np.all(np.abs(test - expected) <= 1)


def test_load_digits_features_are_float32_in_unit_range() -> None:
    data = load_digits(seed=0)

    assert data.x_train.dtype == np.float32
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.y_train.dtype == np.int64


def test_load_digits_same_seed_gives_the_same_split() -> None:
    first = load_digits(seed=3)
    second = load_digits(seed=3)

    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)


# --------------------------------------------------------------------------- regression

def test_make_regression_same_seed_is_deterministic() -> None:
    first = make_regression(samples=200, seed=4)
    second = make_regression(samples=200, seed=4)

    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_train, second.y_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)


def test_make_regression_other_seed_differs() -> None:
    first = make_regression(samples=200, seed=4)
    second = make_regression(samples=200, seed=5)

    assert not np.array_equal(first.x_train, second.x_train)


def test_make_regression_shapes_and_no_classes() -> None:
    data = make_regression(samples=1000, test_fraction=0.2, seed=0)

    assert data.x_train.shape == (800, 1)
    assert data.y_test.shape == (200,)
    assert data.num_classes == 0
    assert data.y_train.dtype == np.float32


def test_make_regression_zero_noise_follows_the_formula() -> None:
    data = make_regression(samples=100, noise=0.0, seed=0)

    x = data.x_train[:, 0]
    np.testing.assert_allclose(data.y_train, np.sin(3 * x) + 0.5 * x, atol=1e-5)


def test_load_dataset_regression_task_uses_samples_and_seed() -> None:
    task = TaskSpec(dataset="regression", model="regression", samples=50)

    data = load_dataset(task, seed=2)

    assert len(data.y_train) + len(data.y_test) == 50
    np.testing.assert_array_equal(data.x_train, make_regression(samples=50, seed=2).x_train)


# --------------------------------------------------------------------------- .npz files

def test_load_dataset_npz_file_loads_and_relabels_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.normal(size=(40, 3)), y=np.repeat([3, 7], 20))

    data = load_dataset(_file_task(path), seed=0)

    assert data.num_classes == 2
    assert set(np.unique(data.y_train)) == {0, 1}
    assert data.x_train.dtype == np.float32
    assert data.input_shape == (3,)
    assert len(data.y_train) + len(data.y_test) == 40


def test_load_dataset_npz_missing_y_raises_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((10, 2)), labels=np.zeros(10))

    with pytest.raises(SpecError, match=r"task\.path: data\.npz needs arrays named x and y, "
                                        r"found x, labels"):
        load_dataset(_file_task(path), seed=0)


def test_load_dataset_npz_not_a_zip_raises_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(b"this is not an npz archive")

    with pytest.raises(SpecError, match=r"task\.path: data\.npz is not a readable \.npz file"):
        load_dataset(_file_task(path), seed=0)


def test_load_dataset_npz_rows_mismatch_raises_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((10, 2)), y=np.zeros(9))

    with pytest.raises(SpecError, match="x has 10 rows and y 9"):
        load_dataset(_file_task(path), seed=0)


def test_load_dataset_npz_nan_features_raise_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    x = np.zeros((10, 2))
    x[3, 1] = np.nan
    np.savez(path, x=x, y=np.arange(10) * 0.5)

    with pytest.raises(SpecError, match="NaN or infinite"):
        load_dataset(_file_task(path), seed=0)


def test_load_dataset_npz_string_labels_load_as_classes_or_raise_spec_error(
        tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 3)),
             y=np.array(["cat", "dog"] * 20))

    try:
        data = load_dataset(_file_task(path), seed=0)
    except SpecError:
        return
    assert data.num_classes == 2


def test_load_dataset_npz_string_features_raise_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.array([["a", "b"]] * 10), y=np.arange(10) % 2)

    with pytest.raises(SpecError, match=r"task\.path"):
        load_dataset(_file_task(path), seed=0)


# --------------------------------------------------------------------------- .csv files

def test_load_dataset_csv_with_label_column_loads_as_classification(tmp_path: Path) -> None:
    rows = [[i * 0.1, i * 0.2, i % 2] for i in range(20)]
    path = _write_csv(tmp_path / "data.csv", ["a", "b", "label"], rows)

    data = load_dataset(_file_task(path, label_column="label"), seed=0)

    assert data.num_classes == 2
    assert data.input_shape == (2,)
    assert len(data.y_train) + len(data.y_test) == 20


def test_load_dataset_csv_label_column_in_the_middle_is_removed_from_x(tmp_path: Path) -> None:
    rows = [[float(i), i % 2, -float(i)] for i in range(20)]
    path = _write_csv(tmp_path / "data.csv", ["a", "label", "b"], rows)

    data = load_dataset(_file_task(path, label_column="label"), seed=0)

    x = np.concatenate([data.x_train, data.x_test])
    np.testing.assert_array_equal(x[:, 0], -x[:, 1])  # columns a and b, label gone


def test_load_dataset_csv_non_integer_labels_become_regression(tmp_path: Path) -> None:
    rows = [[float(i), i * 0.37] for i in range(20)]
    path = _write_csv(tmp_path / "data.csv", ["a", "target"], rows)

    data = load_dataset(_file_task(path, label_column="target"), seed=0)

    assert data.num_classes == 0
    assert data.y_train.dtype == np.float32
    np.testing.assert_allclose(np.sort(np.concatenate([data.y_train, data.y_test])),
                               np.arange(20) * 0.37, rtol=1e-6)


def test_load_dataset_csv_regression_model_keeps_integer_labels_as_targets(
        tmp_path: Path) -> None:
    rows = [[float(i), i] for i in range(20)]
    path = _write_csv(tmp_path / "data.csv", ["a", "target"], rows)

    data = load_dataset(_file_task(path, label_column="target", model="regression"), seed=0)

    assert data.num_classes == 0


def test_load_dataset_csv_non_numeric_raises_spec_error(tmp_path: Path) -> None:
    rows = [[1.0, "red", 0], [2.0, "blue", 1]] * 5
    path = _write_csv(tmp_path / "data.csv", ["a", "colour", "label"], rows)

    with pytest.raises(SpecError, match=r"task\.path: data\.csv: feature columns must be numeric"):
        load_dataset(_file_task(path, label_column="label"), seed=0)


def test_load_dataset_csv_unknown_label_column_names_the_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "data.csv", ["a", "b"], [[1, 0], [2, 1]])

    with pytest.raises(SpecError, match=r"task\.label_column: got 'y', expected one of a, b"):
        load_dataset(_file_task(path, label_column="y"), seed=0)


def test_load_dataset_csv_header_only_raises_spec_error(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "data.csv", ["a", "label"], [])

    with pytest.raises(SpecError, match="needs a header row and data rows"):
        load_dataset(_file_task(path, label_column="label"), seed=0)


def test_load_dataset_file_missing_raises_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"task\.path: .*gone\.npz: no such file"):
        load_dataset(_file_task(tmp_path / "gone.npz"), seed=0)


def test_load_dataset_csv_text_class_labels_are_classes(tmp_path: Path) -> None:
    rows = [[float(i), float(i % 3), ["cat", "dog"][i % 2]] for i in range(40)]
    path = _write_csv(tmp_path / "pets.csv", ["a", "b", "label"], rows)
    data = load_dataset(TaskSpec(dataset="file", path=str(path), label_column="label"), seed=0)
    assert data.num_classes == 2 and data.y_train.dtype == np.int64


def test_load_dataset_integer_targets_with_kind_regression_are_a_regression(tmp_path: Path) -> None:
    rows = [[float(i), float(i * 7 % 1000)] for i in range(60)]
    path = _write_csv(tmp_path / "prices.csv", ["a", "price"], rows)
    task = TaskSpec(dataset="file", path=str(path), label_column="price", kind="regression")
    assert load_dataset(task, seed=0).num_classes == 0


def test_load_dataset_integer_labels_with_a_singleton_class_names_task_kind(tmp_path: Path) -> None:
    rows = [[float(i), float(i)] for i in range(30)]  # 30 classes of one example each
    path = _write_csv(tmp_path / "ids.csv", ["a", "y"], rows)
    with pytest.raises(SpecError, match="set task.kind: regression"):
        load_dataset(TaskSpec(dataset="file", path=str(path), label_column="y"), seed=0)


def test_load_dataset_nan_features_with_text_labels_raise(tmp_path: Path) -> None:
    x = np.ones((20, 2), np.float32)
    x[3, 1] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.array(["a", "b"] * 10))
    with pytest.raises(SpecError, match="x has 1 NaN or infinite"):
        load_dataset(TaskSpec(dataset="file", path=str(path)), seed=0)


def test_task_kind_must_match_a_builtin_dataset() -> None:
    with pytest.raises(SpecError, match="task.kind: got 'regression', but dataset 'digits'"):
        TaskSpec(dataset="digits", kind="regression")


def _arrays(d: object) -> list[np.ndarray]:
    return [getattr(d, k) for k in ("x_train", "y_train", "x_test", "y_test")]


def test_load_digits_cached_split_is_the_same_and_skips_sklearn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load writes the split; a fresh process then reads it without
    importing scikit-learn (about a second of every job process's start-up)."""
    import subprocess
    import sys

    monkeypatch.setenv("FEDCOLLAB_CACHE_DIR", str(tmp_path))
    made = load_digits(seed=3)
    [cached] = (tmp_path / "datasets").glob("digits-sklearn*-test0.2-seed3.npz")
    code = ("import sys; from fedcollab.data.datasets import load_digits; d = load_digits(seed=3);"
            "print('sklearn' in sys.modules, d.x_train.shape, d.x_train.dtype, d.y_test.dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split()[0] == "False", out.stdout
    again = load_digits(seed=3)
    for a, b in zip(_arrays(made), _arrays(again)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    monkeypatch.setenv("FEDCOLLAB_CACHE_DIR", "off")
    for a, b in zip(_arrays(load_digits(seed=3)), _arrays(again)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert cached.exists()


def test_load_digits_damaged_cache_is_made_again(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDCOLLAB_CACHE_DIR", str(tmp_path))
    first = load_digits(seed=4)
    [cached] = (tmp_path / "datasets").glob("*seed4.npz")
    whole = cached.read_bytes()
    for damaged in (b"not a zip", whole[:len(whole) // 2]):  # garbage, a truncated zip
        cached.write_bytes(damaged)
        again = load_digits(seed=4)
        for a, b in zip(_arrays(first), _arrays(again)):
            assert np.array_equal(a, b)
        assert np.load(cached)["x_train"].shape == first.x_train.shape  # rewritten whole


def test_load_digits_unwritable_cache_still_loads(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("FEDCOLLAB_CACHE_DIR", str(blocker))
    assert load_digits(seed=5).x_train.shape[0] > 0
