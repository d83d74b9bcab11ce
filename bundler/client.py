"""HTTP clients for a served bundler service, built from its ``/docs.json``.

    client = Client("http://127.0.0.1:3000")
    client.predict(np.ones((1, 4), np.float32))    # or client.call("predict", arr)

Inputs are encoded by the API's input descriptor (ndarray -> .npy, lists -> JSON, PIL image -> PNG, str ->
UTF-8 text; bytes, open files and pathlib.Paths -> their contents); outputs are decoded by the response's
Content-Type and the API's output descriptor. Error statuses raise ``bundler.exceptions.HTTPError`` with
``status_code``, ``body``, ``detail`` and ``retry_after`` (a 503's Retry-After, in seconds); a server that
does not answer (refused, timed out) status_code 0.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from .exceptions import BadInput, HTTPError, UnknownAPI

__all__ = ["APISpec", "AsyncClient", "Client"]

_NPY = "application/octet-stream"


@dataclass(frozen=True)
class APISpec:
    """What the client knows about one API: its route and its input and output descriptors."""

    name: str
    route: str
    input: dict[str, Any]
    output: dict[str, Any]


def parse_openapi(doc: dict[str, Any]) -> dict[str, APISpec]:
    """Return API name -> APISpec from a bundler OpenAPI document (operations with ``x-bundler-io``)."""
    apis = {}
    paths = doc.get("paths")
    for path, ops in (paths if isinstance(paths, dict) else {}).items():
        op = ops.get("post") if isinstance(ops, dict) else None
        if not isinstance(op, dict) or "x-bundler-io" not in op:
            continue
        io_ = op["x-bundler-io"]
        name = op.get("operationId") or path.strip("/")
        apis[name] = APISpec(name, path, io_.get("input", {}), io_.get("output", {}))
    return apis


def encode(spec: APISpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Return the request body and headers for calling ``spec`` with these arguments."""
    kind = spec.input.get("type")
    if kwargs and not args and kind == "JSON":
        args = (kwargs,)
    elif kwargs or len(args) != 1:
        raise BadInput(
            f"API {spec.name!r} takes exactly one input ({kind}); got {len(args)} and {sorted(kwargs)}"
        )
    value: Any = args[0]
    headers = {"accept": _accept(spec)}
    if kind == "NumpyNdarray":
        import numpy as np

        if isinstance(value, np.ndarray):
            buf = io.BytesIO()
            try:
                np.save(buf, value, allow_pickle=False)
            except ValueError as exc:  # an object array: .npy holds it only pickled, which is refused
                raise BadInput(
                    f"API {spec.name!r}: an array of dtype {value.dtype} cannot be sent; give numbers"
                ) from exc
            return buf.getvalue(), {**headers, "content-type": _NPY}
        return _json_bytes(spec, value), {**headers, "content-type": "application/json"}
    if kind == "Image":
        data = _image_bytes(spec, value)
        return data, {**headers, "content-type": _image_type(data)}
    if kind == "Text":
        if isinstance(value, (bytes, bytearray, memoryview)):
            # str() would send the repr, "b'abc'"; bytes are sent as they are (the server checks UTF-8).
            return bytes(value), {**headers, "content-type": "text/plain; charset=utf-8"}
        try:
            data = str(value).encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (from os.fsdecode, a bad decode)
            raise BadInput(f"API {spec.name!r}: the text cannot be sent as UTF-8 ({exc.reason})") from exc
        return data, {**headers, "content-type": "text/plain; charset=utf-8"}
    if kind == "File":
        return _file_bytes(spec, value), {**headers, "content-type": _NPY}
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return _json_bytes(spec, value), {**headers, "content-type": "application/json"}


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # pydantic models inside lists and dicts, as at the top
        return value.model_dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _json_bytes(spec: APISpec, value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise BadInput(f"API {spec.name!r}: the input cannot be sent as JSON ({exc})") from exc


def _accept(spec: APISpec) -> str:
    kind = spec.output.get("type")
    if kind == "NumpyNdarray":
        return _NPY
    if kind in ("Image", "File"):
        return str(spec.output.get("output_media") or "*/*")
    if kind == "Text":
        return "text/plain"
    return "application/json"


def _file_bytes(spec: APISpec, value: Any) -> bytes:
    """Return the bytes of ``value``: bytes, an open file, a path (read) or a str (UTF-8)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if hasattr(value, "read"):
        data = value.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if isinstance(value, os.PathLike):
        # bytes(Path) is the path's own name, not the file: read it.
        try:
            return Path(value).read_bytes()
        except OSError as exc:
            raise BadInput(f"API {spec.name!r}: cannot read {os.fspath(value)!r} ({exc.strerror})") from exc
    if isinstance(value, str):
        return value.encode("utf-8")
    raise BadInput(
        f"API {spec.name!r} takes a File: give bytes, a str, an open file or a pathlib.Path,"
        f" not a {type(value).__name__}"
    )


def _image_bytes(spec: APISpec, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview, os.PathLike)) or hasattr(value, "read"):
        return _file_bytes(spec, value)
    import numpy as np
    from PIL import Image

    if isinstance(value, np.ndarray):
        try:
            value = Image.fromarray(value)
        except TypeError as exc:
            raise BadInput(
                f"API {spec.name!r} takes an Image: a {value.dtype} array of shape {value.shape} is no image"
                " Pillow knows; give a uint8 array (H, W), (H, W, 3) or (H, W, 4)"
            ) from exc
    if not isinstance(value, Image.Image):
        raise BadInput(
            f"API {spec.name!r} takes an Image: give a PIL image, a numpy array, encoded bytes, an open"
            f" file or a pathlib.Path, not a {type(value).__name__}"
        )
    buf = io.BytesIO()
    try:
        value.save(buf, format="PNG")
    except (OSError, ValueError):
        # A mode PNG cannot hold (F, CMYK, I;16B): TIFF holds them all, unchanged, and the server reads it.
        buf = io.BytesIO()
        value.save(buf, format="TIFF")
    return buf.getvalue()


def _image_type(data: bytes) -> str:
    head = data[:12]
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return "image/png"  # the server reads the format from the bytes; any image/* is accepted


def decode(spec: APISpec, response: httpx.Response) -> Any:
    """Return the Python value of a successful response, or raise HTTPError for an error status."""
    if not response.is_success:
        # A redirect too (a proxy sending http to https): its empty body is no answer.
        raise _status_error(f"API {spec.name!r}", response)
    ctype = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        return _decode_body(spec, ctype, response)
    except (ValueError, OSError) as exc:  # orjson's, numpy's and Pillow's errors for a body not as labelled
        raise HTTPError(
            f"API {spec.name!r} answered {response.status_code} with a body that is not the {ctype} it"
            f" says ({exc})",
            response.status_code,
            response.content,
        ) from exc


def _decode_body(spec: APISpec, ctype: str, response: httpx.Response) -> Any:
    kind = spec.output.get("type")
    if ctype in (_NPY, "application/x-npy") and kind == "NumpyNdarray":
        import numpy as np

        return np.load(io.BytesIO(response.content), allow_pickle=False)
    if ctype == "application/json" or ctype.endswith("+json"):
        data = orjson.loads(response.content)
        if kind == "NumpyNdarray":
            import numpy as np

            return np.asarray(data)
        return data
    if ctype.startswith("image/") and kind == "Image":
        from PIL import Image

        img = Image.open(io.BytesIO(response.content))
        img.load()
        return img
    if ctype.startswith("text/"):
        return response.text
    return response.content


def _status_error(what: str, response: httpx.Response) -> HTTPError:
    """Return the HTTPError for an error answer: its status, body (parsed JSON or text) and Retry-After."""
    try:
        body: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = response.text
    error = body.get("error") if isinstance(body, dict) else body
    if response.headers.get("content-type", "").startswith("text/html"):
        error = None  # a proxy's or another server's error page: its markup is no message (body keeps it)
    message = f"{what} answered {response.status_code}: {error or response.reason_phrase}"
    if response.is_redirect:
        message += f" (redirected to {response.headers.get('location')})"
    retry_after = _retry_after(response.headers.get("retry-after"))
    if retry_after is not None:
        message += f" (retry after {retry_after:g} s)"
    return HTTPError(message, response.status_code, body, retry_after)


def _retry_after(value: str | None) -> float | None:
    """Return a Retry-After header's delay in seconds: it is a number of seconds or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = max(0.0, round((when - datetime.now(timezone.utc)).total_seconds()))
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _read_docs(url: str, response: httpx.Response) -> dict[str, Any]:
    """Return the OpenAPI document a ``/docs.json`` response holds, or raise HTTPError saying why not."""
    where = f"{url}/docs.json"
    if not response.is_success:
        raise _status_error(where, response)
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        # Another server on that port (a notebook, a proxy's page): not a traceback from the JSON parser.
        ctype = response.headers.get("content-type") or "no Content-Type"
        raise HTTPError(
            f"{where} is not an OpenAPI document ({ctype}): is {url} a bundler server?",
            response.status_code,
            response.text,
        )
    return doc


def _unreachable(what: str, exc: httpx.HTTPError, timeout: Any) -> HTTPError:
    """Return the HTTPError (status 0) for a request that got no answer: refused, timed out, cut off."""
    if isinstance(exc, httpx.TimeoutException):
        # httpx's async timeouts have no message at all: say what happened and what to change.
        limit = f"{timeout:g} s" if isinstance(timeout, (int, float)) else str(timeout)
        reason = f"no answer within {limit} ({type(exc).__name__}); pass a longer Client(url, timeout=...)"
    else:
        reason = str(exc) or type(exc).__name__
    return HTTPError(f"{what}: {reason}", 0)


def _spec(apis: dict[str, APISpec], name: str, url: str) -> APISpec:
    if not isinstance(name, str):
        # client.call(value) where an API is itself named "call": the client's own method won the name.
        raise BadInput(
            f"call() takes the API's name first, then its input (got {type(name).__name__});"
            " an API named like a client method (call, close, aclose) is called as client.call('call', value)"
        )
    try:
        return apis[name]
    except KeyError:
        raise _unknown(apis, name, url) from None


def _unknown(apis: dict[str, APISpec], name: str, url: str) -> UnknownAPI:
    message = f"{url}: no API named {name!r}; it serves {', '.join(sorted(apis)) or 'none'}"
    api = name.removeprefix("async_")
    if api != name and (api in apis or api == "call"):
        # BentoML's Client has async_<api> and async_call; here the AsyncClient's own methods are awaited.
        message += f" (for BentoML's {name}: await AsyncClient(url).{api}(...))"
    return UnknownAPI(message)


def _base_url(url: str) -> str:
    """Return the server's URL without a trailing slash; "host:port" is taken as http, as BentoML does."""
    # "127.0.0.1:3000", as curl and the READMEs write it: http, as BentoML's Client.from_url assumes.
    url = str(url).strip()
    return (url if "://" in url else f"http://{url}").rstrip("/")


class Client:
    """A blocking client; ``client.<api>(value)`` or ``client.call("<api>", value)``."""

    def __init__(
        self, url: str, *, timeout: float | httpx.Timeout | None = 30.0, **httpx_options: Any
    ) -> None:
        self.url = _base_url(url)
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, timeout=timeout, **httpx_options)
        try:
            response = self._http.get("/docs.json")
            self.openapi: dict[str, Any] = _read_docs(self.url, response)
        except httpx.HTTPError as exc:
            self._http.close()
            raise _unreachable(f"{self.url}/docs.json could not be read", exc, self.timeout) from exc
        except HTTPError:
            self._http.close()
            raise
        self.apis = parse_openapi(self.openapi)

    def call(self, api_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call an API by name and return its decoded output."""
        spec = _spec(self.apis, api_name, self.url)
        body, headers = encode(spec, args, kwargs)
        try:
            response = self._http.post(spec.route, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _unreachable(f"API {api_name!r} at {self.url}{spec.route}", exc, self.timeout) from exc
        return decode(spec, response)

    def __getattr__(self, name: str) -> Any:
        apis = self.__dict__.get("apis")
        if name.startswith("_") or apis is None:
            raise AttributeError(name)
        if name in apis:
            return lambda *args, **kwargs: self.call(name, *args, **kwargs)
        raise _unknown(apis, name, self.url)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """An asyncio client; reads ``/docs.json`` on first use; ``await client.call("<api>", value)``."""

    def __init__(
        self, url: str, *, timeout: float | httpx.Timeout | None = 30.0, **httpx_options: Any
    ) -> None:
        self.url = _base_url(url)
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, **httpx_options)
        self.apis: dict[str, APISpec] | None = None
        self.openapi: dict[str, Any] | None = None  # /docs.json, as the sync client's, once read
        self._lock = asyncio.Lock()

    async def _apis(self) -> dict[str, APISpec]:
        async with self._lock:
            if self.apis is None:
                try:
                    response = await self._http.get("/docs.json")
                except httpx.HTTPError as exc:
                    raise _unreachable(f"{self.url}/docs.json could not be read", exc, self.timeout) from exc
                self.openapi = _read_docs(self.url, response)
                self.apis = parse_openapi(self.openapi)
            return self.apis

    async def call(self, api_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call an API by name and return its decoded output."""
        spec = _spec(await self._apis(), api_name, self.url)
        body, headers = encode(spec, args, kwargs)
        try:
            response = await self._http.post(spec.route, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _unreachable(f"API {api_name!r} at {self.url}{spec.route}", exc, self.timeout) from exc
        return decode(spec, response)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("url", "apis"):
            raise AttributeError(name)
        apis = self.apis
        if apis is not None and name not in apis:
            # Known already (after the first call or `async with`): refuse now, as the sync client does.
            raise _unknown(apis, name, self.url)

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, *args, **kwargs)

        return method

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        await self._apis()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
