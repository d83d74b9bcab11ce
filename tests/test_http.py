"""The server's HTTP protocol: a response's head and body leave in one write, and nothing is held back."""

from __future__ import annotations

import io
import re
import select
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson
import pytest

import bundler
from bundler.io import JSON, NumpyNdarray
from bundler.server import http
from bundler.server.app import build_app
from bundler.server.http import HEAD_HELD_MAX, HeadHoldingTransport, http_protocol
from bundler.server.testing import running

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\n"


class RecordingTransport:
    """What the wrapper hands on: every write, writelines and close, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, parts: Any) -> None:
        self.calls.append(("writelines", [bytes(p) for p in parts]))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 4321)}.get(name, default)


@pytest.fixture
def wrapped() -> tuple[HeadHoldingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return HeadHoldingTransport(inner), inner  # type: ignore[arg-type]


def test_head_and_small_body_are_one_write(wrapped: tuple[HeadHoldingTransport, RecordingTransport]) -> None:
    outer, inner = wrapped
    outer.write(HEAD)
    assert inner.calls == []
    outer.write(b"hello")
    assert inner.calls == [("write", HEAD + b"hello")]
    outer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x")  # not a head (no blank line at the end): passes through
    assert inner.calls[-1] == ("write", b"HTTP/1.1 200 OK\r\n\r\nx")


def test_a_large_body_goes_with_the_head_as_two_buffers(
    wrapped: tuple[HeadHoldingTransport, RecordingTransport],
) -> None:
    outer, inner = wrapped
    body = b"b" * HEAD_HELD_MAX
    outer.write(HEAD)
    outer.write(body)
    assert inner.calls == [("writelines", [HEAD, body])]


def test_interim_and_whole_responses_pass_straight_through(
    wrapped: tuple[HeadHoldingTransport, RecordingTransport],
) -> None:
    outer, inner = wrapped
    outer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    whole = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad"
    outer.write(whole)
    outer.write(b"5\r\nchunk\r\n")
    assert [data for _, data in inner.calls] == [b"HTTP/1.1 100 Continue\r\n\r\n", whole, b"5\r\nchunk\r\n"]


def test_flush_and_close_send_a_held_head(wrapped: tuple[HeadHoldingTransport, RecordingTransport]) -> None:
    outer, inner = wrapped
    outer.flush()
    assert inner.calls == []
    outer.write(HEAD)
    outer.flush()
    assert inner.calls == [("write", HEAD)]
    outer.write(HEAD)
    outer.close()
    assert inner.calls[1:] == [("write", HEAD), ("close", None)]
    outer.write(HEAD)
    outer.close()  # the connection is closing already: the head is dropped, not written to a dead socket
    assert inner.calls[3:] == [("close", None)]


def test_other_attributes_are_the_real_transports(
    wrapped: tuple[HeadHoldingTransport, RecordingTransport],
) -> None:
    outer, inner = wrapped
    assert outer.get_extra_info("peername") == ("127.0.0.1", 4321)
    assert outer.transport is inner


# -- on a real server --------------------------------------------------------------------------------------
def make_service() -> bundler.Service:
    svc = bundler.Service("wire")

    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    def double(x: np.ndarray) -> np.ndarray:
        return x * 2

    @svc.api(input=JSON(), output=JSON())
    def echo(obj: Any) -> Any:
        return obj

    return svc


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    assert http_protocol() != "auto", "httptools is a dependency: the server must run bundler's protocol"
    with running(build_app(make_service())) as base:
        yield base


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return socket.create_connection((parts.hostname, parts.port), timeout=5)


def _read_response(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """Read one response with a Content-Length; return (head, body, bytes after it)."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        rest += chunk
    return head, rest[:length], rest[length:]


