"""Serving benchmark: raw onnxruntime vs. bundler's server (batching on/off) vs. a minimal starlette app.

    python benchmarks/serve.py            # about 4 minutes
    python benchmarks/serve.py --quick    # about a minute, rougher figures
    python benchmarks/serve.py --server-cpus 0 --client-cpus 1   # the load generator on a CPU of its own

Everything stays on 127.0.0.1 and stops by itself. Two models are built here with onnx.helper:
``mlp`` (64->256->256->10, overhead-bound, JSON bodies) and ``sr`` (the guide's SuperResolutionNet on
1x64x64 images, compute-bound, .npy bodies both ways). The server under test is ``bundler serve``'s own code
(``bundler.server.serve.serve``) in a subprocess, with the access log off (``log_level="warning"``); the
baseline is a starlette app on the same uvicorn stack that parses the MLP's JSON body and returns a constant.
Raw onnxruntime is run in both layouts the server uses: one call at a time on every core, and where a
batching runner takes a one-thread twin of its model (bundler.frameworks.onnx.one_thread_twin), one
one-thread call per CPU at once; its best is the better of the two. The load generator is another
subprocess: raw asyncio sockets, keep-alive HTTP/1.1, prebuilt request bytes,
N connections in a closed loop. Server CPU is read from /proc (all threads) over the measured window.
The MLP server, the same server without its model call and the minimal app are measured in turn,
``--rounds`` times per connection count (the machine's speed drifts between minutes); each keeps its
median round and the ratios are medians of the per-round ratios. The compute-bound model's target is judged
the same way: after the sweep picks raw onnxruntime's best batch size and the server's best connection count,
raw and served runs of equal length alternate ``--rounds`` times and the verdict is the median of the
per-round ratios (the sweep's best of several one-second runs would favour raw with its luckiest second).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = (1, 16, 64)
SERVICE = """\
import numpy as np

import bundler
from bundler.io import NumpyNdarray

import options

runner = options.apply(bundler.onnx.get("{model}:latest")).to_runner()
svc = bundler.Service("bench-{model}", runners=[runner])


@svc.api(input=NumpyNdarray(), output=NumpyNdarray())
async def predict(x):
    return await runner.run.async_run(x)


REPLY = np.zeros({reply}, np.float32)


@svc.api(input=NumpyNdarray(), output=NumpyNdarray())
async def no_model(x):
    # predict's request and reply path with the model call left out: the server's own overhead.
    return REPLY
"""
OPTIONS = """\
import sys

THREADS, SPIN, SWITCH = {threads}, {spin}, {switch}
if SWITCH:
    # A shorter GIL switch interval: the executor thread gets the GIL back sooner from a busy loop.
    sys.setswitchinterval(SWITCH)


def apply(model):
    \"\"\"Give the model the session options under test (bundler's defaults when none are set).\"\"\"
    if not THREADS and SPIN:
        return model
    from bundler.frameworks.onnx import default_session_options

    options = default_session_options()
    if THREADS:
        options.intra_op_num_threads = THREADS
    if not SPIN:
        # Idle onnxruntime workers sleep instead of spinning, leaving the cores to the event loop.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return model.with_options(session_options=options)
"""


# CPU sets from --server-cpus / --client-cpus (None: every CPU). Servers (bundler's and the minimal app)
# and the raw onnxruntime measurement get the same set, the load generator its own.
CPUS: dict[str, set[int] | None] = {"server": None, "client": None}


def parse_cpus(text: str) -> set[int] | None:
    """Parse a CPU list like ``0``, ``0-1`` or ``0,2-3``; '' means no pinning."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus or None


def _pinned(role: str) -> Callable[[], None] | None:
    cpus = CPUS[role]
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


# ---------------------------------------------------------------- models


