"""Runner: init_local and served (async_init) paths, batching through the event loop, errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

import bundler.onnx
from bundler.exceptions import BadInput, InferenceInputError, ModelError, ProviderError
from bundler.runner.runner import Runner, ThreadCalls
from tests.models import make_mlp, make_multi_io, missing_provider, reference_run

MLP = make_mlp()


def _expected(x: np.ndarray) -> np.ndarray:
    return reference_run(MLP, {"x": np.asarray(x, np.float32)})[0]


def _count_calls(runner: Runner) -> list[tuple[str, int]]:
    """Wrap the loaded session's run to record (thread name, rows) per onnxruntime call."""
    calls: list[tuple[str, int]] = []
    session = runner.session
    real: Callable[[dict[str, np.ndarray]], list[np.ndarray]] = session.run

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append((threading.current_thread().name, next(iter(feed.values())).shape[0]))
        return real(feed)

    session.run = run  # type: ignore[method-assign]
    return calls


@pytest.fixture
def batchable() -> Runner:
    bundler.onnx.save_model("mlp", MLP, signatures={"run": {"batchable": True}})
    return bundler.onnx.get("mlp").to_runner(max_batch_size=32)


def test_init_local_runs_and_casts() -> None:
    bundler.onnx.save_model("mlp", MLP)
    runner = bundler.onnx.get("mlp").to_runner()
    assert not runner.ready and runner.name == "mlp" and runner.batchable is False
    runner.init_local()
    assert runner.ready
    x = np.random.default_rng(1).standard_normal((3, 64))  # float64 in, cast to float32
    np.testing.assert_allclose(runner.run.run(x), _expected(x), rtol=1e-6)
    np.testing.assert_allclose(runner.run.run(x=x.tolist()), _expected(x), rtol=1e-6)
    np.testing.assert_allclose(asyncio.run(runner.run.async_run({"x": x})), _expected(x), rtol=1e-6)


def test_multiple_outputs_come_back_as_a_tuple() -> None:
    bundler.onnx.save_model("multi", make_multi_io())
    runner = bundler.onnx.get("multi").to_runner()
    runner.init_local()
    s, p, k2 = runner.run.run([[1, 2, 3, 4]], [[2, 2, 2, 2]], k=[[21]])
    np.testing.assert_array_equal(s, [[3, 4, 5, 6]])
    np.testing.assert_array_equal(p, [[2, 4, 6, 8]])
    assert k2.dtype == np.int64 and k2[0, 0] == 42


def test_run_before_init_says_what_to_do() -> None:
    bundler.onnx.save_model("mlp", MLP)
    runner = bundler.onnx.get("mlp").to_runner()
    with pytest.raises(ModelError, match=r"runner 'mlp' is not initialized: call runner.init_local\(\)"):
        runner.run.run(np.ones((1, 64)))
    with pytest.raises(ModelError, match="not initialized"):
        asyncio.run(runner.run.async_run(np.ones((1, 64))))
    with pytest.raises(ModelError, match="or serve it"):
        _ = runner.session


def test_specs_and_config_without_loading(batchable: Runner) -> None:
    assert batchable.input_specs == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 64], "type": "tensor"}
    ]
    assert batchable.output_specs[0]["shape"] == ["batch", 10]
    assert batchable.config.max_batch_size == 32
    assert batchable.batchable and batchable.batch_dim == 0 and not batchable.ready


def test_to_runner_argument_errors() -> None:
    bundler.onnx.save_model("plain", MLP)
    with pytest.raises(
        BadInput, match=r"max_batch_size given, but model plain:\w+ was saved with batchable=False"
    ):
        bundler.onnx.get("plain").to_runner(max_batch_size=8)
    with pytest.raises(BadInput, match="invalid runner name 'Bad Name'"):
        bundler.onnx.get("plain").to_runner(name="Bad Name")
    bundler.onnx.save_model("mlp", MLP, signatures={"run": {"batchable": True}})
    with pytest.raises(BadInput, match="max_batch_sise"):
        bundler.onnx.get("mlp").to_runner(max_batch_sise=8)
    assert bundler.onnx.get("mlp").to_runner(name="mlp-2").name == "mlp-2"


