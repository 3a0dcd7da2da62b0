"""Datasets and partitioners (no downloads; deterministic from the job seed)."""
from fedcollab.data.datasets import Dataset, load_dataset, load_digits, make_regression
from fedcollab.data.federation import Federation, load_federation
from fedcollab.data.partition import (
                                      dirichlet,
                                      iid,
                                      participant_indices,
                                      partition_indices,
                                      shards,
                                      split_among_groups,
)

__all__ = ["Dataset", "Federation", "load_federation", "load_dataset", "load_digits",
           "make_regression", "dirichlet", "iid",
           "participant_indices", "partition_indices", "shards", "split_among_groups"]
