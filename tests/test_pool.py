"""WorkerPool on a real local Ray: placement, one call per worker, a lost worker replaced."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedcollab.outgoing import RoundConfig
from fedcollab.roster import roster
from fedcollab.spec import spec_from_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec() -> Any:
    return spec_from_dict({
        "name": "pool", "rounds": 2, "resources": {"workers": 2, "cpus_per_worker": 0.5},
        "participants": [{"name": "community", "count": 4},
                         {"name": "vendor", "role": "vendor", "count": 2,
                          "data_fraction": 0.3, "private_layers": ["head"]}]})


def test_pool_trains_hosts_and_replaces_a_dead_worker(ray_local: Any, tmp_path: Path) -> None:
    from fedcollab.orchestrator import _Driver
    from fedcollab.pool import WorkerPool

    spec = _spec()
    weights = _Driver.build(spec).weights
    pool = WorkerPool(ray_local, spec, roster(spec), tmp_path)
    assert len(pool) == 2
    assert sorted(p for w in pool.placement for p in w["participants"]) == list(range(6))

    out = pool.train(weights, 1, [0, 1, 4], RoundConfig(), {})
    assert sorted(u.pid for u in out.updates) == [0, 1, 4] and not out.dropped

    ray_local.get(pool.save_private(1))
    victim = pool.owner[4]
    ray_local.kill(pool.workers[victim], no_restart=True)
    lost = pool.train(weights, 2, [0, 4], RoundConfig(), {})
    hosted_by_victim = {p for p in pool.hosted[victim]}
    assert set(lost.dropped) == {0, 4} & hosted_by_victim and pool.suspect == {victim}

    assert pool.heal() == [victim] and pool.replaced == 1 and not pool.suspect
    again = pool.train(weights, 2, [0, 4], RoundConfig(), {})
    assert sorted(u.pid for u in again.updates) == [0, 4] and not again.dropped
    assert pool.evaluate_personalised(weights)["vendor_accuracy"] >= 0
    pool.shutdown()
