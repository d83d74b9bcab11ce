"""The quickstart service: JSON (or .npy) arrays of iris-style features in, class probabilities out."""

from __future__ import annotations

import numpy as np

import bundler
from bundler.io import NumpyNdarray

runner = bundler.onnx.get("quickstart:latest").to_runner()

svc = bundler.Service("quickstart", runners=[runner])


@svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 4)), output=NumpyNdarray())
async def predict(features: np.ndarray) -> np.ndarray:
    """Return the probability of each of the 3 classes for every row of 4 features."""
    return await runner.run.async_run(features)
