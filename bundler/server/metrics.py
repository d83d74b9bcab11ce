"""Prometheus metrics of one app: requests, latency, batch sizes, queue depth, inference time.

Each app gets its own CollectorRegistry so several apps in one process (tests, benchmarks) do not collide.
With ``workers > 1`` every worker process reports its own figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "BatchObserver", "Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The metric families of one served app."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "bundler_requests", "HTTP requests served", ["service", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "bundler_request_duration_seconds",
            "Time from request start to response sent",
            ["service", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "bundler_runner_batch_size", "Rows per model call", ["runner"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "bundler_runner_inference_seconds",
            "Time of one model call (a whole batch)",
            ["runner"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "bundler_runner_queue_depth", "Rows waiting for a batch", ["runner"], registry=r
        )
        self.service = service
        # labels() takes a lock and a dict lookup; cache the children the hot path uses.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        key = (route, status)
        child = self._children.get(key)
        if child is None:
            labels = (self.service, route, str(status))
            child = self._children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        child[0].inc()
        child[1].observe(seconds)

    def observer(self, runner: str) -> BatchObserver:
        """Return the batch observer to hand one runner's Batcher."""
        return BatchObserver(self, runner)

    def render(self) -> bytes:
        """Return the Prometheus text exposition."""
        return generate_latest(self.registry)


class BatchObserver:
    """Receives ``on_batch(size, seconds)`` and ``on_queue(depth)`` from a Batcher."""

    def __init__(self, metrics: Metrics, runner: str) -> None:
        self._batch = metrics.batch_size.labels(runner)
        self._time = metrics.inference.labels(runner)
        self._queue = metrics.queue_depth.labels(runner)

    def on_batch(self, size: int, seconds: float) -> None:
        self._batch.observe(size)
        self._time.observe(seconds)

    def on_queue(self, depth: int) -> None:
        self._queue.set(depth)
