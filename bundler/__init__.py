"""bundler: from an ONNX model in a notebook to a reproducible, served container image.

``import bundler`` stays light: submodules (and onnxruntime, jinja2, starlette) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "JSON",
    "File",
    "Image",
    "NumpyNdarray",
    "Service",
    "Text",
    "__version__",
    "bundles",
    "client",
    "exceptions",
    "io",
    "models",
    "onnx",
]

_SUBMODULES = {"bundles", "client", "exceptions", "io", "models", "onnx"}
_ATTRS = {
    "Service": ("bundler.service", "Service"),
    "Image": ("bundler.io", "Image"),
    "JSON": ("bundler.io", "JSON"),
    "NumpyNdarray": ("bundler.io", "NumpyNdarray"),
    "Text": ("bundler.io", "Text"),
    "File": ("bundler.io", "File"),
}

if TYPE_CHECKING:
    from . import bundles, client, exceptions, io, models, onnx
    from .io import JSON, File, Image, NumpyNdarray, Text
    from .service import Service


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"bundler.{name}")
    if name in _ATTRS:
        module, attr = _ATTRS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bundler' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
