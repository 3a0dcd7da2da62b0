"""The gateway's hash-chained audit.jsonl and `fedcollab silo audit verify`."""
from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from fedcollab.cli import main
from fedcollab.silo import Allow, AuditChainError, Pending, Refuse, SiloState
from fedcollab.silo.audit import GENESIS, AuditLog, verify_audit


def _write(path: Path, n: int = 3) -> list[str]:
    decisions = [Allow(SiloState()), Refuse("egress", "egress is masked_only"),
                 Pending("model not approved")]
    with AuditLog(path) as log:
        return [log.append(frame=f"frame {i}".encode(), decision=decisions[i % 3],
                           direction="in" if i % 2 else "out", kind="Offer", job_id="job-1",
                           round_id=i, time=1000.0 + i) for i in range(n)]


def test_audit_entries_chain_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = _write(path)

    entries = [json.loads(line) for line in path.read_text().splitlines()]
    head = verify_audit(path)

    assert head.entries == 3 and head.head == hashes[-1]
    assert [e["prev"] for e in entries] == [GENESIS, *hashes[:2]]
    assert entries[0]["frame_sha256"] == hashlib.sha256(b"frame 0").hexdigest()
    assert [e["decision"] for e in entries] == ["allow", "refuse", "pending"]
    assert entries[1]["rule"] == "egress"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_audit_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = _write(path, 2)

    with AuditLog(path) as log:
        log.append(frame=b"later", decision=Allow(SiloState()), direction="in", kind="X")
    entries = [json.loads(line) for line in path.read_text().splitlines()]

    assert verify_audit(path).entries == 3
    assert entries[2]["prev"] == first[-1] and entries[2]["seq"] == 3


def test_audit_flipping_any_byte_fails_verification(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path)
    original = path.read_bytes()

    survivors = []
    for index in range(len(original)):
        for bit in (0x01, 0x20):
            data = bytearray(original)
            data[index] ^= bit
            path.write_bytes(bytes(data))
            try:
                verify_audit(path)
            except AuditChainError:
                continue
            survivors.append((index, bit))

    assert survivors == []


@pytest.mark.parametrize("edit", ["drop_first", "drop_middle", "swap", "duplicate"])
def test_audit_removed_or_reordered_lines_fail(tmp_path: Path, edit: str) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path)
    lines = path.read_bytes().splitlines(keepends=True)
    changed = {"drop_first": lines[1:], "drop_middle": [lines[0], lines[2]],
               "swap": [lines[1], lines[0], lines[2]], "duplicate": lines + lines[-1:]}[edit]
    path.write_bytes(b"".join(changed))

    with pytest.raises(AuditChainError, match="line"):
        verify_audit(path)


def test_audit_broken_log_is_not_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path)
    path.write_bytes(path.read_bytes().replace(b'"refuse"', b'"allow!"'))

    with pytest.raises(AuditChainError, match="line 2"):
        AuditLog(path)


def test_cli_audit_verify_ok_is_one_line_exit_0(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    head = _write(path)[-1]

    code = main(["silo", "audit", "verify", str(path)])
    out = capsys.readouterr().out

    assert code == 0
    assert out.count("\n") == 1 and f"3 entries, chain head {head}" in out


def test_cli_audit_verify_one_flipped_byte_exit_1(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    code = main(["silo", "audit", "verify", str(path)])
    err = capsys.readouterr().err

    assert code == 1
    assert err.count("\n") == 1 and "hash chain is broken" in err


def test_cli_audit_verify_missing_file_exit_1(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["silo", "audit", "verify", str(tmp_path / "none.jsonl")])

    assert code == 1 and "cannot read" in capsys.readouterr().err


def test_cli_policy_hash_prints_the_file_sha256(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from .conftest import policy_bytes

    path = tmp_path / "vendor-policy.yaml"
    path.write_bytes(policy_bytes())

    code = main(["silo", "policy", "hash", str(path)])

    assert code == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_policy_hash_bad_policy_exit_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "vendor-policy.yaml"
    path.write_text("egress: plaintext\n")

    assert main(["silo", "policy", "hash", str(path)]) == 2
    assert "policy" in capsys.readouterr().err
