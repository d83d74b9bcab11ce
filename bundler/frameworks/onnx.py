"""ONNX models: save into the model store, load as onnxruntime sessions, and feed them checked inputs.

The only module that imports onnxruntime (lazily, so saving a model does not pay for it). Stored layout:
``models/<name>/<version>/{saved_model.onnx[, saved_model.onnx.data], model.yaml, manifest.sha256}``.
onnxruntime's own exceptions are translated here: load failures become ModelError, refused inputs
InferenceInputError, unavailable execution providers ProviderError.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import functools
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
import yaml

from ..casting import all_whole, int_range_overflow
from ..exceptions import InferenceInputError, InvalidTag, ModelError, ProviderError, UnsafeArchive
from ..models import (
    CUSTOM_OBJECTS_FILE,
    EXTERNAL_MODULES_DIR,
    Model,
    write_custom_objects,
    write_external_modules,
)
from ..models import get as _get_any
from ..store import Tag, dump_yaml, model_store, new_version, sha256_file

log = logging.getLogger("bundler.onnx")

if TYPE_CHECKING:
    import onnx
    import onnxruntime
else:

    class _OnnxOnDemand:
        """Import onnx on first use: serving (get, load_model, runners) needs only onnxruntime."""

        def __getattr__(self, name: str) -> Any:
            try:
                import onnx
            except ImportError as exc:
                raise ModelError("saving or inspecting ONNX models needs onnx: pip install onnx") from exc
            return getattr(onnx, name)

    onnx = _OnnxOnDemand()

__all__ = [
    "MODULE",
    "OnnxSession",
    "TensorSpec",
    "cuda_device_count",
    "default_providers",
    "default_session_options",
    "get",
    "load_model",
    "memory_limit",
    "one_thread_twin",
    "save_model",
    "usable_cpus",
]

MODULE = "bundler.onnx"
MODEL_FILE = "saved_model.onnx"
EXTERNAL_DATA_FILE = "saved_model.onnx.data"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
SIGNATURE_METHODS = ("run",)
SIGNATURE_OPTIONS = ("batchable", "batch_dim")
# Protobuf cannot serialise a message of 2 GiB or more; larger models keep their weights in a side file.
_PROTO_LIMIT = 2**31  # onnx.checker.MAXIMUM_PROTOBUF

Dim = int | str | None


# -- specs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, numpy dtype (None when not a plain tensor), shape, ONNX type."""

    name: str
    dtype: np.dtype | None
    shape: tuple[Dim, ...] | None
    type: str = "tensor"

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain data (as stored in ``model.yaml``)."""
        return {
            "name": self.name,
            "dtype": None if self.dtype is None else self.dtype.name,
            "shape": None if self.shape is None else list(self.shape),
            "type": self.type,
        }


def format_shape(shape: Sequence[Dim] | None) -> str:
    """Render a shape with symbolic dims by name and unknown ones as '?'."""
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _elem_dtype(elem_type: int) -> np.dtype | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def _value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    t = value.type
    kind = t.WhichOneof("value")
    if kind != "tensor_type":
        return TensorSpec(value.name, None, None, (kind or "unknown").replace("_type", ""))
    shape: tuple[Dim, ...] | None = None
    if t.tensor_type.HasField("shape"):
        dims: list[Dim] = []
        for d in t.tensor_type.shape.dim:
            which = d.WhichOneof("value")
            dim: Dim = d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None
            dims.append(dim)
        shape = tuple(dims)
    return TensorSpec(value.name, _elem_dtype(t.tensor_type.elem_type), shape)


def graph_specs(proto: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Return the graph's (inputs, outputs) specs; initializers listed as inputs (IR < 4) are skipped."""
    init = {i.name for i in proto.graph.initializer}
    inputs = [_value_spec(v) for v in proto.graph.input if v.name not in init]
    return inputs, [_value_spec(v) for v in proto.graph.output]


# -- saving ---------------------------------------------------------------------------------------
def _check_name(name: object) -> str:
    if not isinstance(name, str) or ":" in name:
        raise InvalidTag(
            f"invalid model name {name!r}: give a name without ':version', e.g. 'super_resolution'"
        )
    Tag.parse(name)
    return name


