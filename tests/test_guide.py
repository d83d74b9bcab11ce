"""Every snippet of the ONNX guide (shared/reference/onnx-framework-guide.rst), `bentoml` -> `bundler`.

The code under each "guide:" comment is the guide's, changed only where noted:
- ``SuperResolutionNet()`` needs its ``upscale_factor``: 3, as in the PyTorch tutorial the guide follows.
- The pretrained weights are downloaded from S3 in the guide; tests have no network, so the model keeps
  its seeded orthogonal initialisation (the exported graph is the same).
- ``np.random.randn(2, 1, 244, 244)`` is a typo for 224 (the model is exported for 224x224 inputs, and
  onnxruntime refuses 244 too); the snippets run with 224 and 244 is checked to give a clear error.
- The guide gets ``"super_resolution"`` in one snippet and saves ``"onnx_super_resolution"``: both are saved.
- TensorFlow is not installed: a classifier built with onnx.helper (``tests.models.make_classifier``, the
  same NHWC float input) stands in for tf2onnx's ResNet50, and the service's ``preprocess_input`` and
  ``decode_predictions`` (TensorFlow helpers) are replaced by their arithmetic and an argmax.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image as PILImage

import bundler
from bundler.exceptions import InferenceInputError, ProviderError
from bundler.frameworks.onnx import cuda_device_count, default_providers
from tests.models import make_classifier

torch = pytest.importorskip("torch", reason="the PyTorch snippets need torch (pip install torch)")
pytest.importorskip("onnxscript", reason="torch.onnx.export (torch >= 2.9) needs onnxscript")

VERSION = r"[0-9a-z]{16}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the guide's PyTorch snippets: define SuperResolutionNet and export it with a dynamic batch axis."""
    out_dir = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)

    # guide: "First, let's create a SuperResolution model in PyTorch."
    import torch.nn as nn
    import torch.nn.init as init

    class SuperResolutionNet(nn.Module):
        def __init__(self, upscale_factor: int, inplace: bool = False) -> None:
            super().__init__()

            self.relu = nn.ReLU(inplace=inplace)
            self.conv1 = nn.Conv2d(1, 64, (5, 5), (1, 1), (2, 2))
            self.conv2 = nn.Conv2d(64, 64, (3, 3), (1, 1), (1, 1))
            self.conv3 = nn.Conv2d(64, 32, (3, 3), (1, 1), (1, 1))
            self.conv4 = nn.Conv2d(32, upscale_factor**2, (3, 3), (1, 1), (1, 1))
            self.pixel_shuffle = nn.PixelShuffle(upscale_factor)

            self._initialize_weights()

        def forward(self, x: Any) -> Any:
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            x = self.relu(self.conv3(x))
            x = self.pixel_shuffle(self.conv4(x))
            return x

        def _initialize_weights(self) -> None:
            init.orthogonal_(self.conv1.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv2.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv3.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv4.weight)

    torch_model = SuperResolutionNet(upscale_factor=3)
    # guide: "set the model to inference mode"
    torch_model.eval()

    # guide: export with tracing and a dynamic batch axis
    batch_size = 1
    x = torch.randn(batch_size, 1, 224, 224, requires_grad=True)
    path = out_dir / "super_resolution.onnx"
    with warnings.catch_warnings():
        # torch's exporter warns about its own options (dynamic_axes under dynamo, opset 10 -> 18).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch_model,
            x,
            str(path),  # where to save the model (can be a file or file-like object)
            export_params=True,  # store the trained parameter weights inside the model file
            opset_version=10,  # the ONNX version to export the model to
            do_constant_folding=True,  # whether to execute constant folding for optimization
            input_names=["input"],  # the model's input names
            output_names=["output"],  # the model's output names
            dynamic_axes={
                "input": {0: "batch_size"},  # variable length axes
                "output": {0: "batch_size"},
            },
        )

    def torch_run(arr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch_model(torch.from_numpy(np.asarray(arr, np.float32))).numpy()

    return {"path": path, "x": x, "torch_out": torch_model(x), "torch_run": torch_run}


def to_numpy(tensor: Any) -> np.ndarray:
    """The PyTorch tutorial's helper that the guide's onnxruntime snippet uses."""
    return tensor.detach().cpu().numpy() if tensor.requires_grad else tensor.cpu().numpy()


def save_sr(exported: dict[str, Any], name: str = "onnx_super_resolution") -> Any:
    # guide: "use onnx.load to load the exported ONNX model back into the Python session"
    onnx_model = onnx.load(str(exported["path"]))
    signatures = {
        "run": {"batchable": True},
    }
    return bundler.onnx.save_model(name, onnx_model, signatures=signatures)


def test_exported_model_runs_in_onnxruntime(exported: dict[str, Any]) -> None:
    x = exported["x"]
    # guide: "We can now compute the output using ONNX Runtime's Python APIs"
    ort_session = onnxruntime.InferenceSession(str(exported["path"]))
    # compute ONNX Runtime output prediction
    ort_inputs = {ort_session.get_inputs()[0].name: to_numpy(x)}
    # ONNX Runtime will return a list of outputs
    ort_outs = ort_session.run(None, ort_inputs)
    np.testing.assert_allclose(to_numpy(exported["torch_out"]), ort_outs[0], rtol=1e-03, atol=1e-05)
    assert ort_outs[0].shape == (1, 1, 672, 672)


def test_save_snippets_give_the_guides_repr(exported: dict[str, Any], bundler_home: Path) -> None:
    model = save_sr(exported)
    home = re.escape(str(bundler_home.resolve()))
    assert re.fullmatch(
        rf'Model\(tag="onnx_super_resolution:{VERSION}",'
        rf' path="{home}/models/onnx_super_resolution/{VERSION}/"\)',
        repr(model),
    )
    assert model.info["signatures"]["run"]["batchable"] is True
    assert model.info["inputs"][0]["shape"] == ["batch_size", 1, 224, 224]
    # torch >= 2.9 exports weights to a side file; onnx.load pulled them in, so the saved model is whole.
    assert model.info["external_data"] == []

    # guide (TensorFlow tab): the classifier stands in for tf2onnx's ResNet50 with a None batch axis.
    onnx_model = make_classifier(batch=None)
    signatures = {
        "run": {"batchable": True},
    }
    resnet = bundler.onnx.save_model("onnx_resnet50", onnx_model, signatures=signatures)
    assert re.fullmatch(
        rf'Model\(tag="onnx_resnet50:{VERSION}", path=".*/onnx_resnet50/{VERSION}/"\)', repr(resnet)
    )

    # guide: "The default signature for save_model() is set to {"run": {"batchable": False}}"
    plain = bundler.onnx.save_model("plain_sr", onnx.load(str(exported["path"])))
    assert plain.info["signatures"]["run"]["batchable"] is False


def test_saving_the_exported_path_keeps_its_external_data(exported: dict[str, Any]) -> None:
    # torch writes super_resolution.onnx + super_resolution.onnx.data; a path save copies both.
    model = bundler.onnx.save_model("sr_from_path", exported["path"], signatures={"run": {"batchable": True}})
    assert model.info["external_data"] == ["super_resolution.onnx.data"]
    arr = np.random.default_rng(0).standard_normal((1, 1, 224, 224)).astype(np.float32)
    got = bundler.onnx.load_model(model).run(None, {"input": arr})[0]
    np.testing.assert_allclose(got, exported["torch_run"](arr), rtol=1e-3, atol=1e-5)


def test_using_runners_snippet(exported: dict[str, Any]) -> None:
    save_sr(exported, "super_resolution")
    # guide: "To test ONNX Runner locally" (224, not 244: see the module docstring)
    test_input = np.random.randn(2, 1, 224, 224)

    runner = bundler.onnx.get("super_resolution").to_runner()

    runner.init_local()

    out = runner.run.run(test_input)  # float64 in: "You don't need to cast your input ndarray"
    np.testing.assert_allclose(out, exported["torch_run"](test_input), rtol=1e-3, atol=1e-5)
    assert out.shape == (2, 1, 672, 672)

    with pytest.raises(
        InferenceInputError, match=r"input 'input' expects shape float32 \[batch_size, 1, 224, 224\]"
    ):
        runner.run.run(np.random.randn(2, 1, 244, 244))


def test_runner_takes_the_guides_torch_tensor_as_is(exported: dict[str, Any]) -> None:
    # The guide traces with x = torch.randn(..., requires_grad=True); BentoML's runner takes torch tensors.
    save_sr(exported)
    runner = bundler.onnx.get("onnx_super_resolution").to_runner()
    runner.init_local()
    x = exported["x"]
    assert x.requires_grad
    out = runner.run.run(x)
    np.testing.assert_allclose(out, to_numpy(exported["torch_out"]), rtol=1e-3, atol=1e-5)
    assert x.requires_grad  # the caller's tensor is left as it was


def test_with_options_providers_snippet(exported: dict[str, Any]) -> None:
    save_sr(exported)
    # guide: "you can customize providers and session_options when creating a runner"
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    bento_model = bundler.onnx.get("onnx_super_resolution")

    runner = bento_model.with_options(providers=providers).to_runner()

    available = onnxruntime.get_available_providers()
    if all(p in available for p in providers):
        runner.init_local()
        # onnxruntime-gpu lists TensorRT even without its libraries; then onnxruntime itself falls back
        # to the next provider asked for (and says so), which bundler leaves to it.
        assert runner.session.providers[0] in providers[:2]
        assert runner.session.providers == [p for p in providers if p in runner.session.providers]
    else:
        # bundler is strict where BentoML let onnxruntime silently fall back: a clear error instead.
        with pytest.raises(
            ProviderError, match=r"not available on this machine; available: .*CPUExecutionProvider"
        ):
            runner.init_local()
        runner = bento_model.with_options(providers=[p for p in providers if p in available]).to_runner()
        runner.init_local()
        assert runner.session.providers == [p for p in providers if p in available]


def test_load_model_snippet(exported: dict[str, Any]) -> None:
    save_sr(exported)
    # guide: "Use load_model to verify that the saved model can be loaded properly"
    ort_session = bundler.onnx.load_model("onnx_super_resolution")
    assert isinstance(ort_session, onnxruntime.InferenceSession)

    test_input = np.random.randn(2, 1, 224, 224)  # can accept arbitrary batch size
    out = ort_session.run(None, {"input": test_input.astype(np.float32)})
    np.testing.assert_allclose(out[0], exported["torch_run"](test_input), rtol=1e-3, atol=1e-5)


@pytest.mark.machine_providers
def test_default_execution_providers(exported: dict[str, Any]) -> None:
    save_sr(exported)
    runner = bundler.onnx.get("onnx_super_resolution").to_runner()
    runner.init_local()
    available = onnxruntime.get_available_providers()
    expected = default_providers(
        available, cuda_device_count() if "CUDAExecutionProvider" in available else 0
    )
    assert runner.session.providers == expected


@pytest.fixture
def png() -> bytes:
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def served() -> Iterator[Any]:
    from bundler.server.app import build_app
    from bundler.server.testing import running

    def serve(svc: Any) -> Any:
        return running(build_app(svc))

    yield serve


def _wait_ready(client: httpx.Client) -> None:
    for _ in range(1000):
        if client.get("/readyz").status_code == 200:
            return
        import time

        time.sleep(0.01)
    raise AssertionError("the service's runners did not load")


def test_pytorch_service_snippet(exported: dict[str, Any], png: bytes, served: Any) -> None:
    save_sr(exported)
    # guide: "Building a Service for ONNX" (PyTorch tab)
    from PIL import Image as PIL_Image
    from PIL import ImageOps

    from bundler.io import Image

    runner = bundler.onnx.get("onnx_super_resolution:latest").to_runner()

    svc = bundler.Service("onnx_super_resolution", runners=[runner])

    @svc.api(input=Image(), output=Image())
    def sr(img):  # type: ignore[no-untyped-def]
        img = img.resize((224, 224))
        gray_img = ImageOps.grayscale(img)
        arr = np.array(gray_img) / 255.0  # convert from 0-255 range to 0.0-1.0 range
        arr = np.expand_dims(arr, (0, 1))  # add batch_size, color_channel dims
        sr_arr = runner.run.run(arr)
        sr_arr = np.squeeze(sr_arr)  # remove batch_size, color_channel dims
        sr_img = PIL_Image.fromarray(np.uint8(sr_arr * 255), "L")
        return sr_img

    # The same steps by hand, with PyTorch for the model.
    gray = ImageOps.grayscale(PIL_Image.open(io.BytesIO(png)).resize((224, 224)))
    want = exported["torch_run"](np.expand_dims(np.array(gray) / 255.0, (0, 1)))
    want_img = np.uint8(np.squeeze(want) * 255)

    with served(svc) as url, httpx.Client(base_url=url, timeout=30) as client:
        _wait_ready(client)
        response = client.post("/sr", content=png, headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        got = np.array(PIL_Image.open(io.BytesIO(response.content)))
    assert got.shape == (672, 672)
    # float32 rounding may move a pixel across a uint8 boundary (and wrap, as np.uint8 does in the guide)
    off_by = np.abs(got.astype(int) - want_img.astype(int))
    assert (np.minimum(off_by, 256 - off_by) <= 1).all() and (off_by == 0).mean() > 0.99


def test_classifier_service_snippet(png: bytes, served: Any) -> None:
    bundler.onnx.save_model(
        "onnx_resnet50", make_classifier(batch=None), signatures={"run": {"batchable": True}}
    )
    # guide: "Building a Service for ONNX" (TensorFlow tab), TensorFlow helpers replaced (module docstring)
    from bundler.io import JSON, Image

    runner = bundler.onnx.get("onnx_resnet50:latest").to_runner()

    svc = bundler.Service("onnx_resnet50", runners=[runner])

    @svc.api(input=Image(), output=JSON())
    def predict(img):  # type: ignore[no-untyped-def]
        img = img.resize((224, 224))
        arr = np.array(img)
        arr = np.expand_dims(arr, axis=0)
        arr = arr / 127.5 - 1.0  # preprocess_input
        preds = runner.run.run(arr)
        return {"class": int(np.argmax(preds[0])), "score": float(np.max(preds[0]))}  # decode_predictions

    arr = np.expand_dims(np.array(PILImage.open(io.BytesIO(png)).resize((224, 224))), 0) / 127.5 - 1.0
    ref = onnxruntime.InferenceSession(make_classifier(batch=None).SerializeToString())
    probs = ref.run(None, {"input": arr.astype(np.float32)})[0][0]

    with served(svc) as url, httpx.Client(base_url=url, timeout=30) as client:
        _wait_ready(client)
        response = client.post("/predict", content=png, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["class"] == int(np.argmax(probs))
    assert body["score"] == pytest.approx(float(np.max(probs)), rel=1e-5)
