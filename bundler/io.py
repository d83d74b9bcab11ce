"""IO descriptors: how an API turns an HTTP request into a Python value and a return value into a response.

Each descriptor has ``await from_request(request)``, ``to_response(value, request=None)``,
``openapi_schema()``, ``openapi_request_body()`` and ``openapi_responses()``. Problems are raised as
BundlerErrors the server maps to JSON bodies: wrong Content-Type -> 415 (UnsupportedMediaType), a body that
does not parse -> 400 (BadInput), a body that parses but breaks the schema -> 422 (ValidationFailed), an image
over the pixel cap -> 413 (PayloadTooLarge).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import orjson

from .casting import all_whole, int_range_overflow
from .exceptions import BadInput, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["JSON", "File", "IODescriptor", "Image", "NumpyNdarray", "Text"]

NPY_TYPES = ("application/octet-stream", "application/x-npy")
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
# Decoding big images blocks; above this many body bytes it moves to a worker thread.
_THREAD_DECODE_BYTES = 256 * 1024
# Validation errors a 422's detail lists at most.
MAX_ERRORS = 100


def _header(request: Request, name: bytes) -> str:
    """Return the first header ``name`` (lowercase bytes) of the request ('' when absent).

    Reads the ASGI scope directly: building starlette's Headers object costs more than the lookup.
    """
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def media_type(request: Request) -> str:
    """Return the request's media type, lowercased and without parameters ('' when absent)."""
    return _parse_media(_header(request, b"content-type"))


@functools.lru_cache(maxsize=256)
def _parse_media(content_type: str) -> str:
    # Clients send the same few Content-Types over and over: parse each once.
    return content_type.split(";", 1)[0].strip().lower()


def _response(body: bytes, media: str) -> Response:
    return _body_response_class()(body, media)


@functools.cache
def _body_response_class() -> Callable[[bytes, str], Response]:
    from starlette.responses import Response

    class BodyResponse(Response):
        """A 200 response with a complete body: starlette's Response, built without its header logic."""

        def __init__(self, body: bytes, media: str) -> None:
            self.status_code = 200
            self.body = body
            self.media_type = media
            self.background = None
            self.raw_headers = [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", _ctype(media)),
            ]

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.body})

    return BodyResponse


@functools.lru_cache(maxsize=64)
def _ctype(media: str) -> bytes:
    # What starlette's Response sends: text types get a charset unless they name one.
    if media.startswith("text/") and "charset=" not in media.lower():
        media += "; charset=utf-8"
    return media.encode("latin-1")


class IODescriptor:
    """Base of every descriptor; subclasses set ``media_types`` (accepted) and ``output_media`` (returned)."""

    media_types: ClassVar[tuple[str, ...]] = ()
    output_media: str = "application/json"

    async def from_request(self, request: Request) -> Any:
        raise NotImplementedError

    def to_response(self, value: Any, request: Request | None = None) -> Response:
        raise NotImplementedError

    def openapi_schema(self) -> dict[str, Any]:
        """Return the JSON schema (OpenAPI 3.0 flavour) of the value."""
        return {}

    def openapi_components(self) -> dict[str, Any]:
        """Return named schemas this descriptor's schema refers to (``#/components/schemas/...``)."""
        return {}

    def openapi_request_body(self) -> dict[str, Any]:
        """Return the OpenAPI ``requestBody`` object."""
        schema = self.openapi_schema()
        return {"required": True, "content": {m: {"schema": schema} for m in self.media_types}}

    def openapi_responses(self) -> dict[str, Any]:
        """Return the OpenAPI ``200`` response object."""
        return {
            "description": "Successful response",
            "content": {self.output_media: {"schema": self.openapi_schema()}},
        }

    def describe(self) -> dict[str, Any]:
        """Return what a client needs to call an API with this descriptor (stored as ``x-bundler-io``)."""
        return {"type": type(self).__name__}

    def _check_media(self, request: Request, default: str) -> str:
        mt = media_type(request) or default
        if mt not in self.media_types and not self._accepts(mt):
            raise UnsupportedMediaType(
                f"{type(self).__name__} input: Content-Type {mt!r} is not accepted;"
                f" send one of {', '.join(self.media_types)}"
            )
        return mt

    def _accepts(self, mt: str) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# -- numpy arrays --------------------------------------------------------------------------------------
def _json_type(dtype: np.dtype | None) -> dict[str, Any]:
    if dtype is None:
        return {"type": "number"}
    if dtype.kind == "b":
        return {"type": "boolean"}
    if dtype.kind in "iu":
        return {"type": "integer", "format": "int64" if dtype.itemsize == 8 else "int32"}
    if dtype.kind == "f":
        return {"type": "number", "format": "double" if dtype.itemsize == 8 else "float"}
    return {"type": "string"}


def _shape(shape: Any) -> tuple[int | str | None, ...] | None:
    """Return a declared shape as a tuple, or a BadInput naming what a dimension may be."""
    if shape is None:
        return None
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else None
    # A str was taken apart letter by letter: shape="nhw" became three symbolic dimensions.
    if dims is None or not all(
        d is None or (isinstance(d, (str, int, np.integer)) and not isinstance(d, bool)) for d in dims
    ):
        raise BadInput(
            f"NumpyNdarray(shape={shape!r}): expected a tuple of dimensions, each an int, or -1, None or a"
            " name for any size; e.g. shape=(-1, 3)"
        )
    return tuple(int(d) if isinstance(d, np.integer) else d for d in dims)


