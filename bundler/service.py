"""Service: a named set of runners and the HTTP APIs that use them, and its OpenAPI document."""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .exceptions import BadInput
from .io import JSON, IODescriptor, NumpyNdarray, pydantic_components
from .store import NAME_RE

__all__ = ["API", "RESERVED_ROUTES", "Service"]

RESERVED_ROUTES = frozenset({"healthz", "livez", "readyz", "metrics", "docs", "docs.json"})
_ROUTE_RE = re.compile(r"^[A-Za-z0-9_\-.]+(/[A-Za-z0-9_\-.]+)*$")
_API_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class API:
    """One HTTP API of a service: ``POST /<route>`` decoding ``input`` and encoding ``output``."""

    name: str
    route: str
    input: IODescriptor
    output: IODescriptor
    func: Callable[..., Any]
    doc: str = ""
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.func) or inspect.iscoroutinefunction(
            getattr(self.func, "__call__", None)  # noqa: B004 - an async callable object counts too
        )

    def __call__(self, value: Any) -> Any:
        """Call the user function directly (for tests and notebooks)."""
        return self.func(value)


def _check_function(where: str, func: Any) -> None:
    """Refuse at definition time a function the server could not call with the decoded input alone."""
    if not callable(func):
        raise BadInput(f"{where}: {func!r} is not callable; decorate a function")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise BadInput(
            f"{where}: the function is a generator; streaming responses are not supported, so return"
            " the whole value instead of yielding parts"
        )
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # some builtins have no signature: nothing to check
    try:
        signature.bind(None)
    except TypeError as exc:
        context = [p for p in list(signature.parameters)[1:] if p in ("ctx", "context")]
        hint = (
            f"; bundler passes no context argument (BentoML's {context[0]!r}): remove that parameter"
            if context
            else ""
        )
        # Annotations left out: under `from __future__ import annotations` they print as quoted strings.
        bare = signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise BadInput(
            f"{where}: the function takes {bare} but is called with one argument, the"
            f" decoded input ({exc}){hint}"
        ) from None


def _spec_list(runner: Any, which: str) -> list[Any] | None:
    """Return a runner's model input or output specs without loading the model, when it exposes them."""
    specs = getattr(runner, f"{which[:-1]}_specs", None)
    if specs is None:
        session = getattr(runner, "__dict__", {}).get("session")
        specs = getattr(session, which, None)
    if specs is None:
        info = getattr(getattr(runner, "model", None), "info", None)
        if isinstance(info, dict):
            specs = info.get(which)
    return list(specs) if specs is not None else None


def _spec_field(spec: Any, key: str) -> Any:
    return spec.get(key) if isinstance(spec, dict) else getattr(spec, key, None)


