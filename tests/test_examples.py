"""The examples end to end: make the model with the example's script, build, serve, call, compare.

For each example under examples/ (quickstart, super_resolution, image_classifier, sklearn_iris): its
make_model.py runs in a fresh BUNDLER_HOME, `bundler build` makes the bundle, and the bundle is served
in-process (a real uvicorn on 127.0.0.1) and in its real container (`bundler containerize`, then
`docker run --network host`). Each answer is checked against onnxruntime run directly on the saved model
with the same input, preprocessed here independently of the example's code. /docs.json must be a valid
OpenAPI 3 document, and /docs must render the example's API in headless Chromium.

The container tests need a running engine (run shared/tools/container-env.sh) and the docs tests Debian's
`chromium`; both are skipped without them, and fail instead when CI=true.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Example:
    """One example directory: its model's name, its API route, what its make_model.py imports, its bundle's
    src/ files (what bentofile.yaml's include selects), and whether it takes images (and so gets Pillow)."""

    name: str
    model: str
    route: str
    makers: tuple[str, ...]
    sources: tuple[str, ...]
    images: bool


ALL = {
    e.name: e
    for e in (
        Example("quickstart", "quickstart", "predict", (), ("service.py",), images=False),
        Example("super_resolution", "onnx_super_resolution", "sr", ("torch",), ("service.py",), images=True),
        Example(
            "image_classifier",
            "onnx_color_classifier",
            "predict",
            ("torch",),
            ("labels.txt", "preprocessing.py", "service.py"),
            images=True,
        ),
        Example(
            "sklearn_iris", "iris_clf", "classify", ("sklearn", "skl2onnx"), ("service.py",), images=False
        ),
    )
}


@dataclass
class Built:
    """An example after make_model.py and `bundler build`, in its own BUNDLER_HOME."""

    example: Example
    home: Path
    bundle: Path
    info: dict[str, Any]

    @property
    def model_file(self) -> Path:
        """The saved model inside the bundle (what the server runs)."""
        (path,) = (self.bundle / "models" / self.example.model).glob("*/saved_model.onnx")
        return path


def make_and_build(example: Example, home: Path) -> Built:
    """Run the example's make_model.py with BUNDLER_HOME=home, then build its bundle there."""
    for module in example.makers:
        pytest.importorskip(module, reason=f"examples/{example.name}/make_model.py needs {module}")
    from bundler import bundles

    env = {**os.environ, "BUNDLER_HOME": str(home)}
    made = subprocess.run(
        [sys.executable, str(EXAMPLES / example.name / "make_model.py")],
        env=env,
        cwd=home,  # the script must not depend on the directory it is started from
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.startswith(f'Model(tag="{example.model}:'), made.stdout
    built = bundler_cli("build", str(EXAMPLES / example.name), "--output", "json", env=env)
    tag = json.loads(built.stdout)["tag"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUNDLER_HOME", str(home))
        bundle = bundles.get(tag)
    return Built(example, home, bundle.path, bundle.info)


def bundler_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the `bundler` command line (as `python -m bundler`) and insist that it succeeds."""
    done = subprocess.run(
        [sys.executable, "-m", "bundler", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"bundler {' '.join(args)} failed:\n{done.stdout}{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    """Return a getter that makes and builds an example once per module."""
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = make_and_build(ALL[name], tmp_path_factory.mktemp(f"home-{name}"))
        return cache[name]

    return get


# --------------------------------------------------------------------------------------------------------
# Requests, and the answers onnxruntime gives directly


def session(built: Built) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(built.model_file), providers=["CPUExecutionProvider"])


def png(img: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def picture(size: tuple[int, int] = (160, 120)) -> PILImage.Image:
    """A deterministic RGB picture that is not square and not 224x224: gradients and a disc."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    r = (255 * x / w).astype(np.uint8)
    g = (255 * y / h).astype(np.uint8)
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 3) ** 2, 230, 20).astype(np.uint8)
    return PILImage.fromarray(np.stack([r, g, b], axis=-1))


def check_quickstart(built: Built, url: str) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    (expected,) = session(built).run(None, {"input": np.asarray(rows, dtype=np.float32)})
    r = httpx.post(f"{url}/predict", json=rows, timeout=60)  # the README's request, with a second row
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json(), expected, rtol=1e-6, atol=1e-7)
    buf = io.BytesIO()
    np.save(buf, np.asarray(rows))  # float64 .npy: cast to the model's float32
    r = httpx.post(f"{url}/predict", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json(), expected, rtol=1e-6, atol=1e-7)
    bad = httpx.post(f"{url}/predict", json=[[5.1, 3.5, 1.4]], timeout=60)
    assert bad.status_code == 400
    assert "[batch, 4]" in bad.json()["error"]