def _dim_ok(want: int | str | None, got: int) -> bool:
    return want is None or isinstance(want, str) or want < 0 or want == got


def _reshaped(arr: np.ndarray, shape: tuple[int | str | None, ...]) -> np.ndarray:
    """Return ``arr`` reshaped to a declared shape, as BentoML does with a shape it does not enforce.

    Unchanged where the sizes do not allow it, or where more than one dimension is free.
    """
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    if dims.count(-1) > 1:
        return arr
    try:
        return arr.reshape(dims)
    except ValueError:
        return arr


def _fmt_shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("?" if d is None or isinstance(d, str) or d < 0 else str(d) for d in shape) + ")"


class NumpyNdarray(IODescriptor):
    """A numpy array: JSON nested lists, or an ``.npy`` body (``application/octet-stream``) for speed."""

    media_types = ("application/json", *NPY_TYPES)

    def __init__(
        self,
        dtype: str | np.dtype | type | None = None,
        enforce_dtype: bool = False,
        shape: tuple[int | str | None, ...] | list[int | str | None] | None = None,
        enforce_shape: bool = False,
        allow_nan: bool = False,
    ) -> None:
        try:
            self.dtype = np.dtype(dtype) if dtype is not None else None
        except TypeError as exc:
            raise BadInput(f"NumpyNdarray(dtype={dtype!r}): not a numpy dtype (use e.g. 'float32')") from exc
        self.shape = _shape(shape)
        for flag, value, given in (("dtype", enforce_dtype, dtype), ("shape", enforce_shape, shape)):
            if value and given is None:
                raise BadInput(
                    f"NumpyNdarray(enforce_{flag}=True): there is no {flag} to enforce; pass {flag}=..."
                )
        self.enforce_dtype = enforce_dtype
        self.enforce_shape = enforce_shape
        self.allow_nan = allow_nan
        # Filled in by Service.openapi() from the runner's model when dtype/shape were not given.
        self.inferred_dtype: np.dtype | None = None
        self.inferred_shape: tuple[Any, ...] | None = None

    async def from_request(self, request: Request) -> np.ndarray:
        mt = self._check_media(request, "application/json")
        body = await request.body()
        if mt == "application/json":
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise _json_error("NumpyNdarray", body, exc) from exc
            try:
                if self.dtype is None:
                    arr = np.asarray(data)  # no cast, so nothing can overflow: no error-state change
                elif self.dtype.kind in "iub":
                    # numpy's own cast truncates 1.5 to 1 and makes "no" True: cast only exact values.
                    arr = _exact_cast(np.asarray(data), self.dtype)
                else:
                    # A value past the dtype's range (1e300 as float32) is refused, not silently made inf.
                    with np.errstate(over="raise"):
                        arr = np.asarray(data, dtype=self.dtype)
            except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
                raise ValidationFailed(
                    f"NumpyNdarray input: the JSON is not a rectangular array of numbers"
                    f"{f' castable to {self.dtype}' if self.dtype is not None else ''}: {exc}",
                    detail=[{"loc": ["body"], "msg": str(exc)}],
                ) from exc
        else:
            try:
                arr = _load_npy(body)
            except (ValueError, TypeError, OSError, EOFError, MemoryError) as exc:
                raise BadInput(
                    f"NumpyNdarray input: the {mt} body is not a .npy array ({_reason(exc)})"
                ) from exc
            if self.dtype is not None and arr.dtype != self.dtype:
                if self.enforce_dtype:
                    raise ValidationFailed(
                        f"NumpyNdarray input: dtype {arr.dtype} given, {self.dtype} expected",
                        detail=[{"loc": ["body"], "msg": f"expected dtype {self.dtype}, got {arr.dtype}"}],
                    )
                if arr.dtype.kind not in "biuf":
                    return self._validate(arr)  # strings, objects, complex: refused there, not cast
                try:
                    if self.dtype.kind in "iub":
                        arr = _exact_cast(arr, self.dtype)  # as for JSON: 1.5 is not made 1 (or True)
                    else:
                        with np.errstate(over="raise", invalid="raise"):
                            arr = arr.astype(self.dtype)
                except (ValueError, TypeError, FloatingPointError) as exc:
                    raise ValidationFailed(
                        f"NumpyNdarray input: the {arr.dtype} array cannot be cast to {self.dtype}: {exc}",
                        detail=[{"loc": ["body"], "msg": f"not castable to {self.dtype}"}],
                    ) from exc
        return self._validate(arr)

    def _validate(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype.kind not in "biuf":
            raise ValidationFailed(
                f"NumpyNdarray input: an array of numbers is expected, got dtype {arr.dtype}",
                detail=[{"loc": ["body"], "msg": f"non-numeric dtype {arr.dtype}"}],
            )
        shape = self.shape
        if shape is not None and (arr.ndim != len(shape) or not all(map(_dim_ok, shape, arr.shape))):
            if self.enforce_shape:
                raise ValidationFailed(
                    f"NumpyNdarray input: shape {_fmt_shape(arr.shape)} given, {_fmt_shape(shape)} expected",
                    detail=[{"loc": ["body"], "msg": f"expected shape {_fmt_shape(shape)}"}],
                )
            arr = _reshaped(arr, shape)
        if not self.allow_nan and arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            raise ValidationFailed(
                "NumpyNdarray input: NaN or infinity in the array (not allowed by this API)",
                detail=[{"loc": ["body"], "msg": "non-finite value"}],
            )
        return arr

    def to_response(self, value: Any, request: Request | None = None) -> Response:
        arr = value if type(value) is np.ndarray else np.asarray(value)
        if self.dtype is not None or self.shape is not None:
            arr = self._declared(arr)
        if request is not None and _wants_npy(request):
            if arr.dtype.hasobject:
                # .npy cannot hold objects without pickle; ONNX string outputs are object arrays of str.
                if not all(isinstance(v, str) for v in arr.flat):
                    return _response(orjson.dumps(arr.tolist(), default=_json_default), "application/json")
                arr = arr.astype(np.str_)
            return _response(_npy_bytes(arr), "application/octet-stream")
        try:
            body = orjson.dumps(arr, option=_JSON_OPTS)
        except TypeError:
            # orjson serializes only C-contiguous arrays of common dtypes natively.
            body = orjson.dumps(arr.tolist())
        return _response(body, "application/json")

    def _declared(self, arr: np.ndarray) -> np.ndarray:
        """Return an API's answer as its declared dtype and shape say (as BentoML does); else TypeError.

        Not enforced, a dtype is cast to and a shape reshaped to where the sizes allow; enforced, a mismatch
        is the API's error (a 500, logged), not an answer that contradicts the API's schema.
        """
        dtype, shape = self.dtype, self.shape
        if dtype is not None and arr.dtype != dtype:
            if self.enforce_dtype:
                raise TypeError(
                    f"NumpyNdarray output: the API returned dtype {arr.dtype}, {dtype} is declared"
                )
            try:
                arr = arr.astype(dtype)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"NumpyNdarray output: the API's {arr.dtype} answer cannot be cast to the declared"
                    f" {dtype} ({exc})"
                ) from exc
        if shape is not None and (arr.ndim != len(shape) or not all(map(_dim_ok, shape, arr.shape))):
            if self.enforce_shape:
                raise TypeError(
                    f"NumpyNdarray output: the API returned shape {_fmt_shape(arr.shape)},"
                    f" {_fmt_shape(shape)} is declared"
                )
            arr = _reshaped(arr, shape)
        return arr

    def openapi_schema(self) -> dict[str, Any]:
        dtype = self.dtype if self.dtype is not None else self.inferred_dtype
        shape = self.shape if self.shape is not None else self.inferred_shape
        schema: dict[str, Any] = _json_type(dtype)
        if shape is None:
            # OpenAPI 3.0 cannot say "nested lists of any depth"; name the dtype instead.
            what = f"{dtype} values" if dtype is not None else "numbers"
            return {"type": "array", "items": {}, "description": f"nested lists of {what}, any shape"}
        for dim in reversed(shape):
            schema = {"type": "array", "items": schema}
            if isinstance(dim, int) and dim >= 0:
                schema["minItems"] = schema["maxItems"] = dim
        return schema

    def openapi_request_body(self) -> dict[str, Any]:
        return {
            "required": True,
            "content": {
                "application/json": {"schema": self.openapi_schema()},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }

    def openapi_responses(self) -> dict[str, Any]:
        return {
            "description": "Successful response (an .npy body when Accept asks for application/octet-stream)",
            "content": {
                "application/json": {"schema": self.openapi_schema()},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }

    def describe(self) -> dict[str, Any]:
        dtype = self.dtype if self.dtype is not None else self.inferred_dtype
        return {"type": "NumpyNdarray", "dtype": str(dtype) if dtype is not None else None}

    def __repr__(self) -> str:
        return f"NumpyNdarray(dtype={self.dtype}, shape={self.shape})"


_NPY_MAGIC = b"\x93NUMPY"
_NPY_CACHED_HEADER = 1024  # np.save writes 128-byte headers; longer ones are parsed every time


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse an ``.npy`` header (magic included): (shape, fortran_order, dtype); ValueError if malformed.

    numpy parses the header's dict with ``ast.literal_eval`` (tens of microseconds); clients send the
    same few headers over and over, so their parse is cached.
    """
    from numpy.lib import format as npy_format

    f = io.BytesIO(header)
    version = npy_format.read_magic(f)
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        # np.save writes 1.0 (2.0 for huge headers); other versions would skip the size check below.
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not accepted (send 1.0 or 2.0)")
    shape, fortran, dtype = readers[version](f)
    if f.tell() != len(header):
        raise ValueError("the .npy header length does not match its contents")
    # numpy checks only that each dimension is an int: True passes, and so does -1 (np.load then fails).
    if any(type(d) is not int or d < 0 for d in shape):
        raise ValueError(f"its header's shape {shape!r} is not a tuple of non-negative integers")
    return shape, fortran, dtype


def _json_error(what: str, body: bytes, exc: orjson.JSONDecodeError) -> BadInput:
    """Return the BadInput for a body orjson refused, saying why where orjson's words mislead.

    orjson reports any byte that is not UTF-8 as "str is not valid UTF-8: surrogates not allowed".
    """
    if body.startswith(_NPY_MAGIC) and what == "NumpyNdarray":
        return BadInput(
            f"{what} input: the body is an .npy array, not JSON;"
            " send it with Content-Type: application/octet-stream"
        )
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        return BadInput(
            f"{what} input: the body is not valid JSON: JSON is UTF-8 and this is not"
            f" (byte {error.start}: {error.reason})"
        )
    return BadInput(f"{what} input: the body is not valid JSON ({exc})")


def _reason(exc: BaseException) -> str:
    """Return an exception's message without the object reprs libraries put in it (``<... at 0x7f...>``)."""
    return _OBJECT_REPR.sub("", str(exc)).rstrip(":")


_OBJECT_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>")


def _exact_cast(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast JSON-given values to an integer or bool dtype only where no value changes; else ValueError."""
    src = arr.dtype.kind
    if src == "b" or arr.size == 0:
        return arr.astype(dtype)
    if dtype.kind == "b":
        if src in "iu" and ((arr == 0) | (arr == 1)).all():
            return arr.astype(dtype)
        raise ValueError("booleans are true/false (or 0/1)")
    if src not in "iuf":
        raise ValueError(f"{arr.dtype} values are not numbers")
    if src == "f" and not all_whole(arr):
        raise ValueError(f"{dtype} takes whole numbers; round them first")
    _check_int_range(arr, dtype)
    return arr.astype(dtype)


def _check_int_range(arr: np.ndarray, dtype: np.dtype) -> None:
    """Raise ValueError if ``arr`` holds values integer ``dtype`` cannot (integer casts wrap around)."""
    overflow = int_range_overflow(arr, dtype)
    if overflow is not None:
        low, high, limits = overflow
        raise ValueError(
            f"values from {low} to {high} are outside {dtype}'s range {limits.min}..{limits.max}"
        )


def _load_npy(body: bytes) -> np.ndarray:
    """Load an ``.npy`` body, first checking that its header claims no more data than the body holds."""
    if len(body) < 10 or not body.startswith(_NPY_MAGIC):
        raise ValueError("the body does not start with the .npy magic string \\x93NUMPY")
    width = {1: 2, 2: 4}.get(body[6])
    if width is None or body[7] != 0:
        raise ValueError(f".npy format version {body[6]}.{body[7]} is not accepted (send 1.0 or 2.0)")
    start = 8 + width + int.from_bytes(body[8 : 8 + width], "little")
    if start > len(body):
        raise ValueError(f"its header claims {start} bytes but the body has {len(body)}")
    header = body[:start]
    if start <= _NPY_CACHED_HEADER:
        shape, fortran, dtype = _npy_header(header)
    else:
        shape, fortran, dtype = _npy_header.__wrapped__(header)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted (they would need pickle)")
    count = math.prod(shape)
    claimed = count * dtype.itemsize
    # Nothing is allocated before this check: a 10-byte body must not ask for 40 GB.
    if claimed > len(body) - start:
        raise ValueError(
            f"its header claims shape {shape} of {dtype} ({claimed} bytes) but only"
            f" {len(body) - start} bytes of data follow"
        )
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=start)
    # A writable copy of its own, as np.load returns (the body's bytes are immutable).
    if fortran:
        return flat.reshape(shape[::-1]).transpose().copy(order="F")
    return flat.reshape(shape).copy()


def _npy_bytes(arr: np.ndarray) -> bytes:
    """Return what ``np.save`` writes for ``arr``, with the header made once per dtype, order and shape."""
    fortran = arr.flags.f_contiguous and not arr.flags.c_contiguous
    if arr.dtype.kind not in "biuf" or arr.dtype.names is not None or arr.ndim > 32:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()
    # np.save writes the raw memory in the order its header names (C unless the array is Fortran-ordered);
    # a contiguous array's own buffer is joined to the header in one copy.
    header = _npy_out_header(arr.dtype, fortran, arr.shape)
    data = arr.T if fortran else arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    return b"".join((header, data.data.cast("B"))) if data.size else header


@functools.lru_cache(maxsize=256)
def _npy_out_header(dtype: np.dtype, fortran: bool, shape: tuple[int, ...]) -> bytes:
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape}
    npy_format.write_array_header_1_0(buf, header)  # np.save's choice for headers this short
    return buf.getvalue()


def _wants_npy(request: Request) -> bool:
    """Return whether the request's Accept prefers an ``.npy`` answer to JSON (RFC 9110 quality values).

    ``.npy`` is chosen when asked for with a quality above 0 and at least JSON's: ``application/json``'s
    own, else that of ``application/*``, else of ``*/*`` (0 when none is listed).
    """
    accept = _header(request, b"accept")
    if "application/octet-stream" not in accept and "application/x-npy" not in accept:
        return False
    if ";" not in accept:
        return True  # every range at quality 1: the one named for .npy wins
    npy = 0.0
    json_q: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        media = media.lower()
        q_text = next((v for k, _, v in (p.partition("=") for p in params) if k.strip().lower() == "q"), "1")
        try:
            q = float(q_text)
        except ValueError:
            continue  # a range whose quality does not parse asks for nothing
        if media in ("application/octet-stream", "application/x-npy"):
            npy = max(npy, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q[media] = max(json_q.get(media, 0.0), q)
    json = next((json_q[m] for m in ("application/json", "application/*", "*/*") if m in json_q), 0.0)
    return npy > 0 and npy >= json


# -- JSON ----------------------------------------------------------------------------------------------
# Keywords whose value is data, not a schema (a default of {"const": 1} stays as it is), and keywords whose
# value maps names (a field called "examples" or "const") to schemas.
_SCHEMA_DATA = frozenset({"default", "enum", "const", "example", "examples"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs"})


def _openapi30(node: Any) -> Any:
    """Rewrite JSON Schema 2020-12 constructs pydantic emits into their OpenAPI 3.0 spelling."""
    if isinstance(node, list):
        return [_openapi30(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in ("examples", "$defs"):
            continue
        if k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: _openapi30(s) for name, s in v.items()}
        else:
            out[k] = v if k in _SCHEMA_DATA else _openapi30(v)
    for key in ("anyOf", "oneOf"):
        alts = out.get(key)
        # Children are rewritten first, so a {"type": "null"} branch reads {"nullable": True} here.
        if isinstance(alts, list) and {"nullable": True} in alts:
            alts = [a for a in alts if a != {"nullable": True}]
            out["nullable"] = True
            if len(alts) == 1 and "$ref" not in alts[0]:
                del out[key]
                out.update(alts[0])
            else:
                out[key] = alts
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if out.get("type") == "null":
        del out["type"]
        out["nullable"] = True
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # Field(gt=0): 2020-12 writes the bound in exclusiveMinimum; 3.0 writes minimum and a boolean.
        value = out.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[bound] = out.pop(exclusive)
            out[exclusive] = True
    prefix = out.pop("prefixItems", None)
    if isinstance(prefix, list):
        # A tuple field: 3.0 has no per-position items, so each item is one of the positions' schemas
        # (the length stays in minItems/maxItems); an ``items`` beside prefixItems types the rest.
        alts = [*prefix, *([out["items"]] if isinstance(out.get("items"), dict) else [])]
        alts = [a for i, a in enumerate(alts) if a not in alts[:i]]
        out["items"] = alts[0] if len(alts) == 1 else ({"anyOf": alts} if alts else {})
    return out


def _component_name(model: Any) -> str:
    """Return the components key of a pydantic model (a generic's ``Page[int]`` becomes ``Page_int_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model.__name__)


def pydantic_components(descriptors: list[JSON]) -> dict[str, Any]:
    """Return the components of the descriptors' pydantic models, named apart; point each one at its own.

    Schemas made one model at a time are keyed by class name, so two models named alike (``a.Item`` and
    ``b.Item``, or nested ones) overwrote each other. pydantic names them apart when given them all at
    once (``a__Item``, ``b__Item``).
    """
    models = list(dict.fromkeys(d.pydantic_model for d in descriptors if d.pydantic_model is not None))
    if not models:
        return {}  # pydantic is the user's dependency, not bundler's: no model, no import
    from pydantic.json_schema import models_json_schema

    refs, schema = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    for d in descriptors:
        if d.pydantic_model is not None:
            d.component_name = refs[(d.pydantic_model, "validation")]["$ref"].rsplit("/", 1)[1]
    return {key: _openapi30(s) for key, s in schema.get("$defs", {}).items()}


def _json_default(value: Any) -> Any:
    """Encode what orjson does not: pydantic models, arrays it refuses (non-contiguous, float16), sets."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"JSON output: a {type(value).__name__} cannot be encoded as JSON")


def _plain_keys(value: Any) -> Any:
    """Return ``value`` with numpy scalar dict keys made Python's (OPT_NON_STR_KEYS takes no numpy)."""
    if isinstance(value, dict):
        return {(k.item() if isinstance(k, np.generic) else k): _plain_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_keys(v) for v in value]
    return value


class JSON(IODescriptor):
    """Any JSON value (orjson), optionally validated by a pydantic model (errors -> 422 with the list)."""

    media_types = ("application/json",)

    def __init__(self, pydantic_model: type | None = None) -> None:
        # Duck-typed: pydantic is the user's dependency, not imported unless a model is used.
        if pydantic_model is not None and not (
            isinstance(pydantic_model, type) and hasattr(pydantic_model, "model_validate")
        ):
            raise BadInput(
                f"JSON(pydantic_model={pydantic_model!r}): expected a pydantic model class (a subclass of"
                " pydantic.BaseModel), or no argument for any JSON value"
            )
        self.pydantic_model = pydantic_model
        # The model's components key when a service names it (see pydantic_components), else its own name.
        self.component_name: str | None = None

    def _accepts(self, mt: str) -> bool:
        return mt.endswith("+json")

    async def from_request(self, request: Request) -> Any:
        self._check_media(request, "application/json")
        body = await request.body()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _json_error("JSON", body, exc) from exc
        if self.pydantic_model is None:
            return data
        from pydantic import ValidationError

        try:
            return self.pydantic_model.model_validate(data)  # type: ignore[attr-defined]
        except ValidationError as exc:
            # One error per bad item: a 1 MB list of wrong-typed values made a 25 MB answer. The count says
            # how many there were, the detail lists the first ones.
            count = exc.error_count()
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            shown = f" (the first {MAX_ERRORS} listed)" if count > MAX_ERRORS else ""
            raise ValidationFailed(
                f"JSON input: {count} validation error(s) for {self.pydantic_model.__name__}{shown}",
                detail=orjson.loads(orjson.dumps(errors[:MAX_ERRORS], default=str)),
            ) from exc

    def to_response(self, value: Any, request: Request | None = None) -> Response:
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        try:
            body = orjson.dumps(value, default=_json_default, option=_JSON_OPTS)
        except TypeError:
            body = None
        if body is None:
            # orjson takes only str keys unless told; json.dumps (BentoML's encoder) writes {0: "cat"} as
            # {"0": "cat"}, and a dict built from numpy arrays has numpy keys (np.int64, np.str_).
            options = _JSON_OPTS | orjson.OPT_NON_STR_KEYS
            body = orjson.dumps(_plain_keys(value), default=_json_default, option=options)
        return _response(body, "application/json")

    def openapi_schema(self) -> dict[str, Any]:
        if self.pydantic_model is None:
            return {}
        name = self.component_name or _component_name(self.pydantic_model)
        return {"$ref": f"#/components/schemas/{name}"}

    def openapi_components(self) -> dict[str, Any]:
        return pydantic_components([self])

    def __repr__(self) -> str:
        name = self.pydantic_model.__name__ if self.pydantic_model else None
        return f"JSON(pydantic_model={name})"


# -- images --------------------------------------------------------------------------------------------
_PIL_FORMATS = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
}


async def _upload(request: Request, what: str) -> tuple[bytes, str]:
    """Return the first uploaded file of a multipart form and its content type."""
    from starlette.datastructures import UploadFile

    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:  # python-multipart raises several types; all mean a malformed form
        raise BadInput(f"{what} input: the multipart body does not parse ({_reason(exc)})") from exc
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                return await value.read(), (value.content_type or "").lower()
    finally:
        await form.close()
    raise BadInput(f"{what} input: the multipart form holds no file; upload one (e.g. curl -F file=@x.png)")


def _format_of(by_mime: dict[str, str], arg: str, media: object) -> str:
    """Return Pillow's format name for an image media type given to ``Image(arg=...)``."""
    fmt = by_mime.get(media.lower()) if isinstance(media, str) else None
    if fmt is None:
        raise BadInput(f"Image({arg}=...): {media!r} is not an image type Pillow knows; e.g. 'image/png'")
    return fmt


# Formats Pillow reads by running another program on the client's bytes: EPS (Ghostscript, where
# installed, a long history of code-execution bugs). Never opened, whatever ``formats`` says.
_DELEGATED_FORMATS = frozenset({"EPS"})


@functools.lru_cache(maxsize=1)
def _readable_formats() -> tuple[str, ...]:
    """Return the formats an Image input may be opened as: Pillow's, in its order, less the delegated."""
    from PIL import Image as PILImage

    PILImage.init()
    return tuple(f for f in PILImage.ID if f not in _DELEGATED_FORMATS)


class Image(IODescriptor):
    """A PIL image from an ``image/*`` body or a multipart upload; returns PNG (or ``output_format``).

    BentoML's ``mime_type`` (the output's type) and ``allowed_mime_types`` say what ``output_format`` and
    ``formats`` say with Pillow's format names.
    """

    media_types = ("image/*", "multipart/form-data")

    def __init__(
        self,
        pilmode: str | None = None,
        mime_type: str | None = None,
        *,
        allowed_mime_types: list[str] | tuple[str, ...] | None = None,
        formats: list[str] | tuple[str, ...] | None = None,
        max_pixels: int | None = None,
        output_format: str | None = None,
    ) -> None:
        if importlib.util.find_spec("PIL") is None:
            raise ImportError(
                "bundler.io.Image needs Pillow, which is not installed here: add `pillow` to python.packages"
                " in bentofile.yaml (`bundler build` adds it by itself when the bundle's code uses"
                " bundler.io.Image or imports PIL)"
            )
        from PIL import Image as PILImage
        from PIL import ImageMode

        PILImage.init()  # registers every format plugin
        by_mime = {media: fmt for fmt, media in PILImage.MIME.items()}
        if mime_type is not None:
            if output_format is not None:
                raise BadInput("Image(mime_type=..., output_format=...): give one, they say the same")
            output_format = _format_of(by_mime, "mime_type", mime_type)
        if allowed_mime_types is not None:
            if formats is not None:
                raise BadInput("Image(allowed_mime_types=..., formats=...): give one, they say the same")
            if isinstance(allowed_mime_types, str):
                raise BadInput(
                    f"Image(allowed_mime_types={allowed_mime_types!r}): expected a list of types,"
                    f" e.g. allowed_mime_types=[{allowed_mime_types!r}]"
                )
            formats = [_format_of(by_mime, "allowed_mime_types", m) for m in allowed_mime_types]
        if isinstance(formats, str):
            raise BadInput(
                f"Image(formats={formats!r}): expected a list of formats, e.g. formats=[{formats!r}]"
            )
        if max_pixels is not None and (type(max_pixels) is not int or max_pixels <= 0):
            raise BadInput(
                f"Image(max_pixels={max_pixels!r}): expected a positive number of pixels, e.g. 4096 * 4096"
            )
        self.formats = {_PIL_FORMATS.get(f.lower(), f.upper()) for f in formats} if formats else None
        unknown = sorted((self.formats or set()) - set(PILImage.OPEN))
        if unknown:
            raise BadInput(
                f"Image(formats=...): Pillow reads no format {', '.join(unknown)}; e.g. PNG, JPEG, WEBP"
            )
        if self.formats and self.formats & _DELEGATED_FORMATS:
            raise BadInput(
                f"Image(formats=...): {', '.join(sorted(self.formats & _DELEGATED_FORMATS))} is not read from"
                " clients: Pillow would run Ghostscript on their bytes; convert such files before sending"
            )
        if pilmode is not None:
            try:
                ImageMode.getmode(pilmode)
            except KeyError:
                raise BadInput(f"Image(pilmode={pilmode!r}): not a Pillow mode; e.g. RGB, RGBA, L") from None
        self.pilmode = pilmode
        self.max_pixels = max_pixels
        self.output_format = str(output_format or "PNG").upper()
        if self.output_format not in PILImage.SAVE:
            raise BadInput(
                f"Image(output_format={output_format!r}): Pillow writes no such format; e.g. PNG, JPEG"
            )
        # Pillow's own table: ICO is image/x-icon, JPEG2000 image/jp2, PDF application/pdf.
        self.output_media = PILImage.MIME.get(self.output_format) or f"image/{self.output_format.lower()}"

    def _accepts(self, mt: str) -> bool:
        return mt.startswith("image/")

    async def from_request(self, request: Request) -> Any:
        mt = self._check_media(request, "")
        if mt == "multipart/form-data":
            body, _ = await _upload(request, "Image")
        else:
            body = await request.body()
        if len(body) > _THREAD_DECODE_BYTES:
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(self.decode, body)
        return self.decode(body)

    def decode(self, body: bytes) -> Any:
        """Decode image bytes, refusing unaccepted formats and decompression bombs."""
        from PIL import Image as PILImage
        from PIL import UnidentifiedImageError

        limit = self.max_pixels or PILImage.MAX_IMAGE_PIXELS or 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                img: Any = PILImage.open(io.BytesIO(body), formats=_readable_formats())
        except PILImage.DecompressionBombError as exc:
            raise PayloadTooLarge(f"Image input: refused a decompression bomb ({exc})") from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BadInput(f"Image input: the body is not a readable image ({_reason(exc)})") from exc
        w, h = img.size
        if limit and w * h > limit:
            raise PayloadTooLarge(
                f"Image input: {w}x{h} = {w * h} pixels is over the limit of {limit} pixels"
            )
        # A phone camera's JPEG often carries more pictures (depth map, preview): Pillow names it MPO.
        fmt = "JPEG" if img.format == "MPO" else img.format
        if self.formats is not None and fmt not in self.formats and img.format not in self.formats:
            raise UnsupportedMediaType(
                f"Image input: format {img.format} is not accepted;"
                f" send one of {', '.join(sorted(self.formats))}"
            )
        try:
            img.load()
            if self.pilmode is not None and img.mode != self.pilmode:
                if img.mode.startswith("I;16") and self.pilmode not in ("I", "F", "I;16"):
                    # Pillow clips 16-bit values at 255 on the way to 8 bits: a 16-bit PNG came out white.
                    img = _eight_bit(img)
                img = img.convert(self.pilmode)
        except (OSError, ValueError, SyntaxError) as exc:
            raise BadInput(f"Image input: the image data is truncated or corrupt ({_reason(exc)})") from exc
        return img

    def to_response(self, value: Any, request: Request | None = None) -> Response:
        from PIL import Image as PILImage

        if isinstance(value, np.ndarray):
            value = _array_image(value)
        elif not isinstance(value, PILImage.Image):
            raise TypeError(
                f"Image output: the API returned a {type(value).__name__}; return a PIL image or a uint8"
                " numpy array (H, W), (H, W, 3) or (H, W, 4)"
            )
        buf = io.BytesIO()
        try:
            value.save(buf, format=self.output_format)
        except (OSError, ValueError):  # GIF says ValueError ("image has wrong mode") where PNG says OSError
            # A mode the format cannot hold (CMYK or float as PNG, RGBA as JPEG): shown as a viewer would,
            # in RGB, keeping transparency where the format has it.
            buf = io.BytesIO()
            alpha = "A" in value.getbands() and self.output_format not in ("JPEG", "BMP")
            value.convert("RGBA" if alpha else "RGB").save(buf, format=self.output_format)
        return _response(buf.getvalue(), self.output_media)

    def openapi_request_body(self) -> dict[str, Any]:
        binary = {"type": "string", "format": "binary"}
        return {
            "required": True,
            "content": {
                "image/*": {"schema": binary},
                "multipart/form-data": {"schema": {"type": "object", "properties": {"file": binary}}},
            },
        }

    def openapi_responses(self) -> dict[str, Any]:
        return {
            "description": "Successful response",
            "content": {self.output_media: {"schema": {"type": "string", "format": "binary"}}},
        }

    def describe(self) -> dict[str, Any]:
        return {"type": "Image", "output_media": self.output_media}


def _eight_bit(img: Any) -> Any:
    """Return a 16-bit grayscale image scaled to 8 bits (0..65535 -> 0..255, rounded)."""
    from PIL import Image as PILImage

    wide = np.asarray(img).astype(np.uint32)
    return PILImage.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))


def _array_image(arr: np.ndarray) -> Any:
    """Return the PIL image of an array, or a TypeError saying which arrays make images."""
    from PIL import Image as PILImage

    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]  # a one-channel (H, W, 1) model output is a grayscale image
    try:
        return PILImage.fromarray(arr)
    except TypeError as exc:
        raise TypeError(
            f"Image output: an array of dtype {arr.dtype} and shape {arr.shape} is not an image; return uint8"
            " (H, W), (H, W, 3) or (H, W, 4), e.g. np.clip(out, 0, 255).astype(np.uint8) (from a"
            " (1, C, H, W) model output: out[0].transpose(1, 2, 0))"
        ) from exc


