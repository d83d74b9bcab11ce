"""Small ONNX models built with onnx.helper, for tests in any file (import from ``tests.models``).

Each builder returns the ``onnx.ModelProto`` and, when given a path, also writes it there. Weights come
from a seeded generator, so the same call gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 8  # readable by every onnxruntime >= 1.16 that pyproject allows

Dim = int | str | None


def _finish(graph: onnx.GraphProto, path: str | Path | None) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save_model(model, str(path))
    return model


def _weights(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> TensorProto:
    scale = 1.0 / np.sqrt(shape[0])
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def make_mlp(
    path: str | Path | None = None,
    in_dim: int = 64,
    hidden: int = 256,
    out: int = 10,
    batch: Dim = "batch",
    seed: int = 0,
) -> onnx.ModelProto:
    """Build ``x[batch, in_dim] -> relu(x W1 + b1) W2 + b2 -> y[batch, out]`` (float32)."""
    rng = np.random.default_rng(seed)
    inits = [
        _weights(rng, "w1", (in_dim, hidden)),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
        _weights(rng, "w2", (hidden, out)),
        numpy_helper.from_array(np.zeros(out, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out])],
        inits,
    )
    return _finish(graph, path)


def make_conv(
    path: str | Path | None = None, channels: int = 96, size: int = 64, seed: int = 0
) -> onnx.ModelProto:
    """Build ``x[batch, 1, size, size] -> conv3x3 -> relu -> conv3x3 -> y[batch, 1, size, size]``: a model
    whose batch-1 call is long enough (a few hundred us) that a runner keeps its intra-op threads."""
    rng = np.random.default_rng(seed)
    inits = [
        _weights(rng, "w1", (channels, 1, 3, 3)),
        _weights(rng, "w2", (1, channels, 3, 3)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Conv", ["hr", "w2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, size, size])],
        inits,
    )
    return _finish(graph, path)


def make_classifier(
    path: str | Path | None = None,
    size: int = 224,
    classes: int = 1000,
    batch: Dim = "batch",
    seed: int = 0,
) -> onnx.ModelProto:
    """Build an image classifier ``input[batch, size, size, 3] -> probs[batch, classes]`` (softmax).

    It stands in for the guide's ResNet50: NHWC float input like tf2onnx's, global average pooling,
    a dense layer and softmax.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "hw_axes"),
        _weights(rng, "w", (3, classes)),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input", "hw_axes"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    return _finish(graph, path)


def make_multi_io(path: str | Path | None = None, dim: int = 4, batch: Dim = "batch") -> onnx.ModelProto:
    """Build ``(a float32[batch, dim], b float32[batch, dim], k int64[batch, 1])`` -> ``(sum, prod, k2)``.

    ``sum = a + b``, ``prod = a * b``, ``k2 = k * 2``: easy to check by hand, three inputs of two dtypes.
    """
    two = numpy_helper.from_array(np.array(2, np.int64), "two")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Mul", ["a", "b"], ["prod"]),
        helper.make_node("Mul", ["k", "two"], ["k2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [batch, dim]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [batch, dim]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [batch, 1]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [batch, dim]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, [batch, dim]),
            helper.make_tensor_value_info("k2", TensorProto.INT64, [batch, 1]),
        ],
        [two],
    )
    return _finish(graph, path)


def make_static_batch(
    path: str | Path | None = None, batch: int = 1, dim: int = 8, static_output: bool = True
) -> onnx.ModelProto:
    """Build ``x[batch, dim] -> y = 2x`` with a fixed batch size (not batchable).

    With ``static_output=False`` only the input is fixed and the output's batch axis is symbolic, to
    check that every tensor is inspected.
    """
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    out_batch: Dim = batch if static_output else "n"
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "static_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_batch, dim])],
        [two],
    )
    return _finish(graph, path)


def make_big(path: str | Path | None = None, floats: int = 1 << 20, dim: int = 16) -> onnx.ModelProto:
    """Build ``x[batch, dim] -> x + sum(w)`` with a ``floats``-element weight (4 bytes each).

    Used to give a save something to write (interrupted saves, external data).
    """
    w = numpy_helper.from_array(np.arange(floats, dtype=np.float32) / floats, "w")
    nodes = [
        helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        [w],
    )
    return _finish(graph, path)


def reference_run(model: onnx.ModelProto | str | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model with a plain onnxruntime CPU session: the expected outputs for comparisons."""
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def missing_provider() -> str:
    """Return a real execution provider's name that this onnxruntime does not offer.

    onnxruntime-gpu lists TensorRT even where the TensorRT libraries are absent, so no one name is
    missing everywhere.
    """
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    for name in ("OpenVINOExecutionProvider", "CoreMLExecutionProvider", "TensorrtExecutionProvider"):
        if name not in available:
            return name
    raise AssertionError(f"every candidate provider is available: {sorted(available)}")
