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

import bundler
from bundler.client import AsyncClient, Client
from bundler.exceptions import BadInput, HTTPError, NotFound, UnknownAPI
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

    return svc


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(build_app(make_service())) as base:
        yield base


def test_client_calls_every_descriptor(url: str) -> None:
    with Client(url) as c:
        assert set(c.apis) == {"square", "norm", "flip", "upper", "rev", "zeros", "call", "nap", "size"}
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


def test_async_client(url: str) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(url) as c:
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
