"""HTTP: schemathesis against the servers' own /docs.json, and hand-written hostile requests per descriptor.

Every request tried is tallied by status class; the target is no 5xx at all, and a server that still
answers /healthz and a valid prediction afterwards.
"""

from __future__ import annotations

import io
import json
import select
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from bundler.server.app import build_app
from bundler.server.testing import running

from .services import BODY_LIMIT, hostile_service, quickstart_service, wait_ready

ROW = [[5.1, 3.5, 1.4, 0.2]]


@pytest.fixture(scope="module")
def quickstart_url(quickstart_home: Path) -> Iterator[str]:
    """Serve the quickstart example (its own service.py) on a real uvicorn."""
    with running(build_app(quickstart_service(quickstart_home, "http"))) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="module")
def hostile_url(quickstart_home: Path) -> Iterator[str]:
    """Serve one API per IO descriptor with a 1 MiB body limit."""
    with running(build_app(hostile_service(quickstart_home), max_body_size=BODY_LIMIT)) as url:
        wait_ready(url)
        yield url


def assert_healthy(url: str) -> None:
    """The server answers its probes and a valid prediction."""
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        r = c.post("/predict" if "predict" in c.get("/docs.json").text else "/ndarray", json=ROW)
        assert r.status_code == 200, r.text
        assert np.isclose(sum(r.json()[0]), 1.0, atol=1e-4)


