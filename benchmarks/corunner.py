"""What a small co-runner costs raw onnxruntime on the compute-bound model (no server, no HTTP).

    python benchmarks/corunner.py            # about a minute

A served request costs the CPU more than its model call: the event loop's HTTP work and, on a machine where
the load generator shares the cores, the client's. This measures what such work costs onnxruntime alone.
The co-runner is another process that keeps one core busy for ``--slice-ms`` at a time, ``--shares``
percent of one core in all (the share the server's loop plus the load generator take in
``benchmarks/serve.py`` at 64 connections: about 0.17 ms a request at ~790 requests/s, 13%). Each share is
measured in rounds that alternate with runs alone (the machine's speed drifts between minutes) for:

- ``T<cores> x1``: one call at a time on all the cores (bundler's default session options), batch ``--batch``;
- ``T1 x<cores>``: one-thread sessions, one call per core at a time (no barrier between the threads).

The report gives items/s, the loss against the runs alone, and the loss per point of the machine taken
(1.0: the co-runner costs exactly the CPU it uses; more: onnxruntime loses more than it gives up).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import MODELS

# The co-runner: busy for a slice, then asleep for the rest of its period, until its end time.
CORUNNER = """\
import sys, time
busy, period, end = float(sys.argv[1]), float(sys.argv[2]), time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end:
    start = time.perf_counter()
    while time.perf_counter() - start < busy:
        pass
    time.sleep(max(period - busy, 0.0))
"""


def session(threads: int):
    import onnxruntime as ort

    from bundler.frameworks.onnx import default_session_options

    options = default_session_options()
    if threads:
        options.intra_op_num_threads = threads
    model = MODELS["sr"][0]()
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def items_per_second(sess, feed: dict[str, np.ndarray], callers: int, seconds: float) -> float:
    """Run ``callers`` threads calling ``sess`` for ``seconds``; return rows per second."""
    rows = next(iter(feed.values())).shape[0]
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def call(i: int) -> None:
        while time.perf_counter() < stop:
            sess.run(None, feed)
            counts[i] += rows

    start = time.perf_counter()
    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def measure(sess, feed, callers: int, seconds: float, share: float, slice_s: float) -> float:
    """Return items/s with a co-runner taking ``share`` of one core (0: alone)."""
    if not share:
        return items_per_second(sess, feed, callers, seconds)
    period = slice_s / share
    corunner = subprocess.Popen(
        [sys.executable, "-c", CORUNNER, str(slice_s), str(period), str(seconds + 1.0)]
    )
    try:
        time.sleep(0.2)  # started and busy
        return items_per_second(sess, feed, callers, seconds)
    finally:
        corunner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shares", default="5,10,15", help="co-runner shares of one core, in percent")
    parser.add_argument(
        "--slice-ms", type=float, default=0.12, help="co-runner busy slice (a request's loop work)"
    )
    parser.add_argument("--batch", type=int, default=4, help="rows per call")
    parser.add_argument("--seconds", type=float, default=2.0, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="alone/co-runner pairs per share")
    args = parser.parse_args()

    from bundler.frameworks.onnx import usable_cpus

    cores = usable_cpus()
    shares = [float(s) / 100 for s in args.shares.split(",") if s.strip()]
    one = MODELS["sr"][1](np.random.default_rng(1))
    layouts = [(f"T{cores} x1", cores, 1), (f"T1 x{cores}", 1, cores)] if cores > 1 else [("T1 x1", 1, 1)]
    print(f"{cores} usable CPUs; co-runner busy slices of {args.slice_ms:g} ms; sr batch {args.batch}")
    print(f"{'layout':10} {'co-runner':>10} {'alone/s':>9} {'with/s':>9} {'loss':>7} {'loss/share':>11}")
    for name, threads, callers in layouts:
        sess = session(threads)
        feed = {sess.get_inputs()[0].name: np.repeat(one, args.batch, axis=0)}
        sess.run(None, feed)
        for share in shares:
            alone, shared = [], []
            for _ in range(args.rounds):
                alone.append(measure(sess, feed, callers, args.seconds, 0.0, args.slice_ms / 1000))
                shared.append(measure(sess, feed, callers, args.seconds, share, args.slice_ms / 1000))
            a, s = statistics.median(alone), statistics.median(shared)
            loss = 1 - s / a
            # The co-runner takes `share` of one core: share / cores of the machine.
            per_point = loss / (share / cores)
            print(
                f"{name:10} {share * 100:>8.0f} % {a:>9,.0f} {s:>9,.0f}"
                f" {loss * 100:>6.1f}% {per_point:>10.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
