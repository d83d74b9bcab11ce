"""The hardening suite's shared parts: a home per fixture, the quickstart example's service, readiness."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"


@contextlib.contextmanager
def home_env(home: Path) -> Iterator[None]:
    """Point BUNDLER_HOME at ``home`` for the duration (for module- and session-scoped fixtures)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUNDLER_HOME", str(home))
        yield


def load_file(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def quickstart_service(home: Path, suffix: str) -> Any:
    """Import a fresh copy of examples/quickstart/service.py (its own runner) and return its ``svc``."""
    with home_env(home):
        return load_file(QUICKSTART / "service.py", f"hardening_quickstart_service_{suffix}").svc


def wait_ready(url: str, timeout: float = 30.0) -> None:
    """Poll /readyz until the runners are loaded."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=5) as c:
        while time.monotonic() < deadline:
            if c.get("/readyz").status_code == 200:
                return
            time.sleep(0.02)
    raise AssertionError(f"{url}: runners did not load within {timeout}s")


BODY_LIMIT = 1 << 20  # the hostile service's body limit: small, so over-limit bodies are cheap to send
MAX_PIXELS = 4096 * 4096


def hostile_service(home: Path) -> Any:
    """Return a service with one API per IO descriptor, the quickstart runner behind the ndarray one."""
    import numpy as np
    from pydantic import BaseModel, Field

    import bundler
    from bundler.io import JSON, File, Image, NumpyNdarray, Text

    class Flower(BaseModel):
        name: str = Field(max_length=64)
        features: list[float] = Field(min_length=4, max_length=4)

    with home_env(home):
        runner = bundler.onnx.get("quickstart:latest").to_runner(name="iris")
    svc = bundler.Service("hostile", runners=[runner])

    @svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 4), enforce_shape=True), output=NumpyNdarray())
    async def ndarray(x: np.ndarray) -> np.ndarray:
        return await runner.run.async_run(x)

    @svc.api(input=JSON(pydantic_model=Flower), output=JSON())
    async def flower(f: Flower) -> dict[str, Any]:
        # The runner casts the list and refuses values float32 cannot hold.
        probs = await runner.run.async_run([f.features])
        return {"name": f.name, "probabilities": probs[0].tolist()}

    @svc.api(input=JSON(), output=JSON())
    def echo(obj: Any) -> Any:
        return obj

    @svc.api(input=Image(max_pixels=MAX_PIXELS), output=Image())
    def image(img: Any) -> Any:
        return img.convert("L").resize((8, 8))

    @svc.api(input=Image(), output=JSON())
    def image_default(img: Any) -> dict[str, int]:
        return {"width": img.width, "height": img.height}

    @svc.api(input=Text(), output=Text())
    def text(s: str) -> str:
        return s.upper()

    @svc.api(input=File(), output=JSON())
    def file(b: bytes) -> dict[str, int]:
        return {"bytes": len(b)}

    return svc
