"""`fedcollab silo ...`: help with examples, one-line usage errors, no heavy imports."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fedcollab.cli import main


@pytest.mark.parametrize("command", [["silo"], ["silo", "serve"], ["silo", "audit"],
                                     ["silo", "audit", "verify"],
                                     ["silo", "policy", "hash"], ["silo", "pending"],
                                     ["silo", "approve"]])
def test_silo_help_has_an_example(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])

    assert done.value.code == 0
    assert "example:\n  fedcollab silo" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["silo"], ["silo", "audit"], ["silo", "policy"]])
def test_silo_without_action_is_one_line_exit_2(command: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(command) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_silo_audit_verify_imports_neither_tensorflow_nor_ray_nor_grpc(tmp_path: str) -> None:
    script = f"""
import sys
from fedcollab.cli import main
code = main(["silo", "audit", "verify", {str(tmp_path)!r} + "/none.jsonl"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "ray", "grpc"))
print("CODE", code, "HEAVY", heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)

    assert "CODE 1 HEAVY []" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("options, words", [
    (["--max-attempts", "0"], "--max-attempts 0"),
    (["--backoff-initial", "5", "--backoff-max", "1"], "need 0 < initial <= max"),
    (["--deadline-grace", "-1"], "--deadline-grace -1"),
])
def test_silo_serve_bad_link_options_are_one_line_exit_2(
        options: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["silo", "serve", "--policy", "p.yaml", "--coordinator", "127.0.0.1:1",
                 "--cert", "c.pem", "--key", "c.key", "--coordinator-ca", "ca.pem", *options])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err
