"""secure.server and secure.key_rotation_rounds: validated like the other SecureSpec
fields (one line, exit 2, through the real CLI), and carried into SecAggParams."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedcollab.secure import SecAggConfigError, SecAggParams
from fedcollab.spec import spec_from_dict

REPO = Path(__file__).resolve().parents[2]


def _spec(secure: dict[str, Any]) -> dict[str, Any]:
    return {"name": "t", "task": {"dataset": "digits", "model": "mlp"}, "rounds": 2,
            "participants": [{"name": "community", "count": 4}], "secure": secure}


@pytest.mark.parametrize("secure, pattern", [
    ({"server": "paranoid"},
     r"^fedcollab: error: spec: secure\.server: got 'paranoid', expected one of "),
    ({"key_rotation_rounds": 0},
     r"^fedcollab: error: spec: secure\.key_rotation_rounds: got 0, expected an integer >= 1"),
    ({"key_rotation_rounds": -3},
     r"^fedcollab: error: spec: secure\.key_rotation_rounds: got -3, expected"),
])
def test_spec_bad_server_model_fields_exit_2_with_one_line(tmp_path: Path, secure: dict,
                                                           pattern: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_spec(secure)))
    proc = subprocess.run([sys.executable, "-m", "fedcollab.cli", "validate", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_spec_server_model_defaults_to_malicious_with_a_rotation_window() -> None:
    spec = spec_from_dict(_spec({}))
    assert spec.secure.server == "malicious" and spec.secure.key_rotation_rounds == 10
    spec = spec_from_dict(_spec({"server": "honest_but_curious", "key_rotation_rounds": None}))
    assert spec.secure.server == "honest_but_curious" and spec.secure.key_rotation_rounds is None


def test_secure_params_carry_the_spec_fields() -> None:
    from fedcollab.secure.params import SecAggParams

    spec = spec_from_dict(_spec({"server": "honest_but_curious", "key_rotation_rounds": 3}))
    params = SecAggParams.from_spec(spec)
    assert params.server == "honest_but_curious" and params.key_rotation_rounds == 3
    assert not params.malicious and SecAggParams().malicious


@pytest.mark.parametrize("kwargs", [{"server": "lying"}, {"key_rotation_rounds": 0}])
def test_secagg_params_reject_bad_server_model(kwargs: dict) -> None:
    with pytest.raises(SecAggConfigError):
        SecAggParams(**kwargs)
