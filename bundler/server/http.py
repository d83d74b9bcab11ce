"""uvicorn's httptools protocol, sending each response's head and body in one write.

uvicorn writes a response's status line and headers when the app starts the response, and the body when
it comes: two ``send()`` system calls per response, and with ``TCP_NODELAY`` two segments the client wakes
up for. ``HttpProtocol`` holds the head until the body's first write (or the end of the response, for
bodiless ones like HEAD) and sends both at once. On this machine that took the server's CPU for a small
JSON request from 33 to 31 us, and 16 connections to the MLP from 21,300 to 22,600 req/s
(docs/batching.md). Everything else (parsing, keep-alive, flow control, pipelining) is uvicorn's own.

It also bounds how long a client may take to send a request, which uvicorn does not: a connection that
sends nothing is closed after the keep-alive timeout (uvicorn arms that timer only after a response), one
whose request head is not complete within ``REQUEST_READ_TIMEOUT`` seconds of its first byte, or whose body
stalls that long, gets 408 and is closed. Without that, clients that trickle partial requests (slowloris)
hold connections forever. A sweep once a second checks the connections, so requests pay one attribute
store, not a timer. Nor does uvicorn bound a request's head: httptools joins a header (and uvicorn a URL)
split over reads by concatenation, so one client sending hundreds of MB of header held the loop for
seconds at a time; a head still unfinished ``REQUEST_HEAD_MAX`` bytes past its first read gets 431.

An answer that ends the connection before the request is read whole (a 413, and the server's own 400,
408 and 431) does not close it at once: bytes the client still sends would make the kernel reset the
connection, and a client that sends its whole request before reading (urllib, http.client) would get a
broken pipe or a reset, never the answer. The server sends the answer and its end of the stream, then
reads and drops what comes until the client closes, sends nothing for ``LINGER_IDLE`` seconds, or
``LINGER_MAX`` seconds have passed (nginx's lingering close).

And a client that closes its connection before its answer has begun gets its request cancelled (uvicorn
only flags the request): waiting in a runner's queue, it is dropped before it costs a model call.

A request that asks to switch protocols (``Upgrade: h2c``, which ``curl --http2`` sends on http:// URLs)
and is not a WebSocket one is served as HTTP/1.1, body included (RFC 9110 lets a server ignore Upgrade).
httptools skips such a request's body, taking it for the new protocol's bytes: the API got an empty body
(a File API answered 200 on nothing) and the bytes after it were lost.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

__all__ = [
    "CUT_SHORT_KEY",
    "GONE_KEY",
    "HEAD_HELD_MAX",
    "LINGER_IDLE",
    "LINGER_MAX",
    "REQUEST_HEAD_MAX",
    "REQUEST_READ_TIMEOUT",
    "TASK_KEY",
    "HeadHoldingTransport",
    "http_protocol",
]
# (and HttpProtocol where httptools is installed)

# Seconds a request's head may take from its first byte, and a body may go without a byte (nginx's
# client_header_timeout and client_body_timeout are 60 s; a model server's clients are programs).
REQUEST_READ_TIMEOUT = 30.0
# Bytes a request's head (request line and headers) may still take after its first read (nginx allows
# 4 x 8 kB of headers, node 16 kB; a long token or cookie fits, a header that never ends does not).
REQUEST_HEAD_MAX = 64 * 1024

# Seconds a connection answered before its request was read whole still reads (and drops) what comes
# before it closes (nginx's lingering_time), and how long it waits for more (nginx's lingering_timeout).
LINGER_MAX = 30.0
LINGER_IDLE = 5.0

# Scope keys: the asyncio task serving an API request (set by the app), and the flag set before that task
# is cancelled because its client went away (so the app answers nobody, counting a 499).
TASK_KEY = "bundler.task"
GONE_KEY = "bundler.client_gone"
# Set on the scope of a request the server answered itself before reading it whole (408, 431, 400): its
# status, which the app then counts and logs, not the 499 of a client that went away.
CUT_SHORT_KEY = "bundler.cut_short"

# A body at least this large goes out with the head as two buffers of one writev() (uvloop) rather than
# joined into one: the copy would cost more than it saves.
HEAD_HELD_MAX = 16 * 1024


class HeadHoldingTransport:
    """A connection's transport that keeps a response head back until the response's body is written.

    A head is a write that starts with a final (non-1xx) HTTP/1.1 status line and ends with the blank
    line; ``100 Continue`` and whole responses (uvicorn's own 400s) pass straight through. The head goes
    out with the next write, on ``close()``, or at ``flush()``, which the protocol calls when a response
    is complete, so nothing is held past its response. ``close()`` first asks ``linger`` (when set)
    whether the connection should linger instead. Every other attribute is the real transport's.
    """

    __slots__ = ("_held", "_transport", "linger")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self.linger: Callable[[], bool] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) < HEAD_HELD_MAX:
                self._transport.write(held + bytes(data))
            else:
                self._transport.writelines((held, data))
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1" and data[-4:] == b"\r\n\r\n":
            self._held = bytes(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        linger = self.linger
        if linger is not None and not self._transport.is_closing() and linger():
            return
        self._transport.close()

    def is_closing(self) -> bool:  # asked once per response: spared the __getattr__ detour
        return self._transport.is_closing()

    @property
    def transport(self) -> asyncio.Transport:
        """Return the wrapped transport."""
        return self._transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _httptools_protocol() -> Any:
    try:
        return importlib.import_module("uvicorn.protocols.http.httptools_impl").HttpToolsProtocol
    except ImportError:  # httptools is not installed: uvicorn falls back to h11 by itself
        return None


_Base: Any = _httptools_protocol()

if _Base is not None:
    import httptools

    class HttpProtocol(_Base):  # type: ignore[misc]
        """uvicorn's HttpToolsProtocol writing through a HeadHoldingTransport, with read timeouts."""

        # When the request being read began (its first byte) and when its last bytes came, on the sweep's
        # coarse clock; _began == 0: no request is being read. _head_cycle: uvicorn's cycle when the
        # request began (a new one replaces it once the head is complete).
        _began = 0.0
        _data_at = 0.0
        _head_cycle: Any = None
        # Whose head _head_read counts (a _head_cycle), and its bytes past its first read.
        _counted: Any = ()
        _head_bytes = 0
        # Set once the server has answered and given up on the request being read (400, 408, 431).
        _cut_short = False
        parser: Any  # httptools' parser; _DROP once the connection lingers
        # The framing header (b"content-length: 7") of the body httptools skipped: its request asked to
        # upgrade, and is served as HTTP/1.1 (see _read_after_upgrade). None: no such body is pending.
        _skipped_body: bytes | None = None
        # The cycle whose request the app is serving; with pipelining, uvicorn's ``cycle`` is the newest
        # one, queued behind it.
        _running: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            wrapped = HeadHoldingTransport(transport)
            wrapped.linger = self._linger
            super().connection_made(wrapped)
            # A connection that never sends a byte is idle too (uvicorn arms this only after a response).
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
            _Sweeper.watch(self.loop, self.connections)

        def data_received(self, data: bytes) -> None:
            self._data_at = _Sweeper.now
            # uvicorn's own, but for an upgrade that is not a WebSocket one (its data was dropped unread).
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
            except httptools.HttpParserUpgrade as exc:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return
                self._read_after_upgrade(data[exc.args[0] :])
                return
            if self.cycle is self._head_cycle and self.parser is not _DROP:  # a head is still coming (rare)
                self._head_read(len(data))

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            pipeline = self.pipeline
            if not pipeline or pipeline[0][0] is not self.cycle:  # started, not queued
                self._running = self.cycle
            if self.parser.should_upgrade() and not self._should_upgrade():
                self._skipped_body = _body_framing(self.headers)

        def on_message_complete(self) -> None:
            if self._skipped_body is None:
                super().on_message_complete()
            # else: the body of a request that asked to upgrade, skipped: _read_after_upgrade reads it

        def _read_after_upgrade(self, rest: bytes) -> None:
            """Go on reading HTTP/1.1 after a request that asked to upgrade: its body, then what follows."""
            framing, self._skipped_body = self._skipped_body, None
            if framing is not None:
                # A parser of its own reads the body as that of a made-up head with the request's framing.
                self.parser = httptools.HttpRequestParser(_AfterUpgrade(self))
                try:
                    self.parser.feed_data(b"POST / HTTP/1.1\r\n%s\r\n\r\n" % framing)
                except httptools.HttpParserError:  # a Transfer-Encoding other than chunked, say
                    self.send_400_response("Invalid HTTP request received.")
                    return
            if rest:
                self.data_received(rest)

        def _head_read(self, size: int) -> None:
            """Count a read that ended inside a request's head; answer 431 once the head is too large."""
            if self._counted is not self._head_cycle:  # this head's first read: it may hold more than it
                self._counted = self._head_cycle
                self._head_bytes = 0
                return
            self._head_bytes += size
            if self._head_bytes > REQUEST_HEAD_MAX and not self.transport.is_closing():
                self._began = 0.0
                message = (
                    f"the request's head (its URL and headers) is over {REQUEST_HEAD_MAX} bytes;"
                    " send a shorter URL and smaller headers"
                )
                self._send_and_close(431, "Request Header Fields Too Large", message)

        def on_message_begin(self) -> None:
            self._began = _Sweeper.now
            self._head_cycle = self.cycle
            super().on_message_begin()

        def send_400_response(self, msg: str) -> None:
            # uvicorn's own 400 (a request that does not parse as HTTP) in the server's JSON error shape.
            self._send_and_close(400, "Bad Request", f"the request is not valid HTTP/1.1: {msg}")

        def _send_and_close(self, status: int, reason: str, message: str) -> None:
            body = orjson.dumps({"error": message})
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
            )
            self._cut_short = True
            cycle = self.cycle
            if cycle is not None:  # an app waiting for the rest of the body gets a disconnect, now
                cycle.scope[CUT_SHORT_KEY] = status
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.close()

        def _linger(self) -> bool:
            """Close a connection answered before its request was read whole lingering; True if so."""
            if self.parser is _DROP:
                return False  # lingering already: close
            cycle = self.cycle
            if not self._cut_short and (cycle is None or not (cycle.response_complete and cycle.more_body)):
                return False
            self.parser = _DROP  # what else comes is dropped unparsed (a second close() closes)
            self._began = 0.0
            self._data_at = _Sweeper.now  # the sweep closes it once the client has gone quiet
            self.transport.write_eof()  # the answer is whole: the client reads it, then the end
            self.flow.resume_reading()
            self.loop.call_later(LINGER_MAX, self.transport.close)
            return True

        def read_timed_out(self, now: float) -> bool:
            """Return whether the request being read has outrun REQUEST_READ_TIMEOUT (False: none is).

            A lingering connection times out once the client has sent nothing for LINGER_IDLE seconds.
            """
            if not self._began:
                return self.parser is _DROP and now - self._data_at > LINGER_IDLE
            cycle = self.cycle
            if cycle is self._head_cycle:  # still reading the head
                return now - self._began > REQUEST_READ_TIMEOUT
            if not cycle.more_body:  # read whole: done with this one
                self._began = 0.0
                return False
            return now - self._data_at > REQUEST_READ_TIMEOUT

        def time_out(self) -> None:
            """Answer 408 (unless a response has begun) and close the connection."""
            self._began = 0.0
            if self.transport.is_closing():
                return
            if self.parser is _DROP:  # a lingering connection gone quiet
                self.transport.close()
                return
            cycle = self.cycle
            if cycle is self._head_cycle or not cycle.response_started:
                message = f"the request was not received within {REQUEST_READ_TIMEOUT:g} s; send it whole"
                self._send_and_close(408, "Request Timeout", message)
            else:
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            cycle = self._running
            if cycle is not None and cycle is not self.cycle and not cycle.response_complete:
                # A pipelined request's: uvicorn marks only the newest cycle (queued, never to run) as
                # disconnected, so this one wrote its answer to the closed transport (uvloop raised, a
                # traceback per client) and was not cancelled while it waited or ran.
                cycle.disconnected = True
                cycle.message_event.set()
            if cycle is not None and not cycle.response_started:
                # Nobody will read the answer: stop the work (a request queued in a batcher is dropped).
                task = cycle.scope.get(TASK_KEY)
                if task is not None and not task.done():
                    cycle.scope[GONE_KEY] = True
                    task.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            # A bodiless response (HEAD, 204, 304) has written only its head.
            self.transport.flush()
            pipeline = self.pipeline
            if pipeline:  # uvicorn starts the oldest queued request next
                self._running = pipeline[-1][0]
            super().on_response_complete()


