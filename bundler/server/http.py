"""uvicorn's httptools protocol, sending each response's head and body in one write.

uvicorn writes a response's status line and headers when the app starts the response, and the body when
it comes: two ``send()`` system calls per response, and with ``TCP_NODELAY`` two segments the client wakes
up for. ``HttpProtocol`` holds the head until the body's first write (or the end of the response, for
bodiless ones like HEAD) and sends both at once. On this machine that took the server's CPU for a small
JSON request from 33 to 31 us, and 16 connections to the MLP from 21,300 to 22,600 req/s
(docs/batching.md). Everything else (parsing, keep-alive, flow control, pipelining) is uvicorn's own.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

__all__ = ["HEAD_HELD_MAX", "HeadHoldingTransport", "http_protocol"]  # and HttpProtocol with httptools

# A body at least this large goes out with the head as two buffers of one writev() (uvloop) rather than
# joined into one: the copy would cost more than it saves.
HEAD_HELD_MAX = 16 * 1024


class HeadHoldingTransport:
    """A connection's transport that keeps a response head back until the response's body is written.

    A head is a write that starts with a final (non-1xx) HTTP/1.1 status line and ends with the blank
    line; ``100 Continue`` and whole responses (uvicorn's own 400s) pass straight through. The head goes
    out with the next write, on ``close()``, or at ``flush()``, which the protocol calls when a response
    is complete, so nothing is held past its response. Every other attribute is the real transport's.
    """

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

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

    class HttpProtocol(_Base):  # type: ignore[misc]
        """uvicorn's HttpToolsProtocol writing through a HeadHoldingTransport."""

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(HeadHoldingTransport(transport))

        def on_response_complete(self) -> None:
            # A bodiless response (HEAD, 204, 304) has written only its head.
            self.transport.flush()
            super().on_response_complete()


def http_protocol() -> Any:
    """Return what to pass as ``uvicorn.Config(http=...)``: HttpProtocol, or "auto" without httptools."""
    return HttpProtocol if _Base is not None else "auto"
