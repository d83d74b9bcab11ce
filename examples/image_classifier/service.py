"""The image_classifier service (the ONNX guide's second flow): an image in, the top-1 label and score out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from preprocessing import SIZE, preprocess_input

import bundler
from bundler.io import JSON, Image

LABELS = (Path(__file__).resolve().parent / "labels.txt").read_text().split()

runner = bundler.onnx.get("onnx_color_classifier:latest").to_runner()

svc = bundler.Service("onnx_color_classifier", runners=[runner])


def to_input(img: PILImage.Image) -> np.ndarray:
    """Return the model's input for ``img``: [1, 224, 224, 3], preprocessed as ResNet50 expects."""
    img = img.resize((SIZE, SIZE))
    arr = np.array(img)
    arr = np.expand_dims(arr, axis=0)
    return preprocess_input(arr)


def decode_predictions(preds: np.ndarray) -> dict[str, object]:
    """Return the top-1 label and its probability for the first (only) row of ``preds``."""
    best = int(np.argmax(preds[0]))
    return {"label": LABELS[best], "score": float(preds[0, best])}


# pilmode="RGB": grayscale, palette and RGBA uploads are converted, so the array always has 3 channels.
@svc.api(input=Image(pilmode="RGB"), output=JSON())
def predict(img: PILImage.Image) -> dict[str, object]:
    """Name the image's dominant colour: {"label": ..., "score": ...} (score: the softmax probability)."""
    preds = runner.run.run(to_input(img))
    return decode_predictions(preds)
