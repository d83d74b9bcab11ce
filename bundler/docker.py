"""Containers: the public surface of Dockerfile rendering and image building, in one import.

Rendering (pure) lives in ``bundler.dockerfile``; engines and builds in ``bundler.containerize``.
"""

from __future__ import annotations

from .containerize import Engine, containerize, detect_engine
from .dockerfile import render_dockerfile, render_entrypoint

__all__ = ["Engine", "containerize", "detect_engine", "render_dockerfile", "render_entrypoint"]
