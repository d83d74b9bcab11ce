"""Batching config; pure scheduling with a fake clock; then the real asyncio Batcher with onnxruntime."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bundler.exceptions import BadInput, InferenceInputError, ModelError, Overloaded
from bundler.runner.batcher import MIN_TIMER_S, SWITCH_INTERVAL, Batcher, CostModel, Decision, Scheduler
from bundler.runner.config import DEFAULTS, BatchingConfig, env_names, resolve_batching

# ---------------------------------------------------------------- config


def test_defaults_without_env_or_file() -> None:
    assert resolve_batching("mlp", environ={}) == DEFAULTS
    assert DEFAULTS.max_batch_size >= 1 and DEFAULTS.max_queue >= DEFAULTS.max_batch_size


def test_docs_quote_the_defaults() -> None:
    """docs/batching.md's table and docs/kubernetes.md's batching paragraph give the code's defaults."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    table = dict(re.findall(r"^\| `(\w+)` \| (\d+)", (docs / "batching.md").read_text(), re.M))
    assert {k: int(v) for k, v in table.items()} == {
        f: getattr(DEFAULTS, f)
        for f in ("max_batch_size", "max_latency_ms", "max_queue", "max_concurrency", "batch_dim")
    }
    k8s = " ".join((docs / "kubernetes.md").read_text().split())
    quoted = re.findall(r"`(max_\w+)`(?: rows(?: waiting)?)?,? \(?default (\d+)", k8s)
    assert {k for k, _ in quoted} == {"max_batch_size", "max_concurrency", "max_queue"}
    for key, value in quoted:
        assert int(value) == getattr(DEFAULTS, key), key


def test_env_names_scope_the_runner_name() -> None:
    assert env_names("sr-model.v2", "max_batch_size") == (
        "BUNDLER_RUNNER_SR_MODEL_V2_MAX_BATCH_SIZE",
        "BUNDLER_MAX_BATCH_SIZE",
    )
    assert env_names("sr", "enabled") == ("BUNDLER_RUNNER_SR_BATCHING", "BUNDLER_BATCHING")


def test_precedence_explicit_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "bundler.yaml"
    config.write_text(
        "runners:\n"
        "  batching: {max_batch_size: 8, max_latency_ms: 500, max_queue: 99}\n"
        "  sr:\n"
        "    batching: {max_batch_size: 16, enabled: false}\n"
    )
    env = {"BUNDLER_CONFIG": str(config)}
    # file: per-runner beats the general section, which still supplies the rest
    got = resolve_batching("sr", environ=env)
    assert (got.max_batch_size, got.max_latency_ms, got.max_queue, got.enabled) == (16, 500.0, 99, False)
    assert resolve_batching("other", environ=env).max_batch_size == 8
    # unscoped env beats the file, scoped env beats unscoped
    env["BUNDLER_MAX_BATCH_SIZE"] = "32"
    assert resolve_batching("sr", environ=env).max_batch_size == 32
    env["BUNDLER_RUNNER_SR_MAX_BATCH_SIZE"] = "4"
    assert resolve_batching("sr", environ=env).max_batch_size == 4
    assert resolve_batching("other", environ=env).max_batch_size == 32
    env["BUNDLER_BATCHING"] = "yes"
    assert resolve_batching("sr", environ=env).enabled is True
    # explicit arguments win over everything; None means "not given"
    got = resolve_batching("sr", max_batch_size=2, max_latency_ms=None, max_queue=7, environ=env)
    assert (got.max_batch_size, got.max_latency_ms, got.max_queue) == (2, 500.0, 7)


def test_bundler_config_env_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("runners:\n  batching:\n    max_latency_ms: 250\n")
    monkeypatch.setenv("BUNDLER_CONFIG", str(config))
    monkeypatch.setenv("BUNDLER_MAX_QUEUE", "12")
    got = resolve_batching("x")
    assert (got.max_latency_ms, got.max_queue) == (250.0, 12)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"BUNDLER_MAX_BATCH_SIZE": "0"},
            "environment variable BUNDLER_MAX_BATCH_SIZE: '0' is not an integer >= 1",
        ),
        ({"BUNDLER_RUNNER_M_MAX_QUEUE": "ten"}, "BUNDLER_RUNNER_M_MAX_QUEUE: 'ten' is not an integer"),
        ({"BUNDLER_MAX_LATENCY_MS": "-3"}, "BUNDLER_MAX_LATENCY_MS: '-3' is not a positive number"),
        ({"BUNDLER_MAX_LATENCY_MS": "nan"}, "BUNDLER_MAX_LATENCY_MS: 'nan' is not a positive number"),
        ({"BUNDLER_RUNNER_M_BATCHING": "maybe"}, "BUNDLER_RUNNER_M_BATCHING: 'maybe' is not a boolean"),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("(", r"\(")):
        resolve_batching("m", environ=env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "runners:\n  batching: {max_bach_size: 3}\n",
            r"runners.batching: unknown key 'max_bach_size' \(did you mean 'max_batch_size'\?\)",
        ),
        (
            "runners:\n  m:\n    batching: {max_queue: 0}\n",
            r"runners.m.batching.max_queue: 0 is not an integer >= 1",
        ),
        ("runners:\n  m:\n    batching: {max_batch_size: true}\n", r"max_batch_size: True is not an integer"),
        (
            # docs/batching.md: the batch axis comes from the model's signature, not from config.
            "runners:\n  m:\n    batching: {batch_dim: 1}\n",
            r"runners.m.batching.batch_dim: the batch axis is the model's, not a setting; save the model with"
            r" signatures=\{'run': \{'batchable': True, 'batch_dim': 1\}\} and remove this key",
        ),
        ("runners: [1]\n", "runners: expected a mapping"),
        ("runners:\n  m: 3\n", r"runners.m: expected a mapping with a 'batching' key"),
        ("- a\n", "expected a mapping at the top"),
        # A batching option one level too high was ignored without a word (the defaults applied).
        (
            "runners:\n  m:\n    max_batch_size: 4\n",
            r"runners.m: 'max_batch_size' is a batching option, which would be ignored here; move it under"
            r" runners.m.batching",
        ),
        ("runners:\n  max_queue: 4\n", r"runners: 'max_queue' is a batching option.* under runners.batching"),
        ("max_latency_ms: 4\n", r"the top level: 'max_latency_ms' is a batching option"),
        (
            "batching: {max_queue: 4}\n",
            r"batching: it would be ignored at the top level; move it under runners",
        ),
        ("runners: {batching: [\n", "not valid YAML"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=message):
        resolve_batching("m", environ={"BUNDLER_CONFIG": str(path)})


