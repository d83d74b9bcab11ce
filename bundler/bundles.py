"""``bundler.bundles``: the bundle store from Python (list, get, delete, export, import)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import Tag, bundle_store

__all__ = ["Bundle", "delete", "export_bundle", "get", "import_bundle", "list", "verify"]


@dataclass(frozen=True)
class Bundle:
    """A stored bundle: its tag, directory and ``bundle.yaml`` content."""

    tag: Tag
    path: Path
    info: dict[str, Any]

    def __repr__(self) -> str:
        return f'Bundle(tag="{self.tag}", path="{self.path}/")'


def list(
    name: str | None = None, *, on_damaged: Callable[[str], None] | None = None
) -> builtins.list[Bundle]:
    """Return the stored bundles, newest first within each name; damaged ones go to ``on_damaged``."""
    return [Bundle(e.tag, e.path, e.info) for e in bundle_store().list(name, on_damaged=on_damaged)]


def get(tag: str | Tag) -> Bundle:
    """Return one stored bundle (``name`` or ``name:latest`` is the newest)."""
    e = bundle_store().get(tag)
    return Bundle(e.tag, e.path, e.info)


def delete(tag: str | Tag) -> Tag:
    """Delete one stored bundle; return its full tag."""
    return bundle_store().delete(tag)


def export_bundle(tag: str | Tag, path: str | Path) -> Path:
    """Write a deterministic ``.tar.gz`` of a bundle; return the archive's path."""
    return bundle_store().export(tag, path)


def import_bundle(path: str | Path) -> Bundle:
    """Import a bundle archive (verified, refused when unsafe); return the stored bundle."""
    tag, _ = bundle_store().import_(path)
    return get(tag)


def verify(tag: str | Tag) -> builtins.list[str]:
    """Check a stored bundle against its manifest; return the files that differ."""
    return bundle_store().verify(tag)


# DESIGN.md names them export/import; `import` is a keyword, so it is reachable as getattr(bundles, "import").
globals()["export"] = export_bundle
globals()["import"] = import_bundle
