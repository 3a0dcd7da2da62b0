"""Hostile CoordinatorFrame bytes for the fuzzers: byte mutations of valid frames,
random bytes, oversized fields and pickle payloads inside bytes fields.

Deterministic from a seed (``random.Random``), so a failure names the frame index
that found it.
"""
from __future__ import annotations

import functools
import hashlib
import pickle
import random
from typing import Iterator, Sequence

from fedcollab._proto.fedcollab.v1 import silo_pb2
from fedcollab.silo.limits import MAX_LAYERS, MAX_MEMBERS, MAX_NAME

from .conftest import MODEL
from .malicious import offer_frame, roster_frame, start_frame, unmask_frame

KINDS = ("mutated", "random", "oversized", "pickle", "fields")


class _Evil:
    """Unpickling this would run code: it must never be unpickled."""

    def __reduce__(self) -> tuple:
        return (print, ("the gateway unpickled a coordinator's bytes",))


PICKLES = (pickle.dumps(_Evil()), pickle.dumps({"weights": [1.0] * 8}, protocol=0),
           pickle.dumps(("plaintext", b"\x00" * 64), protocol=5))


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def valid_frames(ders: Sequence[bytes]) -> list[bytes]:
    """One well-formed frame of each kind (the seeds that mutations start from)."""
    members = [(f"m{i}", der, False) for i, der in enumerate(ders)] + [("sim", b"", True)]
    frames = [
        offer_frame(model=MODEL),
        offer_frame(model=_h("other"), job="job-2"),
        start_frame(1, model_hash=_h("m1"), deadline=4e9),
        roster_frame(1, members),
        unmask_frame(1, [m[0] for m in members[:-1]], ["sim"]),
        silo_pb2.CoordinatorFrame(sender="coordinator", secagg=silo_pb2.SecAggMessage(
            job_id="job-1", round_id=1, global_model_sha256=_h("m1"), payload=b"FCSA" * 16)),
        silo_pb2.CoordinatorFrame(sender="coordinator", abort=silo_pb2.Abort(
            job_id="job-1", round_id=1, reason="x")),
        silo_pb2.CoordinatorFrame(sender="coordinator", welcome=silo_pb2.Welcome(
            coordinator="coordinator")),
    ]
    for seq, frame in enumerate(frames, start=2):
        frame.seq = seq
    return [f.SerializeToString() for f in frames]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:                       # flip bits
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1 and out:                     # set a byte to an edge value
            out[rng.randrange(len(out))] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
        elif op == 2:                             # insert random bytes
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and out:                     # delete a run
            del out[at:at + rng.randint(1, 16)]
        elif op == 4:                             # truncate
            del out[at:]
        else:                                     # duplicate a chunk
            chunk = out[at:at + rng.randint(1, 64)]
            out[at:at] = chunk
    return bytes(out)


def _oversized(rng: random.Random) -> bytes:
    return _oversized_variant(rng.randrange(7), rng.randrange(3))


@functools.lru_cache(maxsize=None)
def _oversized_variant(which: int, size: int) -> bytes:
    """The oversized frames are built once each (a 10,001-member roster takes a while)."""
    long = "x" * (MAX_NAME + 1, 4096, 65536)[size]
    if which == 0:
        return offer_frame(model=MODEL, job=long).SerializeToString()
    if which == 1:
        return offer_frame(model=MODEL, layers=[f"l{i}" for i in range(MAX_LAYERS + 1)]
                           ).SerializeToString()
    if which == 2:
        frame = roster_frame(1, [(f"p{i}", b"", True) for i in range(MAX_MEMBERS + 1)])
        return frame.SerializeToString()
    if which == 3:
        frame = start_frame(1, model_hash=_h("m1"))
        frame.round_start.weights[0].data = bytes((2**16, 2**20, 8 * 2**20)[size])
        frame.round_start.weights[0].shape.extend(range(1, 40))
        return frame.SerializeToString()
    if which == 4:
        return unmask_frame(1, [long] * 3).SerializeToString()
    if which == 5:
        frame = offer_frame(model=MODEL)
        frame.offer.layers[0].shape.extend([2**32 - 1] * 64)
        return frame.SerializeToString()
    frame = offer_frame(model=MODEL)
    frame.offer.rounds = 2**32 - 1
    frame.offer.secagg.max_group = 2**32 - 1
    frame.offer.secagg.clip = float("inf")
    frame.offer.dp.noise_multiplier = float("nan")
    return frame.SerializeToString()


