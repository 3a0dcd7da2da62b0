"""The Prometheus endpoint: jobs by state, queue length and RPC latency, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fedcollab.service.auth import new_token
from fedcollab.service.errors import PermissionDenied

from .conftest import TINY_SPEC, client


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_metrics_count_jobs_queue_and_calls(tmp_path: Path) -> None:
    from fedcollab.service.server import run_server

    tokens = tmp_path / "tokens.yaml"
    admin = new_token(tokens, name="root", role="admin")
    viewer = new_token(tokens, name="eve", role="viewer")
    with run_server(
        tmp_path / "state", tokens=tokens, max_concurrent=0, metrics_listen="127.0.0.1:0"
    ) as server:
        c = client(server, admin)
        first, second = c.submit(TINY_SPEC), c.submit(TINY_SPEC)
        c.cancel(first.id)
        try:
            client(server, viewer).submit(TINY_SPEC)
        except PermissionDenied:
            pass
        seen = _scrape(server.metrics_port)

    assert seen[("fedcollab_jobs", (("state", "QUEUED"),))] == 1
    assert seen[("fedcollab_jobs", (("state", "CANCELLED"),))] == 1
    assert seen[("fedcollab_queue_length", ())] == 1
    assert seen[("fedcollab_rpc_seconds_count", (("code", "OK"), ("method", "SubmitJob")))] == 2
    assert (
        seen[
            (
                "fedcollab_rpc_seconds_count",
                (("code", "PERMISSION_DENIED"), ("method", "SubmitJob")),
            )
        ]
        == 1
    )
    assert second.id
