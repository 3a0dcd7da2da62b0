"""Prometheus metrics for the job service (``serve --metrics-listen HOST:PORT``).

* ``fedcollab_jobs{state}``: jobs in each state, read from the store at each scrape;
* ``fedcollab_queue_length``: jobs waiting to run;
* ``fedcollab_round_seconds``: a histogram of the rounds the service's jobs reported;
* ``fedcollab_rpc_seconds{method,code}``: a histogram of JobService calls (for
  WatchJob and FetchArtifact, the whole stream);
* ``fedcollab_ray_restarts_total``: how often the service restarted its Ray head.

The endpoint is plain HTTP without authentication: it carries no job data, only
counts and timings; bind it to loopback or a monitoring network.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fedcollab.service.errors import InvalidArgument
from fedcollab.service.store import STATES

__all__ = ["ServiceMetrics"]

_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600)
_ROUND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _StoreCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]], restarts: Callable[[], int]) -> None:
        self._counts = counts
        self._restarts = restarts

    def collect(self) -> Iterator[Any]:
        counts = self._counts()
        jobs = GaugeMetricFamily("fedcollab_jobs", "Jobs by state", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "fedcollab_queue_length", "Jobs waiting to run", value=counts.get("QUEUED", 0)
        )
        yield CounterMetricFamily(
            "fedcollab_ray_restarts", "Ray head restarts", value=self._restarts()
        )


class ServiceMetrics:
    """The service's metrics in a registry of their own (no process-wide state)."""

    def __init__(
        self, counts: Callable[[], dict[str, int]], restarts: Callable[[], int] = lambda: 0
    ) -> None:
        self.registry = CollectorRegistry()
        self.rpc = Histogram(
            "fedcollab_rpc_seconds",
            "JobService call latency",
            ["method", "code"],
            buckets=_RPC_BUCKETS,
            registry=self.registry,
        )
        self.rounds = Histogram(
            "fedcollab_round_seconds",
            "Round duration of service jobs",
            buckets=_ROUND_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(counts, restarts))
        self._server: Any = None

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc.labels(method, code).observe(seconds)

    def observe_round(self, line: dict[str, Any]) -> None:
        seconds = line.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            self.rounds.observe(float(seconds))

    def serve(self, listen: str) -> int:
        """Expose /metrics on `listen` (HOST:PORT; port 0 picks one); returns the port."""
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"--metrics-listen {listen!r}: expected HOST:PORT")
        try:
            self._server, _ = start_http_server(
                int(port), addr=host.strip("[]"), registry=self.registry
            )
        except OSError as err:
            raise InvalidArgument(f"--metrics-listen {listen}: {err.strerror}") from None
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