def test_each_response_is_one_write_to_the_socket(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []

    class Counting:
        """Stands between the head-holding wrapper and the real transport, counting what reaches it."""

        def __init__(self, transport: Any) -> None:
            self.inner = transport

        def write(self, data: bytes) -> None:
            writes.append(bytes(data))
            self.inner.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    class Recorded(http.HeadHoldingTransport):
        def __init__(self, transport: Any) -> None:
            super().__init__(Counting(transport))

    monkeypatch.setattr(http, "HeadHoldingTransport", Recorded)  # read at each new connection
    body = b"[[1.0, 2.0]]"
    request = (
        b"POST /double HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with _connect(url) as sock:
        for n in range(1, 4):  # keep-alive: every response on the connection, not only the first
            sock.sendall(request)
            head, answer, _ = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200") and answer == b"[[2.0,4.0]]"
            assert len(writes) == n, writes  # uvicorn alone writes the head and the body separately
            assert writes[-1].startswith(b"HTTP/1.1 200") and writes[-1].endswith(answer)


def test_head_requests_get_their_head_without_a_body(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:  # a head held back forever would time out here
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection still serves
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body


def test_expect_100_continue_is_answered_before_the_body(url: str) -> None:
    body = b'{"a": 1}'
    with _connect(url) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        head, answer, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and answer == b'{"a":1}'


def test_pipelined_requests_and_connection_close(url: str) -> None:
    one = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n1"
    last = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: 1\r\n\r\n2"
    )
    with _connect(url) as sock:
        sock.sendall(one + last)
        head, body, rest = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"1"
        head, body, rest = _read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 200") and body == b"2" and b"connection: close" in head.lower()
        assert rest == b"" and sock.recv(65536) == b""  # then the server closes


def test_large_responses_and_clients_still_work(url: str) -> None:
    x = np.arange(40_000, dtype=np.float32).reshape(200, 200)  # a 160 kB .npy reply: the writelines path
    with httpx.Client(base_url=url) as client:
        buf = io.BytesIO()
        np.save(buf, x)
        r = client.post(
            "/double",
            content=buf.getvalue(),
            headers={"content-type": "application/octet-stream", "accept": "application/octet-stream"},
        )
        assert r.status_code == 200
        np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), x * 2)
        assert client.get("/livez").status_code == 200
        bad = client.post("/echo", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400


def test_without_httptools_uvicorn_picks_its_own_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    assert http.http_protocol() is http.HttpProtocol
    monkeypatch.setattr(http, "_Base", None)  # as when httptools is not installed
    assert http.http_protocol() == "auto"


@pytest.fixture(scope="module")
def short_keepalive() -> Iterator[str]:
    with running(build_app(make_service()), timeout_keep_alive=1) as base:
        yield base


def _echo(sock: socket.socket, value: bytes) -> None:
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(value), value)
    )
    head, body, _ = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 200") and body == value


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(short_keepalive: str) -> None:
    with _connect(short_keepalive) as sock:
        _echo(sock, b"1")
        sock.settimeout(3)
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, not by our 3 s timeout
        assert 0.9 < time.monotonic() - started < 2.5


def test_a_connection_in_use_is_not_closed(short_keepalive: str) -> None:
    with _connect(short_keepalive) as sock:
        for i in range(5):  # 2 s of requests 0.4 s apart: each response restarts the idle clock
            _echo(sock, b"%d" % i)
            time.sleep(0.4)
        # Half a request, then a pause past the timeout: arriving bytes stop the idle clock.
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        time.sleep(1.5)
        sock.sendall(b"Content-Type: application/json\r\nContent-Length: 1\r\n\r\n7")
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"7"


def test_a_connection_that_never_sends_is_closed_after_the_keep_alive_timeout(short_keepalive: str) -> None:
    with _connect(short_keepalive) as sock:
        sock.settimeout(4)
        started = time.monotonic()
        assert sock.recv(1) == b""  # uvicorn alone arms its idle timer only after a first response
        assert time.monotonic() - started < 3


@pytest.fixture
def slow_service() -> Iterator[str]:
    import asyncio

    svc = make_service()

    @svc.api(input=JSON(), output=JSON())
    async def slow(obj: Any) -> Any:
        await asyncio.sleep(2.5)  # the app's own time is not the client's: never a 408
        return obj

    with running(build_app(svc)) as base:
        yield base


