"""Read a service's source without importing it: its name, its APIs and the model tags it loads.

Building must not need the service's runtime dependencies on the build machine, so the builder learns
what it can from the syntax tree; the full OpenAPI document is added when the service also imports.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from .exceptions import BuildError

__all__ = ["ApiInfo", "ServiceInfo", "missing_attribute", "scan_service", "uses_images"]

# Calls whose first string argument is a model tag: bundler.onnx.get("x"), bundler.models.get("x"), ...
_MODEL_GETTERS = {("onnx", "get"), ("models", "get"), ("onnx", "load_model")}


@dataclass(frozen=True)
class ApiInfo:
    name: str
    route: str
    input: str
    output: str


@dataclass
class ServiceInfo:
    module_path: Path
    attribute: str
    service_name: str | None = None
    apis: list[ApiInfo] = field(default_factory=list)
    model_tags: list[str] = field(default_factory=list)


def _descriptor(node: ast.expr | None) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return "unknown"


def _api_decorator(dec: ast.expr, attribute: str) -> ast.Call | None:
    """Return ``dec`` when it is ``<svc>.api(...)``; another service's APIs are not this one's."""
    if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "api":
        owner = dec.func.value
        if "." in attribute or not isinstance(owner, ast.Name) or owner.id == attribute:
            return dec
    return None


def _api_info(call: ast.Call, func_name: str | None) -> ApiInfo | None:
    """Return what ``svc.api(...)`` says of an API as the runtime would name and route it."""
    kw = {k.arg: k.value for k in call.keywords if k.arg}
    name_node, route_node = kw.get("name"), kw.get("route")
    given = name_node.value if isinstance(name_node, ast.Constant) else None
    name = str(given) if given is not None else func_name
    if name is None:
        return None
    # As Service.api does: a None route is the name, and slashes at either end are dropped.
    route_value = route_node.value if isinstance(route_node, ast.Constant) else None
    route = str(route_value).strip("/") if route_value is not None else name
    return ApiInfo(name, route, _descriptor(kw.get("input")), _descriptor(kw.get("output")))


def scan_service(module_path: Path, attribute: str) -> ServiceInfo:
    """Parse the service module and collect the service name, APIs and literal model tags."""
    try:
        tree = ast.parse(module_path.read_text(encoding="utf-8"), filename=str(module_path))
    except SyntaxError as exc:
        raise BuildError(
            f"{module_path}:{exc.lineno}: the service module has a syntax error: {exc.msg}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{module_path}: cannot read the service module: {exc}") from exc
    info = ServiceInfo(module_path, attribute)
    tags: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, (ast.Name, ast.Attribute))
                and (_descriptor(func.value), func.attr) in _MODEL_GETTERS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                tags.append(node.args[0].value)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if attribute in targets and _descriptor(node.value.func) == "Service" and node.value.args:
                first = node.value.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    info.service_name = first.value
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                call = _api_decorator(dec, attribute)
                api = _api_info(call, node.name) if call is not None else None
                if api is not None:
                    info.apis.append(api)
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Call):
            # svc.api(input=..., output=...)(predict): the decorator called by hand.
            call = _api_decorator(node.func, attribute)
            target = node.args[0]
            # A bound method (handler.predict) is named by its attribute, as its __name__ is.
            func_name = (
                target.id
                if isinstance(target, ast.Name)
                else target.attr
                if isinstance(target, ast.Attribute)
                else None
            )
            api = _api_info(call, func_name) if call else None
            if api is not None:
                info.apis.append(api)
    info.model_tags = sorted(set(tags))
    info.apis.sort(key=lambda a: a.route)
    return info


# Calls that can bind module names the syntax tree does not show.
_DYNAMIC = {"globals", "vars", "setattr", "exec", "eval", "__import__"}


def _bound_names(tree: ast.Module) -> set[str] | None:
    """Return every name bound anywhere in the module, or None when names may be bound dynamically."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
        elif isinstance(node, ast.Global):
            bound.update(node.names)
        elif isinstance(node, ast.Call) and _descriptor(node.func) in _DYNAMIC:
            return None
        elif isinstance(node, ast.Attribute) and node.attr == "modules":  # sys.modules[__name__].svc = ...
            return None
    return None if "__getattr__" in bound else bound


def missing_attribute(module_path: Path, attribute: str) -> str | None:
    """Return why the module surely does not define ``attribute`` (its first part), else None.

    Over-counts what is defined (any binding anywhere counts) and gives up on dynamic definitions, so it
    only speaks when the name appears nowhere: a typo in the build file's ``service: module:attribute``.
    """
    try:
        tree = ast.parse(module_path.read_text(encoding="utf-8"), filename=str(module_path))
    except SyntaxError as exc:
        # Nothing is defined then: say so in validate too, not only when build scans the module.
        return f"{module_path.name!r} has a syntax error at line {exc.lineno}: {exc.msg}; fix the module"
    except (ValueError, OSError, UnicodeDecodeError):
        return None  # scan_service says so
    name = attribute.split(".")[0]
    bound = _bound_names(tree)
    if bound is None or name in bound:
        return None
    services = sorted(
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and _descriptor(node.value.func) == "Service"
        for target in node.targets
        if isinstance(target, ast.Name)
    )
    close = difflib.get_close_matches(name, sorted(n for n in bound if not n.startswith("_")), n=1)
    if services:
        hint = f" (it assigns a Service to {', '.join(map(repr, services))})"
    elif close:
        hint = f" (did you mean {close[0]!r}?)"
    else:
        hint = ""
    return f"{module_path.name!r} defines no {name!r}{hint}; fix the attribute after ':'"


def _image_node(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "PIL" or a.name.startswith("PIL.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if module == "PIL" or module.startswith("PIL."):
            return True
        return module.split(".")[-1] == "io" and any(a.name == "Image" for a in node.names)
    # bundler.io.Image(...), io.Image, bentoml.io.Image
    return isinstance(node, ast.Attribute) and node.attr == "Image" and _descriptor(node.value) == "io"


def uses_images(paths: list[Path]) -> bool:
    """Whether any of these Python files uses ``bundler.io.Image`` or imports PIL (so the image needs Pillow).

    A file that does not parse counts as using images: adding Pillow is the safe side of the guess.
    """
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
            return True
        if any(_image_node(node) for node in ast.walk(tree)):
            return True
    return False