def test_missing_config_file_and_unknown_argument() -> None:
    with pytest.raises(BadInput, match=r"BUNDLER_CONFIG: cannot read /nonexistent/x\.yaml"):
        resolve_batching("m", environ={"BUNDLER_CONFIG": "/nonexistent/x.yaml"})
    with pytest.raises(BadInput, match=r"unknown key 'max_latency' \(did you mean 'max_latency_ms'\?\)"):
        resolve_batching("m", environ={}, max_latency=3)
    with pytest.raises(BadInput, match=r"argument max_batch_size: 2\.5 is not an integer"):
        resolve_batching("m", environ={}, max_batch_size=2.5)  # type: ignore[arg-type]


def test_config_file_not_utf8_and_numpy_integers(tmp_path: Path) -> None:
    # A Latin-1 file raised a bare UnicodeDecodeError; np.int64(8) "is not an integer".
    path = tmp_path / "latin1.yaml"
    path.write_bytes("runners:\n  batching: {max_batch_size: 8}  # größe\n".encode("latin-1"))
    with pytest.raises(
        BadInput, match=r"latin1\.yaml: not UTF-8 text \(byte 46 is b'\\xf6'\); save it as UTF-8"
    ):
        resolve_batching("m", environ={"BUNDLER_CONFIG": str(path)})
    got = resolve_batching("m", environ={}, max_batch_size=np.int64(8), max_queue=np.uint16(64))
    assert (got.max_batch_size, got.max_queue) == (8, 64) and type(got.max_batch_size) is int


# ---------------------------------------------------------------- pure scheduling


def test_cost_model_recovers_fixed_and_per_row_cost() -> None:
    model = CostModel()
    for n in [1, 64, 8, 32, 2, 16, 4] * 10:
        model.observe(n, 0.002 + 0.0001 * n)
    assert model.a == pytest.approx(0.002, rel=1e-6)
    assert model.b == pytest.approx(0.0001, rel=1e-6)
    assert model.predict(10) == pytest.approx(0.003)


def test_cost_model_with_one_size_calls_it_fixed_cost_and_forgets_old_runs() -> None:
    model = CostModel(decay=0.2)
    assert model.predict(5) == 0.0
    model.observe(1, 0.5)  # a slow first run (allocations) ...
    for _ in range(60):
        model.observe(1, 0.001)
    assert (model.b, round(model.a, 4)) == (0.0, 0.001)  # ... is forgotten


def _scheduler(**overrides: object) -> Scheduler:
    scheduler = Scheduler(BatchingConfig(**{"max_batch_size": 8, "max_latency_ms": 100.0, **overrides}))  # type: ignore[arg-type]
    for n in (1, 8, 1, 8):
        scheduler.on_batch(n, 0.010 + 0.001 * n)  # a = 10 ms, b = 1 ms
    return scheduler


def test_lone_request_after_silence_is_dispatched_at_once() -> None:
    scheduler = _scheduler()
    scheduler.on_arrival(0.0)
    scheduler.on_arrival(1.0)  # one client, a second apart: gaps far above a
    assert scheduler.decide(1.0, 1, 1, 1.0).dispatch


def test_busy_traffic_waits_no_longer_than_the_rule_allows() -> None:
    scheduler = _scheduler()
    for i in range(20):
        scheduler.on_arrival(i * 0.001)  # 1 ms gaps, a = 10 ms: more arrivals pay off
    now = 0.019
    decision = scheduler.decide(now, 2, 2, 0.018)
    assert not decision.dispatch
    # (k+1)*silence + k*b reaches a at last + (a - k*b)/(k+1) = 0.019 + 8 ms / 3
    assert decision.wake_at == pytest.approx(0.019 + 0.008 / 3)
    # a full batch goes at once
    assert scheduler.decide(now, 8, 8, 0.012).dispatch
    # the oldest request's budget caps the wait: 100 ms budget minus t(k+1) = 13 ms
    decision = scheduler.decide(0.019, 2, 2, 0.019 - 0.086)
    assert decision.dispatch or decision.wake_at == pytest.approx(0.019 - 0.086 + 0.1 - 0.013)
    assert scheduler.decide(0.019, 2, 2, 0.019 - 0.09).dispatch


