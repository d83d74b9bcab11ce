"""Shared fixtures: an isolated BUNDLER_HOME for every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def engine() -> Any:
    """The machine's container engine; its absence skips a test, and fails it under CI=true."""
    from bundler.containerize import detect_engine
    from bundler.exceptions import EngineUnavailable

    try:
        return detect_engine()
    except EngineUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but no container engine: {exc}")
        pytest.skip(f"no container engine: {exc}")


@pytest.fixture(autouse=True)
def bundler_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give every test its own empty BUNDLER_HOME."""
    home = tmp_path_factory.mktemp("bundler-home")
    monkeypatch.setenv("BUNDLER_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def cpu_provider(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Load models on the CPU provider unless a test is about the machine's own providers.

    Most tests compare answers with the ONNX reference implementation to a few ulps; on a GPU machine the
    CUDA provider (TF32 matmuls) differs from it by ~1e-3. The `gpu` and `machine_providers` tests keep
    the default choice; servers that tests start inherit the variable.
    """
    if not {"gpu", "machine_providers"} & {m.name for m in request.node.iter_markers()}:
        monkeypatch.setenv("BUNDLER_PROVIDERS", "CPUExecutionProvider")