def _mapping(value: object, what: str, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ModelError(f"save_model({name!r}): {what} must be a dict, got {type(value).__name__}")
    return dict(value)


def _check_labels(labels: object, name: str) -> dict[str, str]:
    out = _mapping(labels, "labels", name)
    for k, v in out.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ModelError(f"save_model({name!r}): labels must map str to str; {k!r}: {v!r} does not")
    return out


def _plain(value: Any, depth: int = 0) -> Any:
    """Return ``value`` with numpy scalars and arrays made Python's, as BentoML stores metadata."""
    if depth > 100:  # a list that contains itself: dump_yaml words the error
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return value


def _check_metadata(metadata: object, name: str) -> dict:
    # sklearn's cross_validate gives arrays, numpy reductions give np.float32: stored as lists and floats.
    out = _plain(_mapping(metadata, "metadata", name))
    for k, v in out.items():
        try:
            dump_yaml({k: v})
        except RecursionError as exc:
            raise ModelError(
                f"save_model({name!r}): metadata[{k!r}] contains itself, which cannot be stored; pass a copy"
                " without the loop"
            ) from exc
        except yaml.YAMLError as exc:
            raise ModelError(
                f"save_model({name!r}): metadata[{k!r}] is a {type(v).__name__}, which cannot be stored;"
                " use str, int, float, bool, None, numpy numbers and arrays, and lists or dicts of those"
            ) from exc
    return out


def _batch_problem(spec: TensorSpec, where: str, batch_dim: int) -> str | None:
    if spec.dtype is None and spec.type != "tensor":
        return (
            f"{where} {spec.name!r} is a {spec.type}, not a tensor, so it cannot be split into rows"
            " (skl2onnx classifiers: convert with options={'zipmap': False})"
        )
    if spec.shape is None:
        return None  # rank unknown: onnxruntime checks at run time
    if len(spec.shape) <= batch_dim:
        return f"{where} {spec.name!r} has shape {format_shape(spec.shape)}, which has no axis {batch_dim}"
    dim = spec.shape[batch_dim]
    if isinstance(dim, int):
        return (
            f"{where} {spec.name!r} has shape {format_shape(spec.shape)}, whose batch axis {batch_dim}"
            f" is fixed at {dim}"
        )
    return None


def _batch_dim(value: object, name: str) -> int:
    """Return the batch axis: an int, or BentoML's (input axis, output axis) pair when both are the same."""

    def axis(v: object) -> TypeGuard[int]:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(axis, value)):
        if value[0] != value[1]:
            raise ModelError(
                f"save_model({name!r}): signatures['run']['batch_dim'] is {tuple(value)}: inputs batched on"
                f" axis {value[0]} and outputs on axis {value[1]} is not supported; export the model with the"
                " batch on the same axis of every input and output, and give that axis as an int"
            )
        value = value[0]
    if not axis(value):
        raise ModelError(
            f"save_model({name!r}): signatures['run']['batch_dim'] must be an int >= 0 or a pair of them"
            f" (input axis, output axis), got {value!r}"
        )
    return value