# -- text and files ------------------------------------------------------------------------------------
class Text(IODescriptor):
    """A UTF-8 string (``text/plain``); invalid UTF-8 -> 400."""

    media_types = ("text/plain",)
    output_media = "text/plain; charset=utf-8"

    async def from_request(self, request: Request) -> str:
        self._check_media(request, "text/plain")
        ct = _header(request, b"content-type").lower()
        if "charset" in ct:
            # The charset parameter itself: "format=flowed; x-charset=latin1" names no charset.
            for param in ct.split(";")[1:]:
                name, _, value = param.partition("=")
                charset = value.strip().strip('"')
                if name.strip() == "charset" and charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
                    raise UnsupportedMediaType(f"Text input: charset {charset!r} is not accepted; send UTF-8")
        body = await request.body()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(
                f"Text input: the body is not valid UTF-8 (byte {exc.start}: {exc.reason})"
            ) from exc
        # A leading byte order mark (Notepad, PowerShell) is no text: drop it as "utf-8-sig" would. Not
        # decoded with "utf-8-sig" itself, whose error offsets would not count the BOM's bytes.
        return text[1:] if text.startswith("\ufeff") else text

    def to_response(self, value: Any, request: Request | None = None) -> Response:
        if isinstance(value, (bytes, bytearray, memoryview)):
            # str() would send the repr, "b'abc'"; UTF-8 bytes are the text itself.
            body = bytes(value)
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TypeError(
                    f"Text output: the API returned bytes that are not UTF-8 (byte {exc.start}:"
                    f" {exc.reason}); return a str, or use File(mime_type=...) for binary data"
                ) from exc
            return _response(body, self.output_media)
        if value is None:  # str() would answer the text "None": most likely a function without a return
            raise TypeError("Text output: the API returned None; return a str (is a return missing?)")
        return _response(str(value).encode("utf-8"), self.output_media)

    def openapi_schema(self) -> dict[str, Any]:
        return {"type": "string"}


