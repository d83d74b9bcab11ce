"""Overload benchmark: offer several times the server's capacity and see what it does with the excess.

    python benchmarks/overload.py                 # about 30 s: capacity, then 4x capacity for 10 s
    python benchmarks/overload.py --factor 8 --seconds 20

Everything stays on 127.0.0.1 and stops by itself. The server is ``bundler serve`` in a subprocess, serving
a compute-bound MLP (64 -> 2048 -> 2048 -> 10, batchable) with a latency budget (``BUNDLER_MAX_LATENCY_MS``)
and a queue bound (``BUNDLER_MAX_QUEUE``). First a closed loop measures capacity (requests/s served with
the queue kept full), then an open loop offers ``factor`` times that for ``seconds``: one request started
every 1/rate s whatever happened to the earlier ones. The figures: offered and served rates, the 503 share
and whether every 503 had Retry-After, p50/p99 of served and of refused requests, the deepest queue seen
on /metrics, the server's RSS (before, peak during, after), and a normal request right after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SERVICE = """\
import bundler
from bundler.io import NumpyNdarray

runner = bundler.onnx.get("heavy:latest").to_runner()
svc = bundler.Service("overload", runners=[runner])


@svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 64), enforce_shape=True), output=NumpyNdarray())
async def predict(x):
    return await runner.run.async_run(x)
"""


def build_model(hidden: int = 2048) -> object:
    """Return a float32 MLP x[batch, 64] -> y[batch, 10] with two ``hidden``-wide layers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name: str, shape: tuple[int, ...]) -> Any:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name
        )

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [w("w1", (64, hidden)), w("w2", (hidden, hidden)), w("w3", (hidden, 10))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def split_cpus() -> tuple[set[int], set[int]]:
    """Return (server CPUs, load generator CPUs): the first CPU and the rest, when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Run this process on ``cpus`` only, so the load generator does not take the server's CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def rss_mib(pid: int) -> float:
    """Return the resident set size of ``pid`` in MiB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) / 1024 if match else 0.0


@contextlib.contextmanager
def server(
    workdir: Path, *, budget_ms: float, max_queue: int, hidden: int, cpus: set[int]
) -> Iterator[tuple[str, int]]:
    """Save the model, start ``bundler serve`` on a free port; yield (url, pid); stop it with SIGTERM."""
    home = workdir / "home"
    env = {**os.environ, "BUNDLER_HOME": str(home)}
    env.pop("BUNDLER_BUNDLE_DIR", None)
    saver = f"import bundler, overload; bundler.onnx.save_model('heavy', overload.build_model({hidden}),"
    saver += " signatures={'run': {'batchable': True}})"
    subprocess.run(
        [sys.executable, "-c", saver],
        env={**env, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])},
        check=True,
    )
    (workdir / "service.py").write_text(SERVICE)
    port = free_port()
    env.update(BUNDLER_MAX_LATENCY_MS=str(budget_ms), BUNDLER_MAX_QUEUE=str(max_queue), PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "bundler", "serve", "service:svc", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--log-level", "warning"],
        cwd=workdir,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bundler serve exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("bundler serve did not become ready within 60 s")
            time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Phase:
    """What one load phase saw."""

    seconds: float = 0.0
    offered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    served_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    retry_after_missing: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    probe_ms: list[float] = field(default_factory=list)


def request_bytes(port: int, body: bytes) -> bytes:
    """Return one keep-alive POST /predict, prebuilt so that the client spends no time building it."""
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# uvicorn closes keep-alive connections idle for 5 s; the pool retires them a little earlier.
IDLE_S = 4.0


class Connections:
    """Keep-alive connections on raw asyncio streams, at most ``limit`` open; the client stays cheap."""

    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit = port, limit
        self.idle: list[tuple[Conn, float]] = []
        self.opened = 0

    async def take(self) -> Conn | None:
        while self.idle:
            conn, since = self.idle.pop()
            if time.monotonic() - since < IDLE_S:
                return conn
            conn[1].close()
            self.opened -= 1
        if self.opened >= self.limit:
            return None
        self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self.port)

    def give(self, conn: Conn, reusable: bool) -> None:
        if reusable:
            self.idle.append((conn, time.monotonic()))
        else:
            conn[1].close()
            self.opened -= 1

    def close(self) -> None:
        for (_, writer), _ in self.idle:
            writer.close()


