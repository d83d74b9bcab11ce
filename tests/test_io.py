"""IO descriptors against real starlette Requests (no server): decoding, errors, encoding, schemas."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from openapi_spec_validator import validate
from PIL import Image as PILImage
from pydantic import BaseModel, Field
from starlette.requests import Request

import bundler
from bundler.exceptions import BadInput, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from bundler.io import JSON, File, Image, NumpyNdarray, Text

T = TypeVar("T")


def make_request(body: bytes, content_type: str | None = None, accept: str | None = None) -> Request:
    headers = []
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    if accept is not None:
        headers.append((b"accept", accept.encode()))
    headers.append((b"content-length", str(len(body)).encode()))
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers, "query_string": b""}
    return Request(scope, receive)


def decode(descriptor: Any, body: bytes, content_type: str | None = None) -> Any:
    return asyncio.run(descriptor.from_request(make_request(body, content_type)))


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def png(size: tuple[int, int] = (8, 6), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PILImage.new(mode, size, color=(10, 20, 30) if mode == "RGB" else 7).save(buf, format=fmt)
    return buf.getvalue()


def noisy_png() -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def multipart(data: bytes, filename: str = "x.png", ctype: str = "image/png") -> tuple[bytes, str]:
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


# -- NumpyNdarray ----------------------------------------------------------------------------------------
def test_ndarray_from_json_casts_to_the_declared_dtype() -> None:
    arr = decode(NumpyNdarray(dtype="float32"), b"[[1, 2], [3, 4.5]]", "application/json")
    assert arr.dtype == np.float32
    assert arr.tolist() == [[1.0, 2.0], [3.0, 4.5]]


def test_ndarray_without_content_type_is_json() -> None:
    assert decode(NumpyNdarray(), b"[1, 2, 3]").tolist() == [1, 2, 3]


def test_ndarray_from_npy_keeps_values_and_dtype() -> None:
    src = np.arange(12, dtype=np.int16).reshape(3, 4)
    arr = decode(NumpyNdarray(), npy(src), "application/octet-stream")
    assert arr.dtype == np.int16
    np.testing.assert_array_equal(arr, src)


def test_ndarray_npy_is_cast_unless_dtype_is_enforced() -> None:
    src = np.ones((2, 2), dtype=np.float64)
    assert decode(NumpyNdarray(dtype="float32"), npy(src), "application/octet-stream").dtype == np.float32
    with pytest.raises(ValidationFailed, match="dtype float64 given, float32 expected"):
        decode(NumpyNdarray(dtype="float32", enforce_dtype=True), npy(src), "application/octet-stream")


def test_ndarray_takes_bentomls_positional_arguments() -> None:
    # BentoML's order is (dtype, enforce_dtype, shape, enforce_shape): NumpyNdarray("float32", True) took
    # True for the shape and was refused.
    d = NumpyNdarray("float32", True, (-1, 2), True)
    assert (d.dtype, d.enforce_dtype, d.shape, d.enforce_shape) == (np.float32, True, (-1, 2), True)
    with pytest.raises(ValidationFailed, match="dtype float64 given, float32 expected"):
        decode(d, npy(np.ones((1, 2))), "application/octet-stream")


@pytest.mark.parametrize(
    ("shape", "body", "got"),
    [
        ((-1, 4), b"[1, 2, 3, 4, 5, 6, 7, 8]", (2, 4)),  # reshaped, as BentoML does
        ((2, 2), b"[[1, 2, 3, 4]]", (2, 2)),
        (("batch", 3), b"[1, 2, 3]", (1, 3)),
        ((-1, 3), b"[1, 2, 3, 4]", (4,)),  # the sizes do not allow it: passed on as it came
        ((None, None), b"[1, 2, 3, 4]", (4,)),  # two free dimensions: no one way to reshape
        ((-1, 2), b"[[1, 2]]", (1, 2)),
    ],
)
def test_ndarray_shape_not_enforced_is_reshaped_to(shape: tuple, body: bytes, got: tuple) -> None:
    # The declared shape was ignored unless enforced; BentoML reshapes to it ("input_array will be
    # reshaped to (2,2)"), so a service sending flat lists got a wrong-rank array from bundler.
    assert decode(NumpyNdarray(shape=shape), body, "application/json").shape == got


@pytest.mark.parametrize(
    ("shape", "body", "ok"),
    [
        ((-1, 3), b"[[1,2,3],[4,5,6]]", True),
        ((None, 3), b"[[1,2,3]]", True),
        ((-1, 3), b"[[1,2]]", False),
        ((2,), b"[[1,2]]", False),
    ],
)
def test_ndarray_enforce_shape(shape: tuple, body: bytes, ok: bool) -> None:
    d = NumpyNdarray(shape=shape, enforce_shape=True)
    if ok:
        decode(d, body, "application/json")
    else:
        with pytest.raises(ValidationFailed, match="expected") as info:
            decode(d, body, "application/json")
        assert info.value.http_status == 422


@pytest.mark.parametrize(
    ("body", "ctype", "error", "match"),
    [
        (b"[1, 2", "application/json", BadInput, "not valid JSON"),
        (b"[1, NaN]", "application/json", BadInput, "not valid JSON"),
        (b"[[1, 2], [3]]", "application/json", ValidationFailed, "rectangular"),
        (b'["a", "b"]', "application/json", ValidationFailed, "array of numbers"),
        (b"not npy", "application/octet-stream", BadInput, "not a .npy array"),
        (b"1,2", "text/csv", UnsupportedMediaType, "'text/csv' is not accepted"),
    ],
)
def test_ndarray_rejects_bad_bodies(body: bytes, ctype: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        decode(NumpyNdarray(), body, ctype)


def forged_npy(shape: tuple[int, ...], descr: str = "<f8", data: bytes = b"\0" * 64) -> bytes:
    from numpy.lib import format as npy_format

    out = io.BytesIO()
    npy_format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue() + data


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (forged_npy((10**12,)), "claims shape"),  # np.load would try a 7 TiB allocation
        (forged_npy((4,), data=b"\0" * 31), "claims shape"),
        (forged_npy((2,), descr="|O", data=b"\0" * 16), r"not a \.npy array"),
        # Version 3.0 headers read like 2.0 but were not size-checked: a 14 TiB claim was a 500.
        (b"\x93NUMPY\x03\x00" + forged_npy((10**12, 4))[10:], "version 3.0 is not accepted"),
        # numpy's header check takes any int: True was a 500 (TypeError), -1 took its rows from the data.
        (forged_npy((True, 4)), "is not a tuple of non-negative integers"),
        (forged_npy((-1, 4)), "is not a tuple of non-negative integers"),
    ],
)
def test_ndarray_refuses_forged_npy_headers(body: bytes, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        decode(NumpyNdarray(), body, "application/octet-stream")


def test_ndarray_npy_integer_cast_refuses_values_out_of_range() -> None:
    # astype wraps integers silently: 2**64-1 would become -1 (an index from the end).
    big = npy(np.array([2**64 - 1, 3], np.uint64))
    with pytest.raises(
        ValidationFailed, match=r"cannot be cast to int64: values from 3 to 18446744073709551615"
    ):
        decode(NumpyNdarray(dtype="int64"), big, "application/octet-stream")
    small = decode(
        NumpyNdarray(dtype="int64"), npy(np.array([2**40, 3], np.uint64)), "application/octet-stream"
    )
    assert small.dtype == np.int64 and small.tolist() == [2**40, 3]


@pytest.mark.parametrize(
    ("dtype", "src", "match", "exact"),
    [
        ("int64", np.array([1.5, 2.0]), "int64 takes whole numbers", np.array([1.0, 0.0])),  # was [1, 2]
        ("bool", np.array([0.5, 1.0], np.float32), "booleans are true/false", np.array([1, 0], np.int8)),
        ("bool", np.array([2, 0], np.int8), "booleans are true/false", np.array([1, 0], np.uint8)),
    ],
)
def test_ndarray_npy_cast_to_integer_or_bool_changes_no_value(
    dtype: str, src: np.ndarray, match: str, exact: np.ndarray
) -> None:
    # The JSON path refused these already; the .npy path truncated 1.5 to 1 and made 0.5 and 2 True.
    with pytest.raises(ValidationFailed, match=f"cannot be cast to {dtype}: {match}"):
        decode(NumpyNdarray(dtype=dtype), npy(src), "application/octet-stream")
    arr = decode(NumpyNdarray(dtype=dtype), npy(exact), "application/octet-stream")
    assert arr.dtype == np.dtype(dtype) and arr.tolist() == [1, 0]


def test_ndarray_rejects_nan_and_inf_unless_allowed() -> None:
    bad = npy(np.array([1.0, np.nan, np.inf]))
    with pytest.raises(ValidationFailed, match="NaN or infinity"):
        decode(NumpyNdarray(), bad, "application/octet-stream")
    assert np.isnan(decode(NumpyNdarray(allow_nan=True), bad, "application/octet-stream")[1])


def test_ndarray_to_response_json_and_npy_by_accept() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = NumpyNdarray()
    r = d.to_response(arr, make_request(b"", accept="application/json"))
    assert r.media_type == "application/json"
    assert orjson.loads(r.body) == arr.tolist()
    r = d.to_response(arr, make_request(b"", accept="application/octet-stream"))
    assert r.media_type == "application/octet-stream"
    np.testing.assert_array_equal(np.load(io.BytesIO(r.body)), arr)
    for accept, media in [
        ("application/json, application/octet-stream;q=0", "application/json"),  # q=0: "not that"
        # Quality values choose (RFC 9110): JSON's own, else application/*'s, else */*'s.
        ("application/octet-stream;q=0.5, application/json;q=1", "application/json"),
        ("application/json;q=0.5, application/octet-stream;q=0.9", "application/octet-stream"),
        ("application/octet-stream;q=0.5, */*", "application/json"),
        ("application/octet-stream;q=0.5, application/*;q=0.2, */*", "application/octet-stream"),
        ("application/octet-stream;q=0.5, application/json;q=0.5", "application/octet-stream"),
        ("application/json, application/octet-stream", "application/octet-stream"),
        ("application/x-npy; q=bad", "application/json"),
    ]:
        assert d.to_response(arr, make_request(b"", accept=accept)).media_type == media, accept
    # Non-contiguous views and dtypes orjson does not know fall back to tolist().
    r = d.to_response(arr.T.astype(np.float16))
    assert orjson.loads(r.body) == arr.T.tolist()


def test_ndarray_npy_response_of_strings_is_a_unicode_array() -> None:
    # An ONNX string output is an object array, which np.save refuses without pickle: that was a 500
    # whenever Accept asked for .npy, as bundler's Client always does.
    d = NumpyNdarray()
    npy_accept = make_request(b"", accept="application/octet-stream")
    r = d.to_response(np.array([["a", "é"]], dtype=object), npy_accept)
    assert r.media_type == "application/octet-stream"
    out = np.load(io.BytesIO(r.body), allow_pickle=False)
    assert out.dtype.kind == "U" and out.tolist() == [["a", "é"]]
    # Other objects cannot be an .npy without pickle: the reply is JSON, which the Content-Type says.
    r = d.to_response(np.array([1, "a", None], dtype=object), npy_accept)
    assert r.media_type == "application/json" and orjson.loads(r.body) == [1, "a", None]


def test_ndarray_schema_has_rank_dtype_and_fixed_dims() -> None:
    schema = NumpyNdarray(dtype="int64", shape=(-1, 4)).openapi_schema()
    assert schema["type"] == "array" and "minItems" not in schema
    assert schema["items"] == {
        "type": "array",
        "items": {"type": "integer", "format": "int64"},
        "minItems": 4,
        "maxItems": 4,
    }


def test_ndarray_rejects_unknown_dtype_at_declaration() -> None:
    with pytest.raises(BadInput, match="not a numpy dtype"):
        NumpyNdarray(dtype="floaty")


# -- JSON -------------------------------------------------------------------------------------------------
class Iris(BaseModel):
    sepal_length: float
    sepal_width: float
    note: str | None = None


def test_json_plain_and_plus_json() -> None:
    assert decode(JSON(), b'{"a": [1, 2]}', "application/json") == {"a": [1, 2]}
    assert decode(JSON(), b"[1]", "application/vnd.api+json") == [1]


class Tagged(BaseModel):
    tags: list[str]


def test_json_pydantic_valid_and_invalid() -> None:
    value = decode(JSON(pydantic_model=Iris), b'{"sepal_length": 1, "sepal_width": 2.5}', "application/json")
    assert isinstance(value, Iris) and value.sepal_width == 2.5
    with pytest.raises(ValidationFailed) as info:
        decode(JSON(pydantic_model=Iris), b'{"sepal_length": "x"}', "application/json")
    assert info.value.http_status == 422
    locs = sorted(tuple(e["loc"]) for e in info.value.detail)
    assert locs == [("sepal_length",), ("sepal_width",)]
    orjson.dumps(info.value.detail)  # JSON-able as is


def test_json_pydantic_422_lists_the_first_errors_only() -> None:
    # One error per wrong item: a 900 kB list of ints for list[str] made a 25 MB answer (300,000 errors).
    with pytest.raises(ValidationFailed) as info:
        decode(JSON(pydantic_model=Tagged), orjson.dumps({"tags": [1] * 5000}), "application/json")
    assert str(info.value) == "JSON input: 5000 validation error(s) for Tagged (the first 100 listed)"
    assert [e["loc"] for e in info.value.detail] == [["tags", i] for i in range(100)]


@pytest.mark.parametrize(
    ("descriptor", "body", "match"),
    [
        # orjson said "str is not valid UTF-8: surrogates not allowed" for all three.
        (
            NumpyNdarray(),
            npy(np.zeros(2)),
            r"the body is an \.npy array, not JSON; send it with Content-Type: appl",
        ),
        (
            JSON(),
            '{"a": "é"}'.encode("latin-1"),
            r"JSON is UTF-8 and this is not \(byte 7: invalid continuation",
        ),
        (
            NumpyNdarray(),
            "[1]".encode("utf-16"),
            r"JSON is UTF-8 and this is not \(byte 0: invalid start byte\)",
        ),
        (JSON(), b'{"a": 1', r"the body is not valid JSON \(unexpected end of data"),
    ],
)
def test_json_bodies_that_do_not_parse_say_why(descriptor: Any, body: bytes, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        decode(descriptor, body, "application/json")


@pytest.mark.parametrize(
    ("body", "ctype", "error"),
    [(b"{", "application/json", BadInput), (b"{}", "text/plain", UnsupportedMediaType)],
)
def test_json_errors(body: bytes, ctype: str, error: type) -> None:
    with pytest.raises(error):
        decode(JSON(), body, ctype)


def test_json_to_response_handles_pydantic_and_numpy() -> None:
    r = JSON().to_response({"m": Iris(sepal_length=1, sepal_width=2).model_dump(), "a": np.arange(3)})
    assert orjson.loads(r.body) == {
        "m": {"sepal_length": 1.0, "sepal_width": 2.0, "note": None},
        "a": [0, 1, 2],
    }
    assert orjson.loads(JSON().to_response(Iris(sepal_length=1, sepal_width=2)).body)["sepal_width"] == 2.0


def test_json_to_response_encodes_what_orjson_refuses() -> None:
    value = {
        "half": np.ones((2, 2), np.float16).T,
        "set": {2, 1},
        "inner": [Iris(sepal_length=1, sepal_width=2)],
    }
    body = orjson.loads(JSON().to_response(value).body)
    assert body == {
        "half": [[1.0, 1.0], [1.0, 1.0]],
        "set": [1, 2],
        "inner": [Iris(sepal_length=1, sepal_width=2).model_dump()],
    }
    with pytest.raises(TypeError, match="not JSON serializable"):
        JSON().to_response({"x": object()})


def test_json_to_response_writes_non_str_keys_as_json_dumps_does() -> None:
    # orjson refuses them by default: a label map {0: "cat"} or dict(zip(labels, probs)) was a 500.
    labels, probs = np.array(["cat", "dog"]), np.array([0.25, 0.75])
    values, counts = np.unique(np.array([3, 3, 5]), return_counts=True)
    value = {
        "by_index": {0: "cat", 1: "dog"},
        "by_label": dict(zip(labels, probs, strict=True)),  # np.str_ keys
        "counts": [dict(zip(values, counts, strict=True))],  # np.int64 keys
    }
    assert orjson.loads(JSON().to_response(value).body) == {
        "by_index": {"0": "cat", "1": "dog"},
        "by_label": {"cat": 0.25, "dog": 0.75},
        "counts": [{"3": 2, "5": 1}],
    }


def test_json_pydantic_schema_is_openapi_30() -> None:
    comps = JSON(pydantic_model=Iris).openapi_components()
    note = comps["Iris"]["properties"]["note"]
    assert note.get("nullable") is True and note.get("type") == "string" and "anyOf" not in note


class TreeNode(BaseModel):
    value: int
    children: list[TreeNode] = []


class Bounded(BaseModel):
    temperature: float = Field(gt=0, lt=2)
    top_k: int = Field(default=5, ge=1)


class Pair(BaseModel):
    point: tuple[float, float]
    labelled: tuple[int, str]


class KeywordFields(BaseModel):
    examples: list[str]
    const: int
    options: dict[str, int] = Field(default={"const": 1})


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int


@pytest.mark.parametrize("model", [TreeNode, Bounded, Pair, KeywordFields, Page[int]])
def test_json_pydantic_schemas_are_valid_openapi_30(model: type[BaseModel]) -> None:
    # A recursive model referred to itself only, Field(gt=...) and tuple fields were 2020-12 spellings,
    # a field named "examples" was dropped and one named "const" renamed: /docs.json was not OpenAPI 3.0.
    svc = bundler.Service("schemas")
    svc.api(input=JSON(pydantic_model=model), output=JSON(pydantic_model=model), name="x")(lambda v: v)
    doc = svc.openapi()
    validate(doc)
    # OpenAPI 3.0: component keys match ^[a-zA-Z0-9.\-_]+$ (a generic's "Page[int]" does not).
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", key) for key in doc["components"]["schemas"])
    ref = doc["paths"]["/x"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "$ref" not in schema and schema["type"] == "object"
    assert set(schema["properties"]) == set(model.model_fields)


def test_pydantic_models_of_one_name_from_two_modules_get_a_component_each() -> None:
    # Both were keyed "Item": the second schema overwrote the first, and /docs.json described one API's
    # input with the other's fields (nested models as well).
    from pydantic import create_model

    item_a = create_model("Item", __module__="shop.orders", quantity=(int, ...))
    item_b = create_model("Item", __module__="shop.catalog", title=(str, ...))
    box = create_model("Box", __module__="shop.catalog", item=(item_b, ...))
    svc = bundler.Service("alike")
    svc.api(input=JSON(pydantic_model=item_a), output=JSON(), name="order")(lambda v: v)
    svc.api(input=JSON(pydantic_model=box), output=JSON(pydantic_model=item_b), name="pack")(lambda v: v)
    doc = svc.openapi()
    validate(doc)
    schemas = doc["components"]["schemas"]

    def resolve(ref: str) -> dict:
        return schemas[ref.rsplit("/", 1)[1]]

    post = {path: doc["paths"][path]["post"] for path in ("/order", "/pack")}
    order_in = resolve(post["/order"]["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    pack_in = resolve(post["/pack"]["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    pack_out = post["/pack"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert set(order_in["properties"]) == {"quantity"}
    assert set(resolve(pack_in["properties"]["item"]["$ref"])["properties"]) == {"title"}
    assert set(resolve(pack_out)["properties"]) == {"title"}


def test_json_pydantic_schema_bounds_and_tuples_in_openapi_30_spelling() -> None:
    comps = JSON(pydantic_model=Bounded).openapi_components()["Bounded"]["properties"]
    temperature = comps["temperature"]
    assert temperature["minimum"] == 0 and temperature["exclusiveMinimum"] is True
    assert temperature["maximum"] == 2 and temperature["exclusiveMaximum"] is True
    assert comps["top_k"]["minimum"] == 1 and "exclusiveMinimum" not in comps["top_k"]
    pair = JSON(pydantic_model=Pair).openapi_components()["Pair"]["properties"]
    assert pair["point"]["items"] == {"type": "number"} and pair["point"]["maxItems"] == 2
    assert pair["labelled"]["items"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    fields = JSON(pydantic_model=KeywordFields).openapi_components()["KeywordFields"]["properties"]
    assert fields["const"]["type"] == "integer" and fields["options"]["default"] == {"const": 1}


# -- Image -------------------------------------------------------------------------------------------------
def test_image_raw_body_and_pilmode() -> None:
    img = decode(Image(pilmode="L"), png(), "image/png")
    assert img.size == (8, 6) and img.mode == "L"


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "want"),
    [
        ("CMYK", (0, 255, 0, 0), "PNG", "RGB"),  # was a 500: "cannot write mode CMYK as PNG"
        ("F", 1.5, "PNG", "RGB"),
        ("LA", (3, 4), "PNG", "LA"),  # held as it is
        ("LA", (3, 4), "JPEG", "RGB"),  # JPEG has no alpha
    ],
)
def test_image_output_in_a_mode_the_format_cannot_hold_is_converted(
    mode: str, value: Any, fmt: str, want: str
) -> None:
    from PIL import Image as PILImage

    response = Image(output_format=fmt).to_response(PILImage.new(mode, (4, 4), value))
    got = PILImage.open(io.BytesIO(response.body))
    assert (got.format, got.mode, got.size) == (fmt, want, (4, 4))
    assert response.media_type == f"image/{fmt.lower()}"


def test_image_multipart_upload() -> None:
    body, ctype = multipart(png((5, 4)))
    assert decode(Image(), body, ctype).size == (5, 4)


def test_image_multipart_without_file_is_400() -> None:
    boundary = "zz"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n--{boundary}--\r\n'
    ).encode()
    with pytest.raises(BadInput, match="holds no file"):
        decode(Image(), body, f"multipart/form-data; boundary={boundary}")


@pytest.mark.parametrize(
    ("descriptor", "body", "ctype", "error"),
    [
        (Image(), b"not an image", "image/png", BadInput),
        (Image(), noisy_png()[:1500], "image/png", BadInput),
        (Image(), png(), "application/json", UnsupportedMediaType),
        (Image(), png(), None, UnsupportedMediaType),
        (Image(formats=["jpeg"]), png(), "image/png", UnsupportedMediaType),
        (Image(max_pixels=100 * 100), png((200, 200)), "image/png", PayloadTooLarge),
    ],
)
def test_image_errors(descriptor: Image, body: bytes, ctype: str | None, error: type) -> None:
    with pytest.raises(error):
        decode(descriptor, body, ctype)


def test_image_refuses_decompression_bombs_at_the_pil_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50 * 50)
    with pytest.raises(PayloadTooLarge) as info:
        decode(Image(), png((400, 400)), "image/png")
    assert info.value.http_status == 413


def test_image_to_response_png_from_pil_and_ndarray() -> None:
    r = Image().to_response(np.zeros((3, 4, 3), dtype=np.uint8))
    assert r.media_type == "image/png"
    assert PILImage.open(io.BytesIO(r.body)).size == (4, 3)
    r = Image(output_format="jpeg").to_response(PILImage.new("RGB", (2, 2)))
    assert r.media_type == "image/jpeg" and r.body[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    ("pilmode", "want"), [("L", [0, 100, 255]), ("RGB", [(0,) * 3, (100,) * 3, (255,) * 3])]
)
def test_image_16_bit_png_to_an_8_bit_pilmode_is_scaled_not_clipped(pilmode: str, want: list) -> None:
    # Pillow's convert clips 16-bit values at 255: 25700 (100 in 8 bits) came out 255, the image white.
    buf = io.BytesIO()
    PILImage.fromarray(np.array([[0, 25700, 65535]], np.uint16)).save(buf, format="PNG")
    img = decode(Image(pilmode=pilmode), buf.getvalue(), "image/png")
    assert img.mode == pilmode and [img.getpixel((x, 0)) for x in range(3)] == want
    assert decode(Image(), buf.getvalue(), "image/png").getpixel((1, 0)) == 25700  # no pilmode: as sent


@pytest.mark.parametrize(
    ("fmt", "media"),
    [("ICO", "image/x-icon"), ("JPEG2000", "image/jp2"), ("PDF", "application/pdf"), ("webp", "image/webp")],
)
def test_image_output_content_type_is_the_formats_own(fmt: str, media: str) -> None:
    # It was "image/" + the format's name: image/ico, image/jpeg2000, image/pdf.
    image = Image(output_format=fmt)
    assert image.output_media == media and image.describe()["output_media"] == media
    response = image.to_response(PILImage.new("RGB", (16, 16)))
    assert response.media_type == media and response.body


def test_image_output_of_arrays_pillow_cannot_take() -> None:
    # A one-channel (H, W, 1) output was PIL's TypeError "Cannot handle this data type: (1, 1, 1), |u1".
    gray = Image().to_response(np.full((3, 4, 1), 9, np.uint8))
    got = PILImage.open(io.BytesIO(gray.body))
    assert (got.mode, got.size, got.getpixel((0, 0))) == ("L", (4, 3), 9)
    # A CMYK image as GIF was a ValueError ("image has wrong mode"), not converted as for other formats.
    gif = Image(output_format="GIF").to_response(PILImage.new("CMYK", (4, 4)))
    assert PILImage.open(io.BytesIO(gif.body)).format == "GIF"
    with pytest.raises(TypeError, match=r"dtype float32 and shape \(1, 3, 4, 4\) is not an image.*transpose"):
        Image().to_response(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(TypeError, match="returned a bytes; return a PIL image or a uint8 numpy array"):
        Image().to_response(b"\x89PNG")


# -- Text and File -------------------------------------------------------------------------------------------
def test_text_utf8_round_trip_and_errors() -> None:
    assert decode(Text(), "héllo ✓".encode(), "text/plain; charset=utf-8") == "héllo ✓"
    with pytest.raises(BadInput, match="not valid UTF-8"):
        decode(Text(), b"\xff\xfe", "text/plain")
    with pytest.raises(UnsupportedMediaType, match="charset"):
        decode(Text(), b"abc", "text/plain; charset=latin-1")
    with pytest.raises(UnsupportedMediaType, match="charset 'utf-16' is not accepted"):
        decode(Text(), b"abc", 'text/plain; format=flowed;CHARSET = "UTF-16"')
    # Only the charset parameter names one: 415 "charset 'latin1' is not accepted" here.
    assert decode(Text(), "é".encode(), "text/plain; x-charset=latin1; charset=utf-8") == "é"
    with pytest.raises(UnsupportedMediaType):
        decode(Text(), b"abc", "application/json")
    r = Text().to_response("✓")
    assert r.body == "✓".encode() and r.headers["content-type"].startswith("text/plain")


def test_text_input_drops_a_leading_utf8_bom_as_utf_8_sig_would() -> None:
    # Notepad and PowerShell's Out-File start UTF-8 text with a BOM; it was kept as '\ufeffhi'.
    assert decode(Text(), b"\xef\xbb\xbfhi", "text/plain; charset=utf-8") == "hi"
    assert decode(Text(), b"\xef\xbb\xbf", "text/plain") == ""
    # Only the first one is a BOM; a later U+FEFF is text.
    assert decode(Text(), "\ufeff\ufeffa\ufeff".encode(), "text/plain") == "\ufeffa\ufeff"
    # Error offsets still count the body's bytes.
    with pytest.raises(BadInput, match="byte 5"):
        decode(Text(), b"\xef\xbb\xbfab\xff", "text/plain")


def test_text_output_of_bytes_is_their_text_not_their_repr() -> None:
    assert Text().to_response("✓".encode()).body == "✓".encode()  # was str() of the bytes
    assert Text().to_response(bytearray(b"abc")).body == b"abc"
    with pytest.raises(TypeError, match="Text output: the API returned bytes that are not UTF-8"):
        Text().to_response(b"\xff")
    with pytest.raises(TypeError, match="returned None; return a str"):
        Text().to_response(None)  # was the text "None"
    assert Text().to_response(3.5).body == b"3.5"


def test_file_raw_and_multipart() -> None:
    assert decode(File(), b"\x00\x01", "application/pdf") == b"\x00\x01"
    body, ctype = multipart(b"abc\x00", "a.bin", "application/octet-stream")
    assert decode(File(), body, ctype) == b"abc\x00"
    r = File(mime_type="application/pdf").to_response(b"%PDF")
    assert r.body == b"%PDF" and r.media_type == "application/pdf"
    assert File().to_response(io.BytesIO(b"ab")).body == b"ab"
    assert File().to_response(io.StringIO("é")).body == "é".encode()
    assert File().to_response(np.arange(2, dtype=np.uint8)).body == b"\x00\x01"
    for wrong in (12, None, 10**12):  # 12 was twelve NUL bytes; 10**12 asked for a terabyte
        with pytest.raises(TypeError, match="File output: the API returned a"):
            File().to_response(wrong)


# -- properties ----------------------------------------------------------------------------------------------

_dtypes = st.sampled_from([np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_])
_arrays = _dtypes.flatmap(
    lambda dt: hnp.arrays(
        dt,
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
        elements={"allow_nan": False, "allow_infinity": False} if np.dtype(dt).kind == "f" else None,
    )
)


@settings(max_examples=60, deadline=None)
@given(_arrays)
def test_ndarray_npy_round_trip_is_exact(arr: np.ndarray) -> None:
    d = NumpyNdarray()
    out = decode(d, npy(arr), "application/octet-stream")
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    back = np.load(io.BytesIO(d.to_response(out, make_request(b"", accept="application/octet-stream")).body))
    np.testing.assert_array_equal(back, arr)


@settings(max_examples=60, deadline=None)
@given(_arrays)
def test_ndarray_json_round_trip_keeps_values(arr: np.ndarray) -> None:
    d = NumpyNdarray(dtype=arr.dtype)
    body = d.to_response(arr).body
    out = decode(d, body, "application/json")
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_image_without_pillow_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "PIL" else real(n, *a))
    with pytest.raises(ImportError, match=r"add `pillow` to python\.packages"):
        Image()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.array([1, -2, 3], dtype=">i4"),
        np.zeros((0, 3), dtype=np.float16),
        np.array(3.5),
        np.array([True, False]),
    ],
)
def test_npy_bodies_load_as_numpy_loads_them_writable_and_twice_alike(array: np.ndarray) -> None:
    from bundler.io import _load_npy

    buf = io.BytesIO()
    np.save(buf, array)
    expected = np.load(io.BytesIO(buf.getvalue()))
    for _ in range(2):  # the second load takes the cached header
        got = _load_npy(buf.getvalue())
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)
        assert got.flags.writeable and got.flags.f_contiguous == expected.flags.f_contiguous
        got[...] = 0  # the caller's own copy, not a view of the request body
    assert np.array_equal(_load_npy(buf.getvalue()), expected)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(24.0).reshape(4, 6)[:, ::2],  # neither C nor Fortran contiguous
        np.array([1, -2, 3], dtype=">i4"),
        np.zeros((0, 3), dtype=np.float16),
        np.array(3.5),
        np.array([True, False]),
        np.zeros((1,) * 32),
        np.array(["a", "bc"]),  # and the kinds np.save writes itself
        np.zeros(2, dtype=[("a", "<i4")]),
        np.array([1 + 2j]),
    ],
)
def test_npy_replies_are_byte_for_byte_what_np_save_writes(array: np.ndarray) -> None:
    from bundler.io import _npy_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    for _ in range(2):  # the second reply takes the cached header
        assert _npy_bytes(array) == buf.getvalue()


def test_error_messages_carry_no_object_reprs() -> None:
    # PIL names the BytesIO it read and numpy's header parser an ast node: "<... object at 0x7f...>".
    with pytest.raises(BadInput) as image:
        Image().decode(b"garbage")
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (a, 4), }"
    header += b" " * (118 - len(header)) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64
    with pytest.raises(BadInput) as array:
        decode(NumpyNdarray(), body, "application/octet-stream")
    for message in (str(image.value), str(array.value)):
        assert "object at" not in message and "0x" not in message, message
    assert "cannot identify image file" in str(image.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_format": "NOPE"}, r"Image\(output_format='NOPE'\): Pillow writes no such format"),
        ({"formats": ["nope"]}, r"Pillow reads no format NOPE"),
        ({"pilmode": "ZZ"}, r"Image\(pilmode='ZZ'\): not a Pillow mode"),
    ],
)
def test_image_options_are_checked_when_the_api_is_defined(kwargs: dict, match: str) -> None:
    # They were found out per request: a bad output_format was a 500 on every call.
    with pytest.raises(BadInput, match=match):
        Image(**kwargs)
    assert Image(formats=["jpg", "png"], pilmode="RGB", output_format="jpeg").output_media == "image/jpeg"


def test_image_takes_bentomls_arguments() -> None:
    # Image(mime_type="image/png") and Image(allowed_mime_types=[...]) (BentoML's) raised TypeError, and
    # Image("L") took "L" for a list of formats.
    image = Image("L", "image/jpeg", allowed_mime_types=["image/png", "image/webp"])
    assert (image.pilmode, image.output_format, image.output_media) == ("L", "JPEG", "image/jpeg")
    assert image.formats == {"PNG", "WEBP"}
    with pytest.raises(UnsupportedMediaType, match="format JPEG is not accepted"):
        Image(allowed_mime_types=["image/png"]).decode(jpeg_bytes())
    with pytest.raises(BadInput, match=r"Image\(mime_type=...\): 'text/plain' is not an image type"):
        Image(mime_type="text/plain")
    with pytest.raises(BadInput, match=r"allowed_mime_types='image/png'\): expected a list"):
        Image(allowed_mime_types="image/png")  # type: ignore[arg-type]
    with pytest.raises(BadInput, match=r"give one, they say the same"):
        Image(mime_type="image/png", output_format="PNG")


def test_an_image_that_accepts_jpeg_takes_a_multi_picture_jpeg() -> None:
    # A camera's JPEG with a depth map or preview in it (MPF) opens as format "MPO": it got 415 "format MPO
    # is not accepted; send one of JPEG" from an API taking JPEG.
    buf = io.BytesIO()
    first, second = PILImage.new("RGB", (8, 6), (250, 0, 0)), PILImage.new("RGB", (8, 6), (0, 250, 0))
    first.save(buf, "MPO", save_all=True, append_images=[second])
    img = Image(allowed_mime_types=["image/jpeg"]).decode(buf.getvalue())
    assert img.size == (8, 6) and img.getpixel((0, 0))[0] > 200
    with pytest.raises(UnsupportedMediaType, match="format MPO is not accepted; send one of PNG"):
        Image(formats=["png"]).decode(buf.getvalue())


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("dtype", "body", "expected"),
    [
        ("bool", b'["false", "no"]', "booleans are true/false"),  # were all True
        ("bool", b"[2, -1]", "booleans are true/false"),
        ("bool", b"[true, 0, 1]", [True, False, True]),
        ("int64", b"[1.5, 2.9]", "takes whole numbers"),  # were [1, 2]
        ("int64", b"[1.0, 2]", [1, 2]),
        ("int8", b"[300]", "outside int8's range"),
        ("int64", b"[1e30]", "outside int64's range"),
        ("int64", b"[1, 9223372036854775808]", "outside int64's range"),  # 2**63: was -2**63
        ("uint8", b"[1.0, 256.0]", "outside uint8's range"),
        ("int32", b'[1, "a"]', "values are not numbers"),
    ],
)
def test_ndarray_json_to_an_integer_or_bool_dtype_casts_exact_values_only(
    dtype: str, body: bytes, expected: Any
) -> None:
    d = NumpyNdarray(dtype=dtype)
    if isinstance(expected, list):
        arr = decode(d, body, "application/json")
        assert arr.dtype == np.dtype(dtype) and arr.tolist() == expected
    else:
        with pytest.raises(ValidationFailed, match=expected):
            decode(d, body, "application/json")


# -- declaration errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        # Each was taken: a str shape split into one dimension per letter, a non-int dimension or a
        # non-positive max_pixels refused every request, a non-model pydantic_model or a non-str mime_type
        # was a 500 on every call (or when the app was built), and formats="png" was read as P, N, G.
        (lambda: NumpyNdarray(shape="nhw"), r"NumpyNdarray\(shape='nhw'\): expected a tuple of dimensions"),
        (lambda: NumpyNdarray(shape=3), r"NumpyNdarray\(shape=3\): expected a tuple"),
        (lambda: NumpyNdarray(shape=(1.5, 2)), r"NumpyNdarray\(shape=\(1.5, 2\)\)"),
        (lambda: NumpyNdarray(shape=(True,)), r"NumpyNdarray\(shape=\(True,\)\)"),
        (lambda: NumpyNdarray(enforce_shape=True), r"enforce_shape=True\): there is no shape.*pass shape="),
        (lambda: NumpyNdarray(enforce_dtype=True), r"enforce_dtype=True\): there is no dtype.*pass dtype="),
        (
            lambda: JSON(pydantic_model=int),
            r"JSON\(pydantic_model=<class 'int'>\): expected a pydantic model",
        ),
        (lambda: JSON(pydantic_model=Iris(sepal_length=1, sepal_width=2)), "expected a pydantic model class"),
        (lambda: File(mime_type=3), r"File\(mime_type=3\): expected a media type"),
        (lambda: File(mime_type="pdf"), r"File\(mime_type='pdf'\): expected a media type"),
        (
            lambda: Image(formats="png"),
            r"Image\(formats='png'\): expected a list of formats, e.g. formats=\['png'\]",
        ),
        (lambda: Image(max_pixels=0), r"Image\(max_pixels=0\): expected a positive number of pixels"),
        (lambda: Image(max_pixels="1000"), r"Image\(max_pixels='1000'\)"),
    ],
)
def test_descriptor_arguments_are_checked_when_declared(make: Callable[[], object], match: str) -> None:
    with pytest.raises(BadInput, match=match):
        make()


def test_descriptor_arguments_that_are_fine() -> None:
    assert NumpyNdarray(shape=(np.int64(2), "batch", None, -1)).shape == (2, "batch", None, -1)
    assert NumpyNdarray(shape=[1, 2], enforce_shape=True).shape == (1, 2)
    assert File(mime_type="text/html; charset=latin-1").output_media == "text/html; charset=latin-1"
    assert File(mime_type="application/vnd.api+json").output_media == "application/vnd.api+json"
    assert JSON(pydantic_model=Iris).pydantic_model is Iris


def test_image_never_opens_formats_pillow_reads_with_another_program(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    opened = []
    original = EpsImagePlugin.EpsImageFile._open

    def spy(self: Any) -> None:
        opened.append(True)
        original(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 2 2\nshowpage\n%%EOF\n"
    with pytest.raises(BadInput, match="not a readable image"):
        Image().decode(eps)
    assert opened == []  # Pillow opened it as EPS, and load() would have run Ghostscript where installed
    with pytest.raises(BadInput, match="Ghostscript"):
        Image(formats=["EPS"])
    assert Image().decode(png()).format == "PNG"


def test_ndarray_output_follows_its_declared_dtype_and_shape() -> None:
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    # Declared, not enforced: cast and reshaped, as BentoML does (the answer was float64, against the schema).
    r = NumpyNdarray(dtype="float32", shape=(-1, 6)).to_response(
        arr, make_request(b"", accept="application/octet-stream")
    )
    out = np.load(io.BytesIO(r.body))
    assert out.dtype == np.float32 and out.shape == (1, 6)
    assert orjson.loads(NumpyNdarray(dtype="int64").to_response(arr + 0.5).body) == [[0, 1, 2], [3, 4, 5]]
    # Enforced: the API's error (a 500), not an answer that contradicts the schema.
    with pytest.raises(TypeError, match="returned dtype float64, float32 is declared"):
        NumpyNdarray(dtype="float32", enforce_dtype=True).to_response(arr)
    with pytest.raises(TypeError, match=r"returned shape \(2, 3\), \(3, 2\) is declared"):
        NumpyNdarray(shape=(3, 2), enforce_shape=True).to_response(arr)
    with pytest.raises(TypeError, match="cannot be cast to the declared float32"):
        NumpyNdarray(dtype="float32").to_response(np.array(["a", "b"]))
    assert NumpyNdarray(dtype="float64", shape=(2, 3)).to_response(arr).body == orjson.dumps(arr.tolist())
