"""The ASGI app on a real uvicorn server (127.0.0.1, free port): APIs, error statuses, health, metrics, docs.

Runners here are small stand-ins (readiness is what they test); tests/test_server_onnx.py uses real ones.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from openapi_spec_validator import validate
from PIL import Image as PILImage
from starlette.exceptions import HTTPException

import bundler
from bundler.exceptions import BadInput, InferenceInputError, Overloaded
from bundler.io import JSON, File, Image, NumpyNdarray, Text
from bundler.server.app import build_app
from bundler.server.testing import running


class GatedRunner:
    """A stand-in runner whose loading finishes when the test opens its gate."""

    def __init__(self, name: str = "gated", fail: bool | Exception = False) -> None:
        self.name = name
        self.ready = False
        self.fail = fail
        self.gate = threading.Event()
        self.shut_down = False

    async def async_init(self) -> None:
        await asyncio.to_thread(self.gate.wait, 10)
        if isinstance(self.fail, Exception):
            raise self.fail
        if self.fail:
            raise RuntimeError("weights file is corrupt")
        self.ready = True

    async def shutdown(self) -> None:
        self.shut_down = True


def make_service(runners: list[Any] | None = None) -> bundler.Service:
    svc = bundler.Service("demo", runners=runners or [])

    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    def double(x: np.ndarray) -> np.ndarray:
        """Double every element.

        Longer description here."""
        return x * 2

    @svc.api(input=JSON(), output=JSON(), route="v1/echo")
    async def echo(obj: Any) -> Any:
        return {"got": obj, "thread": threading.current_thread().name}

    @svc.api(input=JSON(), output=JSON())
    def where(obj: Any) -> Any:
        return {"thread": threading.current_thread().name}

    @svc.api(input=Text(), output=Text())
    def shout(text: str) -> str:
        return text.upper()

    @svc.api(input=Image(pilmode="L"), output=Image())
    def gray(img: Any) -> Any:
        return img

    @svc.api(input=File(), output=File())
    def reverse(data: bytes) -> bytes:
        return data[::-1]

    @svc.api(input=JSON(), output=JSON())
    def boom(obj: Any) -> Any:
        raise ZeroDivisionError("user code failed")

    @svc.api(input=JSON(), output=JSON())
    def busy(obj: Any) -> Any:
        raise Overloaded("queue full", retry_after=2.2)

    @svc.api(input=JSON(), output=JSON())
    def bad_rank(obj: Any) -> Any:
        raise InferenceInputError("input 'x': expected shape (?, 4), got (4,)")

    @svc.api(input=JSON(), output=JSON())
    async def leave(obj: Any) -> Any:
        raise SystemExit(3)

    @svc.api(input=JSON(), output=JSON())
    def lookup(obj: Any) -> Any:
        raise HTTPException(404, "item 7 is not in the catalogue")

    @svc.api(input=JSON(), output=JSON())
    def check(obj: Any) -> Any:
        raise HTTPException(409, detail={"conflicts": {"item"}})

    return svc


@pytest.fixture(scope="module")
def server() -> Iterator[httpx.Client]:
    with running(build_app(make_service(), max_body_size=4096)) as url, httpx.Client(base_url=url) as client:
        yield client


def png_bytes() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (4, 3), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


# -- the APIs ----------------------------------------------------------------------------------------------
def test_ndarray_api_json_and_npy(server: httpx.Client) -> None:
    r = server.post("/double", json=[[1, 2], [3, 4]])
    assert r.status_code == 200 and r.json() == [[2.0, 4.0], [6.0, 8.0]]
    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.float32))
    r = server.post(
        "/double",
        content=buf.getvalue(),
        headers={"content-type": "application/octet-stream", "accept": "application/octet-stream"},
    )
    assert r.headers["content-type"] == "application/octet-stream"
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), np.arange(4, dtype=np.float32) * 2)


def test_async_apis_run_on_the_loop_and_sync_ones_in_the_pool(server: httpx.Client) -> None:
    r = server.post("/v1/echo", json={"a": [1, "b"]})
    assert r.json()["got"] == {"a": [1, "b"]}
    assert not r.json()["thread"].startswith("bundler-")
    assert server.post("/where", json={}).json()["thread"].startswith("bundler-demo")


def test_text_image_and_file_apis(server: httpx.Client) -> None:
    assert (
        server.post("/shout", content="héllo".encode(), headers={"content-type": "text/plain"}).text
        == "HÉLLO"
    )
    r = server.post("/gray", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.headers["content-type"] == "image/png"
    img = PILImage.open(io.BytesIO(r.content))
    assert img.mode == "L" and img.size == (4, 3)
    r = server.post("/gray", files={"file": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 200 and PILImage.open(io.BytesIO(r.content)).mode == "L"
    assert server.post("/reverse", content=b"\x00abc").content == b"cba\x00"


# -- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "match"),
    [
        (
            "POST",
            "/double",
            {"content": b"[1,", "headers": {"content-type": "application/json"}},
            400,
            "JSON",
        ),
        ("POST", "/shout", {"content": b"\xff", "headers": {"content-type": "text/plain"}}, 400, "UTF-8"),
        ("POST", "/bad_rank", {"json": {}}, 400, "expected shape"),
        ("POST", "/gray", {"content": b"GIF89a??", "headers": {"content-type": "image/gif"}}, 400, "image"),
        ("POST", "/nowhere", {"json": {}}, 404, "no such route"),
        # An API's own 404 keeps its detail: it was "no such route: API 'lookup'", though the route exists.
        ("POST", "/lookup", {"json": {}}, 404, "item 7 is not in the catalogue"),
        ("GET", "/double", {}, 405, "method not allowed"),
        (
            "POST",
            "/double",
            {"content": b"[1]" + b" " * 5000, "headers": {"content-type": "application/json"}},
            413,
            "over the limit of 4096 bytes",
        ),
        ("POST", "/double", {"content": b"1,2", "headers": {"content-type": "text/csv"}}, 415, "text/csv"),
        ("POST", "/double", {"json": [[1, 2], [3]]}, 422, "rectangular"),
        ("POST", "/boom", {"json": {}}, 500, "ZeroDivisionError"),
        ("POST", "/leave", {"json": {}}, 500, "SystemExit"),  # was uvicorn's text/plain 500
    ],
)
def test_error_statuses_have_json_bodies(
    server: httpx.Client, method: str, path: str, kwargs: dict, status: int, match: str
) -> None:
    r = server.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert match in body["error"]


def test_an_http_exception_with_a_structured_detail_answers_it_as_json(server: httpx.Client) -> None:
    # The detail was the error's text as Python printed it ("{'conflicts': {'item'}}"); a set in it, or
    # anything else orjson does not take, in any error's detail was a plain-text 500.
    r = server.post("/check", json={})
    assert r.status_code == 409
    assert r.json() == {"error": "Conflict", "detail": {"conflicts": "{'item'}"}}


def test_500_is_logged_with_traceback_and_the_server_keeps_serving(
    server: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="bundler.server"):
        r = server.post("/boom", json={})
    assert r.status_code == 500
    # The exception's class, not its message: that stays in the log (it may hold paths or secrets).
    assert r.json()["error"] == "internal error in API 'boom' (ZeroDivisionError)"
    record = next(r for r in caplog.records if r.name == "bundler.server")
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    assert server.post("/double", json=[1]).json() == [2.0]


def test_a_500_outside_the_apis_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Starlette re-raises the error its handler answered, for the server to log: uvicorn printed the same
    # traceback again ("Exception in ASGI application") after bundler's own.
    from bundler.server.metrics import Metrics

    def broken(self: Metrics) -> bytes:
        raise RuntimeError("collector bug at /srv/secret")

    monkeypatch.setattr(Metrics, "render", broken)
    app = build_app(make_service())
    # log_config=None: uvicorn's loggers propagate to the root logger, where caplog listens.
    with caplog.at_level(logging.ERROR), running(app, log_config=None) as url:
        r = httpx.get(url + "/metrics")
        assert httpx.get(url + "/livez").status_code == 200
    assert r.status_code == 500 and "secret" not in r.text and "RuntimeError" in r.json()["error"]
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert [(rec.name, rec.getMessage()) for rec in tracebacks] == [
        ("bundler.server", "unhandled error in GET /metrics")
    ]
    monkeypatch.undo()
    assert 'route="/metrics",service="demo",status="500"} 1.0' in app.metrics.render().decode()


def test_overloaded_is_503_with_retry_after(server: httpx.Client) -> None:
    r = server.post("/busy", json={})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "3"
    assert r.json()["error"] == "queue full"


def test_422_detail_lists_the_problems(server: httpx.Client) -> None:
    r = server.post("/double", json=["a"])
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list) and r.json()["detail"][0]["loc"] == ["body"]


def _raw(url: str, payload: bytes, read_after: bytes = b"") -> bytes:
    """Send raw bytes on a fresh connection, then read the response until the server closes it."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(payload)
        if read_after:
            sock.sendall(read_after)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def test_413_is_decided_from_content_length_before_reading(server: httpx.Client) -> None:
    # Headers only: a server that waited for the 100 MB body would time out instead of answering.
    head = (
        b"POST /double HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    reply = _raw(str(server.base_url), head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"over the limit" in reply


def test_413_stops_reading_a_chunked_body_past_the_limit(server: httpx.Client) -> None:
    head = (
        b"POST /double HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6))  # 6000 bytes, unterminated
    reply = _raw(str(server.base_url), head + body)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_a_compressed_body_is_refused_with_415_before_it_is_read(server: httpx.Client) -> None:
    # The body went to the API as it came: gzipped JSON was "not valid UTF-8: surrogates not allowed", and a
    # File API got the upload still gzipped. Headers only: the answer must not wait for the body.
    head = (
        b"POST /reverse HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
    )
    reply = _raw(str(server.base_url), head)
    assert reply.startswith(b"HTTP/1.1 415"), reply[:200]
    assert b"Content-Encoding 'gzip' is not accepted; send the body uncompressed" in reply
    r = server.post("/reverse", content=b"abc", headers={"content-encoding": "identity"})
    assert r.status_code == 200 and r.content == b"cba"


# -- health, metrics, docs, logs ----------------------------------------------------------------------------
def test_readyz_is_503_until_runners_load_then_200() -> None:
    runner = GatedRunner()
    app = build_app(make_service([runner]))
    with running(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/livez").status_code == 200
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"] == {"runners": {"gated": False}}
        r = c.post("/double", json=[1])
        assert r.status_code == 503 and "loading" in r.json()["error"] and r.headers["retry-after"] == "1"
        runner.gate.set()
        for _ in range(200):
            if c.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.01)
        assert c.get("/readyz").json() == {"status": "ready", "runners": {"gated": True}}
        assert c.post("/double", json=[1]).json() == [2.0]
    assert runner.shut_down


def _readyz_once_failed(c: httpx.Client) -> httpx.Response:
    """Return /readyz's answer once it reports a failed load (or the last one after 2 s)."""
    for _ in range(200):
        r = c.get("/readyz")
        if "failed" in r.json()["error"]:
            break
        threading.Event().wait(0.01)
    return r


def test_readyz_reports_a_runner_that_failed_to_load(caplog: pytest.LogCaptureFixture) -> None:
    runner = GatedRunner(fail=True)
    runner.gate.set()
    with caplog.at_level(logging.ERROR, logger="bundler.server"):
        with running(build_app(make_service([runner]))) as url, httpx.Client(base_url=url) as c:
            r = _readyz_once_failed(c)
            assert r.status_code == 503
            assert "runner 'gated' failed to load (RuntimeError)" in r.json()["error"]
            assert c.get("/livez").status_code == 200
            # The APIs say why they cannot serve, without inviting clients to retry a load that failed.
            api = c.post("/double", json=[1])
            assert api.status_code == 503 and "Retry-After" not in api.headers
            assert "cannot serve: runner 'gated' failed to load (RuntimeError)" in api.json()["error"]
    # The exception's message (a model's path on the host, a credential in a URL) is for the operator only.
    assert "weights file is corrupt" not in r.text + api.text
    assert any("weights file is corrupt" in rec.getMessage() for rec in caplog.records)
    # Logged once, at load: each API request it refuses does not add an ERROR line.
    assert not [rec for rec in caplog.records if "cannot serve" in rec.getMessage()]


def test_a_runner_that_failed_with_a_bundler_error_is_logged_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its message says what and where; the traceback (two chained ones through onnxruntime) was noise.
    from bundler.exceptions import ModelError

    runner = GatedRunner(fail=ModelError("cannot load model m:v1 from /models/m.onnx: INVALID_PROTOBUF"))
    runner.gate.set()
    with caplog.at_level(logging.ERROR, logger="bundler.server"):
        with running(build_app(make_service([runner]))) as url, httpx.Client(base_url=url) as c:
            assert "failed to load (ModelError)" in _readyz_once_failed(c).json()["error"]
    [record] = [rec for rec in caplog.records if "failed to load" in rec.getMessage()]
    assert "from /models/m.onnx: INVALID_PROTOBUF" in record.getMessage() and record.exc_info is None


def test_an_error_after_a_runner_loaded_is_reported_not_left_loading(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An error past async_init (wiring the runner's metrics) ended the loading task unseen: /readyz said
    # "still loading" for good and the log said nothing until shutdown ("Task exception was never retrieved").
    from bundler.server.app import ServiceApp

    def broken(self: Any, runner: Any, name: str) -> None:
        raise OSError("metrics file")

    monkeypatch.setattr(ServiceApp, "_attach_observer", broken)
    runner = GatedRunner()
    runner.gate.set()
    with caplog.at_level(logging.ERROR, logger="bundler.server"):
        with running(build_app(make_service([runner]))) as url, httpx.Client(base_url=url) as c:
            r = _readyz_once_failed(c)
    assert r.status_code == 503 and "runner 'gated' failed to load (OSError)" in r.json()["error"]
    assert any(
        "failed to load: OSError: metrics file" in rec.getMessage() and rec.exc_info for rec in caplog.records
    )


def test_metrics_count_requests_by_route_and_status(server: httpx.Client) -> None:
    for _ in range(3):
        server.post("/shout", content=b"a", headers={"content-type": "text/plain"})
    server.post("/shout", content=b"\xff", headers={"content-type": "text/plain"})
    r = server.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    ok = re.search(r'bundler_requests_total\{route="/shout",service="demo",status="200"\} (\S+)', text)
    bad = re.search(r'bundler_requests_total\{route="/shout",service="demo",status="400"\} (\S+)', text)
    assert ok and float(ok.group(1)) >= 3 and bad and float(bad.group(1)) >= 1
    assert 'bundler_request_duration_seconds_bucket{le="0.005",route="/shout"' in text
    for family in (
        "bundler_runner_batch_size",
        "bundler_runner_inference_seconds",
        "bundler_runner_queue_depth",
    ):
        assert f"# TYPE {family}" in text


def test_latency_buckets_tell_sub_millisecond_calls_apart() -> None:
    # A small model's call takes tens of microseconds and a small request a few hundred (docs/batching.md):
    # with 0.5 ms as the first bound all of them fell in the first bucket, and any quantile read 0.25 ms.
    from prometheus_client.parser import text_string_to_metric_families

    from bundler.server.metrics import Metrics

    metrics = Metrics("svc")
    observer = metrics.observer("mlp")
    for seconds in (0.00004, 0.00006, 0.0002, 0.0004):
        observer.on_batch(1, seconds)
        metrics.observe_request("/predict", 200, seconds * 2)
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name in ("bundler_runner_inference_seconds", "bundler_request_duration_seconds"):
            counts = [s.value for s in family.samples if s.name.endswith("_bucket")]
            assert len(set(counts)) >= 3, family.name  # not all in one bucket, nor in two
            bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
            assert bounds[0] <= 0.0001 and bounds[-2] == 10.0


@pytest.mark.parametrize("mounted", [False, True])
def test_apis_under_a_root_path_or_a_mount(mounted: bool) -> None:
    # Behind a path prefix the fast path misses and the router serves the APIs: its endpoints were called
    # as endpoint(request), a TypeError, so every API answered 500.
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = build_app(make_service())
    if mounted:
        outer = Starlette(
            routes=[Mount("/svc", app=app)], lifespan=lambda _: app.router.lifespan_context(app)
        )
        ctx, prefix = running(outer), "/svc"
    else:
        ctx, prefix = running(app, root_path="/svc"), ""  # uvicorn --root-path: the proxy strips it
    with ctx as url, httpx.Client(base_url=url + prefix) as client:
        r = client.post("/double", json=[1.5])
        assert (r.status_code, r.json()) == (200, [3.0])
        r = client.post("/shout", content=b"\xff", headers={"content-type": "text/plain"})
        assert r.status_code == 400 and "UTF-8" in r.json()["error"]
        assert client.get("/readyz").status_code == 200
        assert 'href="/svc/docs/static/swagger-ui.css"' in client.get("/docs").text
        samples = [
            sample
            for family in text_string_to_metric_families(client.get("/metrics").text)
            if family.name == "bundler_requests"
            for sample in family.samples
        ]
    counts = {(s.labels["route"], s.labels["status"]): s.value for s in samples}
    # Counted once each, under the route's own label, not the prefixed path nor "unmatched".
    assert counts == {("/double", "200"): 1, ("/shout", "400"): 1, ("/readyz", "200"): 1, ("/docs", "200"): 1}


@pytest.mark.parametrize("root_path", ["", "/svc"])
def test_a_client_gone_while_sending_its_body_is_counted_as_499(root_path: str) -> None:
    # Under a root_path the API is served through the router, and its request was counted as a 500.
    with running(build_app(make_service()), root_path=root_path) as url:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
            sock.sendall(
                b"POST /double HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n[1"
            )
        for _ in range(200):
            text = httpx.get(url + "/metrics").text
            counted = re.findall(r'requests_total\{route="/double",service="demo",status="(\d+)"', text)
            if counted:
                break
            threading.Event().wait(0.02)
    assert counted == ["499"]


def test_metrics_labels_come_from_the_routes_never_from_the_request(server: httpx.Client) -> None:
    import secrets

    tokens = [secrets.token_hex(6) for _ in range(5)]
    for token in tokens:
        server.post(f"/docs/static/{token}")  # 405 (GET-only mount): each one used to add a series
        server.get(f"/nowhere/{token}")  # 404
        server.post(f"/shout/{token}")  # 404
    server.get("/docs/static/swagger-ui.css")
    server.post("/healthz")  # 405 on a route of its own
    text = server.get("/metrics").text
    assert not any(token in text for token in tokens)
    routes = set(re.findall(r'bundler_requests_total\{route="([^"]*)"', text))
    assert {"unmatched", "/docs/static", "/healthz"} <= routes
    known = {*server.get("/docs.json").json()["paths"], "/healthz", "/livez", "/readyz", "/metrics", "/docs"}
    assert routes <= known | {"/docs.json", "/docs/static", "unmatched"}  # no client's path made it in


def test_the_access_log_escapes_control_characters_of_the_path(
    server: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "2026-01-01 00:00:00,000 INFO bundler.access: POST /predict 200 0.10ms"
    with caplog.at_level(logging.INFO, logger="bundler.access"):
        server.get("/x%0A" + forged.replace(" ", "%20"))
    lines = [r.getMessage() for r in caplog.records if r.name == "bundler.access"]
    (line,) = [m for m in lines if m.startswith("GET /x")]
    assert "\n" not in line and line.startswith("GET /x\\n2026-01-01") and " 404 " in line


def test_docs_are_local_and_the_document_is_valid_openapi(server: httpx.Client) -> None:
    page = server.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert not re.search(r"(https?:)?//[a-z0-9]", page.text.replace("</", "")), "no external URLs in /docs"
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert server.get(src).status_code == 200, src
    doc = server.get("/docs.json").json()
    validate(doc)
    op = doc["paths"]["/double"]["post"]
    assert op["operationId"] == "double" and op["summary"] == "Double every element."
    assert op["description"] == "Longer description here."
    assert "float32" in op["requestBody"]["content"]["application/json"]["schema"]["description"]
    assert "/v1/echo" in doc["paths"] and "/readyz" in doc["paths"]


@pytest.mark.parametrize(
    "byte_range", ["bytes=abc", "bytes=5-1", "items=0-1", "bytes=999999999-", "bytes=0-9"]
)
def test_docs_assets_are_served_whole_whatever_range_is_asked(server: httpx.Client, byte_range: str) -> None:
    # A malformed or unknown-unit Range got a text/plain 400 (RFC 9110: ignore it), an unsatisfiable one a
    # bodiless 416.
    whole = server.get("/docs/static/swagger-ui.css")
    r = server.get("/docs/static/swagger-ui.css", headers={"range": byte_range})
    assert r.status_code == 200 and r.content == whole.content and len(whole.content) > 1000


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bundler.access"]


def test_one_access_log_line_per_request(server: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bundler.access"):
        server.post("/double", json=[1])
        server.get("/livez")
        # The server's thread writes the line after the response is sent: wait for it (bounded).
        deadline = time.monotonic() + 5
        while len(_access_lines(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # and a moment for a line too many, which must not come
    lines = _access_lines(caplog)
    assert len(lines) == 2
    assert re.fullmatch(r"POST /double 200 \d+\.\d\dms", lines[0])
    assert re.fullmatch(r"GET /livez 200 \d+\.\d\dms", lines[1])


def test_body_limit_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUNDLER_MAX_BODY_SIZE", "10")
    app = build_app(make_service())
    assert app.body_limit == 10
    monkeypatch.setenv("BUNDLER_MAX_BODY_SIZE", "lots")
    with pytest.raises(BadInput, match="BUNDLER_MAX_BODY_SIZE"):
        build_app(make_service())


# -- Service definition errors ------------------------------------------------------------------------------
def _noop(x: Any) -> Any:
    return x


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"route": "double"}, "route /double is taken by API 'double'"),
        ({"name": "double", "route": "other"}, "an API named 'double' exists already"),
        ({"route": "metrics"}, "reserved"),
        ({"route": "docs/x"}, "reserved"),
        ({"route": "a b"}, "route 'a b'"),
        ({"name": "not-an-identifier"}, "must be a Python identifier"),
        ({"route": "../predict"}, "not '.' or '..' alone"),  # published, but clients resolve it away
        ({"route": "a/./b"}, "not '.' or '..' alone"),
        ({"route": 5}, "route 5 must be a string"),
    ],
)
def test_service_rejects_bad_apis(kwargs: dict, match: str) -> None:
    svc = make_service()
    with pytest.raises(BadInput, match=match):
        svc.api(input=JSON(), output=JSON(), **kwargs)(_noop)


def _with_context(x: Any, ctx: Any) -> Any:
    return x


def _no_argument() -> Any:
    return 1


def _keyword_only(x: Any, *, scale: float) -> Any:
    return x


def _generator(x: Any) -> Any:
    yield x


async def _async_generator(x: Any) -> Any:
    yield x


def _defaults(x: Any, scale: float = 2.0, *args: Any, **kwargs: Any) -> Any:
    return x


@pytest.mark.parametrize(
    ("func", "kwargs", "match"),
    [
        # Each was taken, and every request to it was a 500 (TypeError, or a generator left unencoded).
        (_with_context, {}, r"takes \(x, ctx\).*no context argument \(BentoML's 'ctx'\)"),
        (_no_argument, {}, r"takes \(\) but is called with one argument"),
        (_keyword_only, {}, "missing a required argument: 'scale'"),
        (_generator, {}, "streaming responses are not supported"),
        (_async_generator, {}, "streaming responses are not supported"),
        (5, {"name": "five"}, "5 is not callable"),
        (lambda x: x, {}, r"'<lambda>' must be a Python identifier; pass name=\.\.\."),
        (functools.partial(_noop), {}, r"API name '' must be a Python identifier; pass name="),
        (_noop, {"name": ""}, "API name '' must be a Python identifier$"),
        (_noop, {"name": 5}, "API name 5 must be a Python identifier"),
    ],
)
def test_service_rejects_functions_it_cannot_call(func: Any, kwargs: dict, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        make_service().api(input=JSON(), output=JSON(), **kwargs)(func)


@pytest.mark.parametrize("dtype", ["object", "str", "complex64", "datetime64[s]"])
def test_an_ndarray_input_of_a_dtype_no_request_can_meet_is_refused(dtype: str) -> None:
    # Was taken, and every request was a 422 ("an array of numbers is expected").
    with pytest.raises(BadInput, match=r"input=NumpyNdarray\(dtype='.*'\) takes arrays of numbers only"):
        make_service().api(input=NumpyNdarray(dtype=dtype), output=JSON())(_noop)
    make_service().api(input=JSON(), output=NumpyNdarray(dtype=dtype), name="strings")(_noop)  # outputs may


def test_service_takes_functions_callable_with_the_input_alone() -> None:
    svc = make_service()
    svc.api(input=JSON(), output=JSON())(_defaults)
    svc.api(input=JSON(), output=JSON(), name="partial")(functools.partial(_with_context, ctx=None))
    svc.api(input=JSON(), output=JSON(), name="builtin")(len)
    assert svc.apis["partial"](3) == 3


def test_service_rejects_bad_names_descriptors_and_duplicate_runners() -> None:
    with pytest.raises(BadInput, match="name must be"):
        bundler.Service("Bad Name")
    with pytest.raises(BadInput, match="not an IO descriptor"):
        bundler.Service("ok").api(input=dict, output=JSON())  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="two runners are named 'r'"):
        bundler.Service("ok", runners=[GatedRunner("r"), GatedRunner("r")])
    # A Model where a Runner goes: it used to be taken, and the server never became ready.
    from tests.models import make_mlp

    model = bundler.onnx.save_model("m", make_mlp(None, in_dim=2, hidden=2, out=1))
    with pytest.raises(BadInput, match=r"must be Runners, got Model\(.*\); call .to_runner\(\) on it"):
        bundler.Service("ok", runners=[model])
    with pytest.raises(BadInput, match="runners must be Runners, got None"):
        bundler.Service("ok", runners=[None])
    with pytest.raises(BadInput, match=r"runners must be a list, e.g. runners=\[Runner"):
        bundler.Service("ok", runners=model.to_runner())  # type: ignore[arg-type]


def test_service_apis_table() -> None:
    svc = make_service()
    api = svc.apis["echo"]
    assert (api.route, api.is_async, type(api.input).__name__) == ("v1/echo", True, "JSON")
    assert svc.apis["double"].doc.startswith("Double every element.")
    assert svc.apis["double"](np.ones(2)).tolist() == [2.0, 2.0]
