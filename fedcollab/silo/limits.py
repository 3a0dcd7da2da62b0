"""Size caps on the cross-silo link (silo.proto states them too)."""
from __future__ import annotations

__all__ = ["MAX_GATEWAY_FRAME", "MAX_COORDINATOR_FRAME", "MAX_LAYERS", "MAX_MEMBERS",
           "MAX_NAME", "MAX_PENDING"]

MAX_GATEWAY_FRAME = 16 * 2**20       # what a vendor sends: masked shares and decisions
MAX_COORDINATOR_FRAME = 64 * 2**20   # what a coordinator sends: the global model's layers
MAX_LAYERS = 4096
MAX_MEMBERS = 10_000
MAX_NAME = 256
MAX_PENDING = 64                     # offers waiting for `silo approve` at once (state.json)
