"""Shared fixtures: an isolated BUNDLER_HOME for every test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def bundler_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give every test its own empty BUNDLER_HOME."""
    home = tmp_path_factory.mktemp("bundler-home")
    monkeypatch.setenv("BUNDLER_HOME", str(home))
    return home