def test_to_runner_takes_bentomls_arguments() -> None:
    bundler.onnx.save_model("mlp", MLP, signatures={"run": {"batchable": True}})
    model = bundler.onnx.get("mlp")
    # BentoML: name="" is the default (the model's name); embedded runners run in the API process,
    # which is where bundler's runners always run.
    assert model.to_runner(name="").name == "mlp"
    # BentoML's first parameter is the name: to_runner("sr_runner") took it as max_batch_size.
    assert model.to_runner("mlp-runner").name == "mlp-runner"
    assert model.to_runner("mlp-runner", 8, 50).config.max_batch_size == 8
    assert model.to_runner(embedded=True).name == "mlp"
    runner = model.to_runner(
        max_batch_size=8, method_configs={"run": {"max_batch_size": 4, "max_latency_ms": 50}}
    )
    assert (runner.config.max_batch_size, runner.config.max_latency_ms) == (4, 50.0)
    with pytest.raises(
        BadInput, match=r"runner 'mlp': method_configs names 'predict'; ONNX runners have one method, 'run'"
    ):
        model.to_runner(method_configs={"predict": {"max_batch_size": 4}})
    with pytest.raises(BadInput, match=r"unknown key 'max_batch_sise'"):
        model.to_runner(method_configs={"run": {"max_batch_sise": 4}})
    with pytest.raises(BadInput, match=r"runner 'mlp': method_configs\['run'\] must be a dict"):
        model.to_runner(method_configs={"run": 4})


def test_batch_dim_is_the_models_own() -> None:
    # to_runner(batch_dim=1) was accepted and ignored: the batcher uses the saved signature's axis.
    bundler.onnx.save_model("mlp", MLP, signatures={"run": {"batchable": True}})
    with pytest.raises(
        BadInput,
        match=r"batch_dim=1 given, but the batch axis is the model's: mlp:\w+ was saved with batch_dim=0;"
        r" save it with signatures=\{'run': \{'batchable': True, 'batch_dim': 1\}\}",
    ):
        bundler.onnx.get("mlp").to_runner(batch_dim=1)
    assert bundler.onnx.get("mlp").to_runner(batch_dim=0).config.batch_dim == 0
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "batch_second",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, "batch"])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    bundler.onnx.save_model("second", proto, signatures={"run": {"batchable": True, "batch_dim": 1}})
    runner = bundler.onnx.get("second").to_runner(batch_dim=1)
    assert runner.config.batch_dim == 1  # the config names the axis the batcher uses


def test_with_options_reach_the_runner() -> None:
    bundler.onnx.save_model("mlp", MLP)
    missing = missing_provider()
    runner = bundler.onnx.get("mlp").with_options(providers=[missing]).to_runner()
    with pytest.raises(ProviderError, match=f"{missing} not available"):
        runner.init_local()
    assert not runner.ready


def _intra_threads(runner: Runner) -> int:
    return int(runner.session.session.get_session_options().intra_op_num_threads)


def test_a_model_too_small_to_share_gets_one_intra_op_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from bundler.frameworks import onnx as fw

    model = bundler.onnx.save_model("mlp", MLP, signatures={"run": {"batchable": True}})
    monkeypatch.setattr(fw, "usable_cpus", lambda: 4)
    small = model.to_runner()
    small.init_local()
    assert _intra_threads(small) == 1  # a batch-1 run of this MLP takes microseconds
    np.testing.assert_allclose(small.run.run(np.ones((2, 64))), _expected(np.ones((2, 64))), rtol=1e-5)

    monkeypatch.setattr(fw, "SMALL_RUN_S", 0.0)  # now every model counts as big enough
    big = model.to_runner()
    big.init_local()
    assert _intra_threads(big) == 4

    monkeypatch.setattr(fw, "SMALL_RUN_S", 1.0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 3
    given = model.with_options(session_options=options).to_runner()
    given.init_local()
    assert _intra_threads(given) == 3  # the user's SessionOptions are used as given
    # bundler.onnx.load_model, the guide's API, never probes.
    assert bundler.onnx.load_model(model).get_session_options().intra_op_num_threads == 4


def test_served_batchable_runner_coalesces_concurrent_calls(batchable: Runner) -> None:
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1 + i % 3, 64)) for i in range(40)]

    async def main() -> tuple[list[Any], list[tuple[str, int]]]:
        batchable.init_local()
        calls = _count_calls(batchable)
        await batchable.async_init()
        assert batchable.batcher is not None
        outs = await asyncio.gather(*(batchable.run.async_run(x) for x in xs))
        await batchable.shutdown()
        return outs, calls

    outs, calls = asyncio.run(main())
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_allclose(out, _expected(x), rtol=1e-5, atol=1e-6)
    assert sum(rows for _, rows in calls) == sum(len(x) for x in xs)
    assert len(calls) < len(xs), calls  # coalesced
    # The first call, untimed, runs in the runner's pool; later ones too unless they proved shorter than a
    # thread hop (the batcher's inline rule, tested in test_batcher.py), which then run on the loop.
    assert calls[0][0].startswith("runner-mlp"), calls
    assert all(name.startswith("runner-mlp") or name == "MainThread" for name, _ in calls), calls
    assert not batchable.ready


