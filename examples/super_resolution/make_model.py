"""Make the super_resolution example's model: the ONNX guide's PyTorch SuperResolutionNet, exported to ONNX.

The network and the export follow the guide (upscale_factor=3, a 1x224x224 tracing input, a dynamic batch
axis). The guide then loads partially trained weights from S3; this script keeps the seeded orthogonal
initialisation instead, so it needs no network (the exported graph is the same, only the weights differ).
The model is saved to the local model store as ``onnx_super_resolution:<version>`` with batching enabled.

torch is needed here only, to make the model; the service runs it with onnxruntime alone.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn
import torch.nn.init as init

import bundler

UPSCALE_FACTOR = 3
SIZE = 224


class SuperResolutionNet(nn.Module):
    """The guide's network: 4 convolutions and a pixel shuffle, 1 x H x W -> 1 x 3H x 3W."""

    def __init__(self, upscale_factor: int, inplace: bool = False) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=inplace)
        self.conv1 = nn.Conv2d(1, 64, (5, 5), (1, 1), (2, 2))
        self.conv2 = nn.Conv2d(64, 64, (3, 3), (1, 1), (1, 1))
        self.conv3 = nn.Conv2d(64, 32, (3, 3), (1, 1), (1, 1))
        self.conv4 = nn.Conv2d(32, upscale_factor**2, (3, 3), (1, 1), (1, 1))
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor)
        self._initialize_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        return self.pixel_shuffle(self.conv4(x))

    def _initialize_weights(self) -> None:
        init.orthogonal_(self.conv1.weight, init.calculate_gain("relu"))
        init.orthogonal_(self.conv2.weight, init.calculate_gain("relu"))
        init.orthogonal_(self.conv3.weight, init.calculate_gain("relu"))
        init.orthogonal_(self.conv4.weight)


def make_model(seed: int = 0) -> onnx.ModelProto:
    """Return the exported model: input[batch_size, 1, 224, 224] -> output[batch_size, 1, 672, 672]."""
    torch.manual_seed(seed)
    torch_model = SuperResolutionNet(upscale_factor=UPSCALE_FACTOR).eval()
    x = torch.randn(1, 1, SIZE, SIZE)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        # The TorchScript exporter announces its own deprecation; the export itself is what the guide shows.
        warnings.simplefilter("ignore")
        # dynamo=False: the guide's tracing export, which needs neither onnxscript nor a network.
        torch.onnx.export(
            torch_model,
            (x,),
            str(path),
            export_params=True,
            opset_version=17,  # the guide's 10 works too; 17 is what current onnxruntime optimises best
            do_constant_folding=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
            dynamo=False,
        )
        model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    saved = bundler.onnx.save_model(
        "onnx_super_resolution", make_model(), signatures={"run": {"batchable": True}}
    )
    print(saved)
