"""Make the sklearn_iris example's model: a scikit-learn classifier trained on iris, converted with skl2onnx.

This fills the guide's empty scikit-learn tab. The iris data set ships with scikit-learn (no download). The
conversion turns ZipMap off, so the model has two plain tensor outputs, ``label[batch]`` (int64) and
``probabilities[batch, 3]`` (float32), and declares the batch axis dynamic (``None``), which batching needs.
The class names are saved in the model's metadata; the model is saved as ``iris_clf:<version>``.

scikit-learn and skl2onnx are needed here only, to make the model; the service runs it with onnxruntime.
"""

from __future__ import annotations

import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import bundler

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def train() -> tuple[object, list[str]]:
    """Return a scaler + logistic regression pipeline fitted on all of iris, and the class names."""
    iris = load_iris()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(iris.data, iris.target)
    return clf, [str(name) for name in iris.target_names]


def to_onnx(clf: object) -> onnx.ModelProto:
    """Return ``clf`` as ONNX: input[None, 4] float32 -> label[None] int64, probabilities[None, 3]."""
    model = convert_sklearn(
        clf,
        "iris_clf",
        initial_types=[("input", FloatTensorType([None, len(FEATURES)]))],
        # ZipMap would return a list of {class: probability} maps, which is not a tensor: turn it off.
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    clf, classes = train()
    saved = bundler.onnx.save_model(
        "iris_clf",
        to_onnx(clf),
        signatures={"run": {"batchable": True}},
        metadata={"classes": classes, "features": FEATURES},
    )
    print(saved)
