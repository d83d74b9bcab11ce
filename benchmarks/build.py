"""Time `bundler build` of the quickstart: first build, then no-change rebuilds (target: under 1 s).

Runs in a fresh temporary BUNDLER_HOME; the first build locks the requirements (network to the package
index, uv's own cache as it is); the rebuilds must reuse the lock and the stored bundle.
Usage: python benchmarks/build.py [--rebuilds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rebuilds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, work = Path(tmp) / "home", Path(tmp) / "quickstart"
        shutil.copytree(ROOT / "examples/quickstart", work)
        env = dict(os.environ, BUNDLER_HOME=str(home))
        _run([sys.executable, "make_model.py"], env, work)
        build = [sys.executable, "-m", "bundler", "build", str(work), "--output", "json"]
        first = _run(build, env, work)
        rebuilds = [_run(build, env, work) for _ in range(args.rebuilds)]
        (work / "service.py").write_text((work / "service.py").read_text() + "\n# a source-only change\n")
        changed = _run(build, env, work)
    print("bundler build, quickstart (wall time of the whole CLI process, Python start-up included)")
    print(f"  first build (cold lock cache in a new BUNDLER_HOME): {first:7.3f} s")
    print(
        f"  no-change rebuild, median of {args.rebuilds}:            {statistics.median(rebuilds):7.3f} s"
        f"  (min {min(rebuilds):.3f}, max {max(rebuilds):.3f}; target < 1 s)"
    )
    print(f"  source-only change rebuild:                        {changed:7.3f} s")


if __name__ == "__main__":
    main()