def test_unknown_costs_mean_no_waiting() -> None:
    scheduler = Scheduler(BatchingConfig(max_batch_size=8))
    for i in range(5):
        scheduler.on_arrival(i * 1e-6)
    assert scheduler.decide(5e-6, 3, 3, 0.0).dispatch


def test_admission_refuses_full_queue_and_missed_deadlines() -> None:
    scheduler = _scheduler(max_queue=16)
    # idle: anything goes, even work longer than the budget
    scheduler.admit(0.0, 500, 0, [])
    scheduler.admit(0.0, 1, 10, [(0.0, 8)])
    with pytest.raises(Overloaded, match=r"queue is full \(16 of max_queue=16 rows waiting\)") as full:
        scheduler.admit(0.0, 1, 16, [(0.0, 8)])
    assert full.value.retry_after > 0
    # A request bigger than the whole queue was told the queue "is full (3 of max_queue=16 rows waiting)".
    with pytest.raises(
        Overloaded, match=r"a request of 17 rows is more than max_queue=16 rows, and is taken"
    ):
        scheduler.admit(0.0, 17, 3, [(0.0, 8)])
    # 8 rows in flight (18 ms) + 3 full batches of 8 (54 ms) + 1 row (11 ms) = 83 ms: fits 100 ms
    roomy = _scheduler(max_queue=1000)
    roomy.admit(0.0, 1, 24, [(0.0, 8)])
    # ... but not after 30 ms of the budget went waiting for a sync API's thread
    with pytest.raises(
        Overloaded, match=r"\(about 83 ms of work is ahead after 30 ms waiting for an API thread\)"
    ):
        roomy.admit(0.0, 1, 24, [(0.0, 8)], waited=0.03)
    with pytest.raises(Overloaded, match="cannot answer within max_latency_ms=100") as late:
        roomy.admit(0.0, 1, 40, [(0.0, 8)])
    # retry after the work ahead: 18 ms + 5 * 18 ms
    assert late.value.retry_after == pytest.approx(0.108, abs=1e-3)


def _simulate(arrivals: list[float], config: BatchingConfig, cost: tuple[float, float]) -> list[dict]:
    """Drive Scheduler like Batcher does with a fake clock: one executor, true cost a + b*n."""
    scheduler = Scheduler(config)
    a, b = cost
    events: list[tuple[float, int, str]] = [(t, i, "arrive") for i, t in enumerate(arrivals)]
    heapq.heapify(events)
    queue: list[tuple[int, float]] = []
    busy_until: float | None = None
    inflight: list[tuple[float, int]] = []
    wake: float | None = None
    results: list[dict] = []
    seq = len(arrivals)
    while events:
        now, _, kind = heapq.heappop(events)
        if kind == "arrive":
            try:
                scheduler.admit(now, 1, len(queue), inflight)
            except Overloaded:
                results.append({"rejected": now})
                continue
            scheduler.on_arrival(now)
            queue.append((len(results), now))
            results.append({"arrival": now})
        elif kind == "done":
            scheduler.on_batch(inflight[0][1], now - inflight[0][0])
            inflight.clear()
            busy_until = None
        elif kind == "wake":
            if wake != now:
                continue
            wake = None
        if busy_until is None and queue:
            decision = scheduler.decide(now, len(queue), len(queue), queue[0][1])
            if decision.dispatch:
                batch, queue = queue[: config.max_batch_size], queue[config.max_batch_size :]
                busy_until = now + a + b * len(batch)
                inflight.append((now, len(batch)))
                for index, _ in batch:
                    results[index].update(start=now, end=busy_until, size=len(batch))
                heapq.heappush(events, (busy_until, seq, "done"))
                seq += 1
            elif decision.wake_at is not None and (wake is None or decision.wake_at < wake):
                wake = decision.wake_at
                heapq.heappush(events, (wake, seq, "wake"))
                seq += 1
    return results


def test_simulated_one_client_gets_no_added_latency() -> None:
    config = BatchingConfig(max_batch_size=32, max_latency_ms=50.0)
    # closed loop, one client: each request arrives 0.3 ms after the previous answer (run = 1.1 ms)
    arrivals = [i * 1.4e-3 for i in range(200)]
    results = _simulate(arrivals, config, (1e-3, 1e-4))
    assert all(r["size"] == 1 and r["start"] == r["arrival"] for r in results)


def test_simulated_heavy_traffic_batches_and_keeps_every_deadline() -> None:
    config = BatchingConfig(max_batch_size=32, max_latency_ms=20.0, max_queue=256)
    rng = random.Random(4)
    now, arrivals = 0.0, []
    for _ in range(3000):
        now += rng.expovariate(8_000)  # 8k req/s: 16x what unbatched calls (2 ms) can do
        arrivals.append(now)
    results = _simulate(arrivals, config, (2e-3, 2e-5))
    served = [r for r in results if "size" in r]
    sizes = [r["size"] for r in served]
    assert len(served) > 0.9 * len(arrivals)
    assert max(sizes) <= 32 and sum(sizes) / len(sizes) > 16
    # never waits past the budget: admitted requests finish within it (the learned model is exact here)
    late = [r for r in served if r["end"] - r["arrival"] > 0.020 + 1e-9]
    assert len(late) <= 3, late[:3]  # only the first batches, before the cost model has data


