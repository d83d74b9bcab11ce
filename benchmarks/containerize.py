"""Time the container path on the quickstart: first build, source-only rebuild, image size, cold start.

    python benchmarks/containerize.py [--keep]

Runs the real CLI (`python -m bundler build|containerize`) in a scratch copy of examples/quickstart with
its own BUNDLER_HOME, against the engine `bundler` detects. The first image build uses --no-cache, so
every layer is rebuilt; BuildKit's pip cache mount stays warm (wheels are not downloaded again), as on a
developer's machine. Targets: image < 400 MB, source-only rebuild < 2 s, cold start < 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"image_mb": 400.0, "rebuild_s": 2.0, "cold_start_s": 1.0}


def cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[str, float]:
    """Run `python -m bundler ARGS`; return its stdout and the seconds it took."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bundler", *args], capture_output=True, text=True, env=env, cwd=cwd
    )
    took = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bundler {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr, took


def image_tag(build_output: str) -> str:
    match = re.search(r'Bundle\(tag="([^"]+)"', build_output)
    if not match:
        sys.exit(f"cannot find the bundle tag in:\n{build_output}")
    return match[1]


def rebuilt_steps(log: str) -> list[str]:
    """Return the build steps BuildKit did not take from its cache (from --progress plain output)."""
    steps = dict(re.findall(r"^#(\d+) \[stage-\d+\s+\d+/\d+\] (.{0,40})", log, re.M))
    cached = set(re.findall(r"^#(\d+) CACHED$", log, re.M))
    # FROM is resolved, not built: BuildKit never prints it as CACHED.
    return [desc.strip() for num, desc in steps.items() if num not in cached and not desc.startswith("FROM ")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cold_start(docker: str, image: str) -> float:
    """Seconds from `docker run` to the first 200 on /readyz."""
    port = free_port()
    name = f"bundler-bench-{secrets.token_hex(4)}"
    started = time.perf_counter()
    subprocess.run(
        [docker, "run", "-d", "--name", name, "--network", "host", "-e", f"PORT={port}", image],
        check=True,
        capture_output=True,
    )
    try:
        while time.perf_counter() - started < 60:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            time.sleep(0.01)
        sys.exit(f"{image} did not become ready within 60 s")
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the images and the scratch directory")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from bundler.containerize import detect_engine

    engine = detect_engine()
    scratch = Path(tempfile.mkdtemp(prefix="bundler-bench-"))
    project = scratch / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", project)
    env = dict(os.environ, BUNDLER_HOME=str(scratch / "home"), PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "make_model.py"], check=True, capture_output=True, env=env, cwd=project)
    images: list[str] = []
    try:
        out, build_s = cli("build", ".", env=env, cwd=project)
        tag = image_tag(out)
        _, first_s = cli("containerize", tag, "--no-cache", "--progress", "quiet", env=env, cwd=project)
        images.append(tag)

        service = project / "service.py"
        service.write_text(service.read_text() + "\n# a source-only change\n")
        out, rebuild_build_s = cli("build", ".", env=env, cwd=project)
        tag2 = image_tag(out)
        log, rebuild_image_s = cli("containerize", tag2, "--progress", "plain", env=env, cwd=project)
        images.append(tag2)

        size = subprocess.run(
            [engine.client, "image", "inspect", "-f", "{{.Size}}", tag2],
            capture_output=True,
            text=True,
            check=True,
        )
        image_mb = int(size.stdout) / 1e6
        base = re.search(r"^FROM (\S+)", (scratch / "home").joinpath(
            "bundles", *tag2.split(":"), "env", "docker", "Dockerfile").read_text(), re.M)  # fmt: skip
        base_mb = 0.0
        if base:
            b = subprocess.run(
                [engine.client, "image", "inspect", "-f", "{{.Size}}", base[1]],
                capture_output=True,
                text=True,
            )
            base_mb = int(b.stdout) / 1e6 if b.returncode == 0 else 0.0
        starts = sorted(cold_start(engine.client, tag2) for _ in range(3))

        rebuild_s = rebuild_build_s + rebuild_image_s
        rebuilt = rebuilt_steps(log)
        print(f"engine: {engine.kind} ({engine.mode}) at {engine.client}")
        print(f"bundler build (first):          {build_s:6.2f} s")
        print(f"first image build (--no-cache): {first_s:6.2f} s   (pip cache mount warm)")
        print(
            f"source-only rebuild:            {rebuild_s:6.2f} s   (bundler build {rebuild_build_s:.2f} s"
            f" + containerize {rebuild_image_s:.2f} s; target < {TARGETS['rebuild_s']} s)"
        )
        print(f"  steps rebuilt: {', '.join(rebuilt) or 'none'}")
        print(
            f"image size:                     {image_mb:6.0f} MB  (base {base_mb:.0f} MB + bundle"
            f" {image_mb - base_mb:.0f} MB; target < {TARGETS['image_mb']:.0f} MB)"
        )
        print(
            f"cold start to /readyz 200:      {starts[1]:6.2f} s   (median of 3, min {starts[0]:.2f} s;"
            f" target < {TARGETS['cold_start_s']} s)"
        )
    finally:
        if not args.keep:
            subprocess.run([engine.client, "rmi", "-f", *images], capture_output=True)
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
