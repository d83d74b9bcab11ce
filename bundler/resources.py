"""Where the shipped templates and schemas are: inside the wheel, or at the top of a source checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ["data_dir"]

_PKG = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """Return the directory of ``templates`` or ``schemas`` for this installation."""
    for candidate in (_PKG / "_data" / kind, _PKG.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundler installation is incomplete: no {kind}/ directory near {_PKG}")
