"""The sklearn_iris service: iris flower measurements as JSON in, the class and its probabilities out."""

from __future__ import annotations

from typing import Any

import numpy as np

import bundler
from bundler.exceptions import BadInput
from bundler.io import JSON

model = bundler.onnx.get("iris_clf:latest")
CLASSES: list[str] = model.info["metadata"]["classes"]
FEATURES: list[str] = model.info["metadata"]["features"]

runner = model.to_runner()

svc = bundler.Service("iris_clf", runners=[runner])


def to_array(body: Any) -> np.ndarray:
    """Return the request's rows of 4 measurements as float32 [rows, 4]; a clear 400 when they are not."""
    rows = body.get("features") if isinstance(body, dict) else None
    try:
        arr = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):  # ragged rows, strings, nulls
        arr = np.empty((0, 0), np.float32)
    if not isinstance(rows, list) or arr.ndim != 2 or arr.shape[1:] != (len(FEATURES),) or not arr.size:
        raise BadInput(
            f'iris input: send {{"features": [[...], ...]}}, rows of {len(FEATURES)} numbers'
            f' ({", ".join(FEATURES)}), e.g. {{"features": [[5.1, 3.5, 1.4, 0.2]]}}'
        )
    if not np.isfinite(arr).all():
        raise BadInput("iris input: every measurement must be a finite number (no NaN or infinity)")
    return arr


@svc.api(input=JSON(), output=JSON())
async def classify(body: Any) -> list[dict[str, Any]]:
    """Classify iris flowers: {"features": [[sepal length, sepal width, petal length, petal width], ...]}.

    Returns one {"class": name, "probabilities": {name: p, ...}} per row, in the order sent.
    """
    labels, probabilities = await runner.run.async_run(to_array(body))
    return [
        {"class": CLASSES[int(label)], "probabilities": dict(zip(CLASSES, map(float, p), strict=True))}
        for label, p in zip(labels, probabilities, strict=True)
    ]