class File(IODescriptor):
    """Raw bytes: any body, or the first file of a multipart upload; returns ``mime_type`` bytes."""

    media_types = ("application/octet-stream", "multipart/form-data")

    def __init__(self, mime_type: str = "application/octet-stream") -> None:
        if not isinstance(mime_type, str) or not re.match(r"^[\w.+-]+/[\w.+-]+(\s*;.*)?$", mime_type):
            raise BadInput(f"File(mime_type={mime_type!r}): expected a media type, e.g. 'application/pdf'")
        self.output_media = mime_type

    def _accepts(self, mt: str) -> bool:
        return True

    async def from_request(self, request: Request) -> bytes:
        if media_type(request) == "multipart/form-data":
            body, _ = await _upload(request, "File")
            return body
        return await request.body()

    def to_response(self, value: Any, request: Request | None = None) -> Response:
        if hasattr(value, "read"):
            value = value.read()
        if isinstance(value, str):  # a str, or what a file opened in text mode read
            value = value.encode("utf-8")
        try:
            # Bytes, or any buffer (a numpy array's). Not bytes(value): of an int n it is n NUL bytes
            # (a 200 of zeros; a large n took the memory), of None an error that named nothing.
            body = bytes(memoryview(value))
        except TypeError:
            raise TypeError(
                f"File output: the API returned a {type(value).__name__}; return bytes, a str or a file"
                " opened in binary mode"
            ) from None
        return _response(body, self.output_media)

    def openapi_request_body(self) -> dict[str, Any]:
        binary = {"type": "string", "format": "binary"}
        return {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": binary},
                "multipart/form-data": {"schema": {"type": "object", "properties": {"file": binary}}},
            },
        }

    def openapi_schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "binary"}

    def describe(self) -> dict[str, Any]:
        return {"type": "File", "output_media": self.output_media}