def test_simulated_overload_is_refused_not_queued_forever() -> None:
    config = BatchingConfig(max_batch_size=8, max_latency_ms=10.0, max_queue=64)
    arrivals = [i * 2e-5 for i in range(10_000)]  # 50k req/s for 0.2 s against ~2.7k/s of capacity
    results = _simulate(arrivals, config, (1e-3, 2.5e-4))
    rejected = [r for r in results if "rejected" in r]
    served = [r for r in results if "size" in r]
    assert rejected and served
    assert len(served) > 0.9 * 0.2 * 8 / 3e-3  # the runner stayed busy with full batches
    # until the model has timed a few batch sizes, the backlog is underestimated; then the budget holds
    late = [i for i, r in enumerate(served) if r["end"] - r["arrival"] > 0.010 + 1e-9]
    assert max(late) < 100 < len(served)


# ---------------------------------------------------------------- real asyncio + onnxruntime


def _mlp(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    dims = [64, 256, 256, 10]
    inits, nodes, prev = [], [], "x"
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)).astype(np.float32)
        bias = (rng.standard_normal(d_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}" if out != "y" else out]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_concurrent_submits_share_onnxruntime_calls_and_match_unbatched() -> None:
    session = ort.InferenceSession(_mlp(), providers=["CPUExecutionProvider"])
    calls: list[int] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feed["x"]))
        return session.run(None, feed)

    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(64)]
    expected = [session.run(None, {"x": x})[0] for x in inputs]
    observed: list[tuple[str, int]] = []

    class Observer:
        def on_batch(self, size: int, seconds: float) -> None:
            assert seconds > 0
            observed.append(("batch", size))

        def on_queue(self, depth: int) -> None:
            observed.append(("queue", depth))

    async def main() -> list[list[np.ndarray]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(
                run_batch, BatchingConfig(max_batch_size=64), executor=pool, observer=Observer()
            )
            answers = await asyncio.gather(*(batcher.submit({"x": x}) for x in inputs))
            await batcher.close()
            return answers

    answers = asyncio.run(main())
    assert len(calls) < 64 and sum(calls) == 64 and max(calls) > 1
    for got, want in zip(answers, expected, strict=True):
        assert got[0].shape == (1, 10)
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    assert sorted(size for kind, size in observed if kind == "batch") == sorted(calls)
    assert ("queue", 63) in observed


class DepthObserver:
    """A batcher observer that keeps the queue depths it is told."""

    def __init__(self) -> None:
        self.depths: list[int] = []

    def on_batch(self, size: int, seconds: float) -> None:
        pass

    def on_queue(self, depth: int) -> None:
        self.depths.append(depth)


class Gate:
    """A run_batch that blocks until released, recording each batch."""

    def __init__(self, fail_first: bool = False) -> None:
        self.release = threading.Event()
        self.batches: list[dict[str, np.ndarray]] = []
        self.fail_first = fail_first

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.append(feed)
        self.release.wait(5)
        if self.fail_first and len(self.batches) == 1:
            raise RuntimeError("boom in the model")
        return [feed["x"] * 2, feed["x"].sum(axis=tuple(range(1, feed["x"].ndim)), keepdims=False)]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_shapes_are_not_mixed_and_multi_row_requests_get_their_rows() -> None:
    gate = Gate()

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(gate, BatchingConfig(max_batch_size=16), executor=pool)
            first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 3), np.float32)}))
            await _settle()  # the first request is in the model; the rest queue behind it
            feeds = [
                np.full((rows, width), i, np.float32)
                for i, (rows, width) in enumerate([(2, 3), (1, 5), (3, 3), (1, 5)])
            ]
            feeds.append(np.full((1, 3), 9, np.float64))  # same shape, other dtype
            rest = [asyncio.ensure_future(batcher.submit({"x": x})) for x in feeds]
            await _settle()
            gate.release.set()
            answers = await asyncio.gather(first, *rest)
            await batcher.close()
            return [feeds, answers]

    feeds, answers = asyncio.run(main())
    shapes = sorted((b["x"].shape, str(b["x"].dtype)) for b in gate.batches)
    assert shapes == [((1, 3), "float32"), ((1, 3), "float64"), ((2, 5), "float32"), ((5, 3), "float32")]
    for x, (doubled, sums) in zip(feeds, answers[1:], strict=True):
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(sums, x.sum(axis=1))


def test_batch_dim_one_slices_along_axis_one() -> None:
    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            gate = Gate()
            gate.release.set()
            batcher = Batcher(lambda f: [f["x"] + 1], BatchingConfig(), executor=pool, batch_dim=1)
            hold = asyncio.ensure_future(batcher.submit({"x": np.zeros((2, 1))}))
            xs = [np.full((2, i + 1), i, np.float64) for i in range(4)]
            answers = await asyncio.gather(hold, *(batcher.submit({"x": x}) for x in xs))
            await batcher.close()
            return [xs, answers[1:]]

    xs, answers = asyncio.run(main())
    for x, (out,) in zip(xs, answers, strict=True):
        np.testing.assert_array_equal(out, x + 1)


