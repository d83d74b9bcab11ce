"""Meta-tests: `import bundler` stays light, and every module's `__all__` names what it defines."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import bundler

HEAVY = ["onnxruntime", "onnx", "jinja2", "jsonschema", "starlette", "uvicorn", "numpy", "click", "httpx"]


def test_import_bundler_loads_no_heavy_library() -> None:
    code = f"import sys, bundler; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_imports_only_what_a_command_needs() -> None:
    heavy = ("onnxruntime", "onnx", "jinja2", "starlette")
    code = f"import sys, bundler.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_top_level_names_resolve() -> None:
    for name in bundler.__all__:
        assert getattr(bundler, name) is not None, name
    with pytest.raises(AttributeError):
        _ = bundler.not_a_name  # type: ignore[attr-defined]


MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(bundler.__path__, "bundler.")
    if not m.ispkg and not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_defined_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names undefined {missing}"
