"""Internet scale: registering participants costs nothing until they are sampled."""
from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from fedcollab.data import load_federation
from fedcollab.data.federation import PartitionedFederation, SyntheticFederation
from fedcollab.job.sampling import poisson_sample, sample_participants
from fedcollab.spec import SpecError, spec_from_dict
from fedcollab.spec.roster import Roster, roster


def _spec(count: int = 1000, **changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "scale", "seed": 3, "fraction": 0.01,
        "task": {"dataset": "synthetic", "samples_per_participant": 16, "features": 8,
                 "classes": 3},
        "participants": [{"name": "community", "count": count},
                         {"name": "skewed", "count": 50,
                          "partition": {"kind": "dirichlet", "alpha": 0.1}},
                         {"name": "shards", "count": 50,
                          "partition": {"kind": "shards", "shards_per_participant": 1}}]}
    data.update(changes)
    return spec_from_dict(data)


def test_synthetic_participant_data_is_a_function_of_seed_and_id() -> None:
    spec = _spec()
    a, b = SyntheticFederation(spec), SyntheticFederation(spec)
    x1, y1 = a.data(17)
    x2, y2 = b.data(17)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (16, 8) and x1.dtype == np.float32 and y1.dtype == np.int64
    assert not np.array_equal(a.data(18)[0], x1)
    other = SyntheticFederation(_spec(seed=4))
    assert not np.array_equal(other.data(17)[0], x1)
    assert a.max_samples() == 16 and a.num_classes == 3 and a.input_shape == (8,)
    assert np.array_equal(a.x_test, b.x_test) and set(a.y_test.tolist()) == {0, 1, 2}


def test_synthetic_partitions_skew_labels_as_their_kind_says() -> None:
    fed = SyntheticFederation(_spec())
    shards = [set(fed.data(pid)[1].tolist()) for pid in range(1050, 1100)]
    assert all(len(s) == 1 for s in shards)  # one class each
    iid = [len(set(fed.data(pid)[1].tolist())) for pid in range(50)]
    assert np.mean(iid) > 2.5  # nearly every iid participant has all three classes
    skew = [np.bincount(fed.data(pid)[1], minlength=3).max() / 16 for pid in range(1000, 1050)]
    assert np.mean(skew) > 0.8  # Dirichlet(0.1): one class dominates


def test_synthetic_data_is_learnable() -> None:
    """A nearest-centre classifier fitted on 20 participants beats chance clearly."""
    fed = SyntheticFederation(_spec())
    xs, ys = zip(*(fed.data(pid) for pid in range(20)))
    x, y = np.concatenate(xs), np.concatenate(ys)
    centres = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    guess = np.argmin(((fed.x_test[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert np.mean(guess == fed.y_test) > 0.8


def test_load_federation_partitions_a_loaded_dataset() -> None:
    spec = spec_from_dict({"name": "d", "participants": [{"name": "c", "count": 4}]})
    fed = load_federation(spec)
    assert isinstance(fed, PartitionedFederation)
    sizes = [len(fed.data(p)[1]) for p in range(4)]
    assert sum(sizes) == len(fed.dataset.y_train) and fed.max_samples() == max(sizes)


def test_synthetic_has_no_pooled_training_set() -> None:
    from fedcollab.data import load_dataset

    with pytest.raises(SpecError, match="generated per participant"):
        load_dataset(_spec().task, seed=0)


@pytest.mark.parametrize("field,value", [("samples_per_participant", 0), ("features", 0),
                                         ("classes", 1)])
def test_synthetic_fields_are_checked(field: str, value: int) -> None:
    with pytest.raises(SpecError, match=f"task.{field}"):
        _spec(task={"dataset": "synthetic", field: value})


def test_roster_is_computed_on_demand_and_matches_the_groups() -> None:
    people = roster(_spec())
    assert isinstance(people, Roster) and len(people) == 1100
    assert people[0].group_name == "community" and people[999].group == 0
    assert people[1000].group_name == "skewed" and people[-1].group_name == "shards"
    assert [p.pid for p in people[1048:1052]] == [1048, 1049, 1050, 1051]
    assert people.pids_where(name="shards") == list(range(1050, 1100))
    with pytest.raises(IndexError):
        people[1100]


def test_registering_and_sampling_a_million_costs_what_the_sample_costs() -> None:
    """Memory, not time (machines are noisy): a 1,000,000-participant roster and a 1%
    sample allocate about what 10,000 ids take, not an object per participant."""
    spec = _spec(count=1_000_000)
    tracemalloc.start()
    people = roster(spec)
    chosen = sample_participants(people, spec, round_id=1)
    poisson = poisson_sample(people, spec, np.random.default_rng(0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(chosen) == 10_000 + 1 + 1
    assert 9_000 < len(poisson) < 11_000
    assert peak < 8 * 1024 * 1024, peak  # an object per participant would be > 300 MiB


def test_pool_plan_hosts_every_participant_once_without_a_roster_walk() -> None:
    from fedcollab.cluster.pool import plan_workers

    spec = _spec(count=200_000)
    plan = plan_workers(spec, roster(spec), cluster_cpus=2)
    assert [len(p) for _, p in plan] == [100_050, 100_050]
    assert plan[0][1][0] == 0 and plan[1][1][-1] == 200_099


@pytest.mark.slow
def test_worker_materialises_only_the_participants_it_trains(tmp_path: Any) -> None:
    from fedcollab.job.run import _Driver
    from fedcollab.spec import spec_to_dict
    from fedcollab.worker.messages import RoundConfig, WorkerConfig
    from fedcollab.worker.worker import ParticipantWorker

    spec = _spec(count=50_000)
    worker = ParticipantWorker(WorkerConfig(spec_to_dict(spec), tuple(range(50_100)),
                                            str(tmp_path), 0))
    assert worker.participants == {}
    weights = _Driver.build(spec).weights
    chosen = sample_participants(roster(spec), spec, round_id=1)
    out = worker.train_round(weights, 1, chosen[:40], RoundConfig())
    assert sorted(u.pid for u in out.updates) == chosen[:40]
    assert sorted(worker.participants) == chosen[:40]
    assert all(u.num_samples == 16 for u in out.updates)
