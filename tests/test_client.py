"""Client and AsyncClient against a real server: every descriptor, attribute calls, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

import bundler
from bundler.client import AsyncClient, Client, _retry_after
from bundler.exceptions import BadInput, HTTPError, NotFound, Overloaded, UnknownAPI
from bundler.io import JSON, File, Image, NumpyNdarray, Text
from bundler.server.app import build_app
from bundler.server.testing import running


class Point(BaseModel):
    x: float
    y: float


def make_service() -> bundler.Service:
    svc = bundler.Service("client-demo")

    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    def square(a: np.ndarray) -> np.ndarray:
        return a * a

    @svc.api(input=JSON(pydantic_model=Point), output=JSON(), route="geo/norm")
    async def norm(p: Point) -> dict[str, float]:
        return {"norm": (p.x**2 + p.y**2) ** 0.5}

    @svc.api(input=Image(), output=Image())
    def flip(img: Any) -> Any:
        return img.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)

    @svc.api(input=Text(), output=Text())
    def upper(t: str) -> str:
        return t.upper()

    @svc.api(input=File(), output=File())
    def rev(b: bytes) -> bytes:
        return b[::-1]

    @svc.api(input=JSON(), output=NumpyNdarray())
    def zeros(obj: dict) -> np.ndarray:
        return np.zeros(obj["n"], dtype=np.int32)

    @svc.api(input=JSON(), output=JSON())
    def call(obj: Any) -> Any:  # named like the client's own method
        return {"called": obj}

    @svc.api(input=Text(), output=Text())
    async def nap(seconds: str) -> str:
        await asyncio.sleep(float(seconds))
        return seconds

    @svc.api(input=File(), output=Text())
    def size(data: bytes) -> str:
        return str(len(data))

    @svc.api(input=JSON(), output=JSON())
    def throttled(obj: Any) -> Any:
        raise Overloaded("too busy", retry_after=float(obj))

    return svc


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(build_app(make_service())) as base:
        yield base


def test_client_calls_every_descriptor(url: str) -> None:
    with Client(url) as c:
        assert set(c.apis) == {
            "square",
            "norm",
            "flip",
            "upper",
            "rev",
            "zeros",
            "call",
            "nap",
            "size",
            "throttled",
        }
        arr = np.arange(6, dtype=np.float32).reshape(2, 3)
        out = c.square(arr)  # .npy both ways: the dtype survives
        assert out.dtype == np.float32 and out.tolist() == (arr * arr).tolist()
        assert c.call("square", [[1, 2]]).tolist() == [[1, 4]]
        assert c.norm({"x": 3, "y": 4}) == {"norm": 5.0}
        assert c.norm(x=6, y=8) == {"norm": 10.0}
        assert c.norm(Point(x=0, y=2)) == {"norm": 2.0}
        img = PILImage.new("RGB", (2, 1))
        img.putpixel((0, 0), (255, 0, 0))
        flipped = c.flip(img)
        assert isinstance(flipped, PILImage.Image) and flipped.getpixel((1, 0)) == (255, 0, 0)
        assert c.upper("straße") == "STRASSE"
        assert c.rev(b"\x00\x01\x02") == b"\x02\x01\x00"
        z = c.zeros({"n": 3})
        assert isinstance(z, np.ndarray) and z.dtype == np.int32 and z.tolist() == [0, 0, 0]


def test_client_errors_carry_status_and_body(url: str) -> None:
    with Client(url) as c:
        with pytest.raises(HTTPError) as info:
            c.norm({"x": "far"})
        assert info.value.status_code == 422
        assert isinstance(info.value.detail, list) and {tuple(e["loc"]) for e in info.value.detail} == {
            ("x",),
            ("y",),
        }
        assert "answered 422" in str(info.value)
        with pytest.raises(NotFound, match="no API named 'nope'"):
            c.call("nope", 1)
        # Attribute access and call() raise the same error, an AttributeError too, naming what is served.
        with pytest.raises(UnknownAPI, match=r"no API named 'nope'; it serves call, .*norm") as unknown:
            _ = c.nope
        assert isinstance(unknown.value, AttributeError) and isinstance(unknown.value, NotFound)
        assert not hasattr(c, "nope") and getattr(c, "nope", None) is None
        # An API named like a client method: call() by name; called as the method, a clear message.
        assert c.call("call", {"a": 1}) == {"called": {"a": 1}}
        with pytest.raises(BadInput, match=r"takes the API's name first.*client.call\('call', value\)"):
            c.call({"a": 1})
        # BentoML's Client also has async_<api> and async_call: say where they are, not only "no API".
        with pytest.raises(
            UnknownAPI, match=r"'async_norm'; .* \(for BentoML's async_norm: await AsyncClient"
        ):
            _ = c.async_norm
        with pytest.raises(UnknownAPI, match=r"await AsyncClient\(url\)\.call\(\.\.\.\)\)$"):
            c.call("async_call", 1)


def test_client_takes_an_address_without_a_scheme(url: str) -> None:
    # curl's and the READMEs' "127.0.0.1:3000" was refused ("missing an 'http://'"; "localhost:3000" got
    # "unsupported protocol 'localhost://'"); BentoML's client assumes http.
    address = url.removeprefix("http://") + "/"
    with Client(address) as c:
        assert c.url == url and c.upper("abc") == "ABC"

    async def main() -> str:
        async with AsyncClient(address) as c:
            return await c.upper("abc")

    assert asyncio.run(main()) == "ABC"


def test_client_for_a_server_that_is_not_there() -> None:
    with pytest.raises(HTTPError, match=r"docs\.json could not be read"):
        Client("http://127.0.0.1:9", timeout=2)


def test_client_for_a_url_that_serves_no_openapi_document(url: str) -> None:
    # A 404 for /docs.json (a wrong path) was status_code 0, "could not be read" with httpx's MDN link; a
    # page that is not JSON (another server on that port) was orjson's JSONDecodeError from deep inside.
    with pytest.raises(HTTPError, match=r"/v2/docs\.json answered 404: no such route") as info:
        Client(url + "/v2")
    assert info.value.status_code == 404 and "developer.mozilla.org" not in str(info.value)

    async def page(request: Any) -> Response:
        return HTMLResponse("<html><body>a notebook</body></html>")

    async def missing(request: Any) -> Response:
        return HTMLResponse("<html><body><h1>Not Found</h1></body></html>", status_code=404)

    other = Starlette(routes=[Route("/docs.json", page), Route("/v2/docs.json", missing)])
    with running(other) as base:
        with pytest.raises(
            HTTPError, match=r"docs\.json is not an OpenAPI document \(text/html.*a bundler server\?"
        ):
            Client(base)
        with pytest.raises(HTTPError, match=r"/v2/docs\.json answered 404: Not Found$") as info:
            Client(base + "/v2")
        assert "<h1>" in str(info.value.body)

        async def main() -> None:
            with pytest.raises(HTTPError, match=r"is not an OpenAPI document"):
                async with AsyncClient(base):
                    pass

        asyncio.run(main())


def test_client_errors_carry_retry_after(url: str) -> None:
    # A 503's Retry-After was dropped: a caller could not back off as long as the server asked.
    with (
        Client(url) as c,
        pytest.raises(HTTPError, match=r"answered 503: too busy \(retry after 3 s\)") as info,
    ):
        c.throttled(2.5)
    assert info.value.status_code == 503 and info.value.retry_after == 3
    with Client(url) as c, pytest.raises(HTTPError) as info:
        c.norm({"x": "far"})
    assert info.value.retry_after is None

    async def main() -> None:
        async with AsyncClient(url) as c:
            with pytest.raises(HTTPError) as info:
                await c.throttled(7)
            assert info.value.retry_after == 7

    asyncio.run(main())


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        ("0", 0.0),
        ("-1", None),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_header_values(header: str, seconds: float | None) -> None:
    assert _retry_after(header) == seconds


def test_async_client(url: str) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(url) as c:
            # The OpenAPI document, as Client.openapi (it was an API "method" named openapi).
            assert c.openapi is not None and "/square" in c.openapi["paths"]
            results = await asyncio.gather(*(c.call("square", np.full(2, i, np.int64)) for i in range(8)))
            text = await c.upper("abc")
            with pytest.raises(HTTPError) as info:
                await c.call("square", [[1, 2], [3]])
            assert info.value.status_code == 422
            # The same error as the sync client's, for attribute access as for call().
            for unknown in (lambda: c.nope, lambda: c.call("nope", 1)):
                with pytest.raises(UnknownAPI, match=r"no API named 'nope'; it serves .*square"):
                    await unknown()
            assert not hasattr(c, "nope")
            return [*results, text]

    *arrays, text = asyncio.run(main())
    assert [a.tolist() for a in arrays] == [[i * i, i * i] for i in range(8)]
    assert text == "ABC"


def test_client_sends_files_paths_and_bytes_as_their_contents(url: str, tmp_path: Path) -> None:
    # Text(bytes) sent the repr "b'abc'", File(Path) sent the path's own name, Image(path or open file)
    # was an AttributeError from deep inside the client.
    img = PILImage.new("RGB", (3, 2), (0, 0, 255))
    img.save(tmp_path / "blue.png")
    img.save(tmp_path / "blue.jpg")
    (tmp_path / "data.bin").write_bytes(b"\x00" * 5)
    with Client(url) as c:
        assert c.upper(b"abc") == "ABC"
        assert c.size(tmp_path / "data.bin") == "5"
        with (tmp_path / "data.bin").open("rb") as f:
            assert c.size(f) == "5"
        assert c.flip(tmp_path / "blue.png").size == (3, 2)
        with (tmp_path / "blue.jpg").open("rb") as f:
            assert c.flip(f).size == (3, 2)
        with pytest.raises(BadInput, match=r"API 'flip' takes an Image: give .* not a str"):
            c.flip(str(tmp_path / "blue.png"))
        with pytest.raises(BadInput, match=r"API 'size' takes a File: .* not a int"):
            c.size(5)
        with pytest.raises(BadInput, match=r"API 'size': cannot read .*missing\.bin"):
            c.size(tmp_path / "missing.bin")
        with pytest.raises(BadInput, match=r"API 'call': the input cannot be sent as JSON"):
            c.call("call", {"a": object()})


def test_client_timeouts_say_so_sync_and_async(url: str) -> None:
    # httpx's async ReadTimeout has an empty message: the error read "API 'nap' at http://...: ".
    with Client(url, timeout=0.2) as c, pytest.raises(HTTPError, match=r"within 0.2 s \(ReadTimeout\)"):
        c.nap("1")

    async def main() -> None:
        async with AsyncClient(url, timeout=0.2) as c:
            with pytest.raises(HTTPError, match=r"/nap: no answer within 0.2 s .*timeout=") as info:
                await c.nap("1")
            assert info.value.status_code == 0

    asyncio.run(main())


def test_client_refuses_or_sends_inputs_it_cannot_encode_as_such(url: str) -> None:
    # An object array, a float array as an image, a lone surrogate: numpy's ValueError, Pillow's TypeError
    # and a UnicodeEncodeError escaped; a CMYK or float image ("cannot write mode F as PNG") and a pydantic
    # model inside a list could not be sent at all.
    with Client(url) as c:
        with pytest.raises(BadInput, match=r"API 'square': an array of dtype object cannot be sent"):
            c.square(np.array([1, "a"], dtype=object))
        with pytest.raises(BadInput, match=r"API 'flip' takes an Image: a float32 array .*give a uint8"):
            c.flip(np.zeros((2, 3, 3), np.float32))
        with pytest.raises(BadInput, match=r"API 'upper': the text cannot be sent as UTF-8"):
            c.upper("\ud800")
        for mode in ("CMYK", "F"):
            assert c.flip(PILImage.new(mode, (3, 2))).size == (3, 2)
        assert c.call("call", [Point(x=1, y=2), {"p": Point(x=3, y=4)}]) == {
            "called": [{"x": 1.0, "y": 2.0}, {"p": {"x": 3.0, "y": 4.0}}]
        }


def test_client_takes_host_and_port_without_a_scheme(url: str) -> None:
    # BentoML's Client.from_url("localhost:3000") means http; httpx refused it ("missing an 'http://'").
    with Client(url.removeprefix("http://")) as c:
        assert c.url == url and c.upper("a") == "A"

    async def main() -> str:
        async with AsyncClient(url.removeprefix("http://") + "/") as c:
            return await c.upper("b")

    assert asyncio.run(main()) == "B"


def test_client_refuses_redirects_and_bodies_not_as_labelled() -> None:
    # A redirect (a proxy sending http to https) returned its empty body, b"", as the API's answer; a
    # body that is not what its Content-Type says was orjson's JSONDecodeError from deep inside.
    doc = make_service().openapi()

    async def docs(request: Any) -> Response:
        return JSONResponse(doc)

    async def moved(request: Any) -> Response:
        return RedirectResponse("https://example.invalid/call", status_code=308)

    async def garbled(request: Any) -> Response:
        return Response(b"<html>oops</html>", media_type="application/json")

    routes = [
        Route("/docs.json", docs),
        Route("/call", moved, methods=["POST"]),
        Route("/square", garbled, methods=["POST"]),
    ]
    with running(Starlette(routes=routes)) as base, Client(base) as c:
        with pytest.raises(HTTPError, match=r"'call' answered 308: .*redirected to https://example\.invalid"):
            c.call("call", {"a": 1})
        with pytest.raises(
            HTTPError, match=r"'square' answered 200 with a body that is not the application/json"
        ):
            c.square([1])
