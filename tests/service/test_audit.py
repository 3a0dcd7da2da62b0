"""The audit log: every change to the file is found, and the service writes who did what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcollab.service.audit import AuditError, AuditLog, verify

from .conftest import TINY_SPEC, Tokens, client

_records = st.lists(
    st.tuples(
        st.sampled_from(["submit", "cancel", "fetch"]), st.text(max_size=8), st.text(max_size=8)
    ),
    min_size=1,
    max_size=12,
)


def _write(path: Path, records: list[tuple[str, str, str]]) -> bytes:
    log = AuditLog(path)
    for action, who, job in records:
        log.record(action, who=who, job=job)
    log.close()
    return path.read_bytes()


@settings(max_examples=60, deadline=None)
@given(records=_records, where=st.integers(min_value=0), bit=st.integers(0, 7))
def test_audit_any_flipped_bit_breaks_the_chain(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[tuple[str, str, str]],
    where: int,
    bit: int,
) -> None:
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    data = bytearray(_write(path, records))
    assert verify(path)[1] == len(records)
    data[where % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))

    with pytest.raises(AuditError, match="hash chain is broken"):
        verify(path)


@settings(max_examples=40, deadline=None)
@given(
    records=_records.filter(lambda r: len(r) >= 2),
    pick=st.integers(min_value=0),
    swap=st.booleans(),
)
def test_audit_removed_or_reordered_lines_break_the_chain(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[tuple[str, str, str]],
    pick: int,
    swap: bool,
) -> None:
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    lines = _write(path, records).splitlines(keepends=True)
    i = pick % (len(lines) - 1)
    if swap:
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    else:
        del lines[i]
    path.write_bytes(b"".join(lines))

    with pytest.raises(AuditError):
        verify(path)


def test_audit_continues_the_chain_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, [("submit", "a", "1")])
    _write(path, [("cancel", "a", "1")])

    assert verify(path)[1] == 2
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_service_audits_submit_cancel_fetch_and_refusals(
    queue_server: object, tokens: Tokens, tmp_path: Path
) -> None:
    c = client(queue_server, tokens.submitter)
    job = c.submit(TINY_SPEC)
    c.cancel(job.id)
    with pytest.raises(Exception):  # noqa: B017,PT011  (no such artifact yet)
        c.fetch(job.id, "summary.json", tmp_path / "x")
    with pytest.raises(Exception):  # noqa: B017,PT011  (outside the allowlist)
        c.submit(TINY_SPEC.replace("model: mlp", "model: 'os:getcwd'"))

    path = queue_server.state_dir / "audit.log"  # type: ignore[attr-defined]
    verify(path)
    entries = [json.loads(line.split(" ", 1)[1]) for line in path.read_text().splitlines()]
    mine = [(e["action"], e["job"]) for e in entries if e["who"] == "alice"]

    assert ("submit", job.id) in mine and ("cancel", job.id) in mine
    assert ("submit-refused", "") in mine
