"""Hardening suite: a tally of tries and outcomes per category, printed as a table after the run.

Tests take the ``tally`` fixture and call ``tally("http", "4xx")`` for every hostile thing they try and
what came of it; ``pytest_terminal_summary`` prints one row per category (tries, then each outcome).
Also here: the quickstart model saved in a home of its own, and servers built from it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from .services import QUICKSTART, home_env, load_file

_TALLY: defaultdict[str, Counter[str]] = defaultdict(Counter)


class Tally:
    """Count tries and their outcomes per category for the end-of-run table."""

    def __call__(self, category: str, outcome: str, n: int = 1) -> None:
        """Record ``n`` tries in ``category`` that ended in ``outcome``."""
        _TALLY[category][outcome] += n

    def count(self, category: str, outcome: str | None = None) -> int:
        """Return the tries recorded in a category (of one outcome, or all)."""
        counts = _TALLY[category]
        return counts[outcome] if outcome is not None else sum(counts.values())


@pytest.fixture(scope="session")
def tally() -> Tally:
    """Return the run's tally of tries and outcomes."""
    return Tally()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the hardening table: per category, the tries and how they ended."""
    if not _TALLY:
        return
    tr = terminalreporter
    tr.section("hardening: tries and outcomes per category")
    width = max(len(c) for c in _TALLY)
    tr.write_line(f"{'category':<{width}}  {'tries':>6}  outcomes")
    for category in sorted(_TALLY):
        counts = _TALLY[category]
        outcomes = "  ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        tr.write_line(f"{category:<{width}}  {sum(counts.values()):>6}  {outcomes}")


@pytest.fixture(scope="session")
def quickstart_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a home holding the quickstart model, saved by the example's own make_model()."""
    import bundler

    home = tmp_path_factory.mktemp("quickstart-home")
    make_model = load_file(QUICKSTART / "make_model.py", "hardening_quickstart_make_model")
    with home_env(home):
        bundler.onnx.save_model(
            "quickstart", make_model.make_model(), signatures={"run": {"batchable": True}}
        )
    return home
