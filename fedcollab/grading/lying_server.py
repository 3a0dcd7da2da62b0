"""Lying server: what a server that deviates from the protocol recovers.

Placeholder until the secure-aggregation hardening lands (see the report).
"""
from __future__ import annotations

from typing import Any

__all__ = ["lying_server"]


def lying_server(spec: Any) -> dict[str, Any]:
    secure = [g for g in spec.participants if g.sharing == "secure"]
    if not secure:
        return {"recovered": None, "relative_error": None, "server": "n/a",
                "note": "no secure group: every update is in the clear already"}
    return {"recovered": None, "relative_error": None, "server": "honest_but_curious",
            "note": "not measured yet"}