def test_failing_batch_fails_only_its_requests_and_serving_continues() -> None:
    gate = Gate(fail_first=True)

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(gate, BatchingConfig(), executor=pool)
            doomed = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))}))
            await _settle()
            fine = [asyncio.ensure_future(batcher.submit({"x": np.full((1, 2), i)})) for i in range(3)]
            gate.release.set()
            results = await asyncio.gather(doomed, *fine, return_exceptions=True)
            later = await batcher.submit({"x": np.ones((1, 2))})
            await batcher.close()
            return [*results, later]

    doomed, *fine, later = asyncio.run(main())
    assert isinstance(doomed, RuntimeError) and "boom" in str(doomed)
    assert [float(f[0][0, 0]) for f in fine] == [0.0, 2.0, 4.0]
    np.testing.assert_array_equal(later[0], np.full((1, 2), 2.0))


def test_requests_rerun_alone_after_a_failed_batch_are_in_the_metrics() -> None:
    # A batch that one request's values failed is rerun request by request; those calls, which answer the
    # batchmates, were never observed: the batch-size sum fell short of the rows run, the call count too.
    release = threading.Event()
    calls: list[int] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        release.wait(5)
        if (feed["x"] < 0).any():
            raise ValueError("index out of range")
        calls.append(len(feed["x"]))
        return [feed["x"] * 2]

    observed: list[int] = []

    class Observer:
        def on_batch(self, size: int, seconds: float) -> None:
            assert seconds >= 0
            observed.append(size)

        def on_queue(self, depth: int) -> None:
            pass

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run_batch, BatchingConfig(), executor=pool, observer=Observer())
            first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))}))
            await _settle()
            rest = [asyncio.ensure_future(batcher.submit({"x": np.full((1, 2), v)})) for v in (1, -1, 2)]
            await _settle()
            release.set()
            results = await asyncio.gather(first, *rest, return_exceptions=True)
            await batcher.close()
            return results

    results = asyncio.run(main())
    assert isinstance(results[2], ValueError) and sum(not isinstance(r, Exception) for r in results) == 3
    assert calls == [1, 1, 1] and observed == calls  # the first alone, then the two good ones rerun alone


def test_full_queue_is_refused_and_close_drains() -> None:
    gate = Gate()

    async def main() -> tuple:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(gate, BatchingConfig(max_batch_size=2, max_queue=4), executor=pool)
            running = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
            await _settle()
            queued = [asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), i)})) for i in range(4)]
            await _settle()
            assert batcher.queued_rows == 4
            with pytest.raises(Overloaded, match="queue is full") as refused:
                await batcher.submit({"x": np.ones((1, 1))})
            closing = asyncio.ensure_future(batcher.close())
            await _settle()
            with pytest.raises(Overloaded, match="shutting down"):
                await batcher.submit({"x": np.ones((1, 1))})
            assert not closing.done()
            gate.release.set()
            await closing
            assert all(q.done() for q in queued) and batcher.queued_rows == 0
            return refused.value, await running, [q.result() for q in queued]

    refused, _, queued = asyncio.run(main())
    assert refused.retry_after > 0
    assert [float(q[0][0, 0]) for q in queued] == [0.0, 2.0, 4.0, 6.0]
    assert [len(b["x"]) for b in gate.batches] == [1, 2, 2]


def test_cancelled_requests_are_not_run() -> None:
    gate = Gate()

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(gate, BatchingConfig(), executor=pool)
            first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
            await _settle()
            gone = asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 7.0)}))
            kept = asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 3.0)}))
            await _settle()
            gone.cancel()
            gate.release.set()
            await first
            assert float((await kept)[0][0, 0]) == 6.0
            await batcher.close()

    asyncio.run(main())
    assert [b["x"].ravel().tolist() for b in gate.batches] == [[1.0], [3.0]]


def test_requests_whose_callers_left_leave_the_queue_gauge_and_make_room() -> None:
    # Dropped at dispatch without a word to the observer, their rows stayed in the queue-depth gauge for
    # good; and until that dispatch (after the call in flight) they filled max_queue, refusing newcomers.
    gate = Gate()
    observer = DepthObserver()
    depths = observer.depths

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            config = BatchingConfig(max_batch_size=1, max_queue=2)
            batcher = Batcher(gate, config, executor=pool, observer=observer)
            running = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
            await _settle()
            gone = [asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 9.0)})) for _ in range(2)]
            await _settle()
            for g in gone:
                g.cancel()
            await _settle()
            assert batcher.queued_rows == 2 and depths[-1] == 2
            kept = asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 3.0)}))
            await _settle()
            assert batcher.queued_rows == 1 and depths[-1] == 1
            gate.release.set()
            results = [await running, await kept]
            await batcher.close()
            return results

    results = asyncio.run(main())
    assert float(results[1][0][0, 0]) == 6.0
    assert depths[-1] == 0
    assert [b["x"].ravel().tolist() for b in gate.batches] == [[1.0], [3.0]]


