"""Time locking the quickstart set (numpy, onnxruntime, pillow + bundler's serving runtime).

    python benchmarks/lock.py [--platform linux/arm64] [--python 3.11] [--rounds 3] [--cold-uv]

cold:  empty $BUNDLER_HOME, so bundler's lock cache misses and uv resolves; uv's own cache stays warm
       unless --cold-uv (then every round also gets an empty UV_CACHE_DIR: metadata comes from the index).
warm:  the same inputs again; bundler reads the lock back from $BUNDLER_HOME/cache/locks (no resolver run).
Targets: cold < 3 s, warm < 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bundler.lock import LockOptions, collect_requirements, lock

PACKAGES = ["numpy", "onnxruntime", "pillow"]


def _once(options: LockOptions, cold_uv: bool) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["BUNDLER_HOME"] = str(root / "home")
        if cold_uv:
            os.environ["UV_CACHE_DIR"] = str(root / "uv-cache")
        reqs = collect_requirements(PACKAGES, None, root)
        start = time.perf_counter()
        cold = lock(reqs, options, wheels_dir=root / "wheels")
        mid = time.perf_counter()
        warm = lock(reqs, options, wheels_dir=root / "wheels")
        end = time.perf_counter()
        if cold.reused or not warm.reused or warm.text != cold.text:
            raise SystemExit("unexpected: the first lock was reused or the second was not")
        return mid - start, end - mid, cold.text.count("==")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--platform", default="linux/amd64")
    parser.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-uv", action="store_true", help="also start uv with an empty cache")
    args = parser.parse_args()
    options = LockOptions(python_version=args.python, platform=args.platform)
    _once(options, False)  # warm uv's cache once so "cold" measures bundler, not a first download
    results = [_once(options, args.cold_uv) for _ in range(args.rounds)]
    cold = [r[0] for r in results]
    warm = [r[1] for r in results]
    uv_cache = "empty" if args.cold_uv else "warm"
    print(f"lock {' + '.join(PACKAGES)} + bundler serve runtime ({results[0][2]} pins) for {args.platform},")
    print(f"CPython {args.python}, resolver uv, {args.rounds} rounds")
    cold_s = f"median {statistics.median(cold):.3f} s, max {max(cold):.3f} s"
    warm_ms = f"median {statistics.median(warm) * 1000:.2f} ms, max {max(warm) * 1000:.2f} ms"
    print(f"cold (empty BUNDLER_HOME, uv cache {uv_cache}): {cold_s}")
    print(f"warm (cached lock, no resolver): {warm_ms}")


if __name__ == "__main__":
    main()
