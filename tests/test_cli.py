"""The command line as a script sees it: what goes to stdout, stderr and the exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bundler import cli
from bundler.store import Store, Tag


def _add(home: Path, kind: str, name: str, version: str, created: str = "2026-01-01T00:00:00Z") -> None:
    meta = "model.yaml" if kind == "models" else "bundle.yaml"
    store = Store(home / kind, kind.rstrip("s"), meta)
    with store.staging() as staged:
        (staged / meta).write_text(f"name: {name}\nversion: {version}\ncreation_time: '{created}'\n")
        store.commit(staged, Tag(name, version))


LONG = "a-model-name-as-long-as-a-tag-allows-" + "x" * 26  # 63 characters


@pytest.mark.parametrize("columns", [None, "40"])
@pytest.mark.parametrize("kind", ["bundles", "models"])
def test_list_piped_prints_whole_tags(
    bundler_home: Path, monkeypatch: pytest.MonkeyPatch, kind: str, columns: str | None
) -> None:
    _add(bundler_home, kind, LONG, "01m8f7qh8ws7dsd9")
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    args = ["list"] if kind == "bundles" else ["models", "list"]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    assert f"{LONG}:01m8f7qh8ws7dsd9" in r.stdout  # not cut to 'a-model-name-…' for grep, awk and cut
    assert "2026-01-01T00:00:00Z" in r.stdout
    assert "…" not in r.stdout and "\x1b[" not in r.stdout