def test_refusals_look_through_the_queue_only_after_a_caller_left() -> None:
    """Each refused submit looked through the whole queue for requests whose callers had left: up to
    max_queue checks a refusal, under overload, when the refusals must cost next to nothing."""
    gate = Gate()
    looks = [0]

    class Counted:
        def __init__(self, future: asyncio.Future) -> None:
            self.future = future

        def done(self) -> bool:
            looks[0] += 1
            return self.future.done()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.future, name)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(gate, BatchingConfig(max_batch_size=1, max_queue=8), executor=pool)
            running = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
            await _settle()
            queued = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))})) for _ in range(8)]
            await _settle()
            for queue in batcher._queues.values():
                for request in queue:
                    request.future = Counted(request.future)  # type: ignore[assignment]
            for _ in range(50):
                with pytest.raises(Overloaded, match="queue is full"):
                    await batcher.submit({"x": np.ones((1, 1))})
            assert looks[0] == 0
            queued[3].cancel()
            await _settle()
            room = asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 5.0)}))  # its place
            await _settle()
            assert 0 < looks[0] <= 8 and batcher.queued_rows == 8
            gate.release.set()
            await asyncio.gather(running, room, *queued, return_exceptions=True)
            assert float(room.result()[0][0, 0]) == 10.0
            await batcher.close()

    asyncio.run(main())


def test_abandoned_requests_dropped_at_dispatch_leave_the_queue_gauge() -> None:
    gate = Gate()
    observer = DepthObserver()
    depths = observer.depths

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(gate, BatchingConfig(), executor=pool, observer=observer)
            running = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
            await _settle()
            gone = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))})) for _ in range(3)]
            await _settle()
            for g in gone:
                g.cancel()
            gate.release.set()
            await running
            await batcher.close()

    asyncio.run(main())
    assert max(depths) == 3 and depths[-1] == 0 and len(gate.batches) == 1


def test_output_without_batch_axis_and_mismatched_rows_are_clear_errors() -> None:
    gate = Gate()

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(
                lambda f: (gate(f), [np.float32(1.0) * np.ones(())])[1], BatchingConfig(), executor=pool
            )
            first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
            await _settle()
            pair = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))})) for _ in range(2)]
            await _settle()
            gate.release.set()
            results = await asyncio.gather(first, *pair, return_exceptions=True)
            with pytest.raises(
                InferenceInputError, match="has 2 rows on batch axis 0 but the first input has 1"
            ):
                await batcher.submit({"x": np.ones((1, 1)), "y": np.ones((2, 1))})
            with pytest.raises(InferenceInputError, match="batches along axis 0"):
                await batcher.submit({"x": np.float32(1.0) * np.ones(())})
            await batcher.close()
            return results

    first, *pair = asyncio.run(main())
    assert first[0].shape == ()  # a lone request gets the outputs as they are
    assert all(isinstance(p, ModelError) and "batchable=False" in str(p) for p in pair)
    assert "shape [] (no axis 0) for a batch of 2 rows from 2 requests" in str(pair[0])


def test_an_output_with_other_rows_than_the_batch_says_so() -> None:
    # A model whose output has the batch axis but twice its rows was told "every output needs the batch
    # axis", which it has.
    gate = Gate()

    def double(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        gate(feed)
        return [np.concatenate([feed["x"], feed["x"]])]

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(double, BatchingConfig(), executor=pool)
            first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 3))}))
            await _settle()
            pair = [asyncio.ensure_future(batcher.submit({"x": np.ones((2, 3))})) for _ in range(2)]
            await _settle()
            gate.release.set()
            results = await asyncio.gather(first, *pair, return_exceptions=True)
            await batcher.close()
            return results

    first, *pair = asyncio.run(main())
    assert first[0].shape == (2, 3)
    message = "output of shape [8, 3] (8 rows on axis 0) for a batch of 4 rows from 2 requests"
    assert all(
        isinstance(p, ModelError) and message in str(p) and "one row per input row" in str(p) for p in pair
    )


def test_batcher_lowers_the_gil_switch_interval_only() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        Batcher(lambda f: [], BatchingConfig(), executor=ThreadPoolExecutor(1))
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        sys.setswitchinterval(0.0001)
        Batcher(lambda f: [], BatchingConfig(), executor=ThreadPoolExecutor(1))
        assert sys.getswitchinterval() == pytest.approx(0.0001)
    finally:
        sys.setswitchinterval(before)


def test_disabled_batching_runs_one_request_per_call() -> None:
    gate = Gate()
    gate.release.set()

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(gate, BatchingConfig(enabled=False), executor=pool)
            await asyncio.gather(*(batcher.submit({"x": np.ones((1, 1))}) for _ in range(10)))
            await batcher.close()

    asyncio.run(main())
    assert [len(b["x"]) for b in gate.batches] == [1] * 10


def test_busy_overhead_bound_traffic_waits_for_a_second_request_then_dispatches_by_itself() -> None:
    calls: list[int] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feed["x"]))
        return [feed["x"] + 1]

    async def main() -> tuple[list, float]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run_batch, BatchingConfig(max_batch_size=8), executor=pool)
            scheduler = batcher.scheduler
            for n in (1, 8, 1, 8):
                scheduler.on_batch(n, 0.060 + 0.0001 * n)  # a = 60 ms of fixed cost per call
            now = batcher.clock()
            for i in range(20, 0, -1):
                scheduler.on_arrival(now - i * 0.001)  # requests 1 ms apart until now
            start = time.perf_counter()
            first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
            await asyncio.sleep(0.005)
            assert calls == []  # waiting: a second request within ~a/2 pays off
            second = await asyncio.wait_for(batcher.submit({"x": np.ones((1, 1))}), 2)
            elapsed = time.perf_counter() - start
            answers = [await first, second]
            await batcher.close()
            return answers, elapsed

    answers, elapsed = asyncio.run(main())
    assert calls == [2]
    assert [float(a[0][0, 0]) for a in answers] == [1.0, 2.0]
    # after the second arrival the wait ends by itself within (a - 2b)/3 = 20 ms (plus scheduling slack)
    assert elapsed < 0.005 + 0.020 + 0.050


