"""``bundler.bundles``: the bundle store from Python (list, get, delete, export, import)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import ModelInfo
from .store import Entry, Tag, bundle_store

__all__ = ["Bundle", "BundleInfo", "delete", "export_bundle", "get", "import_bundle", "list", "verify"]


class BundleInfo(ModelInfo):
    """``bundle.yaml`` as a dict whose keys also read as attributes (``info.labels``), as in BentoML."""

    _kind = "bundle"


@dataclass(frozen=True)
class Bundle:
    """A stored bundle: its tag, directory and ``bundle.yaml`` content."""

    tag: Tag
    path: Path
    info: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.info, BundleInfo):
            object.__setattr__(self, "info", BundleInfo(self.info))

    @classmethod
    def from_entry(cls, entry: Entry) -> Bundle:
        """Wrap a store entry."""
        return cls(entry.tag, entry.path, entry.info)

    def __repr__(self) -> str:
        return f'Bundle(tag="{self.tag}", path="{self.path}/")'


def list(
    name: str | None = None, *, on_damaged: Callable[[str], None] | None = None
) -> builtins.list[Bundle]:
    """Return the stored bundles, newest first within each name; damaged ones go to ``on_damaged``."""
    return [Bundle.from_entry(e) for e in bundle_store().list(name, on_damaged=on_damaged)]


def get(tag: str | Tag) -> Bundle:
    """Return one stored bundle (``name`` or ``name:latest`` is the newest)."""
    return Bundle.from_entry(bundle_store().get(tag))


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
