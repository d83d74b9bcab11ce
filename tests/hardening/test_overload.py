"""Overload: a short run of benchmarks/overload.py at 4x the server's capacity, on 127.0.0.1.

The server (``bundler serve`` in a subprocess, pinned to one CPU) must refuse the excess quickly with 503
and Retry-After, keep its queue bounded, serve what it accepts within the latency budget, keep its memory
flat, and serve normally right after.
"""

from __future__ import annotations

from typing import Any

import pytest

from .services import ROOT, load_file

BUDGET_MS = 250.0
MAX_QUEUE = 256


@pytest.mark.slow
def test_four_times_capacity_is_refused_quickly_and_the_rest_served_in_budget(tally: Any) -> None:
    overload = load_file(ROOT / "benchmarks" / "overload.py", "hardening_overload_benchmark")
    r = overload.run(
        factor=4.0, seconds=4.0, rows=64, budget_ms=BUDGET_MS, max_queue=MAX_QUEUE, capacity_seconds=2.0
    )
    overload.report(r)
    for status, n in r["statuses"].items():
        tally("overload", status, n)
    for error, n in r["client_errors"].items():
        tally("overload", error, n)
    assert r["capacity_rps"] > 0
    assert r["offered_rps"] > 3 * r["capacity_rps"], "the load generator did not reach 3x capacity"
    assert set(r["statuses"]) <= {"200", "503"} and not r["client_errors"], r
    assert r["share_503"] > 0.4  # the excess was refused ...
    assert r["retry_after_missing"] == 0  # ... saying when to come back ...
    assert r["refused_p99_ms"] < BUDGET_MS  # ... and quickly
    assert r["served_rps"] > 0.5 * r["capacity_rps"], "goodput collapsed under overload"
    assert r["served_p99_ms"] < 2 * BUDGET_MS, "accepted requests blew their latency budget"
    assert r["queue_depth_max_rows"] <= MAX_QUEUE
    assert r["rss_peak_mib"] - r["rss_before_mib"] < 50, "memory grew under overload"
    assert set(r["after_statuses"]) == {"200"} and r["after_p50_ms"] < 50
