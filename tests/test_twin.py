"""A batching runner's one-thread twin: a lone call on every core, calls under load one per core.

On a machine whose cores something else also needs (the event loop, a load generator), an operator split
over threads waits for whichever thread lost its core; one-thread calls side by side do not
(benchmarks/corunner.py). The batcher's policy is tested with stand-in calls, the twin with real sessions.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from models import make_conv, make_mlp

import bundler
import bundler.onnx
from bundler.frameworks import onnx as fw
from bundler.runner.batcher import Batcher
from bundler.runner.config import BatchingConfig


class Calls:
    """Stand-ins for the wide and the narrow call: each sleeps, and every overlap is recorded."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = {"wide": 0, "narrow": 0}
        self.log: list[tuple[str, int]] = []  # (kind, rows) in start order
        self.overlaps: list[dict[str, int]] = []  # the running counts at each start

    def _run(self, kind: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.lock:
            self.running[kind] += 1
            self.log.append((kind, len(feed["x"])))
            self.overlaps.append(dict(self.running))
        time.sleep(self.seconds)
        with self.lock:
            self.running[kind] -= 1
        return [feed["x"] * 3]

    def wide(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run("wide", feed)

    def narrow(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run("narrow", feed)


def test_a_lone_call_runs_wide_and_calls_under_load_run_narrow_never_beside_a_wide_one() -> None:
    calls = Calls()

    async def main() -> list:
        with ThreadPoolExecutor(4) as pool:  # more workers than slots: the batcher bounds its calls itself
            config = BatchingConfig(max_batch_size=8, max_concurrency=2)
            batcher = Batcher(calls.wide, config, executor=pool, run_narrow=calls.narrow)
            (lone,) = await batcher.submit({"x": np.ones((1, 2), np.float32)})
            np.testing.assert_array_equal(lone, np.full((1, 2), 3.0))
            feeds = [np.full((1, 2), i, np.float32) for i in range(40)]
            answers = await asyncio.gather(*(batcher.submit({"x": x}) for x in feeds))
            await batcher.close()
            return [feeds, answers]

    feeds, answers = asyncio.run(main())
    for x, (y,) in zip(feeds, answers, strict=True):
        np.testing.assert_array_equal(y, x * 3)  # every caller gets its own rows back
    assert calls.log[0] == ("wide", 1)  # alone on an idle runner: every core
    narrow = [rows for kind, rows in calls.log if kind == "narrow"]
    assert sum(narrow) >= 30 and max(narrow) <= 8  # the burst ran narrow, within max_batch_size
    for running in calls.overlaps:
        assert not (running["wide"] and running["narrow"]), calls.overlaps  # a wide call has every core
        assert running["wide"] <= 1 and running["narrow"] <= 3  # max_concurrency, plus one waiting
    assert max(r["narrow"] for r in calls.overlaps) >= 2  # narrow calls did run side by side


def test_rows_waiting_are_shared_between_the_free_slots() -> None:
    """40 rows queued behind a wide call, 2 slots: the first narrow calls split them rather than one call
    taking max_batch_size rows while the other core waits for the next arrivals."""
    calls = Calls(seconds=0.05)

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            config = BatchingConfig(max_batch_size=32, max_concurrency=2)
            batcher = Batcher(calls.wide, config, executor=pool, run_narrow=calls.narrow)
            first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2), np.float32)}))
            await asyncio.sleep(0.01)  # the first request is in its wide call; the rest queue behind it
            rest = [batcher.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(20)]
            await asyncio.gather(first, *rest)
            await batcher.close()

    asyncio.run(main())
    assert calls.log[0] == ("wide", 1)
    assert calls.log[1:3] == [("narrow", 10), ("narrow", 10)], calls.log


def test_without_a_twin_auto_concurrency_is_one_call_at_a_time() -> None:
    calls = Calls(seconds=0.01)

    async def main() -> None:
        with ThreadPoolExecutor(4) as pool:
            batcher = Batcher(
                calls.wide, BatchingConfig(max_batch_size=2), executor=pool
            )  # max_concurrency 0
            await asyncio.gather(*(batcher.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(12)))
            await batcher.close()

    asyncio.run(main())
    assert max(r["wide"] for r in calls.overlaps) == 1
    assert {kind for kind, _ in calls.log} == {"wide"}


