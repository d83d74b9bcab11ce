"""Adaptive batching: coalesce concurrent requests into one ONNX Runtime call.

Two parts. ``Scheduler`` is pure: it learns the model's cost per call ``t(n) = a + b*n`` and the arrival
rate from what it is told, and answers "dispatch now or wait until when" and "admit or refuse" given the
time; tests drive it with a fake clock. ``Batcher`` is the asyncio shell around it: one loop future per
queued request, per-shape queues, one ``np.concatenate`` and one executor call per batch, result slices as
views; a request alone on an idle runner that the policy would not hold runs at once, without the queue.

The rule (docs/batching.md derives it): with the executor free and ``k`` requests queued, waiting ``dt``
for one more arrival costs the queued requests ``k*dt`` plus ``k*b`` of longer run, and saves the newcomer
about the fixed cost ``a`` it would pay in a batch of its own. So wait while ``(k+1)*dt + k*b < a``, with
``dt`` the expected gap to the next arrival (never less than the silence so far), and never past the
oldest request's latency budget. Waiting is therefore bounded by ``a/(k+1)`` after the last arrival; with
one client (gaps longer than ``a``) requests are dispatched at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..exceptions import InferenceInputError, ModelError, Overloaded
from .config import BatchingConfig

__all__ = ["SWITCH_INTERVAL", "BatchObserver", "Batcher", "CostModel", "Decision", "Scheduler"]

RunBatch = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
# The GIL switch interval a serving process needs: when a batch finishes, the executor thread must win the
# GIL back from the busy event loop before it can hand the results over; at Python's default (5 ms) that
# stall idled onnxruntime for a third of the time (docs/batching.md: 1,410 -> 1,920 req/s on the
# compute-bound model).
SWITCH_INTERVAL = 0.0005
# A batch whose model call has been taking less than this runs on the event loop itself: handing it to a
# worker thread and back costs more loop time (two wake-ups, GIL hand-offs) than the call, so the loop is
# blocked for less, not more (docs/batching.md). Longer calls always go to the executor.
INLINE_MAX_S = 100e-6
# Event loops sleep in whole milliseconds (epoll's timeout, libuv's timers), so a shorter timer can idle the
# loop for up to 1 ms while the requests it waits for sit in the sockets already. A wait shorter than this
# looks again once the loop has polled its sockets (the next iteration) instead, and dispatches then unless
# that brought new requests. With 16 closed-loop callers in-process, 30% of batches waited ~10 us on a timer
# that slept 1 ms: 24,700 req/s; 64 callers, which fill batches and never wait: 55,000.
MIN_TIMER_S = 0.001
# A request alone (nothing else queued) whose call has been taking less than this also runs on the loop:
# nobody is waiting to be parsed meanwhile, so the hop to a worker thread and back is pure latency (SR,
# a 1.2 ms call: p50 at one connection +0.25-0.35 -> +0.21-0.23 ms over the bare call). It bounds how long
# the loop (health probes, new connections) can be held.
INLINE_ALONE_MAX_S = 0.005


class BatchObserver(Protocol):
    """Receives batching metrics (the server turns them into Prometheus series)."""

    def on_batch(self, size: int, seconds: float) -> None: ...

    def on_queue(self, depth: int) -> None: ...


class CostModel:
    """Exponentially weighted least-squares fit of call time ``t(n) = a + b*n`` (seconds, rows)."""

    def __init__(self, decay: float = 0.05) -> None:
        self.decay = decay
        self.count = 0
        self._s = [0.0, 0.0, 0.0, 0.0, 0.0]  # weight, n, n*n, t, n*t
        self.a = 0.0
        self.b = 0.0

    def observe(self, n: int, seconds: float) -> None:
        """Fold one measured call of ``n`` rows into the fit."""
        keep = 1.0 - self.decay if self.count else 0.0
        w, sn, snn, st, snt = self._s
        # Unrolled: this runs once per batch, which under light load is once per request.
        w = w * keep + 1.0
        sn = sn * keep + n
        snn = snn * keep + n * n
        st = st * keep + seconds
        snt = snt * keep + n * seconds
        self._s = [w, sn, snn, st, snt]
        self.count += 1
        mean_n, mean_t = sn / w, st / w
        var = snn / w - mean_n * mean_n
        # Too little spread in batch sizes to separate a from b: call it all fixed cost, which is what
        # decides waiting; the fit sharpens once sizes vary.
        b = (snt / w - mean_n * mean_t) / var if var > 1e-9 * max(1.0, mean_n * mean_n) else 0.0
        b = max(b, 0.0)
        a = mean_t - b * mean_n
        if a < 0.0:
            a, b = 0.0, mean_t / mean_n if mean_n else 0.0
        self.a, self.b = a, b

    def predict(self, n: int) -> float:
        """Return the expected seconds for a call of ``n`` rows (0 before any observation)."""
        return self.a + self.b * n if self.count else 0.0


@dataclass(frozen=True)
class Decision:
    """Dispatch now (``wake_at`` None) or look again at ``wake_at`` unless something happens first."""

    dispatch: bool
    wake_at: float | None = None


# The usual answer, made once (a frozen dataclass costs a microsecond to build).
DISPATCH = Decision(True)


class Scheduler:
    """Pure batching policy: state and the current time in, decisions out."""

    def __init__(self, config: BatchingConfig, *, gap_decay: float = 0.1) -> None:
        if config.max_concurrency < 1:
            config = dataclasses.replace(config, max_concurrency=1)  # 0 (auto) without a twin: one call
        self.config = config
        self.cost = CostModel()
        self.gap_decay = gap_decay
        self.gap = math.inf  # EWMA of the time between request arrivals
        self.last_arrival: float | None = None
        self.budget = config.max_latency_ms / 1000.0
        # Batching switched off still goes through here: one request per call, same overload protection.
        self.max_batch = config.max_batch_size if config.enabled else 1

    def on_arrival(self, now: float) -> None:
        """Record one request arriving at ``now``."""
        if self.last_arrival is not None:
            gap = max(now - self.last_arrival, 0.0)
            self.gap = gap if math.isinf(self.gap) else self.gap + self.gap_decay * (gap - self.gap)
        self.last_arrival = now

    def on_batch(self, rows: int, seconds: float) -> None:
        """Record that a call of ``rows`` rows took ``seconds`` from dispatch to results."""
        self.cost.observe(rows, seconds)

    def backlog(self, now: float, queued_rows: int, inflight: list[tuple[float, int]]) -> float:
        """Return the predicted seconds until everything in flight and ``queued_rows`` more are done."""
        predict, size = self.cost.predict, self.max_batch
        busy = sum(max(start + predict(rows) - now, 0.0) for start, rows in inflight)
        full, rest = divmod(queued_rows, size)
        ahead = (busy + full * predict(size)) / self.config.max_concurrency
        if rest:
            # The last batch also takes whoever arrives before it starts: count them, or it looks too cheap.
            joining = ahead / self.gap if self.gap > 0 else size
            ahead += predict(min(size, rest + math.ceil(joining))) / self.config.max_concurrency
        return ahead

    def admit(
        self, now: float, rows: int, queued_rows: int, inflight: list[tuple[float, int]], waited: float = 0.0
    ) -> None:
        """Raise Overloaded if ``rows`` more rows overflow the queue or cannot finish within the budget.

        ``waited``: seconds of the budget the request spent before it got here (a sync API's wait for its
        thread, in a pool whose queue nothing else bounds).
        """
        config = self.config
        if queued_rows and queued_rows + rows > config.max_queue:
            if rows > config.max_queue:
                # The queue is not full: this request alone is more than it holds, as it will be on a retry.
                message = (
                    f"a request of {rows} rows is more than max_queue={config.max_queue} rows, and is taken"
                    f" only while nothing else waits; send at most {config.max_queue} rows a request, or"
                    " raise max_queue"
                )
            else:
                message = (
                    f"runner queue is full ({queued_rows} of max_queue={config.max_queue} rows waiting);"
                    " retry later or raise max_queue"
                )
            raise Overloaded(message, retry_after=_retry(self.backlog(now, queued_rows, inflight)))
        if not (queued_rows or inflight):
            return  # an idle runner takes anything: refusing would not make it faster
        cost = self.cost
        if not cost.count:
            return  # nothing timed yet: every prediction is 0, only max_queue bounds the queue
        # Cheap upper bound first (every batch full and in flight ones just started): far under the
        # budget, which is the usual case, the exact prediction cannot exceed it either.
        a, b, size = cost.a, cost.b, self.max_batch
        bound = (queued_rows + rows) // size + 1
        bound_s = bound * (a + b * size)
        for _, n in inflight:
            bound_s += a + b * n
        budget = self.budget - waited
        if bound_s <= budget * config.max_concurrency:
            return
        expected = self.backlog(now, queued_rows + rows, inflight)
        if expected > budget:
            spent = f" after {waited * 1000:.0f} ms waiting for an API thread" if waited >= 0.001 else ""
            raise Overloaded(
                f"runner cannot answer within max_latency_ms={config.max_latency_ms:g}"
                f" (about {expected * 1000:.0f} ms of work is ahead{spent}); retry later or add replicas",
                retry_after=_retry(self.backlog(now, queued_rows, inflight)),
            )

    def decide(self, now: float, queued: int, queued_rows: int, oldest: float) -> Decision:
        """Decide for the oldest group: ``queued`` requests, ``queued_rows`` rows, the first at ``oldest``."""
        if queued_rows >= self.max_batch or not self.cost.count:
            return DISPATCH
        a, b = self.cost.a, self.cost.b
        # Latest moment that still leaves the oldest request time to run with one more row.
        deadline = oldest + self.budget - self.cost.predict(queued_rows + 1)
        last = self.last_arrival if self.last_arrival is not None else now
        # Expected gap to the next arrival, never less than the silence so far (the rate may have dropped).
        dt = max(self.gap, now - last)
        if (queued + 1) * dt + queued * b >= a or deadline <= now:
            return DISPATCH
        # The rule flips when the silence reaches (a - k*b)/(k+1) after the last arrival.
        flip = last + (a - queued * b) / (queued + 1)
        wake = min(flip, deadline)
        return DISPATCH if wake <= now else Decision(False, wake)


def _elements(feed: dict[str, np.ndarray]) -> int:
    """Return the number of input elements of a call (what its time grows with)."""
    n = 0
    for array in feed.values():  # a loop: sum() over a generator costs twice as much
        n += array.size
    return n


def _retry(seconds: float) -> float:
    return max(round(seconds, 3), 0.001)


class _Request:
    __slots__ = ("arrival", "feed", "future", "rows")

    def __init__(
        self, feed: dict[str, np.ndarray], rows: int, arrival: float, future: asyncio.Future
    ) -> None:
        self.feed = feed
        self.rows = rows
        self.arrival = arrival
        self.future = future


class Batcher:
    """Coalesce concurrent ``submit`` calls into ``run_batch`` calls run in ``executor``."""

    def __init__(
        self,
        run_batch: RunBatch,
        config: BatchingConfig,
        *,
        executor: Executor,
        batch_dim: int | None = None,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        run_narrow: RunBatch | None = None,
    ) -> None:
        """``run_narrow``: the same model on one thread. Given, the batcher runs a lone call (nothing in
        flight, fewer rows queued than ``config.max_concurrency``) with ``run_batch`` on every core, and
        otherwise up to ``config.max_concurrency`` narrow calls at once, plus one more waiting in the
        executor so that a worker never waits for the loop between calls (docs/batching.md).
        """
        self.scheduler = Scheduler(config)
        config = self.config = self.scheduler.config  # max_concurrency 0 (auto) made 1 there
        self.run_batch = run_batch
        self.run_narrow = run_narrow
        # Calls in flight at most: with narrow calls, one more than run at once (it waits in the executor).
        self._slots = config.max_concurrency + (1 if run_narrow is not None else 0)
        self._wide: tuple[float, int] | None = None  # the slot of a call on every core (narrow mode)
        self.executor = executor
        self.batch_dim = config.batch_dim if batch_dim is None else batch_dim
        self.observer = observer
        self.clock = clock
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)  # process-wide, only ever lowered
        # One FIFO per (input name, dtype, non-batch shape) signature: only alike requests concatenate.
        self._queues: dict[tuple, deque[_Request]] = {}
        self._queued_rows = 0
        self._inflight: list[tuple[float, int]] = []
        self._timer: asyncio.Handle | None = None
        self._timer_at = math.inf
        self._arrivals = 0  # requests submitted so far
        self._looked_again_at = -1  # self._arrivals when a short wait last looked again
        self._company = False  # whether the last batch held more than one request
        self._gathered = False  # whether the next batch has looked again for company already
        self._closing = False
        self._abandoned = False  # whether a caller has left a queued request since _drop_abandoned looked
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run_seconds = math.inf  # EWMA of the model call alone; unknown until a first call is timed
        self._run_elements = 0.0  # EWMA of the input elements of those calls (same weights)

    @property
    def queued_rows(self) -> int:
        """Return the number of rows waiting (not yet in ONNX Runtime)."""
        return self._queued_rows

    def has_room(self) -> bool:
        """Return whether fewer than max_queue rows wait (requests whose callers left do not count)."""
        if self._queued_rows < self.config.max_queue:
            return True
        return self._drop_abandoned() and self._queued_rows < self.config.max_queue

    async def submit(self, feed: dict[str, np.ndarray], waited: float = 0.0) -> list[np.ndarray]:
        """Run ``feed`` as part of a batch; return this request's rows of each output.

        ``waited``: seconds of its latency budget the request has spent already (see Scheduler.admit).
        """
        if self._closing:
            raise Overloaded("runner is shutting down; retry on another replica", retry_after=1.0)
        key, rows = self._signature(feed)
        if rows == 0:
            # Nothing to batch (and the queue counts rows, so it would never be sent): run it on its own.
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, feed)
        now = self.clock()
        scheduler = self.scheduler
        try:
            scheduler.admit(now, rows, self._queued_rows, self._inflight, waited)
        except Overloaded:
            # Requests whose callers went away count until a dispatch drops them, which a slow call in
            # flight delays: drop them now, and refuse only if what is left is still too much.
            if not self._drop_abandoned():
                raise
            scheduler.admit(now, rows, self._queued_rows, self._inflight, waited)
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        scheduler.on_arrival(now)
        self._arrivals += 1
        if (
            not (self._queued_rows or self._inflight or self._company)
            and self._run_seconds < INLINE_ALONE_MAX_S
        ):
            elements = _elements(feed)
            if (
                self._expected_seconds(elements) < INLINE_ALONE_MAX_S
                and scheduler.decide(now, 1, rows, now).dispatch
            ):
                # Alone on an idle runner, and the policy would not wait for company: what the queue would
                # do (run it on the loop at once, see _dispatch) without the queue, future and hand-over.
                return self._run_now(feed, rows, now, elements)
        request = _Request(feed, rows, now, loop.create_future())
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(request)
        self._queued_rows += rows
        if self.observer is not None:
            self.observer.on_queue(self._queued_rows)
        if self._timer is None or self._timer_at > now:
            self._pump()  # (a look-again due by now pumps in the loop's next iteration anyway)
        try:
            return await request.future
        except asyncio.CancelledError:
            self._abandoned = True  # the caller left (its client disconnected): _drop_abandoned may look
            raise

    def _run_now(self, feed: dict[str, np.ndarray], rows: int, now: float, elements: int) -> list[np.ndarray]:
        """Run one request on the loop now; like a batch of one, its slot is busy until the next iteration."""
        slot = (now, rows)
        self._inflight.append(slot)
        if self.run_narrow is not None:
            self._wide = slot
        self._company = self._gathered = False
        assert self._loop is not None
        begin = time.perf_counter()
        try:
            outputs = self.run_batch(feed)
        except BaseException:
            self._loop.call_soon(self._release, slot, False)
            raise
        finally:
            seconds = time.perf_counter() - begin
            self._time_call(seconds, elements)
        if self.observer is not None:
            self.observer.on_batch(rows, seconds)
        self._loop.call_soon(self._release, slot, True)
        return outputs

    async def close(self) -> None:
        """Refuse new requests, run everything queued without waiting, and return when all are answered."""
        self._closing = True
        self._pump()
        while self._inflight or self._queued_rows:
            self._idle = asyncio.Event()
            await self._idle.wait()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _signature(self, feed: dict[str, np.ndarray]) -> tuple[tuple, int]:
        dim = self.batch_dim
        if len(feed) == 1:
            # The usual one-input model: no loop, no cross-input row check.
            ((name, array),) = feed.items()
            shape = array.shape
            if len(shape) > dim:
                return ((name, array.dtype, shape[:dim] + shape[dim + 1 :]),), shape[dim]
        key = []
        rows = -1
        for name, array in feed.items():
            shape = array.shape
            if len(shape) <= dim:
                raise InferenceInputError(
                    f"input {name!r} has shape {list(shape)} but the runner batches along axis {dim};"
                    f" send at least {dim + 1} dimensions"
                )
            if rows < 0:
                rows = shape[dim]
            elif shape[dim] != rows:
                raise InferenceInputError(
                    f"input {name!r} has {shape[dim]} rows on batch axis {dim} but the first input has"
                    f" {rows}; send the same number of rows for every input"
                )
            key.append((name, array.dtype, shape[:dim] + shape[dim + 1 :]))
        return tuple(key), max(rows, 0)

    def _pump(self) -> None:
        """Dispatch batches while the executor has room and the scheduler says go; else arm the timer."""
        while self._queued_rows and self._wide is None and len(self._inflight) < self._slots:
            key, queue = self._oldest_queue()
            if queue is None:
                break
            if not self._closing:
                now = self.clock()
                if len(queue) == 1:
                    rows = queue[0].rows
                elif len(self._queues) == 1:
                    rows = self._queued_rows  # the one queue holds every queued row
                else:
                    rows = sum(r.rows for r in queue)
                decision = self.scheduler.decide(now, len(queue), rows, queue[0].arrival)
                if not decision.dispatch and self._wait(decision.wake_at, now):
                    return
                # Under load (the last batch had company) the requests of this loop iteration have not all
                # submitted yet: look again once they have, rather than split them over two calls. Once
                # per batch, and never for a full one.
                if self._company and not self._gathered and rows < self.scheduler.max_batch:
                    self._gathered = True
                    if self._timer is None or self._timer_at > now:
                        self._look_again(now)
                    return
            self._dispatch(key, queue)
        if self._idle is not None and not (self._inflight or self._queued_rows):
            self._idle.set()

    def _oldest_queue(self) -> tuple[Any, deque[_Request] | None]:
        best_key, best, best_at = None, None, math.inf
        depth = self._queued_rows
        for key, queue in list(self._queues.items()):
            # Drop requests whose callers gave up (client disconnected) before they cost a run.
            while queue and queue[0].future.done():
                self._queued_rows -= queue.popleft().rows
            if not queue:
                del self._queues[key]
            elif queue[0].arrival < best_at:
                best_key, best, best_at = key, queue, queue[0].arrival
        if self._queued_rows != depth and self.observer is not None:
            self.observer.on_queue(self._queued_rows)  # else the gauge keeps the rows of callers gone
        return best_key, best

    def _drop_abandoned(self) -> bool:
        """Drop every queued request whose caller went away; return whether there was one."""
        if not self._abandoned:
            return False  # nobody left: under overload every refusal would look through the queue
        self._abandoned = False
        depth = self._queued_rows
        for key, queue in list(self._queues.items()):
            kept = [r for r in queue if not r.future.done()]
            if len(kept) == len(queue):
                continue
            self._queued_rows -= sum(r.rows for r in queue) - sum(r.rows for r in kept)
            if kept:
                queue.clear()
                queue.extend(kept)
            else:
                del self._queues[key]
        if self._queued_rows == depth:
            return False
        if self.observer is not None:
            self.observer.on_queue(self._queued_rows)
        return True

    def _wait(self, wake_at: float | None, now: float) -> bool:
        """Arrange to pump again at ``wake_at``; return False when waiting cannot pay off (dispatch now)."""
        if wake_at is None or (self._timer is not None and self._timer_at <= wake_at):
            return True
        if wake_at - now < MIN_TIMER_S:
            if self._looked_again_at == self._arrivals:
                return False  # looked again already, and nothing arrived meanwhile
            self._look_again(now)
            return True
        assert self._loop is not None  # set by submit before any pump can wait
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wake_at
        self._timer = self._loop.call_later(wake_at - now, self._on_timer)
        return True

    def _look_again(self, now: float) -> None:
        """Pump again in the loop's next iteration, after it has polled its sockets."""
        assert self._loop is not None  # set by submit before any pump can wait
        if self._timer is not None:
            self._timer.cancel()
        self._looked_again_at = self._arrivals
        self._timer_at = now
        self._timer = self._loop.call_soon(self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._pump()

    def _dispatch(self, key: Any, queue: deque[_Request]) -> None:
        limit = self.scheduler.max_batch
        slots = self.config.max_concurrency
        # With a one-thread twin, a lone call runs on every core (the latency of an idle runner); once
        # calls overlap or enough rows wait for every core, each call runs on one thread beside the others:
        # no operator then waits for a thread that the event loop or another process has taken.
        narrow = self.run_narrow is not None and bool(self._inflight or self._queued_rows >= slots)
        if narrow:
            # Share what waits between the slots still free, so that no core sits out the next call.
            free = max(slots - len(self._inflight), 1)
            limit = min(limit, -(-self._queued_rows // free))
        batch = [queue.popleft()]
        rows = batch[0].rows
        while queue and rows + queue[0].rows <= limit:
            request = queue.popleft()
            if request.future.done():
                self._queued_rows -= request.rows
                continue
            batch.append(request)
            rows += request.rows
        if not queue:
            del self._queues[key]
        # Rows left behind by the share (not by max_batch_size) were gathered with these: no second look.
        self._company, self._gathered = (
            len(batch) > 1,
            narrow and bool(queue) and limit < self.scheduler.max_batch,
        )
        self._queued_rows -= rows
        if self.observer is not None:
            self.observer.on_queue(self._queued_rows)
        if len(batch) == 1:
            feed = batch[0].feed
        else:
            dim = self.batch_dim
            feed = {name: np.concatenate([r.feed[name] for r in batch], axis=dim) for name in batch[0].feed}
        slot = (self.clock(), rows)
        self._inflight.append(slot)
        elements = _elements(feed)
        if narrow:
            run = self.run_narrow
        else:
            run = self.run_batch
            if self.run_narrow is not None:
                self._wide = slot  # it has every core: nothing else starts until it is done
            alone = len(batch) == 1 and not self._queued_rows
            on_loop_s = INLINE_ALONE_MAX_S if alone else INLINE_MAX_S
            if self._expected_seconds(elements) < on_loop_s:
                self._work(feed, batch, slot, elements, inline=True)
                return
        try:
            # A bare executor job that calls back into the loop once: no asyncio/concurrent future pair
            # per batch, and the results are handed out in the first loop iteration after the run.
            self.executor.submit(self._work, feed, batch, slot, elements, False, run)
        except RuntimeError as exc:  # the executor is shut down
            self._finish(None, exc, 0.0, batch, slot)

    def _work(
        self,
        feed: dict[str, np.ndarray],
        batch: list[_Request],
        slot: tuple[float, int],
        elements: int,
        inline: bool = False,
        run: RunBatch | None = None,
    ) -> None:
        run = self.run_batch if run is None else run
        begin = time.perf_counter()
        cpu = 0.0 if inline else time.thread_time()
        outputs: list[np.ndarray] | None = None
        error: BaseException | None = None
        try:
            outputs = run(feed)
        except BaseException as exc:  # every error goes to the batch's callers, none kills the worker
            error = exc
        seconds = time.perf_counter() - begin
        # Whether calls run on the loop goes by their own time. In a worker that is the thread's CPU time:
        # its wall time also counts waiting for the core the busy loop holds, and would keep a short call
        # off the loop for good (MLP, 64 connections: 22-row calls took 163 us there, 39 us on the loop).
        # Only calls on every core are timed: those are the ones that may run on the loop.
        if run is self.run_batch:
            self._time_call(seconds if inline else time.thread_time() - cpu, elements)
        assert self._loop is not None
        call_soon = self._loop.call_soon if inline else self._loop.call_soon_threadsafe
        if inline and not (isinstance(error, Exception) and len(batch) > 1):
            # On the loop the results are handed out at once: a caller that dispatched its own batch in
            # submit() finds its future done and answers without another loop iteration. The slot stays
            # busy until the next iteration, so requests arriving meanwhile still queue into one batch.
            ok = self._settle(outputs, error, seconds, batch, slot[1])
            call_soon(self._release, slot, ok)
            return
        if isinstance(error, Exception) and len(batch) > 1:
            # One request's values can fail the whole call (an index out of range): run each request alone,
            # so that only the culprit gets the error and its batchmates get their results.
            alone = [self._run_alone(request.feed, run) for request in batch]
            with contextlib.suppress(RuntimeError):
                call_soon(self._finish_alone, alone, batch, slot)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
            call_soon(self._finish, outputs, error, seconds, batch, slot)

    def _time_call(self, seconds: float, elements: int) -> None:
        """Fold one model call's own time and size into the EWMAs that decide which calls run on the loop."""
        last = self._run_seconds
        if last == math.inf:
            self._run_seconds, self._run_elements = seconds, elements
        else:
            self._run_seconds = 0.8 * last + 0.2 * seconds
            self._run_elements = 0.8 * self._run_elements + 0.2 * elements

    def _expected_seconds(self, elements: int) -> float:
        """Return how long a call on ``elements`` inputs may take: the usual call's time, scaled to its size.

        The usual time alone would put a request of 40,000 rows (or one large image) on the loop because
        the calls before it were small, and the loop (health probes, every other client) would wait for it.
        """
        usual = self._run_elements
        if elements <= usual or usual <= 0:
            return self._run_seconds
        return self._run_seconds * elements / usual

    def _run_alone(
        self, feed: dict[str, np.ndarray], run: RunBatch
    ) -> tuple[list[np.ndarray] | None, Exception | None, float]:
        begin = time.perf_counter()
        try:
            return run(feed), None, time.perf_counter() - begin
        except Exception as exc:
            return None, exc, 0.0

    def _finish_alone(
        self,
        alone: list[tuple[list[np.ndarray] | None, Exception | None, float]],
        batch: list[_Request],
        slot: tuple[float, int],
    ) -> None:
        self._free(slot)
        for request, (outputs, error, seconds) in zip(batch, alone, strict=True):
            if error is None and self.observer is not None:
                # Model calls like any other (the metrics count rows run), here on the loop like the rest.
                self.observer.on_batch(request.rows, seconds)
            if request.future.done():
                continue
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(outputs)
        self._pump()

    def _finish(
        self,
        outputs: list[np.ndarray] | None,
        error: BaseException | None,
        seconds: float,
        batch: list[_Request],
        slot: tuple[float, int],
    ) -> None:
        self._release(slot, self._settle(outputs, error, seconds, batch, slot[1]))

    def _settle(
        self,
        outputs: list[np.ndarray] | None,
        error: BaseException | None,
        seconds: float,
        batch: list[_Request],
        rows: int,
    ) -> bool:
        """Answer the batch's callers; return whether the call succeeded (so its time is learned)."""
        ok = error is None and outputs is not None
        if ok:
            assert outputs is not None
            if self.observer is not None:
                self.observer.on_batch(rows, seconds)
            try:
                self._deliver(outputs, batch, rows)
            except ModelError as exc:
                error = exc
        if error is not None:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
        return ok

    def _release(self, slot: tuple[float, int], ok: bool) -> None:
        """Free the call's slot, learn its loop-side time, and dispatch what queued meanwhile."""
        self._free(slot)
        if ok:
            # Loop-side time includes the thread hop: that overhead is part of what batching amortizes.
            self.scheduler.on_batch(slot[1], self.clock() - slot[0])
        self._pump()

    def _free(self, slot: tuple[float, int]) -> None:
        self._inflight.remove(slot)
        if slot is self._wide:
            self._wide = None

    def _deliver(self, outputs: list[np.ndarray], batch: list[_Request], rows: int) -> None:
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        dim = self.batch_dim
        for out in outputs:
            if out.ndim <= dim or out.shape[dim] != rows:
                got = f"{out.shape[dim]} rows on axis {dim}" if out.ndim > dim else f"no axis {dim}"
                raise ModelError(
                    f"a batchable model returned an output of shape {list(out.shape)} ({got}) for a batch"
                    f" of {rows} rows from {len(batch)} requests; every output needs the batch axis with one"
                    " row per input row: save the model with batchable=False"
                )
        lead = (slice(None),) * dim
        start = 0
        for request in batch:
            stop = start + request.rows
            if not request.future.done():
                if dim:
                    index = (*lead, slice(start, stop))
                    request.future.set_result([out[index] for out in outputs])
                else:
                    request.future.set_result([out[start:stop] for out in outputs])
            start = stop
