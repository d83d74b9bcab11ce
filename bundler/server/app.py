"""The ASGI app of a Service: one ``POST /<route>`` per API plus health, readiness, metrics and docs.

API requests take a lean path: ``ServiceApp.__call__`` looks the path up in a dict and runs the API with no
middleware stack; everything else goes through Starlette's router. Every error, raised anywhere, becomes a
JSON body ``{"error": ..., "detail": ...}`` in ``error_response`` (the one place statuses are decided).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from asyncio import current_task
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route, get_route_path
from starlette.types import Message, Receive, Scope, Send

from ..exceptions import (
    BadInput,
    BundlerError,
    Overloaded,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from ..runner.runner import ThreadCalls
from ..service import API, Service
from .docs import docs_routes
from .http import CUT_SHORT_KEY, GONE_KEY, TASK_KEY
from .metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = ["DEFAULT_MAX_BODY_SIZE", "ServiceApp", "build_app", "error_response", "max_body_size_from_env"]

DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
log = logging.getLogger("bundler.server")
# Set by ServiceApp._handle on the scope: the error it answered (and logged).
ANSWERED_KEY = "bundler.answered"
access_log = logging.getLogger("bundler.access")
INFO = logging.INFO


def max_body_size_from_env(default: int = DEFAULT_MAX_BODY_SIZE) -> int:
    """Return ``$BUNDLER_MAX_BODY_SIZE`` (bytes) or the default; a bad value is a BadInput."""
    raw = os.environ.get("BUNDLER_MAX_BODY_SIZE", "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise BadInput(f"BUNDLER_MAX_BODY_SIZE={raw!r}: expected a positive number of bytes, e.g. 33554432")
    return value


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    # default=str: an error's detail comes from the API's code and may hold anything (a set, a datetime).
    body = orjson.dumps(payload, default=str)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def error_response(exc: BaseException, where: str = "") -> Response:
    """Map any exception to a JSON error response (BundlerError -> its http_status, others -> 500)."""
    if isinstance(exc, BundlerError):
        headers = {}
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if isinstance(exc, PayloadTooLarge):
            # The rest of the body may still be on the wire; do not reuse the connection.
            headers["Connection"] = "close"
        status = exc.http_status if 400 <= exc.http_status < 600 else 500
        # The server failed (e.g. the model raised): the operator must see it, not only the client. Not a
        # runner that failed to load (ServiceUnavailable): that was logged once, with its traceback, and
        # an ERROR line more per request (a load balancer's probes) buried it.
        if status >= 500 and not isinstance(exc, (Overloaded, ServiceUnavailable)):
            log.error("%s%s: %s", type(exc).__name__, f" in {where}" if where else "", exc)
        return _json(status, {"error": str(exc), "detail": getattr(exc, "detail", None)}, headers)
    if isinstance(exc, HTTPException):
        if isinstance(exc.detail, str):
            error, detail = exc.detail, None
        else:  # FastAPI's style, HTTPException(400, detail={...}): the structure, not its Python repr
            error, detail = _phrase(exc.status_code), exc.detail
        return _json(exc.status_code, {"error": error, "detail": detail}, dict(exc.headers or {}))
    log.error("unhandled error%s", f" in {where}" if where else "", exc_info=exc)
    # The exception's message stays in the log: it may hold anything the code had at hand (paths, secrets).
    return _json(
        500,
        {
            "error": f"internal error{f' in {where}' if where else ''} ({type(exc).__name__})",
            "detail": "see the server log for the traceback",
        },
    )


def printable(text: str) -> str:
    """Return ``text`` (a client's path) safe for one log line: control characters escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing (413) past ``limit`` bytes without reading further.

    A compressed body (Content-Encoding) is refused (415) unread: it went to the API as it came, so a
    gzipped JSON body was "not valid UTF-8" and a gzipped File upload reached the API still compressed.
    """
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise BadInput(f"Content-Length {value.decode('latin-1')!r} is not a number") from None
            if length > limit:
                raise PayloadTooLarge(
                    f"request body of {length} bytes is over the limit of {limit} bytes"
                    " (raise it with --max-body-size or BUNDLER_MAX_BODY_SIZE)"
                )
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            raise UnsupportedMediaType(
                f"Content-Encoding {value.decode('latin-1')!r} is not accepted; send the body uncompressed"
            )
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(
                    f"request body is over the limit of {limit} bytes"
                    " (raise it with --max-body-size or BUNDLER_MAX_BODY_SIZE)"
                )
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BufferedRequest(Request):
    """A Request whose body was read already (bounded, by ``read_body``).

    Starlette's ``body()``, ``stream()`` and ``form()`` serve a set ``_body`` without touching ``receive``;
    that skips an async generator per request on the hot path.
    """

    def __init__(self, scope: Scope, body: bytes, receive: Receive) -> None:
        super().__init__(scope, receive)
        self._body = body


class ServiceApp(Starlette):
    """A Starlette app with a dict-dispatched fast path for the service's APIs."""

    def __init__(
        self,
        svc: Service,
        *,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        api_threads: int = 64,
        debug: bool = False,
    ) -> None:
        self.svc = svc
        self.body_limit = max_body_size
        self.metrics = Metrics(svc.name)
        self.ready = not svc.runners
        self.load_error: str | None = None
        self.executor: ThreadPoolExecutor | None = None
        self._api_threads = api_threads
        self._load_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, from the lifespan
        self._apis: dict[str, API] = {f"/{api.route}": api for api in svc.apis.values()}
        openapi = orjson.dumps(svc.openapi())
        routes: list[Any] = [
            Route("/healthz", self._live, methods=["GET"]),
            Route("/livez", self._live, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            *docs_routes(svc.name, openapi),
        ]
        # Reached only when the fast path misses (e.g. under a root_path); they also give 405 on GET.
        routes += [
            Route(path, self._route_endpoint(api), methods=["POST"]) for path, api in self._apis.items()
        ]
        handlers: dict[Any, Any] = {
            BundlerError: self._handle,
            HTTPException: self._handle,
            Exception: self._handle,
        }
        super().__init__(debug=debug, routes=routes, exception_handlers=handlers, lifespan=self._lifespan)
        self._route_paths = frozenset(r.path for r in routes if isinstance(r, Route))
        self._mounts = tuple(r.path for r in routes if isinstance(r, Mount))

    # -- ASGI entry ----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            api = self._apis.get(scope["path"])
            if api is not None and scope["method"] == "POST":
                await self.handle_api(api, scope, receive, send)
                return
            await self._other(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # Under a root_path (uvicorn --root-path, a Mount) the path starts with it; routes do not. Read
        # before routing: a Mount's match writes its own root_path into the scope.
        route = self._route_label(get_route_path(scope))
        try:
            await super().__call__(scope, receive, send_status)
        except BaseException as exc:
            status = status or 500
            # Starlette re-raises an error its handler answered, for the server to log: uvicorn would print
            # the traceback _handle logged already a second time. Anything else (cancellation too) goes on.
            if scope.get(ANSWERED_KEY) is not exc:
                raise
        finally:
            # Returned without a response: the client went away first (handle_api answers nobody then).
            self._record(scope, status or scope.get(CUT_SHORT_KEY, 499), start, route=route)

    def _route_label(self, path: str) -> str:
        """Return a path's metrics label: a route's own path, the static files' mount, else "unmatched".

        Labels come from the app's routes only, never from the request: any other path (405s and 307s
        included) would add a series for good with every new URL a client sends.
        """
        if path in self._route_paths:
            return path
        for mount in self._mounts:
            if path.startswith(mount + "/"):
                return mount
        return "unmatched"

    async def handle_api(
        self, api: API, scope: Scope, receive: Receive, send: Send, *, record: bool = True
    ) -> None:
        """Serve one API request: read (bounded), decode, call, encode; every error as JSON."""
        start = time.perf_counter()
        request = None
        calls = None
        # For HttpProtocol.connection_lost, which cancels the work of a client that left before its answer.
        # (Given the loop, current_task skips looking it up: 55 ns, not 230, on Python 3.11.)
        scope[TASK_KEY] = current_task(self._loop)
        try:
            if not self.ready:
                if self.load_error:
                    raise ServiceUnavailable(f"service {self.svc.name!r} cannot serve: {self.load_error}")
                raise Overloaded(
                    f"service {self.svc.name!r} is starting: its runners are still loading (see /readyz)",
                    retry_after=1,
                )
            body = await read_body(scope, receive, self.body_limit)
            self._refuse_if_full()
            request = BufferedRequest(scope, body, receive)
            value = await api.input.from_request(request)
            if api.is_async:
                result = await api.func(value)
            else:
                # The runner calls its thread makes are cancelled with this task (the client left).
                calls = ThreadCalls()
                result = await asyncio.get_running_loop().run_in_executor(
                    self.executor, calls.call, api.func, value
                )
            response = api.output.to_response(result, request)
        except ClientDisconnect:
            if record:
                # The client left (499), or the server answered for it: a body stalled past the timeout.
                self._record(scope, scope.get(CUT_SHORT_KEY, 499), start)
            return
        except asyncio.CancelledError:
            if calls is not None:
                calls.cancel()
            if scope.get(GONE_KEY):
                # The client went away and HttpProtocol cancelled its request (queued ones never run).
                if record:
                    self._record(scope, scope.get(CUT_SHORT_KEY, 499), start)
                return
            # The server stopping gave up on it (its graceful shutdown ran out): uvicorn answered a text/plain
            # 500 and logged the cancellation's traceback. A 503 says to retry, on another replica.
            response = error_response(
                Overloaded(
                    f"service {self.svc.name!r} is shutting down: the request was not finished within the"
                    " graceful shutdown's time; retry it",
                    retry_after=1,
                )
            )
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # sys.exit() in an API too: uvicorn answered it in plain text, and the request went uncounted.
            response = error_response(exc, f"API {api.name!r}")
        try:
            await response(scope, receive, send)
        except asyncio.CancelledError:
            # Cancelled so while its answer waited for the client to read the one before (a full socket).
            if not scope.get(GONE_KEY):
                raise
            if record:
                self._record(scope, 499, start)
            return
        if record:
            self._record(scope, response.status_code, start)

    def _refuse_if_full(self) -> None:
        """Raise Overloaded before decoding the body when every batching runner's queue is full.

        The batcher would refuse the request anyway, but only after the input was decoded, which under
        several times the capacity takes the loop's whole CPU and starves the model (served rate collapses).
        """
        runners = self.svc.runners
        if not runners:
            return
        batchers = []
        for r in runners:
            b = getattr(r, "batcher", None)
            if b is None or b.has_room():
                return
            batchers.append(b)
        raise Overloaded(
            f"service {self.svc.name!r} is at capacity: every runner queue is full"
            f" ({', '.join(str(b.queued_rows) for b in batchers)} rows waiting); retry later or add replicas",
            retry_after=1,
        )

    def _record(self, scope: Scope, status: int, start: float, route: str | None = None) -> None:
        seconds = time.perf_counter() - start
        path = scope["path"]
        self.metrics.observe_request(path if route is None else route, status, seconds)
        if access_log.isEnabledFor(INFO):
            # The path is the client's: control characters (a %0A in the URL) would forge log lines.
            access_log.info("%s %s %d %.2fms", scope["method"], printable(path), status, seconds * 1000)

    def _route_endpoint(self, api: API) -> Any:
        return _APIEndpoint(self, api)

    # -- lifecycle -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.executor = ThreadPoolExecutor(self._api_threads, thread_name_prefix=f"bundler-{self.svc.name}")
        self._loop = asyncio.get_running_loop()
        self._load_task = asyncio.create_task(self._load_runners())
        try:
            yield
        finally:
            if not self._load_task.done():
                self._load_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._load_task
            for runner in self.svc.runners:
                shutdown = getattr(runner, "shutdown", None)
                if shutdown is not None:
                    try:
                        await shutdown()
                    except Exception:
                        log.exception("runner %r failed to shut down", getattr(runner, "name", runner))
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def _load_runners(self) -> None:
        """Load every runner (in the background, so /livez answers meanwhile); then mark the app ready."""
        for runner in self.svc.runners:
            name = getattr(runner, "name", repr(runner))
            t0 = time.perf_counter()
            try:
                await runner.async_init()
                # Inside the try: an error here would end this task unseen, /readyz "loading" for good.
                self._attach_observer(runner, name)
            except Exception as exc:
                # A BundlerError (a model file that is not ONNX, say) names what failed and where: its
                # traceback, two chained ones through onnxruntime, was 30 lines of noise in `docker logs`.
                trace = None if isinstance(exc, BundlerError) else exc
                log.error("runner %r failed to load: %s: %s", name, type(exc).__name__, exc, exc_info=trace)
                # Clients (/readyz, the APIs) get the kind of error, not its message: that may hold the
                # model's path on the host, or whatever the loading code had at hand (a token in a URL).
                self.load_error = (
                    f"runner {name!r} failed to load ({type(exc).__name__}); the server log says why"
                )
                return
            log.info("runner %r loaded in %.2fs%s", name, time.perf_counter() - t0, _what_loaded(runner))
        self.ready = True

    def _attach_observer(self, runner: Any, name: str) -> None:
        # The Runner creates its Batcher in async_init; the Batcher's observer is a plain attribute.
        for attr in ("batcher", "_batcher"):
            batcher = getattr(runner, attr, None)
            if batcher is not None and hasattr(batcher, "observer"):
                if batcher.observer is None:
                    batcher.observer = self.metrics.observer(name)
                return
        # No Batcher (a model saved batchable=False, or batching off): the runner times its calls itself.
        if getattr(runner, "observer", False) is None and hasattr(runner, "waiting_calls"):
            runner.observer = self.metrics.call_observer(name, lambda: runner.waiting_calls)

    # -- infrastructure routes -----------------------------------------------------------------------
    async def _live(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        runners = {
            getattr(r, "name", str(i)): bool(getattr(r, "ready", False))
            for i, r in enumerate(self.svc.runners)
        }
        if self.ready:
            return _json(200, {"status": "ready", "runners": runners})
        error = self.load_error or "runners are still loading"
        return _json(503, {"error": error, "detail": {"runners": runners}}, {"Retry-After": "1"})

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        request.scope[ANSWERED_KEY] = exc
        where = f"{request.method} {printable(request.url.path)}"
        if isinstance(exc, HTTPException) and exc.status_code in (404, 405):
            # The router's own misses (an API's HTTPException goes through handle_api, its detail kept).
            what = "no such route" if exc.status_code == 404 else "method not allowed"
            detail = f"{what}: {where} (the APIs are listed at /docs)"
            exc = HTTPException(exc.status_code, detail, exc.headers)
        return error_response(exc, where)


def _what_loaded(runner: Any) -> str:
    """Return " (model <tag> on <providers>)" for a loaded runner: is it on the GPU, or on the CPU?"""
    parts = []
    model = getattr(runner, "model", None)
    if model is not None:
        parts.append(f"model {getattr(model, 'tag', model)}")
    providers = getattr(getattr(runner, "session", None), "providers", None)
    if providers:
        parts.append(f"on {', '.join(map(str, providers))}")
    return f" ({' '.join(parts)})" if parts else ""


class _APIEndpoint:
    """The ASGI app of an API's Route, for requests the fast path misses.

    A callable object, not a function: Starlette would call a function as ``endpoint(request)``.
    """

    def __init__(self, app: ServiceApp, api: API) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # ServiceApp._other counts the request (under the route's label), so it is not counted here too.
        await self.app.handle_api(self.api, scope, receive, send, record=False)


def build_app(
    svc: Service,
    *,
    max_body_size: int | None = None,
    api_threads: int = 64,
    debug: bool = False,
) -> ServiceApp:
    """Return the ASGI app serving ``svc`` (body limit: the argument, $BUNDLER_MAX_BODY_SIZE or 32 MiB)."""
    limit = max_body_size if max_body_size is not None else max_body_size_from_env()
    if limit <= 0:
        raise BadInput(f"max_body_size={limit}: expected a positive number of bytes")
    return ServiceApp(svc, max_body_size=limit, api_threads=api_threads, debug=debug)