# ---------------------------------------------------------------- real sessions


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"memory.max": "1073741824\n"}, 1 << 30),
        ({"memory.max": "max\n"}, None),
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),  # cgroup v1: no limit
        ({"memory/memory.limit_in_bytes": "536870912\n"}, 1 << 29),
        ({}, None),
    ],
)
def test_memory_limit_reads_cgroup_v2_then_v1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], limit: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    real = fw.Path
    monkeypatch.setattr(fw, "Path", lambda p: real(str(p).replace("/sys/fs/cgroup", str(tmp_path))))
    assert fw.memory_limit() == limit


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two usable CPUs, whatever this machine has (the twin is for machines with more than one)."""
    monkeypatch.setattr(fw, "usable_cpus", lambda: 2)


def _conv(bundler_home: Path, name: str = "conv") -> bundler.Model:
    return bundler.onnx.save_model(name, make_conv(), signatures={"run": {"batchable": True}})


def test_a_cpu_model_with_default_options_gets_a_one_thread_twin_with_the_same_answers(
    bundler_home: Path, two_cpus: None
) -> None:
    model = _conv(bundler_home)
    wide = fw.OnnxSession.load(model, fit_threads=True)
    assert wide.session.get_session_options().intra_op_num_threads == 2
    twin = fw.one_thread_twin(wide, model)
    assert twin is not None
    assert twin.session.get_session_options().intra_op_num_threads == 1
    x = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(twin.run({"x": x})[0], wide.run({"x": x})[0], rtol=1e-5, atol=1e-5)


def test_no_twin_for_user_options_one_thread_models_one_cpu_or_a_big_model(
    bundler_home: Path, two_cpus: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    model = _conv(bundler_home)
    own = model.with_options(session_options=ort.SessionOptions())
    assert fw.one_thread_twin(fw.OnnxSession.load(own, fit_threads=True), own) is None  # the user's options
    mlp = bundler.onnx.save_model("mlp", make_mlp(), signatures={"run": {"batchable": True}})
    assert fw.one_thread_twin(fw.OnnxSession.load(mlp, fit_threads=True), mlp) is None  # runs on one thread
    wide = fw.OnnxSession.load(model, fit_threads=True)
    monkeypatch.setattr(fw, "TWIN_MAX_BYTES", 1000)
    assert fw.one_thread_twin(wide, model) is None  # a second copy would cost too much memory
    monkeypatch.undo()
    monkeypatch.setattr(fw, "memory_limit", lambda: 4000)
    assert fw.one_thread_twin(wide, model) is None  # more than a quarter of the process's memory limit
    monkeypatch.setattr(fw, "memory_limit", lambda: 1 << 30)
    assert fw.one_thread_twin(wide, model) is not None
    monkeypatch.undo()
    monkeypatch.setattr(fw, "usable_cpus", lambda: 1)
    assert fw.one_thread_twin(wide, model) is None


def test_a_twin_that_cannot_load_leaves_the_runner_on_its_one_session(
    bundler_home: Path, two_cpus: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = _conv(bundler_home)
    wide = fw.OnnxSession.load(model, fit_threads=True)

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(fw, "load_model", out_of_memory)
    with caplog.at_level("WARNING", logger="bundler.onnx"):
        assert fw.one_thread_twin(wide, model) is None
    assert "no one-thread twin session (std::bad_alloc)" in caplog.text


def test_a_served_runner_takes_the_twin_unless_its_concurrency_is_set(
    bundler_home: Path, two_cpus: None
) -> None:
    model = _conv(bundler_home)
    x = np.random.default_rng(1).random((1, 1, 64, 64), dtype=np.float32)

    async def main() -> None:
        auto = model.to_runner()
        await auto.async_init()
        try:
            assert auto._twin is not None and auto.config.max_concurrency == 2
            assert auto.batcher is not None and auto.batcher.run_narrow == auto._twin.run
            want = auto.session.run({"x": x})[0]
            got = await asyncio.gather(*(auto.run.async_run(x) for _ in range(24)))
            for y in got:
                np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        finally:
            await auto.shutdown()
        assert auto._twin is None
        fixed = model.to_runner(name="fixed", max_concurrency=1)
        await fixed.async_init()
        try:
            assert fixed._twin is None and fixed.config.max_concurrency == 1
            assert fixed.batcher is not None and fixed.batcher.run_narrow is None
        finally:
            await fixed.shutdown()

    asyncio.run(main())
