"""Faults: kill -9 in the middle of save_model, `bundler build` and `bundler import`; two processes at once;
a runner whose inference raises.

After every kill the store must list only complete entries, each passing its sha256 manifest check, and the
same command must succeed when run again (sweeping the dead process's staging directory away).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import bundler
from bundler.io import NumpyNdarray
from bundler.server.app import build_app
from bundler.server.testing import running
from bundler.store import MANIFEST, bundle_store, model_store, verify_manifest

from .services import QUICKSTART, ROOT, home_env, load_file, wait_ready

FRACTIONS = (0.05, 0.2, 0.4, 0.6, 0.8, 0.95)  # of an uninterrupted run: where the kills land

SAVE = """
import sys
import bundler
from tests.models import make_big
model = make_big(floats=int(sys.argv[2]))
print("saving", flush=True)
print(bundler.onnx.save_model(sys.argv[1], model).tag, flush=True)
"""


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, BUNDLER_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("BUNDLER_BUNDLE_DIR", None)
    return env


def _start(argv: list[str], home: Path, cwd: Path = ROOT) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        env=_env(home),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes its children (uv, ...) too
    )


def _kill_after(proc: subprocess.Popen[str], seconds: float) -> bool:
    """SIGKILL the process group after ``seconds``; return True when it was still running then."""
    try:
        proc.wait(seconds)
        alive = False
    except subprocess.TimeoutExpired:
        alive = True
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    return alive


def _run(argv: list[str], home: Path, cwd: Path = ROOT) -> tuple[str, float]:
    started = time.monotonic()
    proc = _start(argv, home, cwd)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{argv} failed:\n{out}\n{err}"
    return out, time.monotonic() - started


def assert_store_clean(home: Path) -> int:
    """Every entry in both stores is complete and matches its manifest; return how many there are."""
    seen = 0
    with home_env(home):
        for store in (model_store(), bundle_store()):
            if not store.root.is_dir():
                continue
            for name_dir in store.root.iterdir():
                if name_dir.name == ".tmp":
                    continue
                for version in name_dir.iterdir():
                    if version.name == "latest":
                        assert (name_dir / version.read_text().strip()).is_dir(), f"{version} dangles"
                        continue
                    assert (version / store.meta_file).is_file(), f"{version}: incomplete entry in the store"
                    assert (version / MANIFEST).is_file(), f"{version}: no manifest"
                    assert verify_manifest(version) == [], f"{version}: {verify_manifest(version)}"
                    seen += 1
            assert len(store.list()) == sum(
                1 for d in store.root.iterdir() if d.name != ".tmp" for v in d.iterdir() if v.is_dir()
            )
    return seen


def _staged(home: Path) -> list[Path]:
    return [p for kind in ("models", "bundles") for p in (home / kind / ".tmp").glob("*")]


def _kill_series(
    tally: Any, category: str, argv: list[str], home: Path, clean_seconds: float, cwd: Path = ROOT
) -> int:
    """Kill ``argv`` at each fraction of its clean run time; check the store after each; return kills."""
    killed = 0
    for fraction in FRACTIONS:
        proc = _start(argv, home, cwd)
        if _kill_after(proc, clean_seconds * fraction):
            killed += 1
            tally(category, "killed, store clean")
        else:
            tally(category, "finished before the kill, store clean")
        assert_store_clean(home)
    return killed


# -- save_model ----------------------------------------------------------------------------------------
def test_kill_9_during_save_model(tmp_path: Path, tally: Any) -> None:
    floats = str(8 << 20)  # a 32 MiB weight: the save has something to write
    argv = [sys.executable, "-c", SAVE, "big", floats]
    _, clean = _run(argv, tmp_path / "measure")
    home = tmp_path / "home"
    killed = _kill_series(tally, "faults: kill save_model", argv, home, clean)
    assert killed >= 3, "too few kills landed while the save was running"
    out, _ = _run(argv, home)
    assert "big:" in out
    assert assert_store_clean(home) >= 1
    assert _staged(home) == []  # the dead processes' staging directories were swept
    tally("faults: kill save_model", "rerun succeeded")


# -- bundler build -------------------------------------------------------------------------------------
def _project(tmp_path: Path, home: Path) -> Path:
    project = tmp_path / "project"
    if not project.exists():
        shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("__pycache__"))
    make_model = load_file(QUICKSTART / "make_model.py", "hardening_faults_make_model")
    with home_env(home):
        bundler.onnx.save_model(
            "quickstart", make_model.make_model(), signatures={"run": {"batchable": True}}
        )
    return project


@pytest.mark.slow
def test_kill_9_during_build(tmp_path: Path, tally: Any) -> None:
    measure, home = tmp_path / "measure", tmp_path / "home"
    project = _project(tmp_path, measure)
    argv = [sys.executable, "-m", "bundler", "build", str(project)]
    _, clean = _run(argv, measure)
    _project(tmp_path, home)
    killed = _kill_series(tally, "faults: kill build", argv, home, clean)
    assert killed >= 3
    out, _ = _run(argv, home)
    assert "quickstart:" in out
    with home_env(home):
        assert len(bundle_store().list("quickstart")) == 1
    assert assert_store_clean(home) >= 2
    assert _staged(home) == []
    tally("faults: kill build", "rerun succeeded")


# -- bundler import ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_during_import(tmp_path: Path, tally: Any) -> None:
    source = tmp_path / "source"
    project = _project(tmp_path, source)
    # A 64 MiB file in the bundle's source: the import has something to unpack and hash.
    (project / "weights.bin").write_bytes(os.urandom(64 << 20))
    (project / "bentofile.yaml").write_text(
        (project / "bentofile.yaml").read_text().replace('  - "*.py"', '  - "*.py"\n  - "*.bin"')
    )
    _run([sys.executable, "-m", "bundler", "build", str(project)], source)
    archive = tmp_path / "quickstart.tar.gz"
    _run([sys.executable, "-m", "bundler", "export", "quickstart:latest", str(archive)], source)
    argv = [sys.executable, "-m", "bundler", "import", str(archive)]
    _, clean = _run(argv, tmp_path / "measure")
    home = tmp_path / "home"
    killed = _kill_series(tally, "faults: kill import", argv, home, clean)
    assert killed >= 3
    out, _ = _run(argv, home)
    assert "quickstart:" in out
    assert assert_store_clean(home) >= 1
    assert _staged(home) == []
    tally("faults: kill import", "rerun succeeded")


# -- two processes at once -----------------------------------------------------------------------------
def test_two_processes_save_and_build_the_same_name_at_once(tmp_path: Path, tally: Any) -> None:
    home = tmp_path / "home"
    project = _project(tmp_path, home)
    save = [sys.executable, "-c", SAVE, "twin", str(1 << 20)]
    build = [sys.executable, "-m", "bundler", "build", str(project)]
    for argv in (save, build):
        procs = [_start(argv, home) for _ in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, f"{argv}:\n{out}\n{err}"
            tally("faults: concurrent", "both succeeded")
    with home_env(home):
        assert len(model_store().list("twin")) == 2  # two saves, two versions
        assert len(bundle_store().list("quickstart")) == 1  # same content, same version, stored once
    assert assert_store_clean(home) == 4  # quickstart model, 2 twins, 1 bundle


# -- a runner whose inference raises -------------------------------------------------------------------
def _reshape_to_thirds() -> Any:
    """x[batch, 4] -> Reshape(x, [3, -1]): fails in onnxruntime unless the batch is a multiple of 3."""
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([3, -1], np.int64), "s")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        "thirds",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, None])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def failing_url() -> Iterator[str]:
    runner = bundler.onnx.save_model("thirds", _reshape_to_thirds()).to_runner()
    svc = bundler.Service("thirds", runners=[runner])

    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    async def predict(x: np.ndarray) -> np.ndarray:
        return await runner.run.async_run(x)

    with running(build_app(svc)) as url:
        wait_ready(url)
        yield url


def test_inference_error_fails_that_request_only_and_is_logged(
    failing_url: str, tally: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = np.ones((3, 4)).tolist(), np.ones((1, 4)).tolist()
    caplog.set_level(logging.ERROR, logger="bundler")
    with httpx.Client(base_url=failing_url, timeout=30) as c:

        def call(i: int) -> httpx.Response:
            return c.post("/predict", json=bad if i % 4 == 0 else good)

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(call, range(40)))
        after = c.post("/predict", json=good)
    for i, r in enumerate(responses):
        tally("faults: inference raises", f"{r.status_code}")
        if i % 4 == 0:
            assert r.status_code == 500, r.text
            assert "onnxruntime failed" in r.json()["error"]
        else:
            assert r.status_code == 200, r.text
    assert after.status_code == 200 and np.asarray(after.json()).shape == (3, 4)
    logged = [rec for rec in caplog.records if rec.levelno >= logging.ERROR and "thirds" in rec.getMessage()]
    assert len(logged) >= 10, "inference errors were not logged"


def _lookup() -> Any:
    """x[batch, 1] -> Gather(table[3, 4], int(x)): onnxruntime refuses an index outside 0..2."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "t")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
            helper.make_node("Gather", ["t", "i"], ["y"], axis=0),
        ],
        "lookup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 4])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_bad_request_does_not_fail_the_requests_batched_with_it(tally: Any) -> None:
    runner = bundler.onnx.save_model("lookup", _lookup(), signatures={"run": {"batchable": True}}).to_runner()
    svc = bundler.Service("lookup", runners=[runner])

    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    async def predict(x: np.ndarray) -> np.ndarray:
        return await runner.run.async_run(x)

    async def burst(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:
            return await asyncio.gather(
                *(c.post("/predict", json=[[99.0]] if i % 8 == 0 else [[float(i % 3)]]) for i in range(64))
            )

    with running(build_app(svc)) as url:
        wait_ready(url)
        for _ in range(3):
            responses = asyncio.run(burst(url))
            for i, r in enumerate(responses):
                tally("faults: poisoned batch", f"{r.status_code}")
                if i % 8 == 0:
                    assert r.status_code == 400 and "idx=99" in r.json()["error"], r.text
                else:
                    assert r.status_code == 200, r.text
                    assert r.json() == [[np.arange(12).reshape(3, 4)[i % 3].tolist()]]