def _check_signatures(
    signatures: object, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict[str, dict[str, Any]]:
    sigs = _mapping(signatures, "signatures", name) if signatures is not None else {"run": {}}
    for method in sigs:
        if method not in SIGNATURE_METHODS:
            raise ModelError(
                f"save_model({name!r}): unknown signature method {method!r}; ONNX models have one method,"
                " 'run' (e.g. signatures={'run': {'batchable': True}})"
            )
    options = _mapping(sigs.get("run"), "signatures['run']", name)
    for key in options:
        if key not in SIGNATURE_OPTIONS:
            close = difflib.get_close_matches(str(key), SIGNATURE_OPTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ModelError(
                f"save_model({name!r}): unknown option signatures['run'][{key!r}]; {hint}"
                f"the options are {', '.join(SIGNATURE_OPTIONS)}"
            )
    batchable = options.get("batchable", False)
    batch_dim = options.get("batch_dim", 0)
    if not isinstance(batchable, bool):
        raise ModelError(f"save_model({name!r}): signatures['run']['batchable'] must be True or False")
    batch_dim = _batch_dim(batch_dim, name)
    if batchable:
        problems = [p for s in inputs if (p := _batch_problem(s, "input", batch_dim))]
        problems += [p for s in outputs if (p := _batch_problem(s, "output", batch_dim))]
        if problems:
            raise ModelError(
                f"cannot save model {name!r} with signatures={{'run': {{'batchable': True}}}}: "
                + "; ".join(problems)
                + ". Adaptive batching needs a dynamic batch axis on every input and output: export with"
                " one (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}}),"
                " or tf.TensorSpec((None, ...))), or save with batchable=False"
            )
    return {"run": {"batchable": batchable, "batch_dim": batch_dim}}


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Return every tensor of a graph that can hold data: initializers and attributes, subgraphs too."""
    out = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        out += [sparse.values, sparse.indices]
    out += _node_tensors(graph.node)
    return out


def _node_tensors(nodes: Any) -> list[onnx.TensorProto]:
    """Return the tensors held by nodes' attributes (dense and sparse), their subgraphs' too."""
    out = []
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                out.append(attr.t)
            out.extend(attr.tensors)
            if attr.HasField("sparse_tensor"):
                out += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
            for sparse in attr.sparse_tensors:
                out += [sparse.values, sparse.indices]
            if attr.HasField("g"):
                out.extend(_tensors(attr.g))
            for g in attr.graphs:
                out.extend(_tensors(g))
    return out


def _external_locations(proto: onnx.ModelProto) -> list[str]:
    locations = []
    tensors = _tensors(proto.graph)
    for function in proto.functions:  # a function's Constant nodes hold tensors too
        tensors += _node_tensors(function.node)
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            if loc not in locations:
                locations.append(loc)
    return locations


def check_external_data(model_file: Path, where: str) -> None:
    """Refuse a model file whose external data lies outside its directory (absolute, or through '..').

    onnxruntime before 1.24 reads external data wherever it points, so a model from an archive could serve
    the host's files as its output. Skipped where onnx is not installed (a serving-only environment) and
    for files that do not parse (onnxruntime cannot load them either).
    """
    try:
        import onnx as real_onnx
    except ImportError:
        return
    try:
        proto = real_onnx.load_model(str(model_file), load_external_data=False)
    except Exception:  # protobuf's DecodeError and onnx's own errors share no base class
        return
    for loc in _external_locations(proto):
        rel = Path(loc)
        if not loc or rel.is_absolute() or ".." in rel.parts or "\\" in loc:
            raise UnsafeArchive(
                f"{where}: refused: {model_file.name} reads external data at {loc!r}, outside the model's"
                " directory (onnxruntime would read that file from this machine); export the model again"
                " from a store that holds it"
            )


def _read_proto(path: Path, name: str) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(f"save_model({name!r}): {path}: no such .onnx file")
    try:
        return onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors share no base class
        raise ModelError(f"save_model({name!r}): {path} is not a readable ONNX model ({exc})") from exc


# Files of a stored model entry that external data must not be named after.
_RESERVED_NAMES = frozenset(
    {MODEL_FILE, "model.yaml", "manifest.sha256", CUSTOM_OBJECTS_FILE, EXTERNAL_MODULES_DIR}
)


def _copy_path(src: Path, proto: onnx.ModelProto, staged: Path, name: str) -> list[str]:
    """Copy a model file and the external data files it names; return their relative names."""
    copied = []
    for loc in _external_locations(proto):
        rel = Path(loc)
        if not loc or rel.is_absolute() or ".." in rel.parts:
            raise ModelError(
                f"save_model({name!r}): {src} refers to external data at {loc!r}; only files beside the model"
                " (relative paths without '..') can be saved"
            )
        if rel.as_posix() in _RESERVED_NAMES or rel.parts[0] == EXTERNAL_MODULES_DIR:
            # The store's own files go beside it: one would overwrite the other.
            raise ModelError(
                f"save_model({name!r}): {src} keeps external data in {loc!r}, a name the model store uses"
                f" for its own files ({', '.join(sorted(_RESERVED_NAMES))}); re-save the model with another"
                " location (onnx.save_model(..., location='weights.bin')) and save that"
            )
        data = src.parent / rel
        if not data.is_file():
            raise ModelError(
                f"save_model({name!r}): {src} refers to external data {loc!r}; {data} is missing"
            )
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data, staged / rel)
        copied.append(rel.as_posix())
    shutil.copyfile(src, staged / MODEL_FILE)
    return copied


def _write_proto(proto: onnx.ModelProto, staged: Path, name: str) -> list[str]:
    """Write a ModelProto; weights go to a side file when the proto is too big for one protobuf."""
    if _external_locations(proto):
        raise ModelError(
            f"save_model({name!r}): the ModelProto refers to external data files that were not loaded; pass"
            " the .onnx path instead, or load it with onnx.load(path) (load_external_data=True)"
        )
    if proto.ByteSize() < _PROTO_LIMIT:
        onnx.save_model(proto, str(staged / MODEL_FILE))
        return []
    # onnx moves tensor data out of the proto it is given: work on a copy so the caller's stays whole.
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    onnx.save_model(
        copy,
        str(staged / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_FILE,
        size_threshold=1024,
    )
    return [EXTERNAL_DATA_FILE]


def _framework_versions(proto: onnx.ModelProto) -> dict[str, Any]:
    # The onnxruntime that import finds (with both onnxruntime and onnxruntime-gpu installed, one of them
    # shadows the other, and their distributions' metadata says nothing of which).
    ort_version = _ort().__version__
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import}
    return {
        "onnx": onnx.__version__,
        "onnxruntime": ort_version,
        "opset": opsets.get("ai.onnx"),
        "opset_imports": opsets,
        "ir_version": int(proto.ir_version),
    }


def save_model(
    name: str,
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    signatures: dict[str, dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    custom_objects: dict[str, Any] | None = None,
    external_modules: list[ModuleType] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Model:
    """Save an ONNX model (a ModelProto or a path to a .onnx file) to the model store; return it.

    ``custom_objects`` (pickled) come back as ``Model.custom_objects``; ``external_modules`` are user
    modules whose source is saved with the model, so that the objects load where the modules are not
    installed (in the bundle's image).
    """
    name = _check_name(name)
    labels = _check_labels(labels, name)
    metadata = _check_metadata(metadata, name)
    if isinstance(model, onnx.ModelProto):
        proto, src = model, None
    elif isinstance(model, (str, os.PathLike)):
        src = Path(model)
        proto = _read_proto(src, name)
    else:
        raise ModelError(
            f"save_model({name!r}, model): expected an onnx.ModelProto or a path to a .onnx file,"
            f" got {type(model).__name__}"
        )
    inputs, outputs = graph_specs(proto)
    sigs = _check_signatures(signatures, name, inputs, outputs)
    store = model_store()
    with store.staging() as staged:
        external = _write_proto(proto, staged, name) if src is None else _copy_path(src, proto, staged, name)
        where = f"save_model({name!r})"
        object_names = write_custom_objects(staged, custom_objects, where)
        module_names = write_external_modules(staged, external_modules, where)
        try:
            onnx.checker.check_model(str(staged / MODEL_FILE))
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ModelError(f"save_model({name!r}): the model is not valid ONNX: {exc}") from exc
        version = new_version()
        info = {
            "name": name,
            "version": version,
            "module": MODULE,
            "creation_time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "model_file": MODEL_FILE,
            "external_data": external,
            "sha256": sha256_file(staged / MODEL_FILE),
            "size_bytes": sum((staged / f).stat().st_size for f in [MODEL_FILE, *external]),
            "signatures": sigs,
            "labels": labels,
            "metadata": metadata,
            "custom_objects": object_names,
            "external_modules": module_names,
            "framework_versions": _framework_versions(proto),
            "inputs": [s.to_dict() for s in inputs],
            "outputs": [s.to_dict() for s in outputs],
        }
        (staged / "model.yaml").write_text(dump_yaml(info), encoding="utf-8")
        tag = Tag(name, version)
        path, _ = store.commit(staged, tag)
    return Model(tag, path, info)


def get(tag: str | Tag) -> Model:
    """Return a stored ONNX model; ModelError when the tag names a model saved by another framework."""
    model = _get_any(tag)
    if model.module != MODULE:
        raise ModelError(
            f"model {model.tag} was saved by {model.module or 'an unknown module'!r}, not {MODULE!r};"
            f" load it with {model.module or 'its framework'}.get()"
        )
    return model


# -- loading --------------------------------------------------------------------------------------
def default_providers(available: Sequence[str], cuda_device_count: int) -> list[str]:
    """Return CUDA then CPU when the CUDA provider and a device are both present, else CPU alone."""
    if CUDA in available and cuda_device_count > 0:
        return [CUDA, CPU]
    return [CPU]


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Return the number of CUDA devices the driver shows this process (0 without a driver)."""
    # The driver API answers without loading a framework; cuInit honours CUDA_VISIBLE_DEVICES.
    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def _contiguous(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` C-contiguous, keeping a 0-d array 0-d (np.ascontiguousarray makes it 1-d)."""
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")


def usable_cpus() -> int:
    """Return the CPUs this process may use: its affinity, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def _ort_errors() -> tuple[type[BaseException], ...]:
    """Return onnxruntime's exception classes (they derive from Exception directly, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    found = [v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return (*found, RuntimeError, ValueError)


def _invalid_argument() -> type[BaseException]:
    """Return onnxruntime's exception for inputs it refuses (imported when an error needs it)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    return InvalidArgument


def default_session_options() -> onnxruntime.SessionOptions:
    """Return the session options used when the user gives none.

    intra-op threads = the CPUs this process may use (onnxruntime's own default counts the host's cores,
    which oversubscribes a container with a CPU quota); one inter-op thread, sequential execution: a
    server runs one batch at a time per model, so parallelism belongs inside each operator; intra-op
    threads sleep rather than spin between runs.
    """
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cpus()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads burn a core between requests and fight the event loop for the GIL'd CPU:
    # off, CPU per 1,000 served requests fell 2.33 s -> 0.14 s (MLP) at no cost in latency.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _provider_entry(entry: Any, index: int) -> Any:
    """Return a providers entry as onnxruntime takes it: a name, or a (name, options dict) tuple."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        name, options = entry
        if isinstance(name, str) and isinstance(options, Mapping):
            return (name, dict(options))  # onnxruntime refuses a [name, options] list
    raise ProviderError(
        f"providers[{index}] is {entry!r}; give a provider name or a (name, options dict) pair,"
        " e.g. ('CUDAExecutionProvider', {'device_id': 0})"
    )


def resolve_providers(requested: Sequence[Any] | None, available: Sequence[str]) -> list[Any]:
    """Return the providers to use; ProviderError when a requested one is not available here."""
    if requested is None:
        return default_providers(available, cuda_device_count() if CUDA in available else 0)
    if isinstance(requested, str):
        raise ProviderError(f"providers must be a list of provider names, e.g. [{requested!r}]")
    requested = [_provider_entry(p, i) for i, p in enumerate(requested)]
    names = [p[0] if isinstance(p, tuple) else p for p in requested]
    missing = [n for n in names if n not in available]
    if missing:
        raise ProviderError(
            f"execution provider(s) {', '.join(map(str, missing))} not available on this machine; available:"
            f" {', '.join(available)}. Install the onnxruntime build that has them (onnxruntime-gpu for CUDA"
            " and TensorRT), or choose from the available ones"
        )
    if CUDA in names and CPU not in names and cuda_device_count() == 0:
        raise ProviderError(f"{CUDA} was requested but no CUDA device is visible; add {CPU} or use a GPU")
    return list(requested)


@functools.lru_cache(maxsize=1)
def _preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA and cuDNN from pip's nvidia-* packages when present, so the CUDA provider finds them."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is not None:
        with contextlib.suppress(Exception):  # system-wide CUDA libraries are found without it
            preload()


def _as_model(tag_or_model: str | Tag | Model) -> Model:
    if isinstance(tag_or_model, Model):
        if tag_or_model.module != MODULE:
            return get(tag_or_model.tag)  # raises the "saved by another framework" error
        return tag_or_model
    return get(tag_or_model)


def load_model(
    tag_or_model: str | Tag | Model,
    *,
    providers: Sequence[Any] | None = None,
    session_options: onnxruntime.SessionOptions | None = None,
) -> onnxruntime.InferenceSession:
    """Load a stored ONNX model as an onnxruntime InferenceSession.

    Arguments win over ``Model.with_options``; the user's SessionOptions are used as given.
    """
    model = _as_model(tag_or_model)
    ort = _ort()
    options = model.options
    if providers is None:
        providers = options.get("providers")
    if session_options is None:
        session_options = options.get("session_options")
    if providers is None and os.environ.get("BUNDLER_PROVIDERS"):
        # Deployment-time choice (e.g. the Kubernetes manifests for --gpu); code-given providers still win.
        providers = [p.strip() for p in os.environ["BUNDLER_PROVIDERS"].split(",") if p.strip()]
    chosen = resolve_providers(providers, ort.get_available_providers())
    if CUDA in [p[0] if isinstance(p, tuple) else p for p in chosen]:
        _preload_cuda_libraries(ort)
    if session_options is None:
        session_options = default_session_options()
    elif not isinstance(session_options, ort.SessionOptions):
        raise ModelError(
            f"model {model.tag}: session_options must be an onnxruntime.SessionOptions,"
            f" got {type(session_options).__name__}"
        )
    try:
        return ort.InferenceSession(str(model.model_file), sess_options=session_options, providers=chosen)
    except _ort_errors() as exc:
        raise ModelError(f"cannot load model {model.tag} from {model.model_file}: {exc}") from exc


_ORT_TYPES = {
    "float": np.float32,
    "double": np.float64,
    "float16": np.float16,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
    "string": np.str_,
}


def _node_spec(arg: Any) -> TensorSpec:
    """Return the spec of an onnxruntime NodeArg (its type reads like ``tensor(float)``)."""
    type_str = str(arg.type)
    if not type_str.startswith("tensor(") or not type_str.endswith(")"):
        return TensorSpec(arg.name, None, None, type_str)
    dtype = _ORT_TYPES.get(type_str[len("tensor(") : -1])
    shape = arg.shape
    dims = None if shape is None else tuple(d if isinstance(d, (int, str)) else None for d in shape)
    return TensorSpec(arg.name, None if dtype is None else np.dtype(dtype), dims)


# A model whose batch-1 run is shorter than this gains nothing from intra-op parallelism: handing part of an
# operator to another thread (a wake-up, then a join) costs about what the part does. Measured with
# benchmarks/serve.py on the 64->256->256->10 MLP (9 us a run): one thread served 7.4k/17.7k/20.2k req/s at
# 1/16/64 connections against 6.7k/16.4k/19.8k with two, and 0.11 s CPU per 1,000 requests against 0.14.
SMALL_RUN_S = 0.0002


def _probe_feed(session: onnxruntime.InferenceSession) -> dict[str, np.ndarray] | None:
    """Return zeros for every input (free dimensions 1), or None when an input is not a numeric tensor."""
    feed = {}
    for spec in map(_node_spec, session.get_inputs()):
        if spec.dtype is None or spec.dtype.kind not in "biuf" or spec.shape is None:
            return None
        feed[spec.name] = np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in spec.shape], spec.dtype)
    return feed


def _fit_threads(
    session: onnxruntime.InferenceSession, model: Model, providers: Sequence[Any] | None
) -> onnxruntime.InferenceSession:
    """Reload a CPU model whose batch-1 run is under SMALL_RUN_S with one intra-op thread."""
    if session.get_providers()[0] != "CPUExecutionProvider" or usable_cpus() == 1:
        return session
    feed = _probe_feed(session)
    if feed is None:
        return session
    try:
        session.run(None, feed)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
    except _ort_errors():  # zeros are not valid input for every model: then keep the defaults
        return session
    if min(times) >= SMALL_RUN_S:
        return session
    options = default_session_options()
    options.intra_op_num_threads = 1
    log.info(
        "model %s: a batch-1 run takes %.0f us, too short to share between threads: 1 intra-op thread",
        model.tag,
        min(times) * 1e6,
    )
    return load_model(model, providers=providers, session_options=options)


# A one-thread twin holds a second copy of the model in memory: models up to this size (the model's directory
# on disk), and up to a quarter of the process's memory limit where it has one, get one; bigger ones keep a
# single session (a pod sized for one copy must not be killed for the second).
TWIN_MAX_BYTES = 512 * 2**20


def memory_limit() -> int | None:
    """Return the cgroup memory limit of this process in bytes, or None where there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # cgroup v1 says "no limit" with a huge number
            return int(text)
        return None
    return None


def one_thread_twin(session: OnnxSession, model: Model) -> OnnxSession | None:
    """Return the model loaded again with one intra-op thread, for a runner's calls beside others, or None.

    A batching runner runs a lone call on ``session``'s threads (every core) and, under load, one twin
    call per core: on a busy machine an operator split over threads waits for whichever thread lost its
    core, where one-thread calls each go on alone. With a co-runner taking 10% of one of 2 cores,
    raw onnxruntime lost 11% on two threads and 5% on two one-thread calls (benchmarks/corunner.py).
    None unless ``session`` is a CPU session with bundler's default options on more than one thread, and
    the model is at most TWIN_MAX_BYTES.
    """
    m = _as_model(model)
    inner = session.session
    if m.options.get("session_options") is not None or inner.get_providers()[0] != "CPUExecutionProvider":
        return None
    if inner.get_session_options().intra_op_num_threads <= 1 or usable_cpus() < 2:
        return None
    size = sum(f.stat().st_size for f in m.path.rglob("*") if f.is_file())
    limit = memory_limit()
    if size > TWIN_MAX_BYTES or (limit is not None and size > limit // 4):
        log.info("model %s: %d MiB, too big for a one-thread twin session", m.tag, size >> 20)
        return None
    options = default_session_options()
    options.intra_op_num_threads = 1
    try:
        twin = load_model(m, session_options=options)
    except (ModelError, MemoryError) as exc:  # served as before, on the one session
        log.warning("model %s: no one-thread twin session (%s); calls run one at a time", m.tag, exc)
        return None
    log.info(
        "model %s: a one-thread twin session runs calls under load, one per CPU (%d); the model is held"
        " in memory twice",
        m.tag,
        usable_cpus(),
    )
    return OnnxSession(twin, tag=m.tag)


class _InputCheck:
    """What checking one input needs, worked out once per session: rank, fixed dims, the message text."""

    __slots__ = ("fixed", "name", "ndim", "spec", "want")

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.want = f"{spec.dtype.name if spec.dtype is not None else spec.type} {format_shape(spec.shape)}"
        self.ndim = None if spec.shape is None else len(spec.shape)
        shape = spec.shape or ()
        self.fixed = tuple((axis, d) for axis, d in enumerate(shape) if isinstance(d, int))

    def shape_ok(self, shape: tuple[int, ...]) -> bool:
        """Return whether ``shape`` has the spec's rank and fixed dimensions (any shape without a spec)."""
        if self.ndim is None:
            return True
        if len(shape) != self.ndim:
            return False
        for axis, size in self.fixed:
            if shape[axis] != size:
                return False
        return True


def _host_tensor(value: Any) -> Any:
    """Return a PyTorch tensor detached and on the CPU (numpy refuses others: grad, GPU); else ``value``."""
    if type(value).__module__.startswith("torch") and hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu()
    return value


def _shared_dims(specs: Sequence[TensorSpec]) -> bool:
    """Return whether a named dimension occurs more than once among the inputs (so sizes must agree)."""
    names = [d for s in specs for d in (s.shape or ()) if isinstance(d, str)]
    return len(names) != len(set(names))


class OnnxSession:
    """A loaded model: its specs, input checking and casting, and the raw onnxruntime run."""

    def __init__(self, session: onnxruntime.InferenceSession, *, tag: Tag | str | None = None) -> None:
        self.session = session
        self.tag = str(tag) if tag is not None else "model"
        self.inputs = [_node_spec(a) for a in session.get_inputs()]
        self.outputs = [_node_spec(a) for a in session.get_outputs()]
        self._by_name = {s.name: s for s in self.inputs}
        self._output_names = [s.name for s in self.outputs]
        # Per-spec facts every request would otherwise recompute (dtype names cost microseconds in numpy).
        self._names = [s.name for s in self.inputs]
        self._checks = [_InputCheck(s) for s in self.inputs]
        self._shared_dims = _shared_dims(self.inputs)
        # onnxruntime's Python run() checks the feed's names and looks for OrtValues of another session on
        # every call, about 1 us of a 5 us MLP call; a feed from prepare() needs neither. The bare call is
        # used where the wrapper's one other duty, retrying on the fallback providers when a provider
        # fails, cannot apply: a CPU-only session.
        bare = getattr(session, "_sess", None)
        cpu_only = session.get_providers() == ["CPUExecutionProvider"]
        self._bare_run = bare.run if bare is not None and cpu_only else None

    @classmethod
    def load(
        cls,
        model: str | Tag | Model,
        *,
        providers: Sequence[Any] | None = None,
        session_options: Any = None,
        fit_threads: bool = False,
    ) -> OnnxSession:
        """Load a stored model into a new OnnxSession.

        ``fit_threads`` (runners set it): with bundler's default session options on the CPU, a model whose
        batch-1 run takes under :data:`SMALL_RUN_S` is reloaded with one intra-op thread.
        """
        m = _as_model(model)
        session = load_model(m, providers=providers, session_options=session_options)
        if fit_threads and session_options is None and m.options.get("session_options") is None:
            session = _fit_threads(session, m, providers)
        return cls(session, tag=m.tag)

    @property
    def providers(self) -> list[str]:
        """Return the execution providers the session actually uses."""
        return list(self.session.get_providers())

    def _error(self, message: str) -> InferenceInputError:
        return InferenceInputError(f"{self.tag}: {message}")

    def prepare(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Map call arguments to a checked feed: positional in graph order, by name, or one dict."""
        checks = self._checks
        if len(args) == 1 and not kwargs and len(checks) == 1 and not isinstance(args[0], Mapping):
            # The served case: one positional array for a one-input model.
            check = checks[0]
            feed = {check.name: self._cast(check, args[0])}
            if self._shared_dims:
                self._check_shared_dims(feed)
            return feed
        args = tuple(args)
        named = dict(kwargs)
        if len(args) == 1 and not named and isinstance(args[0], Mapping):
            named, args = dict(args[0]), ()
        names = self._names
        if len(args) > len(names):
            raise self._error(
                f"the model takes {len(names)} input(s) ({', '.join(names)}) but {len(args)} were given"
            )
        given = dict(zip(names, args, strict=False))
        for key, value in named.items():
            if key not in self._by_name:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self._error(f"unknown input {key!r}{hint}; the inputs are {', '.join(names)}")
            if key in given:
                raise self._error(f"input {key!r} was given twice, by position and by name")
            given[key] = value
        missing = [n for n in names if n not in given]
        if missing:
            missing_text = ", ".join(map(repr, missing))
            raise self._error(f"missing input(s) {missing_text}; the inputs are {', '.join(names)}")
        feed = {c.name: self._cast(c, given[c.name]) for c in checks}
        if self._shared_dims:
            self._check_shared_dims(feed)
        return feed

    def _check_shared_dims(self, feed: dict[str, np.ndarray]) -> None:
        """Refuse inputs that disagree on a named dimension (onnxruntime would fail deep in the graph)."""
        seen: dict[str, tuple[int, str, int]] = {}
        for spec in self.inputs:
            for axis, dim in enumerate(spec.shape or ()):
                if not isinstance(dim, str) or axis >= feed[spec.name].ndim:
                    continue
                size = feed[spec.name].shape[axis]
                first = seen.setdefault(dim, (size, spec.name, axis))
                if first[0] != size:
                    raise self._error(
                        f"input {spec.name!r} has size {size} on axis {axis} ({dim!r}) but input {first[1]!r}"
                        f" has {first[0]} on axis {first[2]}; inputs that share {dim!r} need the same size"
                    )

    def _cast(self, check: _InputCheck, value: Any) -> np.ndarray:
        spec = check.spec
        target = spec.dtype
        arr = value if type(value) is np.ndarray else None
        if arr is not None and target is not None and check.shape_ok(arr.shape):
            src = arr.dtype
            if src == target:
                # Already the model's dtype and shape: nothing to check or convert.
                return _contiguous(arr)
            if src.kind == "f" and target.kind == "f":
                # Float to float, the served case (JSON numbers arrive as float64): widening is exact;
                # narrowing must not turn a finite value past the target's range into inf (the general
                # path below words that error).
                if src.itemsize < target.itemsize:
                    return arr.astype(target, order="C")
                try:
                    with np.errstate(over="raise", invalid="raise"):
                        return arr.astype(target, order="C")
                except FloatingPointError:
                    pass
        want = check.want
        try:
            arr = np.asarray(_host_tensor(value))
        except (ValueError, TypeError, RuntimeError) as exc:
            raise self._error(
                f"input {spec.name!r} expects {want} but got a value that is not an array ({exc})"
            ) from exc
        if target is None:
            return arr
        if arr.dtype == object and target.kind not in "USO":
            raise self._error(
                f"input {spec.name!r} expects {want} but got a ragged or mixed-type value; give a rectangular"
                " array of numbers"
            )
        if not check.shape_ok(arr.shape):
            raise self._error(f"input {spec.name!r} expects shape {want} but got shape {list(arr.shape)}")
        if arr.dtype == target:
            return _contiguous(arr)
        src = arr.dtype.kind
        if target.kind in "USO":
            if src not in "USO":
                raise self._error(f"input {spec.name!r} expects strings but got {arr.dtype.name} values")
            if src == "S":
                # Fixed-width bytes: onnxruntime would read past each cell's end. Text is UTF-8.
                try:
                    return np.char.decode(arr, "utf-8")
                except UnicodeDecodeError as exc:
                    raise self._error(
                        f"input {spec.name!r} expects strings but got bytes that are not UTF-8"
                    ) from exc
            return arr
        if src in "USOV":
            raise self._error(f"input {spec.name!r} expects {want} but got {arr.dtype} values")
        if src == "c" or (src == "f" and target.kind in "iub" and not all_whole(arr)):
            raise self._error(
                f"input {spec.name!r} expects {target.name} but got {arr.dtype.name} values that are not"
                " whole numbers; round them first"
            )
        overflow = int_range_overflow(arr, target)
        if overflow is not None:
            # Integer casts wrap around silently; refuse values the model's dtype cannot hold.
            low, high, limits = overflow
            raise self._error(
                f"input {spec.name!r} expects {target.name}, whose range is {limits.min}..{limits.max},"
                f" but got values from {low} to {high}"
            )
        if np.can_cast(arr.dtype, target):
            # A safe (widening) cast cannot overflow: skip the floating-point error state's context manager.
            return _contiguous(arr.astype(target))
        try:
            with np.errstate(over="raise", invalid="raise"):
                return _contiguous(arr.astype(target))
        except FloatingPointError as exc:
            raise self._error(
                f"input {spec.name!r} expects {target.name} but some {arr.dtype.name} values do not fit in it"
            ) from exc

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session on a prepared feed; return every output in graph order."""
        try:
            if self._bare_run is not None and len(feed) == len(self._names):
                return self._bare_run(self._output_names, feed, None)
            # An incomplete feed gets the wrapper's clear "required inputs are missing" (the bare call
            # fails deep inside a kernel instead).
            return self.session.run(self._output_names, feed)
        except _invalid_argument() as exc:
            raise self._error(f"onnxruntime refused the inputs: {exc}") from exc
        except _ort_errors() as exc:
            raise ModelError(f"{self.tag}: onnxruntime failed to run the model: {exc}") from exc

    def format(self, outputs: Sequence[np.ndarray]) -> np.ndarray | tuple[np.ndarray, ...]:
        """Return one output as an array, several as a tuple in graph order."""
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
