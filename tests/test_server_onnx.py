"""Real runners behind the real server: ONNX Runtime sessions, the batcher, overload, OpenAPI specs."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

import bundler
from bundler.frameworks.onnx import OnnxSession
from bundler.io import NumpyNdarray
from bundler.server.app import build_app
from bundler.server.testing import running
from tests.models import make_mlp, reference_run

IN = 16


def mlp_service(
    batchable: bool = True, hidden: int = 64, **runner_options: Any
) -> tuple[bundler.Service, Any]:
    proto = make_mlp(None, in_dim=IN, hidden=hidden, out=3)
    model = bundler.onnx.save_model("mlp", proto, signatures={"run": {"batchable": batchable}})
    runner = model.to_runner(**runner_options)
    svc = bundler.Service("mlp-svc", runners=[runner])

    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    def predict(x: np.ndarray) -> np.ndarray:
        return runner.run.run(x)

    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    async def apredict(x: np.ndarray) -> np.ndarray:
        return await runner.run.async_run(x)

    return svc, proto


@pytest.fixture
def run_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count ONNX Runtime calls (rows per call) of every OnnxSession."""
    calls: list[int] = []
    original = OnnxSession.run

    def counting(self: OnnxSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(next(iter(feed.values())).shape[0])
        return original(self, feed)

    monkeypatch.setattr(OnnxSession, "run", counting)
    return calls


def wait_ready(url: str) -> None:
    with httpx.Client(base_url=url) as c:
        for _ in range(500):
            if c.get("/readyz").status_code == 200:
                return
            asyncio.run(asyncio.sleep(0.01))
    raise AssertionError("runners did not load")


@pytest.fixture
def served(run_calls: list[int]) -> Iterator[tuple[str, Any]]:
    svc, proto = mlp_service()
    with running(build_app(svc)) as url:
        wait_ready(url)
        yield url, proto


async def _fire(url: str, route: str, inputs: list[np.ndarray]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(inputs), max_keepalive_connections=len(inputs))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:
        return await asyncio.gather(*(c.post(route, json=x.tolist()) for x in inputs))


@pytest.mark.parametrize("route", ["/predict", "/apredict"])
def test_64_concurrent_requests_are_batched_and_equal_unbatched(
    served: tuple[str, Any], run_calls: list[int], route: str
) -> None:
    url, proto = served
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1, IN)).astype(np.float32) for _ in range(64)]
    run_calls.clear()
    responses = asyncio.run(_fire(url, route, inputs))
    assert [r.status_code for r in responses] == [200] * 64
    for x, r in zip(inputs, responses, strict=True):
        expected = reference_run(proto, {"x": x})[0]
        np.testing.assert_allclose(np.asarray(r.json(), dtype=np.float32), expected, rtol=1e-5, atol=1e-6)
    assert sum(run_calls) == 64
    assert len(run_calls) < 64, f"no batching: {len(run_calls)} session.run calls for 64 requests"
    metrics = httpx.get(f"{url}/metrics").text
    count = re.search(r'bundler_runner_batch_size_count\{runner="mlp"\} (\S+)', metrics)
    assert count and float(count.group(1)) >= len(run_calls)


def test_wrong_input_shape_is_400_naming_the_input(served: tuple[str, Any]) -> None:
    url, _ = served
    r = httpx.post(f"{url}/predict", json=[[1.0, 2.0]])
    assert r.status_code == 400
    assert "'x'" in r.json()["error"] and str(IN) in r.json()["error"]


def test_openapi_takes_dtype_and_shape_from_the_runner_model(served: tuple[str, Any]) -> None:
    url, _ = served
    doc = httpx.get(f"{url}/docs.json").json()
    schema = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "minItems" not in schema  # the batch axis is dynamic
    assert schema["items"]["minItems"] == schema["items"]["maxItems"] == IN
    assert schema["items"]["items"] == {"type": "number", "format": "float"}
    out = doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert out["items"]["maxItems"] == 3


