"""Source selection: include/exclude and ignore files with gitignore semantics, links kept inside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bundler import sources
from bundler.exceptions import BadInput, BuildError
from bundler.scan import scan_service
from bundler.sources import select_sources


def _tree(root: Path, files: list[str]) -> None:
    for f in files:
        p = root / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f)


def _rels(root: Path, include: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    return [s.rel for s in select_sources(root, include or ["*"], exclude or [])]


def test_include_exclude_and_default_exclusions(tmp_path: Path) -> None:
    _tree(
        tmp_path, ["service.py", "lib/util.py", "data/big.bin", "notes.md", "__pycache__/x.pyc", ".git/HEAD"]
    )
    assert _rels(tmp_path) == ["data/big.bin", "lib/util.py", "notes.md", "service.py"]
    assert _rels(tmp_path, ["*.py"]) == ["lib/util.py", "service.py"]
    assert _rels(tmp_path, ["*"], ["data/", "*.md"]) == ["lib/util.py", "service.py"]
    assert _rels(tmp_path, ["/service.py"]) == ["service.py"]


def test_ignore_files_apply_relative_to_their_directory(tmp_path: Path) -> None:
    _tree(tmp_path, ["service.py", "a/keep.py", "a/drop.log", "b/drop.log", "secret.env"])
    (tmp_path / ".bentoignore").write_text("secret.env\n")
    (tmp_path / "a/.bundlerignore").write_text("*.log\n")
    assert _rels(tmp_path) == [".bentoignore", "a/.bundlerignore", "a/keep.py", "b/drop.log", "service.py"]


def test_an_ignore_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    _tree(tmp_path, ["service.py", "sub/x.py"])
    (tmp_path / "sub/.bentoignore").write_bytes(b"caf\xe9.txt\n")
    with pytest.raises(BadInput, match=r"sub/.bentoignore: cannot read the ignore file \(it is not UTF-8\)"):
        _rels(tmp_path)


def test_ignored_directories_are_pruned_never_walked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, ["service.py", "venv/lib/x.py"])
    walked: list[str] = []
    real_scandir = os.scandir

    def spy(path: str | Path) -> object:
        walked.append(Path(path).name)
        return real_scandir(path)

    monkeypatch.setattr(sources.os, "scandir", spy)
    assert _rels(tmp_path, exclude=["venv/"]) == ["service.py"]
    assert "venv" not in walked and "lib" not in walked


def test_symlink_outside_context_is_refused(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    _tree(ctx, ["service.py"])
    (tmp_path / "secret.txt").write_text("secret")
    (ctx / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(BadInput, match="points outside the build context"):
        select_sources(ctx, ["*"], [])
    # ... unless it is excluded anyway
    assert [s.rel for s in select_sources(ctx, ["*"], ["leak.txt"])] == ["service.py"]


def test_a_control_character_in_a_source_name_is_refused(tmp_path: Path) -> None:
    # The manifest lists one "digest  path" line per file: such a name would fail the bundle's own check.
    _tree(tmp_path, ["service.py", "new\nline.txt"])
    with pytest.raises(BadInput, match=r"'.*new\\nline.txt': refused: a control character"):
        _rels(tmp_path)
    assert _rels(tmp_path, ["*"], ["new*"]) == ["service.py"]


def test_a_source_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    # The manifest and the bundle's version are UTF-8 text: such a name could not be written into either.
    _tree(tmp_path, ["service.py"])
    Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.txt")).write_text("x")
    with pytest.raises(BadInput, match=r"caf\\xe9.txt': refused: the name is not UTF-8"):
        _rels(tmp_path)
    assert _rels(tmp_path, ["*"], ["caf*"]) == ["service.py"]


def test_symlink_inside_context_is_followed(tmp_path: Path) -> None:
    _tree(tmp_path, ["service.py", "real/data.txt"])
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (tmp_path / "loop").symlink_to(tmp_path)
    got = _rels(tmp_path)
    assert "alias/data.txt" in got and "real/data.txt" in got
    assert all(not r.startswith("loop/loop") for r in got)


def test_scan_finds_service_apis_and_model_tags(tmp_path: Path) -> None:
    src = tmp_path / "service.py"
    src.write_text(
        "import bundler\nfrom bundler.io import Image, JSON\n"
        "runner = bundler.onnx.get('sr:latest').to_runner()\n"
        "other = bundler.models.get('cls:v1')\n"
        "svc = bundler.Service('super-res', runners=[runner])\n"
        "@svc.api(input=Image(), output=JSON(), route='/v1/up')\n"
        "def up(img): ...\n"
        "@svc.api(input=bundler.io.Text(), output=bundler.io.Text())\n"
        "async def echo(t): ...\n"
    )
    info = scan_service(src, "svc")
    assert info.service_name == "super-res"
    assert info.model_tags == ["cls:v1", "sr:latest"]
    assert [(a.name, a.route, a.input, a.output) for a in info.apis] == [
        ("echo", "echo", "Text", "Text"),
        ("up", "v1/up", "Image", "JSON"),
    ]


def test_scan_reports_syntax_errors_with_line(tmp_path: Path) -> None:
    src = tmp_path / "service.py"
    src.write_text("x = 1\ndef broken(:\n")
    with pytest.raises(BuildError, match=r"service.py:2: .*syntax error"):
        scan_service(src, "svc")