def _body_framing(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """Return the header that frames a request's body (Transfer-Encoding or Content-Length); None: no body."""
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return b"transfer-encoding: " + value
        if name == b"content-length":
            length = value
    return b"content-length: " + length if length is not None and length.strip() != b"0" else None


class _AfterUpgrade:
    """The callbacks of the parser reading on after a request that asked to upgrade.

    Its first message is a made-up head (dropped) and the skipped body (the protocol's); every later one
    is the protocol's own.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.head = True  # the made-up head is being parsed

    def on_message_begin(self) -> None:
        if not self.head:
            self.protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self.head:
            self.protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head:
            self.protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.head:
            self.head = False
        else:
            self.protocol.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.protocol.on_body(body)

    def on_message_complete(self) -> None:
        self.protocol.on_message_complete()


class _Drop:
    """The parser of a lingering connection: what the client still sends goes nowhere."""

    def feed_data(self, data: bytes) -> None:
        pass


_DROP = _Drop()


class _Sweeper:
    """Once a second, per event loop: advance the coarse clock and time out stalled requests."""

    now = time.monotonic()
    _loops: ClassVar[dict[asyncio.AbstractEventLoop, set[Any]]] = {}

    @classmethod
    def watch(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        cls.now = time.monotonic()
        if loop not in cls._loops:
            cls._loops[loop] = connections
            loop.call_later(1.0, cls._sweep, loop)

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        now = cls.now = time.monotonic()
        connections = cls._loops[loop]
        for connection in [c for c in connections if isinstance(c, HttpProtocol) and c.read_timed_out(now)]:
            connection.time_out()
        if connections and not loop.is_closed():
            loop.call_later(1.0, cls._sweep, loop)
        else:
            del cls._loops[loop]  # idle: the next connection starts it again


def http_protocol() -> Any:
    """Return what to pass as ``uvicorn.Config(http=...)``: HttpProtocol, or "auto" without httptools."""
    return HttpProtocol if _Base is not None else "auto"
