"""Tests for fedcollab.data.partition: iid, dirichlet and shards partitioners."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.data.partition import dirichlet, iid, participant_indices, partition_indices, shards
from fedcollab.spec import PartitionSpec, SpecError, spec_from_dict

FAST = settings(deadline=None, max_examples=60)


def _labels(n: int = 1000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _assert_partition(parts: list[np.ndarray], num_samples: int) -> None:
    """Every index in range(num_samples) appears in exactly one part."""
    merged = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    np.testing.assert_array_equal(np.sort(merged), np.arange(num_samples))


def _label_entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mean_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([_label_entropy(labels[p]) for p in parts]))


# --------------------------------------------------------------------------- iid

def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = iid(1003, 10, np.random.default_rng(0))

    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_covers_every_index_exactly_once() -> None:
    parts = iid(1003, 10, np.random.default_rng(0))

    _assert_partition(parts, 1003)


def test_iid_same_seed_is_deterministic() -> None:
    first = iid(500, 7, np.random.default_rng(3))
    second = iid(500, 7, np.random.default_rng(3))

    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- dirichlet

def test_dirichlet_covers_every_index_exactly_once() -> None:
    labels = _labels()

    parts = dirichlet(labels, 10, 0.5, np.random.default_rng(0))

    _assert_partition(parts, len(labels))


def test_dirichlet_same_seed_gives_the_same_partition() -> None:
    labels = _labels()

    first = dirichlet(labels, 10, 0.5, np.random.default_rng(1))
    second = dirichlet(labels, 10, 0.5, np.random.default_rng(1))

    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_dirichlet_other_seed_gives_another_partition() -> None:
    labels = _labels()

    first = dirichlet(labels, 10, 0.5, np.random.default_rng(1))
    second = dirichlet(labels, 10, 0.5, np.random.default_rng(2))

    assert any(len(a) != len(b) or not np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0])
def test_dirichlet_many_participants_every_participant_is_non_empty(alpha: float) -> None:
    labels = _labels(200, 10)

    parts = dirichlet(labels, 50, alpha, np.random.default_rng(0))

    assert min(len(p) for p in parts) >= 1
    _assert_partition(parts, len(labels))


def test_dirichlet_small_alpha_has_much_lower_label_entropy_than_iid() -> None:
    labels = _labels(2000)
    iid_parts = iid(len(labels), 10, np.random.default_rng(0))

    skewed = dirichlet(labels, 10, 0.1, np.random.default_rng(0))

    assert _mean_entropy(skewed, labels) < 0.5 * _mean_entropy(iid_parts, labels)


def test_dirichlet_large_alpha_is_close_to_iid() -> None:
    labels = _labels(2000)
    iid_parts = iid(len(labels), 10, np.random.default_rng(0))

    near_iid = dirichlet(labels, 10, 100.0, np.random.default_rng(0))

    assert _mean_entropy(near_iid, labels) > 0.95 * _mean_entropy(iid_parts, labels)


# --------------------------------------------------------------------------- shards

def test_shards_covers_every_index_exactly_once() -> None:
    labels = _labels()

    parts = shards(labels, 10, 2, np.random.default_rng(0))

    _assert_partition(parts, len(labels))


def test_shards_two_per_participant_gives_few_distinct_labels() -> None:
    # 10 classes of 100 cut into 20 shards of 50: a shard holds one label (or two at a
    # class boundary), so two shards hold at most 4 labels.
    labels = np.repeat(np.arange(10), 100)

    parts = shards(labels, 10, 2, np.random.default_rng(0))

    assert max(len(np.unique(labels[p])) for p in parts) <= 2 * 2


def test_shards_label_skew_is_stronger_than_iid() -> None:
    labels = _labels(2000)
    iid_parts = iid(len(labels), 10, np.random.default_rng(0))

    sharded = shards(labels, 10, 2, np.random.default_rng(0))

    assert _mean_entropy(sharded, labels) < 0.5 * _mean_entropy(iid_parts, labels)


def test_shards_more_pieces_than_samples_every_participant_is_non_empty() -> None:
    labels = np.arange(10) % 3  # 10 samples, 10 participants x 2 shards = 20 pieces

    parts = partition_indices(labels, 10, PartitionSpec(kind="shards"),
                              np.random.default_rng(0))

    assert min(len(p) for p in parts) >= 1


# --------------------------------------------------------------------------- partition_indices

def test_partition_indices_more_participants_than_samples_raises() -> None:
    with pytest.raises(SpecError, match="11 participants but only 10 training samples"):
        partition_indices(np.zeros(10, dtype=np.int64), 11, PartitionSpec(),
                          np.random.default_rng(0))


@st.composite
def _partition_case(draw: st.DrawFn) -> tuple[np.ndarray, int, PartitionSpec]:
    num_samples = draw(st.integers(1, 300))
    classes = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    labels = np.random.default_rng(seed).integers(0, classes, size=num_samples)
    n = draw(st.integers(1, min(num_samples, 40)))
    kind = draw(st.sampled_from(["iid", "dirichlet", "shards"]))
    spec = PartitionSpec(kind=kind, alpha=draw(st.floats(0.05, 50.0)),
                         shards_per_participant=draw(st.integers(1, 4)))
    return labels, n, spec


@FAST
@given(case=_partition_case(), seed=st.integers(0, 2**16))
def test_partition_indices_any_partitioner_returns_a_disjoint_complete_partition(
        case: tuple[np.ndarray, int, PartitionSpec], seed: int) -> None:
    labels, n, spec = case

    parts = partition_indices(labels, n, spec, np.random.default_rng(seed))

    assert len(parts) == n
    _assert_partition(parts, len(labels))


# --------------------------------------------------------------------------- participant_indices

def _job(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "groups", "seed": 0,
        "participants": [
            {"name": "community", "count": 8, "partition": {"kind": "dirichlet", "alpha": 0.5}},
            {"name": "vendor", "role": "vendor", "count": 3, "data_fraction": 0.25},
            {"name": "lab", "count": 2, "data_fraction": 0.1, "partition": {"kind": "shards"}},
        ]}
    data.update(changes)
    return spec_from_dict(data)


def test_participant_indices_groups_receive_their_data_fraction() -> None:
    spec = _job()
    labels = _labels(1437)

    parts = participant_indices(spec, labels)

    vendor = sum(len(p) for p in parts[8:11])
    lab = sum(len(p) for p in parts[11:13])
    assert abs(vendor / len(labels) - 0.25) <= 0.01
    assert abs(lab / len(labels) - 0.10) <= 0.01


def test_participant_indices_are_disjoint_and_cover_the_training_set() -> None:
    spec = _job()
    labels = _labels(1437)

    parts = participant_indices(spec, labels)

    assert len(parts) == spec.total_participants
    _assert_partition(parts, len(labels))


def test_participant_indices_same_spec_is_deterministic() -> None:
    labels = _labels(1437)

    first = participant_indices(_job(), labels)
    second = participant_indices(_job(), labels)

    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_participant_indices_other_seed_differs() -> None:
    labels = _labels(1437)

    first = participant_indices(_job(seed=0), labels)
    second = participant_indices(_job(seed=1), labels)

    assert any(len(a) != len(b) or not np.array_equal(a, b) for a, b in zip(first, second))


def test_participant_indices_single_group_matches_plain_partitioner_with_seed() -> None:
    spec = spec_from_dict({"name": "one", "seed": 5,
                           "participants": [{"name": "c", "count": 4,
                                             "partition": {"kind": "dirichlet"}}]})
    labels = _labels(500)

    group = participant_indices(spec, labels)

    plain = partition_indices(labels, 4, spec.participants[0].partition,
                              np.random.default_rng(5))
    for a, b in zip(group, plain):
        np.testing.assert_array_equal(a, b)


def test_participant_indices_group_too_small_for_its_count_raises() -> None:
    spec = _job(participants=[{"name": "community", "count": 3},
                              {"name": "vendor", "role": "vendor", "count": 20,
                               "data_fraction": 0.01}])

    with pytest.raises(SpecError, match=r"participants\.1\.count: 20 participants but the "
                                        r"group holds only \d+ samples"):
        participant_indices(spec, _labels(1000))


def test_participant_indices_canary_group_holds_nothing_and_changes_no_one_elses_data() -> None:
    """The grader's canary clients are extra population members: their group gets no
    data, and every real participant's indices are what they are without it."""
    groups = [{"name": "community", "count": 5, "partition": {"kind": "dirichlet"}},
              {"name": "vendor", "role": "vendor", "count": 3, "data_fraction": 0.25}]
    plain = spec_from_dict({"name": "t", "task": {"dataset": "digits", "model": "mlp"},
                            "participants": groups})
    audited = spec_from_dict({"name": "t", "task": {"dataset": "digits", "model": "mlp"},
                              "participants": groups + [{"name": "canaries", "count": 50,
                                                         "behaviour": "canary"}]})
    labels = _labels(400)
    before = participant_indices(plain, labels)
    after = participant_indices(audited, labels)
    assert len(after) == len(before) + 50
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert all(len(p) == 0 for p in after[len(before):])