async def _one(pool: Connections, request: bytes, phase: Phase) -> None:
    conn = await pool.take()
    if conn is None:
        # Every connection is waiting on the server: the server holds `limit` requests. Count it.
        phase.errors["all connections busy"] += 1
        return
    reader, writer = conn
    started = time.perf_counter()
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        await reader.readexactly(int(headers.get("content-length", "0")))
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        phase.errors[type(exc).__name__] += 1
        pool.give(conn, False)
        return
    ms = (time.perf_counter() - started) * 1000
    pool.give(conn, headers.get("connection", "").lower() != "close")
    phase.statuses[status] += 1
    if status == 200:
        phase.served_ms.append(ms)
    elif status == 503:
        phase.refused_ms.append(ms)
        if not headers.get("retry-after"):
            phase.retry_after_missing += 1


async def closed_loop(port: int, request: bytes, clients: int, seconds: float) -> Phase:
    """Keep ``clients`` requests in flight for ``seconds``."""
    phase = Phase(seconds=seconds)
    pool = Connections(port, clients)
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            phase.offered += 1
            await _one(pool, request, phase)

    await asyncio.gather(*(worker() for _ in range(clients)))
    pool.close()
    return phase


async def open_loop(port: int, request: bytes, rate: float, seconds: float, connections: int = 512) -> Phase:
    """Start one request every 1/rate s for ``seconds``, whatever became of the earlier ones."""
    phase = Phase(seconds=seconds)
    pool = Connections(port, connections)
    tasks = []
    start = time.monotonic()
    done = asyncio.Event()

    async def probe() -> None:
        # /healthz on a connection of its own: how long the server's event loop keeps it waiting.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ping = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        while not done.is_set():
            began = time.perf_counter()
            writer.write(ping)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.I)
            await reader.readexactly(int(length.group(1)) if length else 0)
            phase.probe_ms.append((time.perf_counter() - began) * 1000)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 0.05)
        writer.close()

    prober = asyncio.create_task(probe())
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        phase.offered += 1
        tasks.append(asyncio.create_task(_one(pool, request, phase)))
    await asyncio.gather(*tasks)
    done.set()
    await prober
    pool.close()
    return phase