@pytest.mark.parametrize(
    "parts",
    [
        # slowloris: a line of the head at a time, never finishing it, and still sending after the 408
        [b"POST /echo HTTP/1.1\r\n", b"Host: x\r\n"] + [b"X-%d: 1\r\n" % i for i in range(7)],
        # a body that stops short of its Content-Length
        [b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n[1"],
    ],
    ids=["head", "body"],
)
def test_a_request_that_is_not_sent_whole_in_time_gets_408(
    slow_service: str, parts: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "REQUEST_READ_TIMEOUT", 1.5)
    with _connect(slow_service) as sock:
        sock.settimeout(6)
        started = time.monotonic()
        answered = None
        for part in parts:  # the head's parts keep bytes coming, 0.5 s apart, past the timeout and the 408
            if answered is None and select.select([sock], [], [], 0)[0]:
                answered = time.monotonic() - started
            # The server lingers after its answer: what the client still sends is dropped, not reset.
            sock.sendall(part)
            time.sleep(0.5 if len(parts) > 1 else 0)
        if answered is None:
            select.select([sock], [], [], 6)
            answered = time.monotonic() - started
        head, body, rest = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        assert b"not received within 1.5 s" in body
        assert rest == b"" and sock.recv(1) == b""
        assert 1.5 < answered < 3.5
    if len(parts) == 1:
        # Counted (and logged) as the 408 the client got, not as a 499 (a client that went away).
        for _ in range(100):
            text = httpx.get(f"{slow_service}/metrics").text
            counted = re.findall(r'requests_total\{route="/echo",service="wire",status="(\d+)"', text)
            if counted:
                break
            time.sleep(0.02)
        assert counted == ["408"]
    # A request sent whole takes as long as the app does (2.5 s), past the timeout.
    with _connect(slow_service) as sock:
        sock.settimeout(6)
        sock.sendall(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n5"
        )
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"5"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    ],
    ids=["garbage", "length-and-chunked", "negative-length"],
)
def test_a_request_that_is_not_http_gets_a_json_400(url: str, request_bytes: bytes) -> None:
    import json

    with _connect(url) as sock:
        sock.sendall(request_bytes)
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
        assert json.loads(body)["error"].startswith("the request is not valid HTTP/1.1")
        assert sock.recv(1) == b""


def test_a_lingering_connection_is_closed_once_the_client_goes_quiet(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "LINGER_IDLE", 1.0)
    with _connect(url) as sock:
        sock.settimeout(6)
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        head, _, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 400") and sock.recv(1) == b""  # the server's end of the stream
        for _ in range(3):  # lingering: what comes is read and dropped
            sock.sendall(b"more garbage\r\n")
            time.sleep(0.3)
        time.sleep(3)  # quiet past LINGER_IDLE (and a sweep): closed for good, so bytes now are refused
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(20):
                sock.sendall(b"x")
                time.sleep(0.05)


def _send_until_answered(sock: socket.socket, parts: Iterator[bytes]) -> int:
    """Send ``parts`` until the server answers or closes; return the bytes sent."""
    sent = 0
    for part in parts:
        if select.select([sock], [], [], 0)[0]:
            break  # answered: more bytes now could only reset the connection
        try:
            sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(part)
    return sent


def test_a_request_head_past_the_limit_gets_431(url: str) -> None:
    import json

    # httptools and uvicorn join a header (or URL) split over reads by concatenation, with no limit: a
    # client sending a few hundred MB of one header held the loop (other clients waited seconds) for 30 s.
    piece = b"a" * 16384
    with _connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = _send_until_answered(sock, (piece for _ in range(4096)))  # up to 64 MiB
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 431") and b"connection: close" in head.lower()
        assert b"content-type: application/json" in head.lower()
        assert f"over {http.REQUEST_HEAD_MAX} bytes" in json.loads(body)["error"]
        assert sent < 4 * 1024 * 1024, f"sent {sent} bytes before the 431"
    # A large head under the limit, in pieces, still works.
    with _connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(12):
            sock.sendall(b"X-%d: %s\r\n" % (i, b"b" * 4096))
            time.sleep(0.005)
        sock.sendall(b"\r\n")
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b'{"status":"ok"}'


@pytest.fixture(scope="module")
def small_limit() -> Iterator[str]:
    with running(build_app(make_service(), max_body_size=1000)) as base:
        yield base


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_client_that_sends_its_whole_oversized_body_first_reads_the_413(
    small_limit: str, framing: str
) -> None:
    import json

    # As urllib and http.client do: the whole body, then the answer. The server closed as soon as it had
    # answered, with the body's bytes unread, so the kernel reset the connection: the client's send
    # failed (broken pipe) or its read did (reset), and it never saw the 413.
    body = b"1" * (4 * 1024 * 1024)
    if framing == "length":
        request = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    else:
        piece = b"1" * 65536
        request = b"Transfer-Encoding: chunked\r\n\r\n" + b"10000\r\n%s\r\n" % piece * 64 + b"0\r\n\r\n"
    for _ in range(3):  # the reset is a race the client usually lost
        with _connect(small_limit) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + request)
            head, answer, rest = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
            assert "over the limit of 1000 bytes" in json.loads(answer)["error"]
            assert rest == b"" and _read_to_eof(sock) == b""


