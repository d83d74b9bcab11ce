"""The benchmark scripts that no other test runs still run: a short pass of each, with its report checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_corunner_reports_both_layouts_alone_and_beside_the_co_runner() -> None:
    args = ["--shares", "10", "--rounds", "1", "--seconds", "0.3"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "corunner.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = re.findall(
        r"^(T\d+ x\d+)\s+10 %\s+([\d,]+)\s+([\d,]+)\s+(-?[\d.]+)%\s+(-?[\d.]+)x$", result.stdout, re.MULTILINE
    )
    layouts = [row[0] for row in rows]
    assert len(layouts) == len(set(layouts)) >= 1, result.stdout
    for _, alone, shared, loss, _per_point in rows:
        alone_rate, shared_rate = float(alone.replace(",", "")), float(shared.replace(",", ""))
        assert alone_rate > 0 and shared_rate > 0
        # The loss column is the two rates' own ratio (both printed rounded: a few hundredths apart).
        assert abs(float(loss) - (1 - shared_rate / alone_rate) * 100) < 0.3
