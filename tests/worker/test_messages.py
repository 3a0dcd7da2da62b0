"""RoundOutput travels from a worker to the driver with its updates packed in one buffer."""
from __future__ import annotations

import pickle

import numpy as np

from fedcollab.types import Update
from fedcollab.worker.messages import RoundOutput


def _same_entry(sent: object, got: object) -> bool:
    if isinstance(sent, np.ndarray):
        return (type(got) is np.ndarray and got.dtype == sent.dtype and got.shape == sent.shape
                and np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(sent).tobytes())
    return type(got) is type(sent) and got == sent


def test_updates_arrive_with_the_values_shapes_and_dtypes_sent() -> None:
    """Float32 arrays come back as views of one buffer; everything else (a private
    None, an array of another dtype or byte order, what a misbehaving participant
    sent instead of an array) arrives as it was sent, for the server to judge."""
    rng = np.random.default_rng(0)
    updates = [
        Update(1, [rng.standard_normal((4, 3)).astype(np.float32), None,
                   np.ones((), np.float32), np.zeros((0, 2), np.float32)], 5, 0.5, 1.5),
        Update(2, [rng.standard_normal((4, 3)), "not an array",
                   rng.standard_normal((3, 4)).astype(np.float32).T,  # not contiguous
                   np.array([1.0, np.nan, np.inf], ">f4")], 7, 0.1, 0.0, True),
        Update(3, [], 1, 0.0),
    ]
    out = RoundOutput(updates, {9: b"masked"}, {8: "why"}, 3, [4], {1: 0.1}, {1: 0})
    back = pickle.loads(pickle.dumps(out, protocol=5))
    assert (back.masked, back.failed, back.precomputed, back.dropped, back.seconds,
            back.worker_of) == ({9: b"masked"}, {8: "why"}, 3, [4], {1: 0.1}, {1: 0})
    assert len(back.updates) == len(updates)
    for sent, got in zip(updates, back.updates):
        assert (got.pid, got.num_samples, got.loss, got.norm, got.clip_bit) == \
            (sent.pid, sent.num_samples, sent.loss, sent.norm, sent.clip_bit)
        assert len(got.delta) == len(sent.delta)
        assert all(_same_entry(s, g) for s, g in zip(sent.delta, got.delta))
    first, second = back.updates[0].delta[0], back.updates[1].delta[2]
    assert first.base is not None and first.base is second.base  # one buffer