def _read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 7\r\n\r\n[1,2,3]",
        b"Transfer-Encoding: chunked\r\n\r\n4\r\n[1,2\r\n3\r\n,3]\r\n0\r\n\r\n",
    ],
)
def test_a_request_asking_to_upgrade_is_served_with_its_body(url: str, framing: bytes) -> None:
    # curl --http2 on an http:// URL asks to upgrade to h2c. httptools skipped such a request's body as
    # the new protocol's: the API got an empty body (400 "empty document"; a File API answered 200 on
    # nothing), and a request sent after it in the same write was lost.
    upgrade = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    upgrade += b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Type: application/json\r\n" + framing
    then = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\n[42]"
    )
    with _connect(url) as sock:
        sock.sendall(upgrade + then)
        head, body, rest = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"[1,2,3]", (head, body)
        head, body, _ = _read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 200") and body == b"[42]", (head, body)
        # Asked to upgrade without a body, too: served, and the connection goes on.
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + then
        )
        head, body, rest = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b'{"status":"ok"}', (head, body)
        assert _read_response(sock, rest)[1] == b"[42]"


def test_a_websocket_upgrade_gets_a_json_answer(url: str) -> None:
    # No route takes a WebSocket: uvicorn's WebSocket protocol answered a bodiless text/plain 403.
    ws = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    ws += b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    with _connect(url) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n" + ws)
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 405") and b"\r\nallow: POST\r\n" in head, head
        assert orjson.loads(body)["error"].startswith("method not allowed: GET /echo")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + ws)
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b'{"status":"ok"}', (head, body)


def test_a_pipelining_client_that_leaves_unread_ends_its_requests_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from bundler.io import Text

    svc = bundler.Service("wire")

    @svc.api(input=Text(), output=Text())
    def big(n: str) -> str:
        return "x" * int(n)

    app = build_app(svc)
    size = 16 * 1024 * 1024  # past what the sockets' buffers hold: the third answer waits to be written
    request = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n"
    # uvicorn marks only a connection's newest request (queued behind the others) as disconnected: the one
    # running wrote its answer to the closed transport (uvloop's RuntimeError, a traceback per client), or
    # was cancelled while its answer waited to be written (a CancelledError traceback).
    with caplog.at_level(logging.WARNING), running(app, log_config=None) as url:
        with _connect(url) as sock:
            sock.sendall(b"%s%d" % (request, size) * 4)
            head, body, rest = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200") and len(body) == size
            while b"\r\n\r\n" not in rest:  # the second answer's head: the third request has begun
                rest += sock.recv(65536)
        # Two answers written, the third cancelled as its client left (499), the fourth never started.
        served = 'route="/big",service="wire",status="499"} 1.0'
        deadline = time.monotonic() + 10
        while served not in app.metrics.render().decode() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served in app.metrics.render().decode()
        assert 'route="/big",service="wire",status="200"} 2.0' in app.metrics.render().decode()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_request_unfinished_when_the_graceful_shutdown_ends_gets_a_json_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging
    import threading
    from concurrent.futures import ThreadPoolExecutor

    svc = make_service()
    started = threading.Event()

    @svc.api(input=JSON(), output=JSON())
    async def stuck(obj: Any) -> Any:
        started.set()
        await asyncio.sleep(60)
        return obj

    def ask(url: str) -> tuple[bytes, bytes]:
        with _connect(url) as sock:
            sock.sendall(b"POST /stuck HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            sock.sendall(b"Content-Length: 1\r\n\r\n1")
            head, body, _ = _read_response(sock)
            return head, body

    # uvicorn cancelled it once timeout_graceful_shutdown had passed: a text/plain 500 "Internal Server
    # Error" and a CancelledError traceback in the log, for a request that had done nothing wrong.
    with caplog.at_level(logging.WARNING), ThreadPoolExecutor(1) as pool:
        with running(build_app(svc), timeout_graceful_shutdown=1, log_config=None) as url:
            answer = pool.submit(ask, url)
            assert started.wait(10)
        head, body = answer.result(10)
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
    assert "is shutting down" in orjson.loads(body)["error"]
    assert not [r for r in caplog.records if r.name == "uvicorn.error" and r.exc_info], caplog.text
