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