def check_super_resolution(built: Built, url: str) -> None:
    gray = picture().convert("L")
    # A 16-bit grayscale PNG (a scan, a microscope image) is sent as itself and must be upscaled like its
    # 8-bit version: Pillow's own conversion to 8 bits clips at 255, which turned it into a white square.
    wide = PILImage.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
    assert wide.mode == "I;16"
    for img, same_as in ((picture(), picture()), (gray, gray), (wide, gray)):
        r = httpx.post(f"{url}/sr", content=png(img), headers={"content-type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        out = PILImage.open(io.BytesIO(r.content))
        assert (out.format, out.mode, out.size) == ("PNG", "L", (672, 672))
        # The guide's preprocessing: 224x224, grayscale, 0.0-1.0, [1, 1, 224, 224].
        x = np.asarray(same_as.resize((224, 224)).convert("L"), dtype=np.float32)[None, None] / 255.0
        y = session(built).run(None, {"input": x})[0]
        expected = np.uint8(np.clip(y[0, 0], 0.0, 1.0) * 255)
        got = np.asarray(out)
        # float32 results may differ in the last bit between thread counts: at most one grey level.
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, img.mode
        assert np.mean(got == expected) > 0.999, img.mode
        assert got.std() > 5, "the upscaled image is flat: the model or the postprocessing lost the picture"


def check_image_classifier(built: Built, url: str) -> None:
    labels = (EXAMPLES / "image_classifier" / "labels.txt").read_text().split()
    noise = np.random.default_rng(0).integers(-40, 40, (90, 130, 3))
    red = PILImage.fromarray(np.clip(np.array([220, 20, 30]) + noise, 0, 255).astype(np.uint8))
    gray = picture().convert("L")  # one channel: the API converts it to RGB first
    for img, expected_label in ((red, "red"), (picture(), None), (gray, None)):
        r = httpx.post(f"{url}/predict", content=png(img), headers={"content-type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert set(answer) == {"label", "score"}
        # ResNet50's preprocess_input ("caffe"): RGB -> BGR, minus the ImageNet means.
        arr = np.asarray(img.convert("RGB").resize((224, 224)), dtype=np.float32)[None]
        x = arr[..., ::-1] - np.array([103.939, 116.779, 123.68], dtype=np.float32)
        probs = session(built).run(None, {"input": x})[0][0]
        assert answer["label"] == labels[int(np.argmax(probs))]
        assert answer["score"] == pytest.approx(float(probs.max()), rel=1e-4, abs=1e-6)
        if expected_label is not None:  # the model was trained to name colours
            assert answer["label"] == expected_label, answer


IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 5.1, 1.8]]


def check_sklearn_iris(built: Built, url: str) -> None:
    classes = ["setosa", "versicolor", "virginica"]
    r = httpx.post(f"{url}/classify", json={"features": IRIS_ROWS}, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    labels, probs = session(built).run(None, {"input": np.asarray(IRIS_ROWS, dtype=np.float32)})
    assert [row["class"] for row in answer] == [classes[int(i)] for i in labels]
    assert [row["class"] for row in answer][:3] == classes  # one typical flower of each species
    for row, p in zip(answer, probs, strict=True):
        assert list(row["probabilities"]) == classes
        np.testing.assert_allclose(list(row["probabilities"].values()), p, rtol=1e-5, atol=1e-7)
    bad = httpx.post(f"{url}/classify", json={"features": [[5.1, 3.5, 1.4]]}, timeout=60)
    assert bad.status_code == 400
    assert "rows of 4 numbers" in bad.json()["error"]


def readme_requests(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Return the README's curl commands as (route, httpx.post arguments), with picture() as the photo."""
    text = (EXAMPLES / name / "README.md").read_text().replace("\\\n", " ")
    requests = []
    for line in text.splitlines():
        if not line.startswith("curl "):
            continue
        args = shlex.split(line, comments=True)
        route = next(a for a in args if a.startswith("127.0.0.1:")).split("/", 1)[1]
        headers: dict[str, str] = {}
        kwargs: dict[str, Any] = {}
        for flag, value in itertools.pairwise(args):
            if flag == "-H":
                key, _, val = value.partition(":")
                headers[key.strip().lower()] = val.strip()
            elif flag in ("-d", "--data-binary"):
                if flag == "-d":  # curl's default type for -d, which a README must override for JSON
                    headers.setdefault("content-type", "application/x-www-form-urlencoded")
                kwargs["content"] = photo(value[1:]) if value.startswith("@") else value.encode()
            elif flag == "-F":
                field, _, file = value.partition("=@")
                kwargs["files"] = {field: (file, photo(file))}
        requests.append((route, {**kwargs, "headers": headers}))
    return requests


def photo(filename: str) -> bytes:
    """Return picture() encoded as the README's file name says (photo.png, photo.jpg)."""
    buf = io.BytesIO()
    picture().save(buf, format={".jpg": "JPEG"}.get(Path(filename).suffix, "PNG"))
    return buf.getvalue()


def check_readme(built: Built, url: str) -> None:
    """Send the README's requests as a user pasting them would: each is answered 200."""
    requests = readme_requests(built.example.name)
    assert requests, "the README shows no curl call of the API"
    for route, kwargs in requests:
        assert route == built.example.route
        r = httpx.post(f"{url}/{route}", timeout=60, **kwargs)
        assert r.status_code == 200, f"README: curl .../{route} {kwargs['headers']}: {r.text}"


CHECKS: dict[str, Callable[[Built, str], None]] = {
    "quickstart": check_quickstart,
    "super_resolution": check_super_resolution,
    "image_classifier": check_image_classifier,
    "sklearn_iris": check_sklearn_iris,
}


def wait_ready(url: str, timeout: float = 60.0) -> None:
    """Poll /readyz until 200 (the runners are loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url}/readyz did not turn 200 within {timeout}s")


@contextlib.contextmanager
def served(built: Built, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Serve the bundle in this process on a real uvicorn; yield its URL once it is ready."""
    from bundler.server.app import build_app
    from bundler.server.serve import load_service
    from bundler.server.testing import running

    # load_service points BUNDLER_BUNDLE_DIR at the bundle and puts its src/ on sys.path: undo both after.
    monkeypatch.setenv("BUNDLER_BUNDLE_DIR", "")
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        svc = load_service(str(built.bundle))
        with running(build_app(svc)) as url:
            wait_ready(url)
            yield url
    finally:
        for module in ("service", "preprocessing"):
            sys.modules.pop(module, None)


# --------------------------------------------------------------------------------------------------------
# In-process


@pytest.mark.parametrize("name", list(ALL))
def test_bundle_serves_in_process_like_onnxruntime(
    name: str, examples: Callable[[str], Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    from openapi_spec_validator import validate

    built = examples(name)
    assert built.info["name"] == name
    with served(built, monkeypatch) as url:
        CHECKS[name](built, url)
        check_readme(built, url)
        doc = httpx.get(f"{url}/docs.json", timeout=10).json()
    validate(doc)  # raises on any OpenAPI 3 schema violation
    route = f"/{built.example.route}"
    assert list(doc["paths"][route]) == ["post"]
    assert doc["paths"][route]["post"]["summary"]  # the API function's docstring


def _pins(lock: str) -> dict[str, str]:
    pinned = [line.split(" ")[0] for line in lock.splitlines() if line[:1].isalnum() and "==" in line]
    return dict(pin.split("==", 1) for pin in pinned)


@pytest.mark.parametrize("name", list(ALL))
def test_bundle_lock_is_shared_by_every_example(name: str, examples: Callable[[str], Built]) -> None:
    """Same python.packages -> same lock -> the images share their dependency layers.

    The examples that take images (and so get Pillow) share one lock, and those that take arrays
    (quickstart, sklearn_iris) another, with the same pins without Pillow.
    """
    lock = "env/python/requirements.lock.txt"
    first = examples("super_resolution")
    built = examples(name)
    same = first if built.example.images else examples("quickstart")
    text, first_text = (built.bundle / lock).read_text(), (first.bundle / lock).read_text()
    assert text == (same.bundle / lock).read_text()
    pins, first_pins = _pins(text), _pins(first_text)
    assert first_pins == {**pins, **({} if built.example.images else {"pillow": first_pins["pillow"]})}
    assert ("pillow" in pins) is built.example.images
    leaked = set(pins) & {"torch", "scikit-learn", "skl2onnx", "onnx", "onnxscript"}
    assert not leaked, "a model-making package leaked in"


@pytest.mark.parametrize("name", list(ALL))
def test_bundle_sources_are_what_the_service_runs(name: str, examples: Callable[[str], Built]) -> None:
    """bentofile.yaml's include selects the service's files, not make_model.py (which needs what the
    image leaves out: onnx, torch, scikit-learn)."""
    built = examples(name)
    src = built.bundle / "src"
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert files == sorted(built.example.sources)


# --------------------------------------------------------------------------------------------------------
# /docs in headless Chromium


def chromium() -> str:
    for candidate in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(candidate):
            return path
    if IN_CI:
        pytest.fail("CI=true but no chromium on PATH (scripts/test installs Debian's chromium)")
    pytest.skip("no chromium on PATH (apt-get install -y chromium)")


def run_chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900",
        "--virtual-time-budget=5000", *args, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", list(ALL))
def test_docs_page_renders_the_api_in_chromium(
    name: str, examples: Callable[[str], Built], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built = examples(name)
    route = f"/{built.example.route}"
    shot = tmp_path / f"{name}-docs.png"
    with served(built, monkeypatch) as url:
        dom = run_chromium(f"{url}/docs", tmp_path / "profile-dom", "--dump-dom")
        picture = run_chromium(f"{url}/docs", tmp_path / "profile-shot", f"--screenshot={shot}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Swagger UI builds one block per operation after fetching /docs.json: these exist only if it ran.
    assert f'data-path="{route}"' in dom.stdout, dom.stdout[-3000:]
    assert 'id="operations-Service_APIs-' in dom.stdout
    assert "/readyz" in dom.stdout
    assert picture.returncode == 0 and shot.is_file(), picture.stderr[-2000:]
    with PILImage.open(shot) as img:
        assert img.size == (1280, 900)
        grey = np.asarray(img.convert("L"))
    assert grey.std() > 10, "the screenshot is blank"
    if keep := os.environ.get("BUNDLER_TEST_SCREENSHOTS"):  # to look at them: set it to a directory
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


# --------------------------------------------------------------------------------------------------------
# In the real container


@pytest.fixture(scope="module")
def images(engine: Any) -> Iterator[list[str]]:
    """Collect the tags of the images the tests build; remove them all at the end of the module."""
    tags: list[str] = []
    # Removed only at the end: while they exist, the next example's build reuses their dependency layers.
    yield tags
    if tags:
        subprocess.run([engine.client, "rmi", "-f", *sorted(set(tags))], capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.docker
@pytest.mark.parametrize("name", list(ALL))
def test_image_serves_like_onnxruntime(
    name: str, engine: Any, images: list[str], examples: Callable[[str], Built]
) -> None:
    built = examples(name)
    tag = f"{name}:{built.bundle.name}"
    env = {**os.environ, "BUNDLER_HOME": str(built.home)}
    made = bundler_cli("containerize", tag, "--progress", "plain", env=env, timeout=900)
    tags = made.stdout.split()
    images.extend(tags)
    assert tags == [tag]  # the image is named like the bundle
    port = free_port()
    container = f"bundler-example-{secrets.token_hex(4)}"
    subprocess.run(
        [engine.client, "run", "-d", "--name", container, "--network", "host", "-e", f"PORT={port}", tags[0]],
        check=True,
        capture_output=True,
    )
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}")
        except AssertionError:
            logs = subprocess.run([engine.client, "logs", container], capture_output=True, text=True)
            raise AssertionError(f"the container did not get ready:\n{logs.stdout}{logs.stderr}") from None
        CHECKS[name](built, f"http://127.0.0.1:{port}")
    finally:
        subprocess.run([engine.client, "rm", "-f", container], capture_output=True)
