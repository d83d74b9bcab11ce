"""Make the image_classifier example's model: a tiny CNN that names an image's dominant colour.

It stands in for the guide's downloaded ResNet50 (TensorFlow flow) with the same interface: NHWC float input
``[batch, 224, 224, 3]`` preprocessed like ResNet50's ``preprocess_input``, class probabilities out. The
classes are the colours in ``labels.txt``; the network is trained here in a few seconds on synthetic noisy
images of those colours (seeded, no download), exported with ``torch.onnx.export`` with a dynamic batch
axis, and saved as ``onnx_color_classifier:<version>`` with batching enabled.

torch is needed here only, to make the model; the service runs it with onnxruntime alone.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from preprocessing import SIZE, preprocess_input  # the service's module, beside this script

import bundler

LABELS = (Path(__file__).resolve().parent / "labels.txt").read_text().split()
RGB = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
# Trained on small images: the network is convolutions and a global average, so it sees colour, not size.
TRAIN_SIZE = 16


class ColorNet(nn.Module):
    """NHWC input (Keras layout, as tf2onnx's ResNet50 takes it) -> softmax over the labels."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2) / 128.0  # NHWC -> NCHW; preprocessed pixels span about +-128
        return torch.softmax(self.classifier(self.features(x)), dim=1)


def samples(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``n`` noisy images of random label colours (preprocessed) and their label indices."""
    targets = rng.integers(0, len(LABELS), n)
    base = np.array([RGB[LABELS[t]] for t in targets], dtype=np.float32)[:, None, None, :]
    noise = rng.uniform(-60, 60, (n, size, size, 3)).astype(np.float32)
    return preprocess_input(np.clip(base + noise, 0, 255)), targets


def train(seed: int = 0, steps: int = 120) -> ColorNet:
    """Return the network trained on synthetic images until it names every solid colour."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tensors this small train fastest (and reproducibly) on one thread
    rng = np.random.default_rng(seed)
    net = ColorNet(len(LABELS))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-2)
    loss_fn = nn.NLLLoss()
    for _ in range(steps):
        x, y = samples(rng, 32, TRAIN_SIZE)
        optimizer.zero_grad()
        loss = loss_fn(torch.log(net(torch.from_numpy(x)) + 1e-9), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
    net.eval()
    solid = preprocess_input(np.array([[[RGB[name]]] for name in LABELS], np.float32))
    with torch.no_grad():
        predicted = net(torch.from_numpy(np.tile(solid, (1, TRAIN_SIZE, TRAIN_SIZE, 1)))).argmax(1)
    wrong = [name for name, p in zip(LABELS, predicted.tolist(), strict=True) if LABELS[p] != name]
    if wrong:
        raise SystemExit(f"training did not converge: misnamed {wrong}; run again with more steps")
    return net


def make_model(seed: int = 0) -> onnx.ModelProto:
    """Return the trained network exported as input[batch, 224, 224, 3] -> probs[batch, len(labels)]."""
    net = train(seed)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        # dynamo=False: the tracing export the guide shows, which needs neither onnxscript nor a network.
        torch.onnx.export(
            net,
            (torch.zeros(1, SIZE, SIZE, 3),),
            str(path),
            opset_version=17,
            input_names=["input"],
            output_names=["probs"],
            dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
            dynamo=False,
        )
        model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    saved = bundler.onnx.save_model(
        "onnx_color_classifier",
        make_model(),
        signatures={"run": {"batchable": True}},
        metadata={"labels": LABELS},
    )
    print(saved)