def build_mlp() -> onnx.ModelProto:
    """Return the overhead-bound model: a 64->256->256->10 ReLU MLP with a dynamic batch axis."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [64, 256, 256, 10]
    inits, nodes, prev = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        b = (rng.standard_normal(dims[i + 1]) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out if i == 2 else f"g{i}"]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    graph = helper.make_graph(nodes, "mlp", [x], [y], inits)
    # IR 10 loads in every onnxruntime >= 1.16 (a newer onnx would stamp a version older runtimes refuse).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def build_sr() -> onnx.ModelProto:
    """Return the guide's SuperResolutionNet (upscale 3) as ONNX: 4 convolutions and a pixel shuffle."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    convs = [("conv1", 1, 64, 5), ("conv2", 64, 64, 3), ("conv3", 64, 32, 3), ("conv4", 32, 9, 3)]
    inits, nodes, prev = [], [], "input"
    for i, (name, c_in, c_out, k) in enumerate(convs):
        w = (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2 / (c_in * k * k))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"{name}.w"),
            numpy_helper.from_array(np.zeros(c_out, np.float32), f"{name}.b"),
        ]
        nodes.append(
            helper.make_node(
                "Conv", [prev, f"{name}.w", f"{name}.b"], [name], kernel_shape=[k, k], pads=[k // 2] * 4
            )
        )
        prev = name
        if i < 3:
            nodes.append(helper.make_node("Relu", [name], [f"{name}.relu"]))
            prev = f"{name}.relu"
    # PixelShuffle(3) is DepthToSpace in CRD mode, which is what torch.onnx.export emits for it.
    nodes.append(helper.make_node("DepthToSpace", [prev], ["output"], blocksize=3, mode="CRD"))
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 64, 64])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 192, 192])
    graph = helper.make_graph(nodes, "super_resolution", [x], [y], inits)
    # IR 10 loads in every onnxruntime >= 1.16 (a newer onnx would stamp a version older runtimes refuse).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


MODELS = {
    # name: (builder, one request's input, request body kind, batch sizes to try raw)
    "mlp": (
        build_mlp,
        lambda rng: rng.standard_normal((1, 64)).astype(np.float32),
        "json",
        (1, 8, 32, 64, 128),
    ),
    "sr": (build_sr, lambda rng: rng.random((1, 1, 64, 64), dtype=np.float32), "npy", (1, 2, 4, 8, 16, 32)),
}


def raw_onnxruntime(model: str, sizes: tuple[int, ...], seconds: float) -> tuple[dict[int, float], float]:
    """Return items/s per batch size and the median batch-1 call time, with the server's session settings."""
    import options  # written by run_benchmark next to the service modules

    import bundler.onnx

    session = bundler.onnx.load_model(options.apply(bundler.onnx.get(f"{model}:latest")))
    rates = _raw_rates(model, session, sizes, seconds, 1)
    times = []
    feed = {session.get_inputs()[0].name: MODELS[model][1](np.random.default_rng(1))}
    for _ in range(200 if model == "mlp" else 30):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    print(f"raw onnxruntime {model}: providers {session.get_providers()[:1]}", flush=True)
    return rates, statistics.median(times)


def raw_twin(model: str, sizes: tuple[int, ...], seconds: float) -> dict[int, float]:
    """Return items/s per batch size for the server's other layout under load, or {} where it has none.

    A batching runner that takes a one-thread twin of its model (bundler.frameworks.onnx.one_thread_twin)
    runs one twin call per CPU under load: raw onnxruntime's best then counts that layout too, one
    session on one thread called from as many threads at once.
    """
    import options

    import bundler.onnx
    from bundler.frameworks.onnx import OnnxSession, one_thread_twin, usable_cpus

    stored = options.apply(bundler.onnx.get(f"{model}:latest"))
    twin = one_thread_twin(OnnxSession.load(stored, fit_threads=True), stored)
    if twin is None:
        return {}
    return _raw_rates(model, twin.session, sizes, seconds, usable_cpus())