def _queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    values = [float(m) for m in re.findall(r"^bundler_runner_queue_depth\{[^}]*\} (\S+)$", text, re.M)]
    return max(values, default=0.0)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(
    *,
    factor: float = 4.0,
    seconds: float = 10.0,
    rows: int = 64,
    budget_ms: float = 250.0,
    max_queue: int = 256,
    hidden: int = 2048,
    capacity_seconds: float = 3.0,
) -> dict:
    """Measure capacity, then overload at ``factor`` times it; return the figures."""
    body = json.dumps(np.random.default_rng(1).standard_normal((rows, 64)).round(4).tolist()).encode()
    server_cpus, client_cpus = split_cpus()
    with (
        tempfile.TemporaryDirectory(prefix="bundler-overload-") as tmp,
        server(Path(tmp), budget_ms=budget_ms, max_queue=max_queue, hidden=hidden, cpus=server_cpus) as (
            url,
            pid,
        ),
        pinned(client_cpus),
    ):
        port = int(url.rsplit(":", 1)[1])
        request = request_bytes(port, body)
        asyncio.run(closed_loop(port, request, 4, 1.0))  # warm up the cost model and the session
        base = asyncio.run(closed_loop(port, request, 1, 1.0))
        # As many clients as the queue holds requests: the runner never idles and nothing is refused.
        clients = max(1, max_queue // rows)
        cap = asyncio.run(closed_loop(port, request, clients, capacity_seconds))
        capacity = cap.statuses[200] / capacity_seconds
        rss_before = rss_mib(pid)
        samples: list[float] = []
        depths: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            tick = 0
            while not stop.is_set():
                samples.append(rss_mib(pid))
                if tick % 10 == 0:
                    with contextlib.suppress(httpx.HTTPError):
                        depths.append(_queue_depth(url))
                tick += 1
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rate = capacity * factor
        started = time.monotonic()
        over = asyncio.run(open_loop(port, request, rate, seconds))
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
        time.sleep(0.5)
        after = asyncio.run(closed_loop(port, request, 1, 1.0))
        rss_after = rss_mib(pid)
    served = over.statuses[200]
    return {
        "rows_per_request": rows,
        "budget_ms": budget_ms,
        "max_queue_rows": max_queue,
        "baseline_p50_ms": pct(base.served_ms, 50),
        "capacity_rps": capacity,
        "offered_rps": over.offered / elapsed,
        "served_rps": served / elapsed,
        "requests": over.offered,
        "statuses": {str(k): v for k, v in sorted(over.statuses.items())},
        "client_errors": dict(over.errors),
        "share_503": over.statuses[503] / max(over.offered, 1),
        "retry_after_missing": over.retry_after_missing,
        "served_p50_ms": pct(over.served_ms, 50),
        "served_p99_ms": pct(over.served_ms, 99),
        "served_max_ms": max(over.served_ms, default=float("nan")),
        "refused_p50_ms": pct(over.refused_ms, 50),
        "refused_p99_ms": pct(over.refused_ms, 99),
        "queue_depth_max_rows": max(depths, default=float("nan")),
        "healthz_p50_ms": pct(over.probe_ms, 50),
        "healthz_p99_ms": pct(over.probe_ms, 99),
        "healthz_max_ms": max(over.probe_ms, default=float("nan")),
        "rss_before_mib": rss_before,
        "rss_peak_mib": max(samples, default=rss_before),
        "rss_after_mib": rss_after,
        "after_statuses": {str(k): v for k, v in sorted(after.statuses.items())},
        "after_p50_ms": pct(after.served_ms, 50),
    }


def report(r: dict) -> None:
    """Print the figures, one per line."""
    ms = "{:.1f} / {:.1f} / {:.1f} ms".format
    lines = [
        ("request", f"{r['rows_per_request']} rows; budget {r['budget_ms']:g} ms;"
                    f" queue <= {r['max_queue_rows']} rows"),
        ("capacity (closed loop, queue full)", f"{r['capacity_rps']:.1f} req/s"
                                               f" (1 client: p50 {r['baseline_p50_ms']:.1f} ms)"),
        ("offered (open loop)", f"{r['offered_rps']:.1f} req/s, {r['requests']} requests"),
        ("served", f"{r['served_rps']:.1f} req/s"),
        ("statuses", f"{r['statuses']}; client-side: {r['client_errors'] or 'no errors'}"),
        ("503 share", f"{r['share_503']:.1%} (without Retry-After: {r['retry_after_missing']})"),
        ("served p50 / p99 / max", ms(r["served_p50_ms"], r["served_p99_ms"], r["served_max_ms"])),
        ("503 p50 / p99", f"{r['refused_p50_ms']:.1f} / {r['refused_p99_ms']:.1f} ms"),
        ("/healthz p50 / p99 / max", ms(r["healthz_p50_ms"], r["healthz_p99_ms"], r["healthz_max_ms"])),
        ("deepest queue on /metrics", f"{r['queue_depth_max_rows']:.0f} rows"),
        ("server RSS before / peak / after", f"{r['rss_before_mib']:.0f} / {r['rss_peak_mib']:.0f}"
                                             f" / {r['rss_after_mib']:.0f} MiB"),
        ("right after (1 client, 1 s)", f"statuses {r['after_statuses']}, p50 {r['after_p50_ms']:.1f} ms"),
    ]  # fmt: skip
    for name, value in lines:
        print(f"{name:<36} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factor", type=float, default=4.0, help="offered load as a multiple of capacity")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the overload phase")
    parser.add_argument("--rows", type=int, default=64, help="rows per request")
    parser.add_argument("--budget-ms", type=float, default=250.0, help="BUNDLER_MAX_LATENCY_MS")
    parser.add_argument("--max-queue", type=int, default=256, help="BUNDLER_MAX_QUEUE (rows)")
    parser.add_argument("--hidden", type=int, default=2048, help="MLP width (cost per row)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    result = run(
        factor=args.factor,
        seconds=args.seconds,
        rows=args.rows,
        budget_ms=args.budget_ms,
        max_queue=args.max_queue,
        hidden=args.hidden,
    )
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