def test_unbatched_runner_serves_each_request_on_its_own(run_calls: list[int]) -> None:
    svc, proto = mlp_service(batchable=False)
    with running(build_app(svc)) as url:
        wait_ready(url)
        x = np.ones((2, IN), np.float32)
        r = httpx.post(f"{url}/predict", json=x.tolist())
        np.testing.assert_allclose(
            np.asarray(r.json(), np.float32), reference_run(proto, {"x": x})[0], rtol=1e-5
        )
    assert run_calls == [2]


@pytest.mark.parametrize(
    "options",
    [{}, {"batchable": False}, {"enabled": False}],
    ids=["batched", "not-batchable", "batching-off"],
)
def test_a_full_runner_queue_is_503_with_retry_after(run_calls: list[int], options: dict[str, Any]) -> None:
    # An unbatched runner (batching off, or a model saved batchable=False) bounds its queue too.
    svc, proto = mlp_service(hidden=2048, max_queue=1, **options)
    with running(build_app(svc)) as url:
        wait_ready(url)
        rng = np.random.default_rng(2)
        inputs = [rng.standard_normal((1, IN)).astype(np.float32) for _ in range(64)]
        responses = asyncio.run(_fire(url, "/apredict", inputs))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert 503 in statuses, "a one-row queue under 64 concurrent requests must overflow"
    if options:
        assert len(run_calls) == statuses.count(200)  # one call each, none for the refused
    for x, r in zip(inputs, responses, strict=True):
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["error"]
        else:
            expected = reference_run(proto, {"x": x})[0]
            np.testing.assert_allclose(np.asarray(r.json(), np.float32), expected, rtol=1e-4, atol=1e-5)


