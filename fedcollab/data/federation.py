"""Each participant's training data, by participant id, and the held-out set.

Two kinds, behind one small interface so the driver and the workers never hold more
than they need:

* :class:`PartitionedFederation`: a loaded dataset (digits, regression, a user file)
  split among the participants by :func:`~fedcollab.data.partition.participant_indices`.
  The whole training set is in memory; a participant is a slice of it.
* :class:`SyntheticFederation` (``task.dataset: synthetic``): nothing is stored. A
  participant's samples are generated from ``(seed, pid)`` when it is sampled, so
  100,000 registered participants cost nothing until they take part, and every
  process (driver, worker, a resumed job) generates the same data for the same id.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedcollab.data.datasets import Dataset
from fedcollab.spec.roster import Roster

if TYPE_CHECKING:
    from fedcollab.spec import JobSpec

__all__ = ["Federation", "PartitionedFederation", "SyntheticFederation", "load_federation"]

#: Participants' data streams: ``default_rng([seed, _STREAM, pid])``.
_STREAM = 0x5EED
#: How far apart the class centres are, in units of the within-class std.
_SEPARATION = 1.5


class Federation:
    """Training data by participant id, and the held-out set everyone evaluates on."""

    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_test.shape[1:])

    def data(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        """Participant ``pid``'s training samples ``(x, y)``."""
        raise NotImplementedError

    def max_samples(self) -> int:
        """A public bound on any participant's sample count (secure weights' scale)."""
        raise NotImplementedError

    def warm_up_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Samples to trace the training step with before round 1."""
        raise NotImplementedError


class PartitionedFederation(Federation):
    def __init__(self, dataset: Dataset, indices: list[np.ndarray]) -> None:
        self.dataset = dataset
        self.indices = indices
        self.x_test, self.y_test = dataset.x_test, dataset.y_test
        self.num_classes = dataset.num_classes

    def data(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices[pid]
        return self.dataset.x_train[idx], self.dataset.y_train[idx]

    def max_samples(self) -> int:
        return max(len(i) for i in self.indices)

    def warm_up_data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset.x_train, self.dataset.y_train


class SyntheticFederation(Federation):
    """A Gaussian mixture: ``task.classes`` centres in ``task.features`` dimensions.

    Participant ``pid`` draws ``task.samples_per_participant`` samples from its own
    stream. Its labels follow its group's partition: ``iid`` uniform, ``dirichlet``
    class shares drawn from Dirichlet(alpha), ``shards`` ``shards_per_participant``
    classes of its own.
    """

    def __init__(self, spec: JobSpec) -> None:
        task = spec.task
        self.seed = spec.seed
        self.features, self.num_classes = task.features, task.classes
        self.per_participant = task.samples_per_participant
        rng = np.random.default_rng([spec.seed, _STREAM])
        self.centres = rng.normal(0.0, _SEPARATION, (task.classes, task.features))
        self.roster = Roster(spec)
        test = max(200, int(round(self.per_participant * task.test_fraction * 50)))
        self.x_test, self.y_test = self._draw(rng, np.full(task.classes, 1.0 / task.classes),
                                              test)

    def _draw(self, rng: np.random.Generator, shares: np.ndarray,
              n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice(self.num_classes, size=n, p=shares).astype(np.int64)
        x = self.centres[y] + rng.normal(0.0, 1.0, (n, self.features))
        return x.astype(np.float32), y

    def _shares(self, pid: int, rng: np.random.Generator) -> np.ndarray:
        partition = self.roster.groups[self.roster.group_of(pid)].partition
        k = self.num_classes
        if partition.kind == "dirichlet":
            return rng.dirichlet(np.full(k, partition.alpha))
        if partition.kind == "shards":
            own = rng.choice(k, size=min(partition.shards_per_participant, k), replace=False)
            shares = np.zeros(k)
            shares[own] = 1.0 / len(own)
            return shares
        return np.full(k, 1.0 / k)

    def data(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, _STREAM, int(pid)])
        return self._draw(rng, self._shares(int(pid), rng), self.per_participant)

    def max_samples(self) -> int:
        return self.per_participant

    def warm_up_data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_test, self.y_test


def load_federation(spec: JobSpec) -> Federation:
    """The job's data: generated per participant, or a dataset split among them.

    Raises:
        SpecError: too few samples for the participants, an unreadable file.
    """
    if spec.task.dataset == "synthetic":
        return SyntheticFederation(spec)
    from fedcollab.data.datasets import load_dataset
    from fedcollab.data.partition import participant_indices

    dataset = load_dataset(spec.task, seed=spec.seed)
    return PartitionedFederation(dataset, participant_indices(spec, dataset.y_train))

