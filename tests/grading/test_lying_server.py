from __future__ import annotations

import numpy as np

from fedcollab.grading.lying_server import lying_server, sybil_key_substitution
from fedcollab.secure import SecAggParams
from fedcollab.spec import spec_from_dict


def test_lying_server_sybils_read_target_under_honest_but_curious_protocol() -> None:
    vector = np.append(np.random.default_rng(0).normal(0, 0.1, 40), 0.5)
    result = sybil_key_substitution(vector, SecAggParams(protocol="secagg", threshold=0.67,
                                                         min_group=3),
                                    group_size=4, server_model="honest_but_curious")
    assert result.recovered
    assert result.relative_error is not None and result.relative_error < 1e-3


def test_lying_server_sybils_are_refused_under_the_malicious_server_model() -> None:
    vector = np.append(np.random.default_rng(0).normal(0, 0.1, 40), 0.5)
    result = sybil_key_substitution(vector, SecAggParams(protocol="secagg", threshold=0.67,
                                                         min_group=3),
                                    group_size=4, server_model="malicious")
    assert result.recovered is False and result.server == "malicious"


def test_lying_server_open_only_spec_has_nothing_to_attack() -> None:
    spec = spec_from_dict({"name": "t", "participants": [{"name": "c", "count": 3}]})
    row = lying_server(spec)
    assert row["recovered"] is None and "no secure group" in row["note"]


def test_lying_server_spec_with_secure_vendor_reports_server_model() -> None:
    spec = spec_from_dict({"name": "t", "participants": [
        {"name": "c", "count": 3}, {"name": "v", "role": "vendor", "count": 3,
                                    "sharing": "secure"}]})
    row = lying_server(spec)
    assert row["server"] == "malicious" and row["recovered"] is False  # the default model
    weak = spec_from_dict({"name": "t", "secure": {"server": "honest_but_curious"},
                           "participants": [
                               {"name": "c", "count": 3},
                               {"name": "v", "role": "vendor", "count": 3, "sharing": "secure"}]})
    assert lying_server(weak)["recovered"] is True