def _slow_runs(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every model call take ``seconds`` more (still counted by the run_calls fixture)."""
    counting = OnnxSession.run

    def slow(self: OnnxSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        time.sleep(seconds)
        return counting(self, feed)

    monkeypatch.setattr(OnnxSession, "run", slow)


async def _leave_while_busy(url: str, route: str, x: Any, n: int) -> None:
    """After 0.1 s (a call in flight), send ``n`` requests to ``route`` whose clients give up after 0.2 s."""
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=url, timeout=0.2) as impatient:
        gone = await asyncio.gather(
            *(impatient.post(route, json=x) for _ in range(n)), return_exceptions=True
        )
    assert all(isinstance(g, httpx.TimeoutException) for g in gone)


@pytest.mark.parametrize("route", ["/apredict", "/predict"], ids=["async-api", "sync-api"])
@pytest.mark.parametrize("options", [{}, {"enabled": False}], ids=["batched", "batching-off"])
def test_requests_whose_clients_went_away_are_dropped_before_their_run(
    monkeypatch: pytest.MonkeyPatch, run_calls: list[int], options: dict[str, Any], route: str
) -> None:
    # The server never told the runner that a client had gone: every abandoned request still ran (and
    # was counted as a 200), which under overload is work for nobody while live requests wait. A sync API
    # (runner.run.run in its thread, as in the guide) kept running them after that was fixed for async ones.
    _slow_runs(monkeypatch, 0.5)
    svc, _ = mlp_service(**options)
    x = np.ones((1, IN), np.float32).tolist()

    async def main(url: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=30) as busy:
            first = asyncio.create_task(busy.post("/apredict", json=x))  # holds the runner 0.5 s
            await _leave_while_busy(url, route, x, 4)
            return await first

    with running(build_app(svc)) as url:
        wait_ready(url)
        run_calls.clear()
        assert asyncio.run(main(url)).status_code == 200
        time.sleep(0.3)
        metrics = httpx.get(f"{url}/metrics").text
    assert run_calls == [1], "the four requests whose clients left were run"
    assert f'requests_total{{route="{route}",service="mlp-svc",status="499"}} 4.0' in metrics


def test_a_queue_full_of_requests_whose_clients_left_takes_a_new_one(
    monkeypatch: pytest.MonkeyPatch, run_calls: list[int]
) -> None:
    # The server refuses before decoding when every runner queue is full; requests whose clients had left
    # filled it until the call in flight ended, so a new client got 503 "at capacity" from an idle queue.
    _slow_runs(monkeypatch, 0.5)
    svc, _ = mlp_service(max_batch_size=1, max_queue=2)
    x = np.ones((1, IN), np.float32).tolist()

    async def main(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as patient:
            first = asyncio.create_task(patient.post("/apredict", json=x))  # holds the runner 0.5 s
            await _leave_while_busy(url, "/apredict", x, 2)
            late = await patient.post("/apredict", json=x)
            return [(await first).status_code, late.status_code]

    with running(build_app(svc)) as url:
        wait_ready(url)
        run_calls.clear()
        assert asyncio.run(main(url)) == [200, 200]
    assert run_calls == [1, 1]


def test_guide_image_classifier_through_the_client(run_calls: list[int]) -> None:
    """The guide's ResNet service shape: Image in, JSON out, runner.run.run in a sync API."""
    from PIL import Image as PILImage

    from bundler.client import Client
    from bundler.io import JSON, Image
    from tests.models import make_classifier

    proto = make_classifier(None, size=16, classes=5)
    runner = bundler.onnx.save_model("clf", proto, signatures={"run": {"batchable": True}}).to_runner()
    svc = bundler.Service("onnx_resnet50", runners=[runner])

    @svc.api(input=Image(pilmode="RGB"), output=JSON())
    def predict(img: Any) -> Any:
        arr = np.expand_dims(np.asarray(img.resize((16, 16)), dtype=np.float32) / 255.0, 0)
        probs = runner.run.run(arr)
        return {"label": int(probs.argmax()), "probs": probs[0]}

    img = PILImage.fromarray(np.random.default_rng(3).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    with running(build_app(svc)) as url:
        wait_ready(url)
        with Client(url) as client:
            out = client.predict(img)
    arr = np.expand_dims(np.asarray(img.resize((16, 16)), dtype=np.float32) / 255.0, 0)
    expected = reference_run(proto, {"input": arr})[0][0]
    np.testing.assert_allclose(out["probs"], expected, rtol=1e-5, atol=1e-6)
    assert out["label"] == int(expected.argmax()) and run_calls == [1]


@pytest.mark.parametrize(
    "options",
    [{}, {"batchable": False}, {"enabled": False}],
    ids=["batched", "not-batchable", "batching-off"],
)
def test_every_runner_reports_its_inference_time_and_queue_depth(options: dict[str, Any]) -> None:
    # A runner without a batcher (the default batchable=False, or batching off) had no series at all: no
    # inference time, and no queue depth for the autoscaler of docs/kubernetes.md to scale on.
    from prometheus_client.parser import text_string_to_metric_families

    svc, _ = mlp_service(**options)
    with running(build_app(svc)) as url:
        wait_ready(url)
        for route in ("/apredict", "/apredict", "/predict"):
            assert httpx.post(url + route, json=np.ones((2, IN)).tolist()).status_code == 200
        text = httpx.get(f"{url}/metrics").text
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("runner") == "mlp"
    }
    assert samples[("bundler_runner_inference_seconds_count", None)] == 3
    assert samples[("bundler_runner_inference_seconds_bucket", "+Inf")] == 3
    assert samples[("bundler_runner_queue_depth", None)] == 0
    if not options:
        assert samples[("bundler_runner_batch_size_sum", None)] == 6  # rows run


def test_the_startup_log_says_which_model_each_runner_loaded_and_on_which_providers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The log said "runner 'mlp' loaded in 0.05s" only: on a GPU node nothing told the operator whether the
    # model ran on CUDA or had fallen back to the CPU.
    import logging

    svc, _ = mlp_service()
    with caplog.at_level(logging.INFO, logger="bundler.server"), running(build_app(svc)) as url:
        wait_ready(url)
    (line,) = [r.getMessage() for r in caplog.records if "loaded in" in r.getMessage()]
    tag = svc.runners[0].model.tag
    assert re.fullmatch(rf"runner 'mlp' loaded in \d+\.\d\ds \(model {tag} on CPUExecutionProvider\)", line)
