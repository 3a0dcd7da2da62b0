"""The distributed discrete Gaussian in a job: spec, the server's accounting, and one
short job on the in-process pool with a real secure group."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcollab.privacy.ddg import plan
from fedcollab.privacy.ddg_accounting import DdgLedger, ddg_round
from fedcollab.privacy.server import DpServer
from fedcollab.spec import SpecError, load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[2]
DDG = "distributed_discrete_gaussian"


def _spec(**dp: Any) -> Any:
    return spec_from_dict({
        "name": "ddg", "rounds": 3,
        "participants": [{"name": "community", "count": 4},
                         {"name": "vendor", "role": "vendor", "count": 3, "sharing": "secure",
                          "data_fraction": 0.25}],
        "privacy": {"dp": {"mode": DDG, "noise_multiplier": 1.0, **dp}}})


def test_spec_refuses_adaptive_clipping_with_the_discrete_gaussian() -> None:
    with pytest.raises(SpecError, match="adaptive_clipping"):
        _spec(adaptive_clipping=True)


def test_spec_refuses_the_discrete_gaussian_without_a_secure_group() -> None:
    with pytest.raises(SpecError, match="secure"):
        spec_from_dict({"name": "x", "participants": [{"name": "c", "count": 4}],
                        "privacy": {"dp": {"mode": DDG, "noise_multiplier": 1.0}}})


def test_server_accounts_the_survivors_shares_with_the_ddg_event() -> None:
    dim = 5260
    server = DpServer(_spec().privacy.dp, sampling_rate=1.0, rounds=3, dim=dim)
    line = server.account([], participants=3, secure_count=2, secure_sampled=3)
    the_plan = plan(noise_multiplier=1.0, clip_norm=1.0, members=3, dim=dim, modulus_bits=64)
    want = DdgLedger().record(*ddg_round(the_plan, 2), sampling_rate=1.0)
    assert line["epsilon"] == pytest.approx(want.epsilon(delta=1e-5), rel=1e-12)
    assert line["noise_shortfall"] == {"survivors": 2, "sampled": 3}
    # open participants' own Gaussian (z = 1) is weaker than 3 shares: it is what counts
    with_open = DpServer(_spec().privacy.dp, sampling_rate=1.0, rounds=3, dim=dim)
    both = with_open.account([True], participants=4, secure_count=3, secure_sampled=3)
    l2, _, _ = ddg_round(the_plan, 3)
    assert both["accounted_multiplier"] == pytest.approx(min(1.0, 1 / l2))


def test_server_state_round_trips_the_ddg_ledger() -> None:
    server = DpServer(_spec().privacy.dp, sampling_rate=1.0, rounds=3, dim=100)
    server.account([], participants=3, secure_count=3, secure_sampled=3)
    again = DpServer(_spec().privacy.dp, sampling_rate=1.0, rounds=3, dim=100)
    again.restore(server.state())
    assert again.epsilon == server.epsilon and again.ledger == server.ledger


@pytest.mark.slow
def test_a_ddg_job_learns_and_reports_the_ddg_epsilon(tmp_path: Path) -> None:
    from fedcollab.job.run import RunOptions, run_job

    spec = load_spec(ROOT / "examples" / "community-vendor.yaml",
                     ["rounds=3", f"privacy.dp.mode={DDG}", "privacy.dp.noise_multiplier=0.05",
                      "release.sign=false"])
    result = run_job(spec, RunOptions(out_dir=tmp_path, quiet=True, release=False,
                                      transport="inprocess"))
    lines = result.metrics
    assert [m["secure"]["survivors"] for m in lines] == [[8, 9, 10]] * 3
    assert not any("sum_rejected" in m["secure"] for m in lines)  # counts within bounds
    ddg = lines[-1]["secure"]["ddg"]
    from fedcollab.job.secure import ddg_ring

    assert ddg["modulus_bits"] == ddg_ring(spec)[0] and ddg["padded"] >= 4096
    dim = sum(int(np.prod(w.shape)) for w in result.weights)
    the_plan = plan(noise_multiplier=0.05, clip_norm=1.0, members=3, dim=dim, modulus_bits=64)
    l2, tau, d = ddg_round(the_plan, 3)
    want = DdgLedger().record(max(l2, 1 / 0.05), tau, d, sampling_rate=1.0, rounds=3)
    # every participant in every round: each observer's figure is the 3 rounds' zCDP
    # events composed by dp_accounting (at its orders: within 2% above ddg's own ledger)
    import dp_accounting
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.ZCDpEvent(max(l2, 1 / 0.05) ** 2 / 2, tau * d), 3)
    privacy = result.summary["privacy"]
    assert privacy["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert want.epsilon(delta=1e-5) <= privacy["epsilon"] <= 1.02 * want.epsilon(delta=1e-5)
    by = privacy["epsilon_by_observer"]
    assert set(by) == {"server", "outputs_reader", "release_reader"}
    assert by["server"] == by["release_reader"] == privacy["epsilon"]  # q = 1: no secret
    assert all(e > privacy["epsilon"] for e in privacy["organisation_epsilon"].values())
    assert lines[-1]["accuracy"] > lines[0]["accuracy"] - 0.05
    assert result.summary["final_accuracy"] > 0.3  # small noise: it learns
