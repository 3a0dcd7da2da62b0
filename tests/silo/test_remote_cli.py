"""`fedcollab run --silo-*` options that do not go together: one line, exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedcollab.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "examples" / "community-vendor.yaml")


@pytest.mark.parametrize("args, words", [
    (["--silo-cert", "c.pem"], "--silo-cert needs --silo-listen"),
    (["--silo-listen", "127.0.0.1:0"], "--silo-listen needs --silo-cert"),
    (["--silo-listen", "127.0.0.1:0", "--silo-cert", "c", "--silo-ca", "a"],
     "--silo-listen needs --silo-key"),
    (["--silo-listen", "127.0.0.1:0", "--silo-cert", "c", "--silo-key", "k", "--silo-ca", "a",
      "--resume"], "--resume needs --out DIR"),
])
def test_run_silo_options_that_do_not_go_together_are_one_line(
        args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", SPEC, *args])

    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_run_silo_unreadable_certificate_is_one_line(tmp_path: Path) -> None:
    from fedcollab.silo.errors import SiloError
    from fedcollab.silo.link import SiloLink

    with pytest.raises(SiloError, match="cannot read") as err:
        SiloLink(cert=tmp_path / "none.pem", key=tmp_path / "none.key",
                 client_ca=tmp_path / "ca.pem")

    assert "\n" not in str(err.value)