# -- schemathesis ------------------------------------------------------------------------------------
def _fuzz(url: str, tally: Any, category: str, max_examples: int) -> Counter[str]:
    """Run schemathesis' positive and negative generators on every operation; return status classes."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    seen: Counter[str] = Counter()
    failures: list[str] = []

    def make_check(strategy: Any, label: str) -> Any:
        @given(case=strategy)
        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(base_url=url, timeout=10)
            outcome = f"{response.status_code // 100}xx"
            seen[outcome] += 1
            tally(category, outcome)
            if response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.text[:300]}")
            case.validate_response(response, checks=[not_a_server_error])

        return check

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                make_check(op.as_strategy(generation_mode=mode), f"{op.label} ({mode.value})")()
            except Unsatisfiable:
                continue  # a GET with no parameters has nothing to make negative
    assert not failures, failures
    return seen


def test_schemathesis_finds_no_5xx_on_the_quickstart_server(quickstart_url: str, tally: Any) -> None:
    seen = _fuzz(quickstart_url, tally, "http: schemathesis", max_examples=60)
    assert seen["5xx"] == 0
    assert seen["2xx"] > 0 and seen["4xx"] > 0  # it reached both the model and the validation
    assert_healthy(quickstart_url)


def test_schemathesis_finds_no_5xx_on_every_descriptor(hostile_url: str, tally: Any) -> None:
    seen = _fuzz(hostile_url, tally, "http: schemathesis", max_examples=40)
    assert seen["5xx"] == 0
    assert_healthy(hostile_url)


# -- hand-written hostile requests -------------------------------------------------------------------
def _png(w: int = 4, h: int = 4) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (w, h), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG signature and IHDR claiming ``w x h`` RGBA pixels, then one tiny IDAT and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_claiming(shape: tuple[int, ...]) -> bytes:
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


def _multipart(parts: str) -> tuple[dict[str, str], bytes]:
    body = parts.replace("\n", "\r\n").encode()
    return {"content-type": "multipart/form-data; boundary=XyZ"}, body


JSON_CT = {"content-type": "application/json"}
NPY_CT = {"content-type": "application/octet-stream"}
PNG_CT = {"content-type": "image/png"}
TEXT_CT = {"content-type": "text/plain"}
FORM_CT = {"content-type": "application/x-www-form-urlencoded"}
SVG = ({"content-type": "image/svg+xml"}, b"<svg xmlns='http://www.w3.org/2000/svg'/>")
NO_FILE = _multipart('--XyZ\nContent-Disposition: form-data; name="a"\n\nb\n--XyZ--\n')

# (id, route, headers, body, accepted statuses)
HOSTILE: list[tuple[str, str, dict[str, str], bytes, set[int]]] = [
    # NumpyNdarray(dtype=float32, shape=(-1, 4), enforce_shape=True)
    ("nd-malformed-json", "/ndarray", JSON_CT, b"[[1, 2, 3, 4]", {400}),
    ("nd-empty-body", "/ndarray", JSON_CT, b"", {400}),
    ("nd-strings", "/ndarray", JSON_CT, b'[["a", "b", "c", "d"]]', {422}),
    ("nd-objects", "/ndarray", JSON_CT, b'[{"a": 1}]', {422}),
    ("nd-ragged", "/ndarray", JSON_CT, b"[[1, 2, 3, 4], [1]]", {422}),
    ("nd-wrong-shape", "/ndarray", JSON_CT, b"[[1, 2, 3]]", {422}),
    ("nd-wrong-rank", "/ndarray", JSON_CT, b"[1, 2, 3, 4]", {422}),
    ("nd-scalar", "/ndarray", JSON_CT, b"3", {422}),
    ("nd-null", "/ndarray", JSON_CT, b"null", {422}),
    ("nd-nan-literal", "/ndarray", JSON_CT, b"[[NaN, 1, 2, 3]]", {400}),
    ("nd-1e999", "/ndarray", JSON_CT, b"[[1e999, 1, 2, 3]]", {400, 422}),
    ("nd-overflow-float32", "/ndarray", JSON_CT, b"[[1e300, 1, 2, 3]]", {422}),
    ("nd-huge-int", "/ndarray", JSON_CT, b"[[123456789012345678901234567890, 1, 2, 3]]", {200, 400, 422}),
    ("nd-deep-nesting", "/ndarray", JSON_CT, b"[" * 100_000 + b"]" * 100_000, {400, 422}),
    ("nd-npy-garbage", "/ndarray", NPY_CT, b"\x93NUMPY garbage", {400}),
    ("nd-npy-nan", "/ndarray", NPY_CT, _npy(np.array([[np.nan, 1, 2, 3]], np.float32)), {422}),
    ("nd-npy-inf", "/ndarray", NPY_CT, _npy(np.array([[np.inf, 1, 2, 3]], np.float64)), {422}),
    ("nd-npy-strings", "/ndarray", NPY_CT, _npy(np.array([["a", "b", "c", "d"]])), {422}),
    ("nd-npy-complex", "/ndarray", NPY_CT, _npy(np.ones((1, 4), np.complex64)), {422}),
    ("nd-npy-claims-40gb", "/ndarray", NPY_CT, _npy_claiming((100_000, 100_000)), {400, 413}),
    ("nd-npy-truncated", "/ndarray", NPY_CT, _npy(np.ones((64, 4), np.float32))[:-7], {400}),
    ("nd-text-content-type", "/ndarray", TEXT_CT, b"[[1, 2, 3, 4]]", {415}),
    ("nd-image-content-type", "/ndarray", PNG_CT, _png(), {415}),
    # JSON(pydantic_model=Flower) and JSON()
    ("json-malformed", "/flower", JSON_CT, b'{"name": ', {400}),
    ("json-empty-body", "/flower", JSON_CT, b"", {400}),
    ("json-wrong-schema", "/flower", JSON_CT, b'{"name": 3, "features": [1]}', {422}),
    ("json-missing-fields", "/flower", JSON_CT, b"{}", {422}),
    ("json-array-not-object", "/flower", JSON_CT, b"[1, 2]", {422}),
    ("json-nan-feature", "/flower", JSON_CT, b'{"name": "x", "features": [NaN, 1, 2, 3]}', {400}),
    ("json-invalid-utf8", "/flower", JSON_CT, b'{"name": "\xff\xfe", "features": [1, 2, 3, 4]}', {400}),
    ("json-form-content-type", "/flower", FORM_CT, b"a=1", {415}),
    ("json-deep-nesting", "/flower", JSON_CT, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {400, 422}),
    ("json-nesting-200", "/echo", JSON_CT, b'{"a":' * 200 + b"1" + b"}" * 200, {200}),
    ("json-lone-surrogate", "/echo", JSON_CT, b'"\\ud800"', {400, 200}),
    # Image(max_pixels=4096*4096)
    ("img-not-an-image", "/image", PNG_CT, b"this is not a png at all", {400}),
    ("img-empty-body", "/image", PNG_CT, b"", {400}),
    ("img-truncated", "/image", PNG_CT, _png(64, 64)[:60], {400}),
    ("img-100000x100000-header", "/image", PNG_CT, _png_header_only(100_000, 100_000), {413}),
    ("img-65535x65535-header", "/image", PNG_CT, _png_header_only(65_535, 65_535), {413}),
    ("img-default-limit-100000x100000", "/image_default", PNG_CT, _png_header_only(100_000, 100_000), {413}),
    ("img-corrupt-idat", "/image", PNG_CT, _png_header_only(64, 64), {400}),
    ("img-svg", "/image", *SVG, {400}),
    ("img-json-content-type", "/image", JSON_CT, b"{}", {415}),
    ("img-no-content-type", "/image", {}, _png(), {415}),
    ("img-multipart-no-file", "/image", *NO_FILE, {400}),
    ("img-multipart-broken", "/image", *_multipart("--XyZ\nContent-Disposition: form-data\n"), {400}),
    ("img-multipart-no-boundary", "/image", {"content-type": "multipart/form-data"}, b"xx", {400}),
    # Text()
    ("text-invalid-utf8", "/text", TEXT_CT, b"caf\xc3\x28 \xff", {400}),
    ("text-latin1-charset", "/text", {"content-type": "text/plain; charset=latin-1"}, b"caf\xe9", {415}),
    ("text-json-content-type", "/text", JSON_CT, b'"x"', {415}),
    ("text-overlong-utf8", "/text", TEXT_CT, b"\xc0\xaf", {400}),
    # File()
    ("file-multipart-no-file", "/file", *NO_FILE, {400}),
    # routing
    ("get-on-api", "/ndarray", {}, b"", {405}),
    ("no-such-route", "/nope", JSON_CT, b"[]", {404}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("route", "headers", "body", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in HOSTILE],
)
def test_hostile_request_gets_a_clear_4xx(
    hostile_url: str, tally: Any, route: str, headers: dict[str, str], body: bytes, expected: set[int]
) -> None:
    method = "GET" if 405 in expected else "POST"
    with httpx.Client(base_url=hostile_url, timeout=30) as c:
        r = c.request(method, route, headers=headers, content=body)
    tally("http: hostile", f"{r.status_code // 100}xx")
    assert r.status_code in expected, r.text
    if r.status_code >= 400:
        payload = r.json()
        assert payload["error"], payload  # a message naming the problem
    assert_healthy(hostile_url)


def test_valid_requests_to_every_descriptor_still_work(hostile_url: str, tally: Any) -> None:
    with httpx.Client(base_url=hostile_url, timeout=30) as c:
        calls = [
            c.post("/ndarray", json=ROW),
            c.post("/ndarray", content=_npy(np.asarray(ROW, np.float32)), headers=NPY_CT),
            c.post("/flower", json={"name": "setosa", "features": ROW[0]}),
            c.post("/image", content=_png(), headers=PNG_CT),
            c.post("/image", files={"file": ("x.png", _png(), "image/png")}),
            c.post("/text", content="héllo".encode(), headers=TEXT_CT),
            c.post("/file", content=b"\x00\x01"),
        ]
    for r in calls:
        tally("http: hostile", f"{r.status_code // 100}xx (valid control)")
        assert r.status_code == 200, r.text
    assert calls[5].text == "HÉLLO"
    assert PILImage.open(io.BytesIO(calls[3].content)).size == (8, 8)


# -- bodies over the limit ---------------------------------------------------------------------------
def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def test_content_length_of_10_gb_is_refused_before_reading(hostile_url: str, tally: Any) -> None:
    started = time.monotonic()
    with _connect(hostile_url) as sock:
        sock.sendall(
            b"POST /ndarray HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10737418240\r\n\r\n[[1, 2, 3, 4]]"
        )
        status, headers, body = _read_response(sock)
    elapsed = time.monotonic() - started
    tally("http: body limit", f"{status // 100}xx")
    assert status == 413
    assert "over the limit" in json.loads(body)["error"]
    assert headers.get("connection") == "close"
    assert elapsed < 2.0, f"413 took {elapsed:.2f}s"
    assert_healthy(hostile_url)


def test_chunked_body_growing_past_the_limit_is_cut_off(hostile_url: str, tally: Any) -> None:
    chunk = b"[" + b"1," * 32767 + b"1]"  # ~64 KiB of JSON-looking bytes
    sent = 0
    status = 0
    with _connect(hostile_url) as sock:
        sock.sendall(
            b"POST /ndarray HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        # Keep sending (up to 64x the limit) until the server answers.
        while sent < 64 * BODY_LIMIT:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        status, _, body = _read_response(sock)
    tally("http: body limit", f"{status // 100}xx")
    assert status == 413, body
    # The answer came once the limit was crossed, not after the whole (64 MiB) body.
    assert sent < 8 * BODY_LIMIT, f"sent {sent} bytes before the 413"
    assert_healthy(hostile_url)


def test_body_just_under_the_limit_is_read(hostile_url: str, tally: Any) -> None:
    body = b"x" * (BODY_LIMIT - 1)
    with httpx.Client(base_url=hostile_url, timeout=30) as c:
        r = c.post("/file", content=body, headers=NPY_CT)
        over = c.post("/file", content=body + b"xx", headers=NPY_CT)
    tally("http: body limit", f"{r.status_code // 100}xx (valid control)")
    tally("http: body limit", f"{over.status_code // 100}xx")
    assert r.status_code == 200 and r.json() == {"bytes": BODY_LIMIT - 1}
    assert over.status_code == 413