def _pickled(rng: random.Random) -> bytes:
    payload = rng.choice(PICKLES)
    which = rng.randrange(5)
    if which == 0:
        return payload                            # the whole frame is a pickle
    if which == 1:
        return silo_pb2.CoordinatorFrame(sender="coordinator", secagg=silo_pb2.SecAggMessage(
            job_id="job-1", round_id=1, global_model_sha256=_h("m1"), payload=payload)
        ).SerializeToString()
    if which == 2:
        return roster_frame(1, [("m0", payload, False), ("m1", payload, False),
                                ("m2", payload, False)]).SerializeToString()
    if which == 3:
        frame = start_frame(1, model_hash=_h("m1"))
        frame.round_start.weights[0].data = payload
        return frame.SerializeToString()
    frame = offer_frame(model=MODEL)
    frame.offer.model_name = payload.decode("latin-1")
    return frame.SerializeToString()


def _fields(rng: random.Random) -> bytes:
    """Well-formed frames with hostile values, to reach the check's rules."""
    pick = rng.randrange(4)
    job = rng.choice(("job-1", "job-2", "", "job-\u202e"))
    round_id = rng.choice((0, 1, 2, 3, 2**63, 2**64 - 1))
    if pick == 0:
        frame = offer_frame(model=rng.choice((MODEL, _h("x"), "not-a-hash", "")), job=job,
                            rounds=rng.choice((0, 1, 5, 10**6)),
                            protocol=rng.choice(("secaggplus", "secagg", "none", "")),
                            noise=rng.choice((0.0, -1.0, 1.0, 2.0, float("nan"), float("inf"))),
                            clip_norm=rng.choice((0.0, 1.0, -1.0, float("nan"))))
        frame.offer.secagg.threshold = rng.choice((0.67, 0.0, 1.0, 2.0, float("nan")))
        frame.offer.secagg.ring_bits = rng.choice((32, 64, 0, 7))
        frame.offer.secagg.scale_bits = rng.choice((16, 0, 60, 2**31))
    elif pick == 1:
        frame = start_frame(round_id, job=job, model_hash=rng.choice((_h("m1"), "", "zz")),
                            layers=rng.choice((("dense",), ("head",), ("dense", "dense"), ())),
                            deadline=rng.choice((0.0, -5.0, float("nan"), float("inf"), 1e300)))
    elif pick == 2:
        members = [(rng.choice(("m0", "m1", "m2", "m0")), rng.randbytes(rng.randint(0, 64)),
                    rng.random() < 0.3) for _ in range(rng.randint(0, 6))]
        frame = roster_frame(round_id, members, job=job)
    else:
        names = ["m0", "m1", "m2", "m3", "x"]
        frame = unmask_frame(round_id, rng.sample(names, rng.randint(0, 5)),
                             rng.sample(names, rng.randint(0, 5)), job=job)
    frame.seq = rng.choice((0, 1, 2**64 - 1))
    return frame.SerializeToString()


def hostile_frames(n: int, *, seed: int, ders: Sequence[bytes],
                   oversized: bool = True) -> Iterator[tuple[str, bytes]]:
    """`n` (kind, bytes) pairs, an even mix of :data:`KINDS` (without oversized fields
    when `oversized` is False). Oversized fields break the per-field caps (names, layers,
    members) while the whole frame stays under the 64 MiB frame cap, so they also travel
    over the socket; a frame past that cap is tested on its own."""
    rng = random.Random(seed)
    seeds = valid_frames(ders)
    kinds = KINDS if oversized else tuple(k for k in KINDS if k != "oversized")
    for _ in range(n):
        kind = rng.choice(kinds)
        if kind == "mutated":
            yield kind, _mutate(rng, rng.choice(seeds))
        elif kind == "random":
            yield kind, rng.randbytes(rng.choice((0, 1, 7, 64, 512, 4096)))
        elif kind == "oversized":
            yield kind, _oversized(rng)
        elif kind == "pickle":
            yield kind, _pickled(rng)
        else:
            yield kind, _fields(rng)
