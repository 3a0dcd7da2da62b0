"""Fuzzing the gateway's edge: hostile CoordinatorFrame bytes through parse + check +
persist + audit (the :class:`FrameDecider` the gateway runs), and a smaller batch
over the real socket against the real gateway.

Every frame must be decided (refused, pending or allowed) with exactly one audit
entry, nothing may raise, the chain must verify, no update byte may leave, and
resident memory may grow by less than 100 MB. 1,000 frames in the normal suite,
10,000 in the slow tier (both run in CI); each prints how many it tried.
"""
from __future__ import annotations

import collections
import datetime
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from fedcollab.service.certs import fingerprint
from fedcollab.silo import load_policy
from fedcollab.silo.audit import verify_audit
from fedcollab.silo.decide import FrameDecider
from fedcollab.silo.gateway import Gateway

from .conftest import member_der, policy_bytes
from .fuzzframes import hostile_frames
from .malicious import malicious_coordinator

RSS_LIMIT = 100 * 2**20
NOW = datetime.datetime.now(datetime.timezone.utc)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _policy_file(tmp: Path, pki: dict[str, Path]) -> Path:
    path = tmp / "vendor-policy.yaml"
    path.write_bytes(policy_bytes(
        trusted_cas=[fingerprint((pki["main"] / "ca.pem").read_bytes())]))
    return path


def _fuzz_in_process(tmp: Path, pki: dict[str, Path], n: int, seed: int,
                     capsys: pytest.CaptureFixture[str]) -> None:
    ca_pem = (pki["main"] / "ca.pem").read_bytes()
    decider = FrameDecider(policy=load_policy(_policy_file(tmp, pki)),
                           state_dir=tmp / "vendor",
                           trusted_cas={fingerprint(ca_pem): x509.load_pem_x509_certificate(
                               ca_pem)})
    ders = [member_der(pki, f"m{i}") for i in range(3)]
    verdicts: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    warm = list(hostile_frames(200, seed=seed + 1, ders=ders))
    for _, data in warm:  # imports, caches and the allocator settle first
        decider.decide_bytes(data, NOW)
    before, start = rss_bytes(), time.perf_counter()
    try:
        for index, (kind, data) in enumerate(hostile_frames(n, seed=seed, ders=ders)):
            try:
                outcome = decider.decide_bytes(data, NOW)
            except Exception as err:  # noqa: BLE001 - the property under test
                errors.append(f"frame {index} ({kind}): {err.__class__.__name__}: {err}")
                continue
            verdicts[outcome.verdict] += 1
            kinds[kind] += 1
    finally:
        decider.close()
    seconds, grown = time.perf_counter() - start, rss_bytes() - before
    head = verify_audit(tmp / "vendor" / "audit.jsonl")
    with capsys.disabled():
        print(f"\nsilo fuzz (in process): {n} frames tried in {seconds:.1f} s "
              f"({dict(kinds)}); {dict(verdicts)}; RSS grew {grown / 2**20:.1f} MiB")

    assert errors == []
    assert sum(verdicts.values()) == n and set(verdicts) <= {"allow", "refuse", "pending"}
    assert head.entries == n + len(warm)   # one audit entry per frame, the chain intact
    assert verdicts["refuse"] > n // 2
    assert grown < RSS_LIMIT


def test_fuzz_gateway_edge_1000_hostile_frames(tmp_path: Path, silo_pki: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _fuzz_in_process(tmp_path, silo_pki, 1_000, seed=31, capsys=capsys)


@pytest.mark.slow
def test_fuzz_gateway_edge_10000_hostile_frames(tmp_path: Path, silo_pki: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _fuzz_in_process(tmp_path, silo_pki, 10_000, seed=3100, capsys=capsys)


def test_fuzz_over_the_socket_every_frame_is_decided_and_nothing_leaks(
        tmp_path: Path, silo_pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    n = 300
    ders = [member_der(silo_pki, f"m{i}") for i in range(3)]
    frames = [data for _, data in hostile_frames(n, seed=7, ders=ders)]
    with malicious_coordinator(cert=silo_pki["main"] / "coordinator.pem",
                               key=silo_pki["main"] / "coordinator.key",
                               client_ca=silo_pki["main"] / "ca.pem",
                               sessions=[frames]) as coord:
        gateway = Gateway(policy=load_policy(_policy_file(tmp_path, silo_pki)),
                          coordinator=coord.address, cert=silo_pki["main"] / "vendor.pem",
                          key=silo_pki["main"] / "vendor.key",
                          coordinator_ca=silo_pki["main"] / "ca.pem",
                          trusted_cas=[silo_pki["main"] / "ca.pem"],
                          state_dir=tmp_path / "vendor",
                          deadline_grace=600)  # mutated deadlines may lie in the past
        start = time.perf_counter()
        try:
            report = gateway.run(timeout=60)
        finally:
            gateway.close()
    with capsys.disabled():
        print(f"\nsilo fuzz (socket): {n} frames tried in {time.perf_counter() - start:.1f} s; "
              f"{report.allowed} allowed, {report.refused} refused, {report.pending} pending")

    decisions: list[Any] = coord.decisions()
    assert len(decisions) == n                       # each answered, the link held
    assert report.frames == n + 1                    # and the Welcome
    assert verify_audit(tmp_path / "vendor" / "audit.jsonl").entries == n + 1
    assert coord.update_bytes() == 0


def test_fuzz_frame_over_the_cap_drops_the_link_with_an_audit_entry(
        tmp_path: Path, silo_pki: dict[str, Path]) -> None:
    from fedcollab.silo.gateway import LinkError

    huge = b"\x0a" + b"\xff" * 5 + bytes(65 * 2**20)  # past MAX_COORDINATOR_FRAME
    with malicious_coordinator(cert=silo_pki["main"] / "coordinator.pem",
                               key=silo_pki["main"] / "coordinator.key",
                               client_ca=silo_pki["main"] / "ca.pem",
                               sessions=[[huge]]) as coord:
        gateway = Gateway(policy=load_policy(_policy_file(tmp_path, silo_pki)),
                          coordinator=coord.address, cert=silo_pki["main"] / "vendor.pem",
                          key=silo_pki["main"] / "vendor.key",
                          coordinator_ca=silo_pki["main"] / "ca.pem",
                          trusted_cas=[silo_pki["main"] / "ca.pem"],
                          state_dir=tmp_path / "vendor")
        try:
            with pytest.raises(LinkError, match="over the size cap") as err:
                gateway.run(timeout=60)
        finally:
            gateway.close()

    import json

    last = json.loads((tmp_path / "vendor" / "audit.jsonl").read_text().splitlines()[-1])
    assert err.value.retryable and "\n" not in str(err.value)
    assert (last["kind"], last["decision"], last["rule"]) == ("oversized", "refuse",
                                                              "malformed")
    assert coord.update_bytes() == 0
