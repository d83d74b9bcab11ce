"""Prometheus metrics of one app: requests, latency, batch sizes, queue depth, inference time.

Each app gets its own CollectorRegistry so several apps in one process (tests, benchmarks) do not collide.
Per-request figures are plain counters turned into metric families at scrape time (``RequestCollector``):
prometheus-client's own ``inc()``/``observe()`` cost several microseconds each, which the hot path avoids.
With ``workers > 1`` every worker process reports its own figures. No family is one of prometheus-client's
own metric classes: those keep their values in files under ``$PROMETHEUS_MULTIPROC_DIR`` when it is set,
which these figures have no use for (and a missing or read-only directory would fail them).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = [
    "CONTENT_TYPE_LATEST",
    "BatchCollector",
    "BatchObserver",
    "CallObserver",
    "Metrics",
    "RequestCollector",
]

# Seconds, 0.1 ms to 10 s: a small model's call takes tens of microseconds, a small request a few hundred.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Series:
    """Count, sum and per-bucket counts of one histogram series (a route and status, or a runner)."""

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(bounds) + 1)  # the last slot is +Inf

    def observe(self, value: float) -> None:
        """Count one value (callers are on the event loop only, so no lock)."""
        self.count += 1
        self.total += value
        self.buckets[bisect_left(self.bounds, value)] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Return the (upper bound, count at or below it) pairs a Prometheus histogram sample lists."""
        pairs, running = [], 0
        for bound, n in zip((*map(_fmt, self.bounds), "+Inf"), self.buckets, strict=True):
            running += n
            pairs.append((bound, running))
        return pairs


class RequestCollector(Collector):
    """``bundler_requests_total`` and ``bundler_request_duration_seconds`` by service, route and status."""

    def __init__(self, service: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.service = service
        self.bounds = buckets
        self.series: dict[tuple[str, int], _Series] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency (called on the event loop only, so no lock)."""
        s = self.series.get((route, status))
        if s is None:
            s = self.series[(route, status)] = _Series(self.bounds)
        s.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        labels = ["service", "route", "status"]
        requests = CounterMetricFamily("bundler_requests", "HTTP requests served", labels=labels)
        latency = HistogramMetricFamily(
            "bundler_request_duration_seconds", "Time from request start to response sent", labels=labels
        )
        for (route, status), s in sorted(self.series.items()):
            values = [self.service, route, str(status)]
            requests.add_metric(values, s.count)
            latency.add_metric(values, s.cumulative(), s.total)
        yield requests
        yield latency

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _fmt(bound: float) -> str:
    return repr(float(bound))


class BatchCollector(Collector):
    """``bundler_runner_batch_size`` and ``bundler_runner_inference_seconds`` histograms, and the
    ``bundler_runner_queue_depth`` gauge, by runner.

    Two prometheus-client ``Histogram.observe`` calls per batch cost more than the rest of the batch's
    bookkeeping (a lock per bucket and sum); plain counters rendered at scrape time say the same.
    """

    def __init__(self) -> None:
        self.sizes: dict[str, tuple[float, _Series]] = {}
        self.times: dict[str, tuple[float, _Series]] = {}
        self.depths: dict[str, Callable[[], float]] = {}

    def add(self, runner: str) -> tuple[_Series, _Series]:
        """Return the (batch size, inference seconds) series of ``runner``, created on first use."""
        size = self.sizes.setdefault(runner, (time.time(), _Series(BATCH_BUCKETS)))[1]
        return size, self.add_times(runner)

    def add_times(self, runner: str) -> _Series:
        """Return the inference seconds series of ``runner``, created on first use."""
        return self.times.setdefault(runner, (time.time(), _Series(LATENCY_BUCKETS)))[1]

    def collect(self) -> Iterator[Metric]:
        yield _histogram("bundler_runner_batch_size", "Rows per model call", self.sizes)
        yield _histogram(
            "bundler_runner_inference_seconds", "Time of one model call (a whole batch)", self.times
        )
        depth = GaugeMetricFamily(
            "bundler_runner_queue_depth",
            "Rows waiting for a batch (calls waiting for a thread, for a runner that does not batch)",
            labels=["runner"],
        )
        for runner, read in sorted(self.depths.items()):
            depth.add_metric([runner], read())
        yield depth

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _histogram(name: str, documentation: str, series: dict[str, tuple[float, _Series]]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["runner"])
    for runner, (created, s) in sorted(series.items()):
        family.add_metric([runner], s.cumulative(), s.total)
        # What prometheus-client's Histogram also reports: when the series started.
        family.samples.append(Sample(f"{name}_created", {"runner": runner}, created))
    return family


class Metrics:
    """The metric families of one served app."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = RequestCollector(service)
        r.register(self.requests)
        self.batches = BatchCollector()
        r.register(self.batches)
        self.service = service
        self.observe_request = self.requests.observe

    def observer(self, runner: str) -> BatchObserver:
        """Return the batch observer to hand one runner's Batcher."""
        return BatchObserver(self, runner)

    def call_observer(self, runner: str, waiting: Callable[[], float]) -> CallObserver:
        """Return the observer of a runner without a Batcher; ``waiting()`` is its queue depth."""
        return CallObserver(self, runner, waiting)

    def render(self) -> bytes:
        """Return the Prometheus text exposition."""
        return generate_latest(self.registry)


class BatchObserver:
    """Receives ``on_batch(size, seconds)`` and ``on_queue(depth)`` from a Batcher."""

    def __init__(self, metrics: Metrics, runner: str) -> None:
        self._sizes, self._times = metrics.batches.add(runner)
        self.depth = 0
        # Read at scrape time: the batcher reports the depth twice per request, a Gauge.set (lock and
        # float box) each time costs more than this attribute store.
        metrics.batches.depths[runner] = lambda: self.depth

    def on_batch(self, size: int, seconds: float) -> None:
        self._sizes.observe(size)
        self._times.observe(seconds)

    def on_queue(self, depth: int) -> None:
        self.depth = depth


class CallObserver:
    """Receives ``on_call(seconds)`` from a runner that does not batch; its queue is read at scrape time.

    Such a runner reports no batch sizes: its calls take what the API passed, on no batch axis.
    """

    def __init__(self, metrics: Metrics, runner: str, waiting: Callable[[], float]) -> None:
        self.on_call = metrics.batches.add_times(runner).observe
        metrics.batches.depths[runner] = waiting