def _raw_rates(
    model: str, session: Any, sizes: tuple[int, ...], seconds: float, callers: int
) -> dict[int, float]:
    """Return items/s per batch size, ``callers`` threads calling ``session.run`` for ``seconds`` a size."""
    one = MODELS[model][1](np.random.default_rng(1))
    name = session.get_inputs()[0].name
    rates: dict[int, float] = {}
    for size in sizes:
        feed = {name: np.repeat(one, size, axis=0)}
        session.run(None, feed)
        counts = [0] * callers
        start = time.perf_counter()
        threads = [
            threading.Thread(target=_call_for, args=(session, feed, start + seconds, counts, i))
            for i in range(callers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rates[size] = size * sum(counts) / (time.perf_counter() - start)
    return rates


def _call_for(session: Any, feed: dict, stop: float, counts: list[int], i: int) -> None:
    """Call ``session.run`` until ``stop`` (three calls at least), counting calls in ``counts[i]``."""
    while time.perf_counter() < stop or counts[i] < 3:
        session.run(None, feed)
        counts[i] += 1


# ---------------------------------------------------------------- server processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(kind: str, port: int, workdir: str, model: str) -> None:
    """Serve in this process until SIGTERM: ``bundler`` (the real server) or ``baseline``."""
    if kind == "bundler":
        from bundler.server.serve import serve

        serve(f"service_{model}:svc", port=port, log_level="warning", working_dir=workdir)
        return
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    answer = orjson.dumps([[0.0] * 10])

    async def predict(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(answer, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])
    config = uvicorn.Config(app, port=port, log_level="warning", access_log=False, server_header=False)
    uvicorn.Server(config).run()


class Server:
    """A server subprocess; ``cpu()`` is its user+system CPU seconds so far, threads included."""

    def __init__(self, kind: str, model: str, workdir: str, env: dict[str, str]) -> None:
        self.port = free_port()
        args = [sys.executable, __file__, "--_server", kind, "--port", str(self.port), "--workdir", workdir]
        args += ["--model", model]
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, preexec_fn=_pinned("server"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{kind} server for {model} exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                if _get(self.port, "/readyz") == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{kind} server for {model} was not ready within 60 s")

    def cpu(self) -> float:
        return process_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def process_cpu(pid: int) -> float:
    """Return a process's user+system CPU seconds so far, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return int(s.recv(64)[9:12])


# ---------------------------------------------------------------- load generator


def request_bytes(model: str, path: str = "/predict") -> bytes:
    """Return one prebuilt HTTP/1.1 request for ``model`` (JSON for mlp, .npy both ways for sr)."""
    import orjson

    x = MODELS[model][1](np.random.default_rng(2))
    if MODELS[model][2] == "json":
        body, headers = orjson.dumps(x.tolist()), "Content-Type: application/json\r\n"
    else:
        buf = io.BytesIO()
        np.save(buf, x)
        body = buf.getvalue()
        headers = "Content-Type: application/octet-stream\r\nAccept: application/octet-stream\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection in a closed loop: send the request, read the whole answer, repeat.

    Reads land in one preallocated buffer and a body is only counted, never copied or kept: the load
    generator shares the server's cores, so every microsecond it spends is one the server lacks.
    """

    def __init__(self, request: bytes, warm_at: float, stop_at: float, out: dict) -> None:
        self.request, self.warm_at, self.stop_at, self.out = request, warm_at, stop_at, out
        self.data = bytearray(1 << 18)
        self.buffer = memoryview(self.data)
        self.filled = 0  # bytes of the current answer's head read so far
        self.left = -1  # body bytes still to come once the head is read
        self.status = 0
        self.sent_at = 0.0
        self.pending = False  # a request is out and its answer not complete
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        if self.sent_at >= self.stop_at:
            self.transport.close()
            return
        self.filled, self.left, self.pending = 0, -1, True
        self.transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer if self.left >= 0 else self.buffer[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.left < 0:
            self.filled += nbytes
            data = self.data
            end = data.find(b"\r\n\r\n", 0, self.filled)
            if end < 0:
                return
            head = bytes(data[:end]).lower()
            at, length = head.find(b"content-length:"), 0
            if at >= 0:
                stop = head.find(b"\r\n", at)  # the head ends before its last CRLF
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            self.status = int(head[9:12])
            self.left = length - (self.filled - end - 4)
        else:
            self.left -= nbytes
        if self.left > 0:
            return
        now = time.perf_counter()
        self.pending = False
        if self.sent_at >= self.warm_at:
            statuses = self.out["statuses"]
            statuses[self.status] = statuses.get(self.status, 0) + 1
            if self.status == 200:
                self.out["latencies"].append(now - self.sent_at)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending:  # the server closed the connection on an unanswered request: counted as status 0
            statuses = self.out["statuses"]
            statuses[0] = statuses.get(0, 0) + 1
        if not self.done.done():
            self.done.set_result(None)


async def _connection(port: int, request: bytes, warm_at: float, stop_at: float, out: dict) -> None:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: _Connection(request, warm_at, stop_at, out), "127.0.0.1", port
    )
    await protocol.done


async def _load(port: int, request: bytes, connections: int, warmup: float, seconds: float) -> dict:
    start = time.perf_counter()
    warm_at, stop_at = start + warmup, start + warmup + seconds
    out: dict = {"latencies": [], "statuses": {}}
    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + warmup, lambda: print("WARM", flush=True))
    await asyncio.gather(*(_connection(port, request, warm_at, stop_at, out) for _ in range(connections)))
    lat = sorted(out["latencies"])
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {
        "ok": len(lat),
        "rps": len(lat) / seconds,
        "p50": pick(0.50),
        "p99": pick(0.99),
        "statuses": out["statuses"],
    }


def run_client(args: argparse.Namespace) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    request = Path(args.request).read_bytes()
    result = asyncio.run(_load(args.port, request, args.connections, args.warmup, args.seconds))
    print(json.dumps(result), flush=True)


def measure(server: Server, request_file: str, connections: int, warmup: float, seconds: float) -> dict:
    """Run the load generator against ``server``; add the server's CPU seconds per 1,000 answers."""
    args = [sys.executable, __file__, "--_client", "--port", str(server.port), "--request", request_file]
    args += ["--connections", str(connections), "--warmup", str(warmup), "--seconds", str(seconds)]
    client = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=_pinned("client"))
    assert client.stdout is not None
    line = client.stdout.readline()
    cpu0, load0, t0 = server.cpu(), process_cpu(client.pid), time.perf_counter()
    if line.strip() != "WARM":
        raise SystemExit(f"load generator failed: {line!r}")
    result = json.loads(client.stdout.readline())
    cpu1, load1 = server.cpu(), process_cpu(client.pid)
    client.wait(10)
    result["cpu_per_1k"] = (cpu1 - cpu0) / max(result["ok"], 1) * 1000
    result["client_cpu_per_1k"] = (load1 - load0) / max(result["ok"], 1) * 1000
    result["window"] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    parser.add_argument("--models", default="mlp,sr", help="comma-separated: mlp, sr")
    parser.add_argument("--connections", default=",".join(map(str, CONNECTIONS)))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--batching", default="on,off", help="which server modes to run: on, off or both")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: bundler's)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="rounds of the MLP and the minimal app in turn, per connection count, and of raw and served SR"
        " (default 3; --quick 1)",
    )
    parser.add_argument(
        "--no-spin", action="store_true", help="onnxruntime workers sleep instead of spinning"
    )
    parser.add_argument(
        "--switch-interval", type=float, default=0.0, help="sys.setswitchinterval in the server"
    )
    parser.add_argument(
        "--sweep",
        default="",
        help="also serve each model at the most connections with these max_batch_size values, e.g. 8,16,64",
    )
    parser.add_argument(
        "--server-cpus",
        default="",
        help="pin the servers and the raw onnxruntime runs to these CPUs, e.g. 0 or 0-1 (default: all)",
    )
    parser.add_argument(
        "--client-cpus", default="", help="pin the load generator to these CPUs, e.g. 1 (default: all)"
    )
    parser.add_argument("--_server", help=argparse.SUPPRESS)
    parser.add_argument("--_client", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--port", "--workdir", "--model", "--request", "--warmup", "--seconds"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._server:
        run_server(args._server, int(args.port), args.workdir, args.model)
        return
    if args._client:
        args.port, args.connections = int(args.port), int(args.connections)
        args.warmup, args.seconds = float(args.warmup), float(args.seconds)
        run_client(args)
        return
    run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> None:
    warmup, seconds, raw_seconds = (0.5, 1.5, 0.3) if args.quick else (1.0, 3.0, 1.0)
    CPUS["server"], CPUS["client"] = parse_cpus(args.server_cpus), parse_cpus(args.client_cpus)
    args.rounds = args.rounds or (1 if args.quick else 3)
    models = [m for m in args.models.split(",") if m]
    connections = [int(c) for c in args.connections.split(",")]
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "options": {
            "server_cpus": sorted(CPUS["server"] or []) or "all",
            "client_cpus": sorted(CPUS["client"] or []) or "all",
            "threads": args.threads or "bundler default",
            "spin": not args.no_spin,
            "switch_interval": args.switch_interval or sys.getswitchinterval(),
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bundler-bench-") as workdir:
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "BUNDLER_HOME": str(Path(workdir) / "home"), "PYTHONPATH": pythonpath}
        os.environ["BUNDLER_HOME"] = env["BUNDLER_HOME"]
        sys.path.insert(0, str(ROOT))
        import bundler.onnx
        from bundler.frameworks.onnx import usable_cpus

        for model in models:
            bundler.onnx.save_model(model, MODELS[model][0](), signatures={"run": {"batchable": True}})
            reply = (1, 10) if model == "mlp" else (1, 1, 192, 192)
            Path(workdir, f"service_{model}.py").write_text(SERVICE.format(model=model, reply=reply))
            Path(workdir, f"{model}.http").write_bytes(request_bytes(model))
            Path(workdir, f"{model}-no-model.http").write_bytes(request_bytes(model, "/no_model"))
        Path(workdir, "options.py").write_text(
            OPTIONS.format(threads=args.threads, spin=not args.no_spin, switch=args.switch_interval)
        )
        sys.path.insert(0, workdir)
        for model in models:
            rates, batch1 = raw_pinned(model, MODELS[model][3], raw_seconds)
            twin = raw_pinned(model, MODELS[model][3], raw_seconds, twin=True)[0]
            layouts = {("one", k): v for k, v in rates.items()} | {("twin", k): v for k, v in twin.items()}
            layout, best = max(layouts, key=layouts.__getitem__)
            entry = results["models"][model] = {
                "raw": {
                    "items_per_s": rates,
                    "twin_items_per_s": twin,
                    "best_batch": best,
                    "best_layout": layout,
                    "best": layouts[layout, best],
                    "batch1_ms": batch1 * 1000,
                },
                "served": {},
            }
            print(f"raw onnxruntime {model}: " + ", ".join(f"b{k}={v:,.0f}/s" for k, v in rates.items()))
            if twin:
                print(
                    f"raw onnxruntime {model}, {usable_cpus()} one-thread calls at once: "
                    + ", ".join(f"b{k}={v:,.0f}/s" for k, v in twin.items())
                )
            for batching in args.batching.split(","):
                server = Server(
                    "bundler",
                    model,
                    workdir,
                    {**env, "BUNDLER_BATCHING": "true" if batching == "on" else "false"},
                )
                try:
                    if model == "mlp" and batching == "on":
                        results["baseline"] = compare_with_baseline(
                            server, entry, workdir, env, connections, args.rounds, warmup, seconds
                        )
                        continue
                    for n in connections:
                        r = measure(server, str(Path(workdir, f"{model}.http")), n, warmup, seconds)
                        entry["served"][f"{batching}/{n}"] = r
                        print(
                            f"  bundler {model} batching={batching} c={n}: {r['rps']:,.0f} req/s", flush=True
                        )
                    if model == "sr" and batching == "on":
                        entry["rounds"] = raw_vs_served(server, entry, workdir, args.rounds, warmup, seconds)
                finally:
                    server.stop()
        sweep = [int(v) for v in args.sweep.split(",") if v]
        for model in models if sweep else []:
            n = max(connections)
            for size in sweep:
                server = Server("bundler", model, workdir, {**env, "BUNDLER_MAX_BATCH_SIZE": str(size)})
                try:
                    r = measure(server, str(Path(workdir, f"{model}.http")), n, warmup, seconds)
                finally:
                    server.stop()
                results["models"][model].setdefault("sweep", {})[size] = r
                print(f"  sweep {model} max_batch_size={size} c={n}: {r['rps']:,.0f} req/s", flush=True)
    report(results, connections)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


def raw_pinned(
    model: str, sizes: tuple[int, ...], seconds: float, twin: bool = False
) -> tuple[dict[int, float], float]:
    """Run ``raw_onnxruntime`` (``raw_twin``) on the servers' CPUs (the session's threads start there)."""
    everywhere = os.sched_getaffinity(0)
    if CPUS["server"] is not None:
        os.sched_setaffinity(0, CPUS["server"])
    try:
        return (raw_twin(model, sizes, seconds), 0.0) if twin else raw_onnxruntime(model, sizes, seconds)
    finally:
        os.sched_setaffinity(0, everywhere)


def raw_vs_served(
    server: Server, entry: dict, workdir: str, rounds: int, warmup: float, seconds: float
) -> dict:
    """Alternate raw onnxruntime (at its best batch size) and the server (at its best connection count).

    Each run is ``seconds`` long and the two of a round run back to back, so both see the machine at the
    same speed; returns the runs and the median of the per-round ratios, which is what the target is judged
    by. (The sweep's figures are each the best of several runs, raw's of six one-second ones.)
    """
    size, twin = entry["raw"]["best_batch"], entry["raw"]["best_layout"] == "twin"
    served = {k: r for k, r in entry["served"].items() if k.startswith("on/")}
    n = int(max(served, key=lambda k: served[k]["rps"]).split("/")[1])
    raw_runs, served_runs = [], []
    for _ in range(rounds):
        raw_runs.append(raw_pinned("sr", (size,), seconds, twin=twin)[0][size])
        served_runs.append(measure(server, str(Path(workdir, "sr.http")), n, warmup, seconds)["rps"])
        print(
            f"  sr round: raw b{size}{' one-thread calls' if twin else ''} {raw_runs[-1]:,.0f} items/s,"
            f" served c={n} {served_runs[-1]:,.0f} req/s"
        )
    ratios = [s / r for s, r in zip(served_runs, raw_runs, strict=True)]
    return {
        "batch": size,
        "layout": entry["raw"]["best_layout"],
        "connections": n,
        "raw": raw_runs,
        "served": served_runs,
        "ratios": ratios,
        "median": statistics.median(ratios),
    }


def compare_with_baseline(
    server: Server,
    entry: dict,
    workdir: str,
    env: dict[str, str],
    connections: list[int],
    rounds: int,
    warmup: float,
    seconds: float,
) -> dict:
    """Measure the MLP server, the same server without its model call, and the minimal app in turn.

    The machine's speed drifts (other tenants, the load generator sharing the cores), so the three are
    measured back to back, ``rounds`` times at each connection count; each keeps its median run, and the
    ratios are the medians of the per-round ratios. Returns the baseline's results.
    """
    baseline = Server("baseline", "mlp", workdir, env)
    base: dict = {}
    targets = {
        "on": (server, "mlp.http"),
        "no model call": (server, "mlp-no-model.http"),
        "baseline": (baseline, "mlp.http"),
    }
    try:
        for n in connections:
            runs: dict[str, list[dict]] = {kind: [] for kind in targets}
            for _ in range(rounds):
                for kind, (srv, request) in targets.items():
                    runs[kind].append(measure(srv, str(Path(workdir, request)), n, warmup, seconds))
            ratios = {
                kind: statistics.median(
                    r["rps"] / b["rps"] for r, b in zip(runs[kind], runs["baseline"], strict=True)
                )
                for kind in ("on", "no model call")
            }
            for kind, results in runs.items():
                median = sorted(results, key=lambda r: r["rps"])[len(results) // 2]
                if kind == "baseline":
                    base[str(n)] = median
                else:
                    entry["served"][f"{kind}/{n}"] = {**median, "vs_baseline": ratios[kind]}
            print(
                f"  mlp c={n}: "
                + ", ".join(f"{k} " + "/".join(f"{r['rps']:,.0f}" for r in v) for k, v in runs.items()),
                flush=True,
            )
    finally:
        baseline.stop()
    return base


def report(results: dict, connections: list[int]) -> None:
    """Print the table and the three targets."""
    options = results["options"]
    print()
    print(
        f"{results['machine']['cpus']} CPUs; servers and raw onnxruntime on CPUs {options['server_cpus']},"
        f" load generator on CPUs {options['client_cpus']}"
    )
    server, client = options["server_cpus"], options["client_cpus"]
    if server == "all" or client == "all" or set(server) & set(client):
        # Raw onnxruntime runs without it: the load generator's CPU then counts against the server only.
        print(
            "(the load generator shares the servers' CPUs; to keep its work out of the comparison with raw"
            " onnxruntime, give it CPUs of its own, e.g. --server-cpus 0 --client-cpus 1 on 2 CPUs)"
        )
    print(
        f"{'server':<22}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-200':>9}{'CPU s/1k':>10}"
        f"{'client':>8}"
    )
    rows = []
    for model, entry in results["models"].items():
        for key, r in entry["served"].items():
            batching, n = key.split("/")
            label = f"{model} {batching}" if batching == "no model call" else f"{model} batching={batching}"
            rows.append((label, n, r))
    for n, r in results.get("baseline", {}).items():
        rows.append(("baseline starlette", n, r))
    for model, entry in results["models"].items():
        for size, r in entry.get("sweep", {}).items():
            rows.append((f"{model} max_batch_size={size}", str(max(connections)), r))
    for name, n, r in rows:
        bad = sum(v for k, v in r["statuses"].items() if str(k) != "200")
        print(
            f"{name:<22}{n:>6}{r['rps']:>10,.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{bad:>9}{r['cpu_per_1k']:>10.2f}"
            f"{r['client_cpu_per_1k']:>8.2f}"
        )
    print("(CPU s/1k: the server's CPU seconds per 1,000 answers, all threads; client: the load generator's)")
    print()
    for model, entry in results["models"].items():
        raw = entry["raw"]
        best = raw["best"]
        served = max((r["rps"] for k, r in entry["served"].items() if k.startswith("on/")), default=0.0)
        how = " (one-thread calls, one per CPU)" if raw["best_layout"] == "twin" else ""
        print(
            f"{model}: raw onnxruntime best {best:,.0f} items/s at batch {raw['best_batch']}{how},"
            f" batch-1 call {raw['batch1_ms']:.3f} ms; served (batching on) best {served:,.0f} req/s"
            f" = {served / best:.2f}x raw"
        )
        one = entry["served"].get("on/1")
        if one:
            extra = one["p50"] - raw["batch1_ms"]
            verdict = "ok" if extra <= 0.3 else "over"
            print(
                f"  p50 at 1 connection {one['p50']:.3f} ms = batch-1 call + {extra:.3f} ms"
                f" (target <= +0.3 ms: {verdict})"
            )
        rounds = entry.get("rounds")
        if rounds:
            print(
                f"  {len(rounds['ratios'])} rounds back to back, raw at batch {rounds['batch']}"
                f"{' (one-thread calls)' if rounds.get('layout') == 'twin' else ''} vs served at"
                f" {rounds['connections']} connections: "
                + ", ".join(
                    f"{s:,.0f}/{r:,.0f} = {s / r:.2f}x"
                    for s, r in zip(rounds["served"], rounds["raw"], strict=True)
                )
            )
            median = rounds["median"]
            verdict = "ok" if median >= 0.9 else "missed"
            print(f"  target served >= 0.9x raw best (median round {median:.2f}x): {verdict}")
    if "mlp" in results["models"] and results.get("baseline"):
        for n in connections:
            mine = results["models"]["mlp"]["served"].get(f"on/{n}")
            base = results["baseline"].get(str(n))
            if mine and base:
                ratio = mine["vs_baseline"]
                print(
                    f"mlp vs minimal app at {n} connections: {ratio:.2f}x"
                    f" (target >= 0.7x: {'ok' if ratio >= 0.7 else 'missed'})"
                )
                bare = results["models"]["mlp"]["served"].get(f"no model call/{n}")
                if bare:
                    print(
                        f"  without its model call: {bare['vs_baseline']:.2f}x (the server's own"
                        f" overhead; the model call adds {(1 / mine['rps'] - 1 / bare['rps']) * 1e6:.0f} us"
                        " a request)"
                    )
        one = results["baseline"].get("1")
        if one:
            print(f"minimal app p50 at 1 connection: {one['p50']:.3f} ms (the HTTP floor on this machine)")


if __name__ == "__main__":
    main()
