"""The floor that ``scripts/bench``'s ``secure_floor`` line measures SecAgg+ against."""
from __future__ import annotations

import math

from tests.bench_script import load_bench


def test_floor_figures_are_positive_and_finite_for_a_tiny_group() -> None:
    floor = load_bench().secure_floor_ms(5, 2, 2, 10, 32, 2, repeats=1)
    assert set(floor) == {"keystream_ms", "seal_ms", "open_ms", "participant_ms",
                          "server_ms", "floor_ms"}
    assert all(math.isfinite(v) and v > 0 for v in floor.values())
    # the participants' part is spread over the workers, the server's added
    assert math.isclose(floor["floor_ms"],
                        floor["participant_ms"] * 5 / 2 + floor["server_ms"])
    assert math.isclose(floor["participant_ms"],
                        floor["keystream_ms"] + floor["seal_ms"] + floor["open_ms"])