class Service:
    """A named service: ``runners`` to load at startup and APIs added with ``@svc.api(...)``."""

    def __init__(self, name: str, runners: list[Any] | None = None) -> None:
        if not isinstance(name, str) or len(name) > 63 or not NAME_RE.match(name):
            raise BadInput(
                f"Service({name!r}): the name must be 1-63 lowercase letters, digits, '-', '.' or '_'"
                " starting and ending with a letter or digit"
            )
        self.name = name
        if runners is not None and not isinstance(runners, (list, tuple)):
            raise BadInput(f"Service({name!r}): runners must be a list, e.g. runners=[{runners!r}]")
        self.runners: list[Any] = list(runners or [])
        seen: set[str] = set()
        for r in self.runners:
            if not all(hasattr(r, attr) for attr in ("name", "async_init", "shutdown")):
                hint = "; call .to_runner() on it" if hasattr(r, "to_runner") else ""
                raise BadInput(f"Service({name!r}): runners must be Runners, got {r!r}{hint}")
            rname = r.name
            if rname in seen:
                raise BadInput(
                    f"Service({name!r}): two runners are named {rname!r}; give one another name"
                    " (to_runner(name=...))"
                )
            seen.add(rname)
        self.apis: dict[str, API] = {}
        self.version: str | None = None
        self.description: str = ""

    def api(
        self,
        input: IODescriptor,
        output: IODescriptor,
        *,
        route: str | None = None,
        name: str | None = None,
        doc: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function (sync: run in a thread pool; async: on the loop) as an API."""
        for what, d in (("input", input), ("output", output)):
            if not isinstance(d, IODescriptor):
                raise BadInput(
                    f"Service {self.name!r}: api {what}={d!r} is not an IO descriptor;"
                    " use one of bundler.io.NumpyNdarray, JSON, Image, Text, File"
                )
        if isinstance(input, NumpyNdarray) and input.dtype is not None and input.dtype.kind not in "biuf":
            # The input takes arrays of numbers only: every request would be refused (422).
            raise BadInput(
                f"Service {self.name!r}: api input=NumpyNdarray(dtype={str(input.dtype)!r}) takes arrays of"
                " numbers only; declare a bool, int or float dtype, or take strings with JSON()"
            )

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            api_name = name if name is not None else getattr(func, "__name__", "")
            if not isinstance(api_name, str) or not _API_NAME_RE.match(api_name):
                hint = "" if name is not None else "; pass name=... (a lambda or partial has no usable name)"
                raise BadInput(
                    f"Service {self.name!r}: API name {api_name!r} must be a Python identifier{hint}"
                )
            _check_function(f"Service {self.name!r}, API {api_name!r}", func)
            if route is not None and not isinstance(route, str):
                raise BadInput(f"Service {self.name!r}, API {api_name!r}: route {route!r} must be a string")
            api_route = (route if route is not None else api_name).strip("/")
            where = f"Service {self.name!r}, API {api_name!r}"
            if not _ROUTE_RE.match(api_route) or {".", ".."} & set(api_route.split("/")):
                raise BadInput(
                    f"{where}: route {route!r} must be path segments of letters, digits, '-', '_', '.'"
                    " (not '.' or '..' alone: clients resolve those away)"
                )
            if api_route in RESERVED_ROUTES or api_route.startswith("docs/"):
                raise BadInput(f"{where}: route /{api_route} is reserved by the server; choose another route")
            if api_name in self.apis:
                raise BadInput(
                    f"{where}: an API named {api_name!r} exists already; pass name=... to rename one"
                )
            for other in self.apis.values():
                if other.route == api_route:
                    raise BadInput(
                        f"{where}: route /{api_route} is taken by API {other.name!r};"
                        " pass route=... to move one"
                    )
            text = doc if doc is not None else inspect.getdoc(func) or ""
            self.apis[api_name] = API(api_name, api_route, input, output, func, text)
            return func

        return decorator

    # -- OpenAPI -------------------------------------------------------------------------------------
    def _infer_ndarray_specs(self) -> None:
        """Give schema-less NumpyNdarray descriptors the dtype/shape of the single runner's single IO."""
        if len(self.runners) != 1:
            return
        runner = self.runners[0]
        for which, attr in (("inputs", "input"), ("outputs", "output")):
            specs = _spec_list(runner, which)
            if not specs or len(specs) != 1:
                continue
            dtype, shape = _spec_field(specs[0], "dtype"), _spec_field(specs[0], "shape")
            for api in self.apis.values():
                d = getattr(api, attr)
                if isinstance(d, NumpyNdarray) and d.dtype is None and d.shape is None:
                    try:
                        import numpy as np

                        d.inferred_dtype = np.dtype(str(dtype)) if dtype else None
                    except TypeError:
                        d.inferred_dtype = None
                    d.inferred_shape = tuple(shape) if shape is not None else None

    def openapi(self) -> dict[str, Any]:
        """Return the service's OpenAPI 3.0.3 document (APIs and the server's health/metrics routes)."""
        from . import __version__

        self._infer_ndarray_specs()
        error = {"description": "Error", "content": {"application/json": {"schema": _ref("Error")}}}
        components: dict[str, Any] = {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "detail": {"nullable": True}},
            }
        }
        paths: dict[str, Any] = {}
        described = [d for api in self.apis.values() for d in (api.input, api.output)]
        models = [d for d in described if isinstance(d, JSON) and d.pydantic_model is not None]
        components.update(pydantic_components(models))  # all at once: alike class names kept apart
        for d in described:
            if d not in models:
                components.update(d.openapi_components())
        for api in self.apis.values():
            summary, _, rest = api.doc.partition("\n")
            paths[f"/{api.route}"] = {
                "post": {
                    "operationId": api.name,
                    "summary": summary
                    or f"{api.name}: {type(api.input).__name__} -> {type(api.output).__name__}",
                    "description": rest.strip(),
                    "tags": ["Service APIs"],
                    "requestBody": api.input.openapi_request_body(),
                    "responses": {
                        "200": api.output.openapi_responses(),
                        **{str(s): error for s in (400, 413, 415, 422, 500, 503)},
                    },
                    "x-bundler-io": {"input": api.input.describe(), "output": api.output.describe()},
                }
            }
        for route, summary in (
            ("healthz", "The process is up"),
            ("livez", "The process is up"),
            ("readyz", "Every runner is loaded (503 until then)"),
        ):
            paths[f"/{route}"] = {
                "get": {
                    "operationId": route,
                    "summary": summary,
                    "tags": ["Infrastructure"],
                    "responses": {
                        "200": {"description": "OK"},
                        **({"503": error} if route == "readyz" else {}),
                    },
                }
            }
        paths["/metrics"] = {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "tags": ["Infrastructure"],
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        }
        return {
            "openapi": "3.0.3",
            "info": {
                "title": self.name,
                "version": self.version or "dev",
                "description": self.description
                or f"The {self.name} service, served by bundler {__version__}.",
            },
            "paths": paths,
            "components": {"schemas": components},
        }

    def __repr__(self) -> str:
        return (
            f"Service(name={self.name!r}, apis={list(self.apis)}, runners={[r.name for r in self.runners]})"
        )


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


async def call_api(api: API, value: Any, executor: Any = None) -> Any:
    """Run an API function: async ones on the loop, sync ones in ``executor`` (a thread pool)."""
    if api.is_async:
        return await api.func(value)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(api.func, value))
