"""The serving hot path's shortcuts give the same answers as the long ways they skip."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response

from bundler.exceptions import Overloaded
from bundler.io import JSON, File, NumpyNdarray, Text
from bundler.runner.batcher import Batcher, Scheduler
from bundler.runner.config import BatchingConfig


def _request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""})


@pytest.mark.parametrize(
    ("descriptor", "value"),
    [
        (NumpyNdarray(), np.arange(4.0)),
        (JSON(), {"a": 1}),
        (Text(), "hi"),
        (File(mime_type="text/csv"), b"a,b"),
        (File(mime_type="text/html; charset=latin-1"), b"<p>"),
        (File(), b"\x00"),
    ],
)
def test_lean_response_sends_what_starlette_response_sends(descriptor: Any, value: Any) -> None:
    ours = descriptor.to_response(value)
    theirs = Response(ours.body, media_type=ours.media_type)
    assert isinstance(ours, Response)
    assert ours.status_code == 200 and ours.raw_headers == theirs.raw_headers
    assert ours.headers["content-type"] == theirs.headers["content-type"]


def test_accept_and_content_type_come_from_the_first_header() -> None:
    d = NumpyNdarray()
    npy = _request([(b"accept", b"application/x-npy"), (b"accept", b"application/json")])
    assert d.to_response(np.zeros(2), npy).media_type == "application/octet-stream"
    assert d.to_response(np.zeros(2), _request([])).media_type == "application/json"
    from bundler.io import media_type

    assert (
        media_type(_request([(b"content-type", b" Application/JSON ; charset=utf-8")])) == "application/json"
    )
    assert media_type(_request([])) == ""


def _exact_admits(
    s: Scheduler, now: float, rows: int, queued: int, inflight: list[tuple[float, int]]
) -> bool:
    # The rule without the shortcut: refuse when the exact predicted backlog exceeds the budget.
    if queued and queued + rows > s.config.max_queue:
        return False
    if not (queued or inflight):
        return True
    return s.backlog(now, queued + rows, inflight) <= s.budget


@settings(max_examples=300, deadline=None)
@given(
    a=st.floats(0, 0.05),
    b=st.floats(0, 0.01),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=6),
    latency_ms=st.floats(1, 2000),
    max_batch=st.integers(1, 64),
    concurrency=st.integers(1, 3),
    rows=st.integers(1, 80),
    queued=st.integers(0, 2000),
    inflight=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 100)), max_size=3),
    gap=st.floats(1e-6, 1.0),
)
def test_admit_shortcut_decides_like_the_exact_backlog(
    a: float,
    b: float,
    sizes: list[int],
    latency_ms: float,
    max_batch: int,
    concurrency: int,
    rows: int,
    queued: int,
    inflight: list[tuple[float, int]],
    gap: float,
) -> None:
    config = BatchingConfig(
        max_batch_size=max_batch, max_latency_ms=latency_ms, max_queue=1024, max_concurrency=concurrency
    )
    s = Scheduler(config)
    for n in sizes:
        s.on_batch(n, a + b * n)
    s.gap = gap
    now = 1.0
    want = _exact_admits(s, now, rows, queued, inflight)
    try:
        s.admit(now, rows, queued, inflight)
        got = True
    except Overloaded:
        got = False
    assert got == want


def test_a_batch_run_on_the_loop_answers_its_caller_without_another_iteration() -> None:
    """The caller whose submit ran the batch inline is answered at once; arrivals meanwhile still batch."""
    sizes: list[int] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        sizes.append(len(feed["x"]))
        return [feed["x"] * 2]

    async def main() -> tuple[bool, list[list[np.ndarray]]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run_batch, BatchingConfig(), executor=pool)
            for _ in range(3):  # time the model: a call this short then runs on the loop
                await batcher.submit({"x": np.zeros((1, 2))})
            await asyncio.sleep(0.01)
            task = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))}))
            await asyncio.sleep(0)  # one loop iteration: the task's first step runs, then this one
            answered_at_once = task.done()
            await task
            del sizes[:]
            together = await asyncio.gather(*(batcher.submit({"x": np.full((1, 2), i)}) for i in range(4)))
            await batcher.close()
            return answered_at_once, together

    answered_at_once, together = asyncio.run(main())
    assert answered_at_once
    assert [float(r[0][0, 0]) for r in together] == [0.0, 2.0, 4.0, 6.0]
    # The first runs alone on the loop; the three that arrived while its slot was held run as one batch.
    assert sizes == [1, 3]


def test_batch_metrics_render_like_prometheus_client_histograms() -> None:
    """The plain-counter batch metrics expose exactly what prometheus-client's Histogram and Gauge did."""
    from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

    from bundler.server.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics

    batches = [(1, 0.0001), (3, 0.002), (32, 0.0025), (64, 0.5), (2000, 20.0), (8, 0.0005)]
    ours = Metrics("svc")
    observer = ours.observer("mlp")
    reference = CollectorRegistry()
    size = Histogram("bundler_runner_batch_size", "Rows per model call", ["runner"], buckets=BATCH_BUCKETS,
                     registry=reference)  # fmt: skip
    seconds = Histogram("bundler_runner_inference_seconds", "Time of one model call (a whole batch)",
                        ["runner"], buckets=LATENCY_BUCKETS, registry=reference)  # fmt: skip
    depth = Gauge("bundler_runner_queue_depth",
                  "Rows waiting for a batch (calls waiting for a thread, for a runner that does not batch)",
                  ["runner"], registry=reference)  # fmt: skip
    for rows, secs in batches:
        observer.on_batch(rows, secs)
        size.labels("mlp").observe(rows)
        seconds.labels("mlp").observe(secs)
    observer.on_queue(7)
    depth.labels("mlp").set(7)

    def runner_lines(text: bytes) -> list[str]:
        # Creation times differ by when each was made; everything else must match line for line.
        return [x for x in text.decode().splitlines() if "bundler_runner" in x and "_created{" not in x]

    text = ours.render()
    assert runner_lines(text) == runner_lines(generate_latest(reference))
    assert len(runner_lines(text)) > 40
    assert 'bundler_runner_batch_size_created{runner="mlp"}' in text.decode()
