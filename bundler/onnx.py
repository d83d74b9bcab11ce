"""``bundler.onnx``: save, get and load ONNX models (the public face of ``bundler.frameworks.onnx``)."""

from __future__ import annotations

from .frameworks.onnx import *  # noqa: F403
from .frameworks.onnx import __all__ as __all__