def _busy(seconds: float) -> None:
    """Compute for ``seconds`` of CPU time, as a model call does (a sleep would cost none)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.parametrize("call_seconds, on_loop", [(0.0, True), (0.002, True), (0.008, False)])
def test_only_calls_shorter_than_a_thread_hop_run_on_the_loop(call_seconds: float, on_loop: bool) -> None:
    """One request at a time: a call measured under INLINE_ALONE_MAX_S runs on the loop, longer ones not."""
    threads: list[str] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        threads.append(threading.current_thread().name)
        _busy(call_seconds)
        return [feed["x"] * 2]

    async def main() -> list[np.ndarray]:
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            batcher = Batcher(run_batch, BatchingConfig(), executor=pool)
            results = [await batcher.submit({"x": np.full((1, 2), float(i))}) for i in range(6)]
            await batcher.close()
            return [r[0] for r in results]

    results = asyncio.run(main())
    assert [float(r[0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert threads[0].startswith("worker")  # an untimed model never runs on the loop
    assert all(t == "MainThread" for t in threads[1:]) is on_loop
    assert all(t.startswith("worker") for t in threads[1:]) is not on_loop


def test_a_request_with_zero_rows_is_answered_not_left_waiting() -> None:
    async def main() -> list[np.ndarray]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(lambda feed: [feed["x"] * 2], BatchingConfig(), executor=pool)
            out = await asyncio.wait_for(batcher.submit({"x": np.ones((0, 4))}), timeout=5)
            await asyncio.wait_for(batcher.close(), timeout=5)
            return out

    (out,) = asyncio.run(main())
    assert out.shape == (0, 4)


@pytest.mark.parametrize("wait_s, timers", [(MIN_TIMER_S / 20, 0), (MIN_TIMER_S * 5, 1)])
def test_a_wait_shorter_than_the_loops_sleep_looks_again_next_iteration_instead(
    wait_s: float, timers: int
) -> None:
    """Sub-millisecond waits never become timers (a loop sleeps whole milliseconds); longer ones do."""
    calls: list[int] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feed["x"]))
        return [feed["x"]]

    async def main() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        armed: list[float] = []
        call_later = loop.call_later
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run_batch, BatchingConfig(), executor=pool)

            def spy(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
                if callback == batcher._on_timer:
                    armed.append(delay)
                return call_later(delay, callback, *args)

            loop.call_later = spy  # type: ignore[method-assign,assignment]
            deadline: list[float] = []

            def decide(now: float, *_: object) -> Decision:
                # The policy: wait wait_s after the first look, then go.
                deadline.append(deadline[0] if deadline else now + wait_s)
                return Decision(now >= deadline[0], deadline[0])

            batcher.scheduler.decide = decide  # type: ignore[method-assign,assignment]
            outs = await asyncio.wait_for(
                asyncio.gather(*(batcher.submit({"x": np.full((1, 1), float(i))}) for i in range(3))), 2
            )
            await batcher.close()
        return [float(o[0][0, 0]) for o in outs], armed

    answers, armed = asyncio.run(main())
    assert answers == [0.0, 1.0, 2.0]
    assert calls == [3]  # the three submits of one loop iteration form one batch
    assert len(armed) == timers


def test_a_call_longer_than_a_thread_hop_leaves_the_loop_when_others_wait() -> None:
    """2 ms calls: alone they run on the loop; with requests queued behind them, in the executor."""
    threads: list[tuple[str, int]] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        threads.append((threading.current_thread().name, len(feed["x"])))
        _busy(0.002)
        return [feed["x"] * 2]

    async def main() -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            batcher = Batcher(run_batch, BatchingConfig(max_batch_size=1), executor=pool)
            await batcher.submit({"x": np.zeros((1, 2))})  # timed: in the executor
            await batcher.submit({"x": np.zeros((1, 2))})  # alone: on the loop
            await asyncio.gather(*(batcher.submit({"x": np.zeros((1, 2))}) for _ in range(3)))
            await batcher.close()

    asyncio.run(main())
    names = [name for name, _ in threads]
    assert names[0].startswith("worker") and names[1] == "MainThread"
    # Three at once, one row per call: the first submit finds nothing queued (the others have not run
    # yet) and runs on the loop; the second has the third queued behind it, so it goes to the executor.
    assert names[2:] == ["MainThread", "worker_0", "MainThread"], names


def test_under_load_the_requests_of_one_loop_iteration_share_one_call() -> None:
    """After a batch with company, dispatch waits for the iteration's other submits instead of going alone."""
    calls: list[int] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feed["x"]))
        return [feed["x"] * 2]

    async def main() -> list[list[float]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run_batch, BatchingConfig(), executor=pool)
            await batcher.submit({"x": np.zeros((1, 1))})  # timed: from now on the calls run on the loop
            waves = []
            for _ in range(3):
                outs = await asyncio.gather(
                    *(batcher.submit({"x": np.full((1, 1), float(i))}) for i in range(4))
                )
                waves.append([float(o[0][0, 0]) for o in outs])
            await batcher.close()
            return waves

    waves = asyncio.run(main())
    assert waves == [[0.0, 2.0, 4.0, 6.0]] * 3
    # The first wave follows a lone request: its first submit goes at once, the other three together.
    # After that batch had company, each wave of four is one call.
    assert calls == [1, 1, 3, 4, 4], calls