def test_sync_run_from_api_threads_goes_through_the_loop(batchable: Runner) -> None:
    xs = [np.full((1, 64), i, np.float64) for i in range(24)]

    async def main() -> tuple[list[Any], list[tuple[str, int]]]:
        batchable.init_local()
        calls = _count_calls(batchable)
        await batchable.async_init()
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(8) as pool:  # like the server's API threads calling runner.run.run
            outs = await asyncio.gather(*(loop.run_in_executor(pool, batchable.run.run, x) for x in xs))
        with pytest.raises(ModelError, match="called on the server's event loop"):
            batchable.run.run(xs[0])
        with pytest.raises(InferenceInputError, match=r"input 'x' expects shape float32 \[batch, 64\]"):
            await loop.run_in_executor(None, batchable.run.run, np.ones((1, 3)))
        await batchable.shutdown()
        return outs, calls

    outs, calls = asyncio.run(main())
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_allclose(out, _expected(x), rtol=1e-5, atol=1e-5)
    assert len(calls) < len(xs), calls
    # The batcher runs each call in the runner's pool, or on the loop itself once the model is timed as
    # faster than a thread hop (batcher.INLINE_MAX_S); never in the API threads that called run.run.
    loop_thread = threading.current_thread().name  # asyncio.run ran the loop on this thread
    assert all(name.startswith("runner-mlp") or name == loop_thread for name, _ in calls), calls


def test_a_sync_api_call_counts_the_wait_for_its_thread(batchable: Runner) -> None:
    # A sync API's request waits for one of the server's API threads, in a pool whose queue nothing bounds;
    # that wait was not part of its latency budget, so under overload such requests waited far past
    # max_latency_ms (15 s against 10 s), where an async API's were refused with 503.
    seen: list[float] = []

    async def main() -> None:
        await batchable.async_init()
        assert batchable.batcher is not None
        submit = batchable.batcher.submit

        async def spy(feed: dict[str, np.ndarray], waited: float = 0.0) -> list[np.ndarray]:
            seen.append(waited)
            return await submit(feed, waited)

        batchable.batcher.submit = spy  # type: ignore[method-assign]
        calls = ThreadCalls()
        calls.queued_at -= 2.5  # as if it had waited 2.5 s for a thread
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(None, calls.call, batchable.run.run, np.ones((1, 64)))
        np.testing.assert_allclose(out, _expected(np.ones((1, 64))), rtol=1e-5, atol=1e-6)
        await batchable.run.async_run(np.ones((1, 64)))  # an async API's call has waited for nothing
        await batchable.shutdown()

    asyncio.run(main())
    assert len(seen) == 2 and 2.5 <= seen[0] < 10 and seen[1] == 0.0


def test_served_plain_runner_runs_in_its_pool() -> None:
    bundler.onnx.save_model("mlp", MLP)
    runner = bundler.onnx.get("mlp").to_runner()
    x = np.ones((2, 64))

    async def main() -> tuple[Any, Any, list[tuple[str, int]]]:
        await runner.async_init()
        assert runner.ready and runner.batcher is None
        calls = _count_calls(runner)
        a = await runner.run.async_run(x)
        b = await asyncio.to_thread(runner.run.run, x)
        await runner.shutdown()
        return a, b, calls

    a, b, calls = asyncio.run(main())
    np.testing.assert_allclose(a, _expected(x), rtol=1e-6)
    np.testing.assert_allclose(b, _expected(x), rtol=1e-6)
    assert [name.split("_")[0] for name, _ in calls] == ["runner-mlp", "runner-mlp"]


def test_async_run_from_another_loop_uses_the_runner_loop(batchable: Runner) -> None:
    started = threading.Event()
    stop: asyncio.Future[None] | None = None
    server_loop: asyncio.AbstractEventLoop | None = None

    async def serve() -> None:
        nonlocal stop, server_loop
        await batchable.async_init()
        server_loop = asyncio.get_running_loop()
        stop = server_loop.create_future()
        started.set()
        await stop
        await batchable.shutdown()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert started.wait(30)
        x = np.ones((1, 64))
        out = asyncio.run(batchable.run.async_run(x))  # a second loop, e.g. a notebook's
        np.testing.assert_allclose(out, _expected(x), rtol=1e-6)
    finally:
        assert server_loop is not None and stop is not None
        server_loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(30)
    assert not thread.is_alive()


def test_runner_outlives_the_loop_it_was_served_on(batchable: Runner) -> None:
    # e.g. a notebook: asyncio.run(runner.async_init()) then later calls, with that loop gone.
    asyncio.run(batchable.async_init())
    x = np.ones((2, 64))
    np.testing.assert_allclose(batchable.run.run(x), _expected(x), rtol=1e-6)
    np.testing.assert_allclose(asyncio.run(batchable.run.async_run(x)), _expected(x), rtol=1e-6)
