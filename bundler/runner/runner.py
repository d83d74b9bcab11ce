"""Runner: a model loaded for serving, called as ``runner.run.run(...)`` or ``await runner.run.async_run()``.

Two ways to start one. ``init_local()`` loads the session in the calling thread for notebooks and tests:
calls go straight to onnxruntime. ``await async_init()`` is what the server does: the session loads in the
runner's thread pool, the runner remembers the server's event loop, and a batchable model gets a Batcher.
From then on every call goes through that loop, so requests from API threads are batched together and the
loop never blocks on onnxruntime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..exceptions import BadInput, ModelError, Overloaded
from ..store import NAME_RE

if TYPE_CHECKING:
    from ..frameworks.onnx import OnnxSession
    from ..models import Model
    from .batcher import Batcher
    from .config import BatchingConfig

__all__ = ["CallObserver", "Runner", "RunnerMethod", "ThreadCalls"]

_thread = threading.local()  # .calls: the ThreadCalls of the API request this thread is running, if any


class CallObserver(Protocol):
    """Receives the time of each model call of a runner that does not batch (a Batcher has its own)."""

    def on_call(self, seconds: float) -> None: ...


class ThreadCalls:
    """The runner calls a sync API's thread waits on, for one request: cancelled when its client leaves.

    ``runner.run.run()`` in an API thread hands its call to the server loop and blocks on the result; the
    server cancels the request's task when the client disconnects, but not the thread, so the call was still
    batched and run for nobody, and the thread stayed blocked meanwhile. ``waited`` is how long the request
    waited for the thread: part of its latency budget, which the batcher's admission counts.
    """

    __slots__ = ("futures", "gone", "queued_at", "waited")

    def __init__(self) -> None:
        self.futures: list[concurrent.futures.Future[Any]] = []
        self.gone = False
        self.queued_at = time.monotonic()  # the Batcher's clock
        self.waited = 0.0

    def call(self, func: Callable[[Any], Any], value: Any) -> Any:
        """Return ``func(value)``, run in this (API) thread with its runner calls tracked."""
        self.waited = time.monotonic() - self.queued_at
        _thread.calls = self
        try:
            return func(value)
        finally:
            _thread.calls = None

    def add(self, future: concurrent.futures.Future[Any]) -> None:
        """Track one call (from the API thread); a call made after the client left is cancelled at once."""
        self.futures.append(future)
        if self.gone:  # checked after the append: cancel() (on the loop) sees the future or we see gone
            future.cancel()

    def cancel(self) -> None:
        """Cancel the calls (on the server loop): queued ones are dropped, the thread stops waiting."""
        self.gone = True
        for future in self.futures:
            future.cancel()


def _timed(run: Any, feed: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
    begin = time.perf_counter()
    outputs = run(feed)
    return outputs, time.perf_counter() - begin


class RunnerMethod:
    """A model signature method (``run``) bound to a runner."""

    def __init__(self, runner: Runner, name: str = "run") -> None:
        self.runner = runner
        self.name = name

    def run(self, *args: Any, **kwargs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the model on the inputs (cast to the model's dtypes); block until the result is ready."""
        r = self.runner
        loop = r._loop
        if loop is not None and not loop.is_closed():
            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                current = None
            if current is loop:
                raise ModelError(
                    f"runner {r.name!r}: runner.{self.name}.run() was called on the server's event loop where"
                    f" it would block every request; in an `async def` API use"
                    f" `await runner.{self.name}.async_run(...)`"
                )
            # From an API worker thread: hop onto the server loop so this call joins a batch.
            calls = getattr(_thread, "calls", None)
            waited = calls.waited if calls is not None else 0.0
            future = asyncio.run_coroutine_threadsafe(self._run(args, kwargs, waited), loop)
            if calls is not None:
                calls.add(future)
            return future.result()
        session = r._require()
        return session.format(session.run(session.prepare(args, kwargs)))

    async def async_run(self, *args: Any, **kwargs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the model without blocking the event loop (batched when the model is batchable)."""
        return await self._run(args, kwargs, 0.0)

    async def _run(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], waited: float
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """async_run, for a request that has spent ``waited`` seconds of its budget already."""
        r = self.runner
        session = r._require()
        current = asyncio.get_running_loop()
        loop = r._loop
        served = loop is not None and not loop.is_closed()
        if loop is not None and served and current is not loop:
            # The batcher belongs to the server loop; run there and await from here.
            future = asyncio.run_coroutine_threadsafe(self._run(args, kwargs, waited), loop)
            return await asyncio.wrap_future(future)
        feed = session.prepare(args, kwargs)
        if served and r.batcher is not None:
            outputs = await r.batcher.submit(feed, waited)
        elif served:
            outputs = await r._call_unbatched(session, feed)
        else:
            # Not served (init_local, or the serving loop has ended): a thread of the pool runs it.
            outputs = await current.run_in_executor(r._executor, session.run, feed)
        return session.format(outputs)

    def __repr__(self) -> str:
        return f"RunnerMethod(runner={self.runner.name!r}, method={self.name!r})"


class Runner:
    """A stored model prepared for serving, with its batching configuration."""

    def __init__(
        self,
        model: Model,
        *,
        name: str | None = None,
        max_batch_size: int | None = None,
        max_latency_ms: float | None = None,
        **batching: Any,
    ) -> None:
        from .config import resolve_batching

        self.model = model
        self.name = name if name is not None else model.tag.name
        if not isinstance(self.name, str) or len(self.name) > 63 or not NAME_RE.match(self.name):
            raise BadInput(
                f"invalid runner name {self.name!r}: use 1-63 lowercase letters, digits, '-', '.' and '_',"
                " starting and ending with a letter or digit"
            )
        signature = dict((model.info.get("signatures") or {}).get("run") or {})
        self.batchable = bool(signature.get("batchable", False))
        self.batch_dim = int(signature.get("batch_dim", 0))
        explicit = {"max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms, **batching}
        # max_queue and max_concurrency bound every served runner's calls, batched or not.
        given = sorted(
            k for k, v in explicit.items() if v is not None and k not in ("max_queue", "max_concurrency")
        )
        if given and not self.batchable:
            raise BadInput(
                f"runner {self.name!r}: {', '.join(given)} given, but model {model.tag} was saved with"
                " batchable=False; save it with signatures={'run': {'batchable': True}} to batch"
            )
        config = resolve_batching(
            self.name, max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, **batching
        )
        given_dim = batching.get("batch_dim")
        if given_dim is not None and given_dim != self.batch_dim:
            # The batcher splits and joins on the model's own axis; an argument here was silently ignored.
            raise BadInput(
                f"runner {self.name!r}: batch_dim={given_dim!r} given, but the batch axis is the model's:"
                f" {model.tag} was saved with batch_dim={self.batch_dim}; save it with"
                f" signatures={{'run': {{'batchable': True, 'batch_dim': {given_dim!r}}}}}"
            )
        # max_concurrency 0 (auto) is one call at a time, until async_init finds the model takes a twin.
        self._auto_concurrency = config.max_concurrency == 0
        self.config: BatchingConfig = dataclasses.replace(
            config, batch_dim=self.batch_dim, max_concurrency=max(config.max_concurrency, 1)
        )
        self.run = RunnerMethod(self, "run")
        self.batcher: Batcher | None = None
        self._session: OnnxSession | None = None
        self._twin: OnnxSession | None = None  # the model on one thread, for calls beside others
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Served without a batcher (batching off, or a model saved batchable=False): calls started and not
        # finished, and an average of their time (for Retry-After).
        self._calls = 0
        self._call_seconds = 0.0
        self.observer: CallObserver | None = None  # set by the server, for its metrics

    # -- state ----------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Return True once the model is loaded."""
        return self._session is not None

    @property
    def waiting_calls(self) -> int:
        """Return the calls of an unbatched runner waiting for a thread (its queue, against max_queue)."""
        return max(0, self._calls - self.config.max_concurrency)

    @property
    def session(self) -> OnnxSession:
        """Return the loaded OnnxSession (after init_local or async_init)."""
        return self._require()

    @property
    def input_specs(self) -> list[dict[str, Any]]:
        """Return the model's input specs (name, dtype, shape) from model.yaml, without loading it."""
        return list(self.model.info.get("inputs") or [])

    @property
    def output_specs(self) -> list[dict[str, Any]]:
        """Return the model's output specs (name, dtype, shape) from model.yaml, without loading it."""
        return list(self.model.info.get("outputs") or [])

    def _require(self) -> OnnxSession:
        if self._session is None:
            raise ModelError(
                f"runner {self.name!r} is not initialized: call runner.init_local() first (notebooks, tests),"
                " or serve it (`bundler serve`), which initializes every runner of the service"
            )
        return self._session

    def _load(self) -> OnnxSession:
        from ..frameworks.onnx import OnnxSession

        return OnnxSession.load(self.model, fit_threads=True)

    @property
    def _twinned(self) -> bool:
        """Return whether a served runner looks for a one-thread twin (auto concurrency, batching on)."""
        return self._auto_concurrency and self.batchable and self.config.enabled

    async def _call_unbatched(self, session: OnnxSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one call in the thread pool, refusing it (503) once max_queue calls wait for a thread."""
        config = self.config
        waiting = self._calls - config.max_concurrency
        if waiting >= config.max_queue:
            ahead = (waiting + 1) * self._call_seconds / config.max_concurrency
            raise Overloaded(
                f"runner queue is full ({waiting} of max_queue={config.max_queue} calls waiting);"
                " retry later or raise max_queue",
                retry_after=max(round(ahead, 3), 0.001),
            )
        assert self._loop is not None
        self._calls += 1
        try:
            outputs, seconds = await self._loop.run_in_executor(self._executor, _timed, session.run, feed)
            last = self._call_seconds
            self._call_seconds = seconds if not last else 0.8 * last + 0.2 * seconds
            if self.observer is not None:
                self.observer.on_call(seconds)
            return outputs
        finally:
            self._calls -= 1

    # -- lifecycle ------------------------------------------------------------------------------------
    def init_local(self) -> None:
        """Load the model in this thread; calls then run onnxruntime directly (no batching)."""
        if self._session is None:
            self._session = self._load()

    async def async_init(self) -> None:
        """Load the model in the runner's thread pool and bind the runner to the running event loop."""
        from ..frameworks.onnx import one_thread_twin, usable_cpus

        loop = asyncio.get_running_loop()
        if self._executor is None:
            # The batching config's concurrency bounds onnxruntime calls for batched and plain runners alike
            # (a batcher bounds its own: a twinned one may run a call per CPU).
            workers = usable_cpus() if self._twinned else self.config.max_concurrency
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, workers), thread_name_prefix=f"runner-{self.name}"
            )
        if self._session is None:
            self._session = await loop.run_in_executor(self._executor, self._load)
        if self._twinned and self._twin is None:
            self._twin = await loop.run_in_executor(
                self._executor, one_thread_twin, self._session, self.model
            )
            if self._twin is not None:
                self.config = dataclasses.replace(self.config, max_concurrency=usable_cpus())
        if self.batchable and self.config.enabled and self.batcher is None:
            from .batcher import Batcher

            self.batcher = Batcher(
                self._session.run,
                self.config,
                executor=self._executor,
                batch_dim=self.batch_dim,
                run_narrow=None if self._twin is None else self._twin.run,
            )
        self._loop = loop

    async def shutdown(self) -> None:
        """Answer queued requests, stop the thread pool and release the session."""
        if self.batcher is not None:
            await self.batcher.close()
            self.batcher = None
        executor, self._executor = self._executor, None
        self._loop = None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        self._session = self._twin = None

    def __repr__(self) -> str:
        return f"Runner(name={self.name!r}, model={self.model.tag!s}, batchable={self.batchable})"