def test_a_lone_request_on_an_idle_runner_runs_at_once_without_the_queue() -> None:
    """No future, queue or hand-over for it; its slot stays busy until the loop's next iteration, so a
    request right behind it still queues, and a failure reaches its caller and frees the slot."""
    calls: list[int] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feed["x"]))
        if feed["x"][0, 0] < 0:
            raise ValueError("negative input")
        return [feed["x"] * 2]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future] = []
        create_future = loop.create_future

        def spy() -> asyncio.Future:
            futures.append(create_future())
            return futures[-1]

        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run_batch, BatchingConfig(), executor=pool)
            await batcher.submit({"x": np.zeros((1, 1))})  # timed: from now on the calls run on the loop
            await asyncio.sleep(0)
            batcher.scheduler.decide = lambda *_: Decision(True)  # type: ignore[method-assign]
            loop.create_future = spy  # type: ignore[method-assign]
            (out,) = await batcher.submit({"x": np.ones((1, 1))})
            assert float(out[0, 0]) == 2.0 and futures == [] and not batcher._queues
            assert len(batcher._inflight) == 1  # busy until the next iteration
            await asyncio.sleep(0)
            assert batcher._inflight == []
            learned = batcher.scheduler.cost.count
            both = await asyncio.gather(*(batcher.submit({"x": np.full((1, 1), v)}) for v in (3.0, 4.0)))
            assert [float(o[0][0, 0]) for o in both] == [6.0, 8.0]
            assert len(futures) == 1  # the first ran at once, the one right behind it waited in the queue
            with pytest.raises(ValueError, match="negative input"):
                await batcher.submit({"x": np.full((1, 1), -1.0)})
            await asyncio.sleep(0)
            assert batcher._inflight == [] and batcher.scheduler.cost.count == learned + 2  # not the failure
            await batcher.close()

    asyncio.run(main())
    assert calls == [1, 1, 1, 1, 1]


def test_a_request_far_bigger_than_the_usual_calls_leaves_the_loop() -> None:
    """Whether a call runs on the loop went by the usual call's time alone: after small requests, one of
    40,000 rows (or a large image) ran on the loop, and health probes and every other client waited for it."""
    threads: list[tuple[str, int]] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        threads.append((threading.current_thread().name, len(feed["x"])))
        return [feed["x"] * 2]

    async def warm(pool: ThreadPoolExecutor) -> Batcher:
        batcher = Batcher(run_batch, BatchingConfig(max_batch_size=2048), executor=pool)
        for _ in range(4):
            await batcher.submit({"x": np.zeros((1, 8))})  # the first is timed in the executor
            await asyncio.sleep(0)
        return batcher

    async def main() -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            alone = await warm(pool)
            (big,) = await alone.submit({"x": np.ones((40_000, 8))})
            assert big.shape == (40_000, 8)
            await alone.close()
            batched = await warm(pool)
            # The first goes alone; the other two queue behind it and make one batch of 1,001 rows.
            await asyncio.gather(*(batched.submit({"x": np.zeros((n, 8))}) for n in (1, 1, 1000)))
            await batched.close()

    asyncio.run(main())
    assert [name for name, _ in threads[1:4]] == ["MainThread"] * 3, threads  # small calls: on the loop
    assert threads[4] == ("worker_0", 40_000), threads
    assert [name for name, _ in threads[6:10]] == ["MainThread"] * 4, threads  # the gather's first too
    assert threads[10:] == [("worker_0", 1001)], threads


def test_time_a_worker_waits_for_a_core_does_not_keep_short_calls_off_the_loop() -> None:
    """In a worker the call's CPU time decides, not its wall time (which counts waiting for a core)."""
    threads: list[str] = []

    def run_batch(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        threads.append(threading.current_thread().name)
        if threads[-1] != "MainThread":
            time.sleep(0.003)  # off the loop: descheduled, as when the busy loop holds the only free core
        return [feed["x"] * 2]

    async def main() -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            pool.submit(lambda: np.zeros((1, 2)) * 2).result()  # the thread's start-up is not the call's
            batcher = Batcher(run_batch, BatchingConfig(), executor=pool)
            for _ in range(12):
                await asyncio.gather(*(batcher.submit({"x": np.zeros((1, 2))}) for _ in range(3)))
            await batcher.close()

    asyncio.run(main())
    assert threads[0].startswith("worker")  # untimed: the executor
    # 3 ms of wall time but almost no CPU: later calls, with others queued behind them, run on the loop
    # (timed by the wall clock, every one stays in the worker). A loaded machine can make the first timed
    # calls slow, and the average takes a few calls to forget them: the last rounds must be on the loop.
    assert threads[-3:] == ["MainThread"] * 3, threads
