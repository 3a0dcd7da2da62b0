"""Where the vendor's sites run on its own Ray (pure: no Ray, no TensorFlow)."""
from __future__ import annotations

import subprocess
import sys

from fedcollab.silo.vendor import site_plan, vendor_pids
from fedcollab.spec import spec_from_dict


def _spec() -> object:
    return spec_from_dict({
        "name": "t", "task": {"dataset": "digits", "model": "mlp"}, "rounds": 2,
        "participants": [
            {"name": "community", "count": 4},
            {"name": "vendor", "role": "vendor", "count": 3, "sharing": "secure",
             "resources": {"vendor_site": 1}},
            {"name": "lab", "role": "vendor", "count": 3, "sharing": "secure"}]})


def test_by_default_a_groups_sites_share_one_worker_with_the_groups_resources() -> None:
    spec = _spec()
    pids = vendor_pids(spec)  # type: ignore[arg-type]
    assert sorted(pids) == [4, 5, 6, 7, 8, 9]
    assert site_plan(spec, pids) == [  # type: ignore[arg-type]
        ({"vendor_site": 1.0}, [4, 5, 6]), ({}, [7, 8, 9])]


def test_worker_per_site_gives_each_site_its_own_worker_and_resources() -> None:
    spec = _spec()
    plan = site_plan(spec, frozenset({4, 5, 8}), per_site=True)  # type: ignore[arg-type]
    assert plan == [({"vendor_site": 1.0}, [4]), ({"vendor_site": 1.0}, [5]), ({}, [8])]
    plan[0][0]["vendor_site"] = 9.0  # each its own dict: no worker shares another's
    assert plan[1][0] == {"vendor_site": 1.0}


def test_worker_per_site_without_the_ray_transport_is_one_line_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fedcollab.cli", "silo", "serve", "--policy", "p.yaml",
         "--coordinator", "127.0.0.1:1", "--cert", "c", "--key", "k", "--coordinator-ca", "a",
         "--state-dir", "s", "--worker-per-site"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "fedcollab: error: silo serve: --worker-per-site needs --spec and the ray transport "
        "(the sites run on Ray workers only then)"]
