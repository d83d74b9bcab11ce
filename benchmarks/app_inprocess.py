"""Drive the ASGI app in-process (no HTTP, no sockets): requests/s of bundler's own request path.

The quickstart-sized MLP (64 -> 256 -> 256 -> 10, batchable) behind a NumpyNdarray JSON API, 64 concurrent
callers (`--callers N`); `--profile` adds cProfile's top functions. What this measures is everything the
server does per request beyond uvicorn's HTTP parsing, which a minimal starlette app pays too.
Usage: python benchmarks/app_inprocess.py [--callers 64] [--requests 200] [--profile] [--no-model]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="per caller")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (1: no batching)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-model", action="store_true", help="call an API with the same input and output but no model call"
    )
    args = parser.parse_args()
    os.environ["BUNDLER_HOME"] = tempfile.mkdtemp(prefix="bundler-bench-")

    import numpy as np
    import orjson
    from models import make_mlp

    import bundler
    from bundler.io import NumpyNdarray
    from bundler.server.app import build_app

    model = bundler.onnx.save_model("mlp", make_mlp(), signatures={"run": {"batchable": True}})
    runner = model.to_runner()
    svc = bundler.Service("bench", runners=[runner])

    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    async def predict(x: np.ndarray) -> np.ndarray:
        return await runner.run.async_run(x)

    reply = np.zeros((1, 10), np.float32)

    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    async def no_model(x: np.ndarray) -> np.ndarray:
        return reply

    app = build_app(svc)
    body = orjson.dumps(np.random.default_rng(0).normal(size=(1, 64)).tolist())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    path = "/no_model" if args.no_model else "/predict"
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b"",
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2),
             "root_path": "", "app": app}  # fmt: skip
    statuses: dict[int, int] = {}

    async def one() -> None:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(dict(scope), receive, send)

    async def caller(n: int) -> None:
        for _ in range(n):
            await one()

    async def run() -> None:
        async with app.router.lifespan_context(app):
            while not app.ready:
                await asyncio.sleep(0.01)
            # Warm-up: the batcher learns its costs.
            await asyncio.gather(*[caller(50) for _ in range(args.callers)])
            statuses.clear()
            profiler = cProfile.Profile() if args.profile else None
            start = time.perf_counter()
            if profiler:
                profiler.enable()
            await asyncio.gather(*[caller(args.requests) for _ in range(args.callers)])
            if profiler:
                profiler.disable()
            elapsed = time.perf_counter() - start
            print(f"{args.callers * args.requests / elapsed:,.0f} req/s in-process, statuses {statuses}")
            if profiler:
                pstats.Stats(profiler).sort_stats("tottime").print_stats(20)

    asyncio.run(run())


if __name__ == "__main__":
    main()
