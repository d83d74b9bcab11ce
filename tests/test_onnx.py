"""bundler.onnx: save_model, get, load_model, providers, session options and OnnxSession input handling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

import bundler.onnx
from bundler.exceptions import InferenceInputError, InvalidTag, ModelError, NotFound, ProviderError
from bundler.frameworks import onnx as fonnx
from bundler.models import Model
from bundler.store import verify_manifest
from tests.models import (
    make_big,
    make_classifier,
    make_mlp,
    make_multi_io,
    make_static_batch,
    missing_provider,
    reference_run,
)


# -- save_model -------------------------------------------------------------------------------------
def test_save_proto_writes_layout_and_model_yaml(bundler_home: Path) -> None:
    model = bundler.onnx.save_model(
        "mlp", make_mlp(), labels={"team": "vision"}, metadata={"acc": 0.91, "classes": ["a", "b"]}
    )
    version = model.tag.version
    assert model.path == bundler_home / "models" / "mlp" / str(version)
    assert repr(model) == f'Model(tag="mlp:{version}", path="{model.path}/")'
    assert sorted(p.name for p in model.path.iterdir()) == [
        "manifest.sha256",
        "model.yaml",
        "saved_model.onnx",
    ]
    assert verify_manifest(model.path) == []
    info = yaml.safe_load((model.path / "model.yaml").read_text())
    assert info == model.info
    assert info["name"] == "mlp" and info["version"] == version and info["module"] == "bundler.onnx"
    assert info["signatures"] == {"run": {"batchable": False, "batch_dim": 0}}
    assert info["labels"] == {"team": "vision"}
    assert info["metadata"] == {"acc": 0.91, "classes": ["a", "b"]}
    assert info["framework_versions"]["onnx"] == onnx.__version__
    assert info["framework_versions"]["onnxruntime"] == ort.__version__
    assert info["framework_versions"]["opset"] == 18
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 64], "type": "tensor"}]
    assert info["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 10], "type": "tensor"}]
    assert info["creation_time"].endswith("+00:00")
    import hashlib

    assert info["sha256"] == hashlib.sha256((model.path / "saved_model.onnx").read_bytes()).hexdigest()
    assert bundler.onnx.get("mlp:latest").tag.version == version


def test_save_records_unknown_dims_as_none() -> None:
    model = bundler.onnx.save_model("mlp", make_mlp(batch=None))
    assert model.info["inputs"][0]["shape"] == [None, 64]


def test_save_path_equals_proto_and_runs(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    proto = make_multi_io(src)
    model = bundler.onnx.save_model("multi", src)
    assert (model.path / "saved_model.onnx").read_bytes() == src.read_bytes()
    assert [i["name"] for i in model.info["inputs"]] == ["a", "b", "k"]
    assert [i["dtype"] for i in model.info["inputs"]] == ["float32", "float32", "int64"]
    session = bundler.onnx.load_model("multi")
    feed = {"a": np.ones((2, 4), np.float32), "b": np.full((2, 4), 3, np.float32), "k": np.array([[1], [5]])}
    for got, want in zip(session.run(None, feed), reference_run(proto, feed), strict=True):
        np.testing.assert_array_equal(got, want)


def test_same_name_twice_gives_two_versions_and_latest_is_newest() -> None:
    first = bundler.onnx.save_model("mlp", make_mlp(seed=1))
    second = bundler.onnx.save_model("mlp", make_mlp(seed=2))
    assert first.tag.version != second.tag.version
    assert bundler.onnx.get("mlp").tag == second.tag
    assert bundler.onnx.get("mlp:latest").tag == second.tag
    assert bundler.onnx.get(str(first.tag)).tag == first.tag


def test_big_proto_goes_to_external_data_and_callers_proto_is_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A real >2 GiB model takes too long to build here; lower the limit so the same code path runs.
    monkeypatch.setattr(fonnx, "_PROTO_LIMIT", 100_000)
    proto = make_big(floats=1 << 18)
    before = proto.SerializeToString()
    model = bundler.onnx.save_model("big", proto)
    assert proto.SerializeToString() == before
    assert model.info["external_data"] == ["saved_model.onnx.data"]
    assert (model.path / "saved_model.onnx").stat().st_size < 10_000
    assert (model.path / "saved_model.onnx.data").stat().st_size >= 4 << 18
    assert verify_manifest(model.path) == []
    x = np.ones((2, 16), np.float32)
    got = bundler.onnx.load_model(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, reference_run(before_proto(before), {"x": x})[0])


def before_proto(data: bytes) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    return proto


def test_path_with_external_data_copies_it(tmp_path: Path) -> None:
    src_dir = tmp_path / "export"
    src_dir.mkdir()
    proto = make_big(floats=1 << 16)
    expected = reference_run(proto, {"x": np.zeros((1, 16), np.float32)})[0]
    onnx.save_model(proto, str(src_dir / "net.onnx"), save_as_external_data=True, location="net.weights")
    model = bundler.onnx.save_model("ext", src_dir / "net.onnx")
    assert model.info["external_data"] == ["net.weights"]
    assert (model.path / "net.weights").read_bytes() == (src_dir / "net.weights").read_bytes()
    (src_dir / "net.weights").unlink()  # the stored copy must not depend on the original
    got = bundler.onnx.load_model("ext").run(None, {"x": np.zeros((1, 16), np.float32)})[0]
    np.testing.assert_allclose(got, expected)


def test_path_with_missing_external_data_is_refused(tmp_path: Path) -> None:
    onnx.save_model(
        make_big(floats=1 << 14), str(tmp_path / "n.onnx"), save_as_external_data=True, location="w.bin"
    )
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelError, match=r"refers to external data 'w.bin'.*missing"):
        bundler.onnx.save_model("ext", tmp_path / "n.onnx")
    assert bundler.models.list() == []


def test_proto_with_unloaded_external_data_is_refused(tmp_path: Path) -> None:
    onnx.save_model(
        make_big(floats=1 << 14), str(tmp_path / "n.onnx"), save_as_external_data=True, location="w.bin"
    )
    proto = onnx.load(str(tmp_path / "n.onnx"), load_external_data=False)
    with pytest.raises(ModelError, match=r"external data files that were not loaded; pass the .onnx path"):
        bundler.onnx.save_model("ext", proto)


@pytest.mark.parametrize(
    ("static_output", "where"),
    [(True, r"input 'x' has shape \[1, 8\], whose batch axis 0 is fixed at 1"), (False, "input 'x'")],
)
def test_batchable_with_static_batch_axis_is_refused(static_output: bool, where: str) -> None:
    with pytest.raises(ModelError, match=where) as info:
        bundler.onnx.save_model(
            "static", make_static_batch(static_output=static_output), signatures={"run": {"batchable": True}}
        )
    assert "dynamic batch axis" in str(info.value)
    assert ("output 'y'" in str(info.value)) is static_output
    assert bundler.models.list() == []


def test_sklearn_zipmap_output_is_not_batchable_but_saves_plain() -> None:
    pytest.importorskip("skl2onnx", reason="needs skl2onnx (test extra)")
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    with pytest.raises(ModelError, match=r"output 'output_probability' is a sequence.*'zipmap': False"):
        bundler.onnx.save_model("clf", to_onnx(clf, x[:1]), signatures={"run": {"batchable": True}})
    plain = bundler.onnx.save_model("clf", to_onnx(clf, x[:1]))
    assert plain.info["outputs"][1] == {
        "name": "output_probability",
        "dtype": None,
        "shape": None,
        "type": "sequence",
    }
    batched = bundler.onnx.save_model(
        "clf", to_onnx(clf, x[:1], options={"zipmap": False}), signatures={"run": {"batchable": True}}
    )
    runner = batched.to_runner()
    runner.init_local()
    labels, probs = runner.run.run(x[:5].astype(np.float64))
    np.testing.assert_array_equal(labels, clf.predict(x[:5]))
    np.testing.assert_allclose(probs, clf.predict_proba(x[:5]), rtol=1e-4)


def test_static_batch_model_saves_without_batching() -> None:
    model = bundler.onnx.save_model("static", make_static_batch())
    assert model.info["signatures"]["run"]["batchable"] is False


def test_batch_dim_beyond_rank_is_refused() -> None:
    with pytest.raises(ModelError, match=r"input 'x' has shape \[batch, 64\], which has no axis 2"):
        bundler.onnx.save_model("mlp", make_mlp(), signatures={"run": {"batchable": True, "batch_dim": 2}})


@pytest.mark.parametrize(
    ("signatures", "message"),
    [
        (
            {"predict": {"batchable": True}},
            "unknown signature method 'predict'; ONNX models have one method, 'run'",
        ),
        (
            {"run": {"batchabel": True}},
            r"unknown option signatures\['run'\]\['batchabel'\]; did you mean 'batchable'",
        ),
        ({"run": {"batchable": "yes"}}, "must be True or False"),
        ({"run": {"batch_dim": -1}}, "batch_dim'\\] must be an int >= 0"),
        ({"run": True}, r"signatures\['run'\] must be a dict"),
        ([("run", {})], "signatures must be a dict"),
    ],
)
def test_bad_signatures(signatures: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        bundler.onnx.save_model("mlp", make_mlp(), signatures=signatures)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["MLP", "a b", "-x", "x" * 64, "mlp:v1", "", 3, "mlp\n"])
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidTag, match=r"invalid"):
        bundler.onnx.save_model(name, make_mlp())  # type: ignore[arg-type]


def test_bad_model_arguments(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"expected an onnx.ModelProto or a path to a .onnx file, got bytes"):
        bundler.onnx.save_model("m", b"not a model")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"no such .onnx file"):
        bundler.onnx.save_model("m", tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffnot protobuf at all" * 10)
    with pytest.raises(ModelError, match=r"is not a readable ONNX model"):
        bundler.onnx.save_model("m", tmp_path / "junk.onnx")
    with pytest.raises(ModelError, match=r"labels must map str to str; 'v': 1"):
        bundler.onnx.save_model("m", make_mlp(), labels={"v": 1})  # type: ignore[dict-item]
    with pytest.raises(ModelError, match=r"metadata\['w'\] is a complex"):
        bundler.onnx.save_model("m", make_mlp(), metadata={"w": 1 + 2j})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ModelError, match=r"metadata\['loop'\] contains itself"):
        bundler.onnx.save_model("m", make_mlp(), metadata={"loop": loop})


def test_metadata_takes_numpy_values_as_bentoml_does() -> None:
    # Refused before ("metadata['cv'] is a dict ..."): sklearn's cross_validate gives arrays, numpy
    # reductions give numpy scalars. BentoML stores them as lists and Python numbers; so does bundler.
    metadata = {"cv": {"test_score": np.array([0.5, 0.75])}, "acc": np.float32(0.5), "n": [np.int64(3)]}
    model = bundler.onnx.save_model("m", make_mlp(), metadata=metadata)
    want = {"cv": {"test_score": [0.5, 0.75]}, "acc": 0.5, "n": [3]}
    assert model.info.metadata == want
    assert bundler.onnx.get("m").info.metadata == want
    assert type(bundler.onnx.get("m").info.metadata["n"][0]) is int


def test_model_yaml_writes_shared_metadata_out_without_aliases() -> None:
    shared = {"mean": [0.5, 0.5]}
    model = bundler.onnx.save_model("m", make_mlp(), metadata={"train": shared, "eval": shared})
    text = (model.path / "model.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text)["metadata"] == {"train": shared, "eval": shared}


def test_invalid_onnx_graph_is_refused() -> None:
    proto = make_mlp()
    proto.graph.node[0].input[1] = "no_such_tensor"
    with pytest.raises(ModelError, match=r"not valid ONNX"):
        bundler.onnx.save_model("broken", proto)
    assert bundler.models.list() == []


# -- get / load_model ------------------------------------------------------------------------------
def test_get_missing_and_foreign_models() -> None:
    with pytest.raises(NotFound, match=r"model 'nope' not found.*bundler models list"):
        bundler.onnx.get("nope")
    saved = bundler.onnx.save_model("mlp", make_mlp())
    with pytest.raises(NotFound, match=r"model mlp:0000000000000000 not found"):
        bundler.onnx.get("mlp:0000000000000000")
    info_path = saved.path / "model.yaml"
    info = yaml.safe_load(info_path.read_text())
    info["module"] = "bundler.sklearn"
    info_path.write_text(yaml.safe_dump(info))
    with pytest.raises(ModelError, match=r"saved by 'bundler.sklearn', not 'bundler.onnx'"):
        bundler.onnx.get("mlp")
    with pytest.raises(ModelError, match=r"saved by 'bundler.sklearn'"):
        bundler.onnx.load_model(bundler.models.get("mlp"))


def test_load_model_by_tag_model_and_with_options() -> None:
    saved = bundler.onnx.save_model("mlp", make_mlp())
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    want = reference_run(make_mlp(), {"x": x})[0]
    for target in ("mlp", "mlp:latest", saved.tag, saved):
        session = bundler.onnx.load_model(target)
        assert isinstance(session, ort.InferenceSession)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-6)
        assert session.get_providers() == ["CPUExecutionProvider"]


def test_default_providers_pure_function() -> None:
    cuda, cpu = "CUDAExecutionProvider", "CPUExecutionProvider"
    assert fonnx.default_providers([cuda, cpu], 1) == [cuda, cpu]
    assert fonnx.default_providers([cuda, cpu], 0) == [cpu]
    assert fonnx.default_providers([cpu], 4) == [cpu]
    assert fonnx.default_providers(["TensorrtExecutionProvider", cuda, cpu], 2) == [cuda, cpu]


def test_unavailable_provider_is_a_provider_error() -> None:
    bundler.onnx.save_model("mlp", make_mlp())
    missing = missing_provider()
    with pytest.raises(ProviderError, match=rf"{missing} not available.*available: .*CPUExecution"):
        bundler.onnx.load_model("mlp", providers=[missing, "CPUExecutionProvider"])
    model = bundler.onnx.get("mlp").with_options(providers=["NoSuchExecutionProvider"])
    with pytest.raises(ProviderError, match=r"NoSuchExecutionProvider"):
        bundler.onnx.load_model(model)
    with pytest.raises(ProviderError, match=r"must be a list"):
        bundler.onnx.load_model("mlp", providers="CPUExecutionProvider")  # type: ignore[arg-type]


def test_provider_with_options_may_be_a_list_pair() -> None:
    # A [name, options] pair (as from YAML or JSON config) was called "not available on this machine";
    # onnxruntime itself takes only tuples. Now it is made a tuple; anything else is named.
    bundler.onnx.save_model("mlp", make_mlp())
    cpu = "CPUExecutionProvider"
    session = bundler.onnx.load_model("mlp", providers=[[cpu, {"arena_extend_strategy": "kSameAsRequested"}]])
    assert session.get_providers() == [cpu]
    assert bundler.onnx.load_model("mlp", providers=[(cpu, {})]).get_providers() == [cpu]
    with pytest.raises(
        ProviderError, match=r"providers\[1\] is 3; give a provider name or a \(name, options"
    ):
        bundler.onnx.load_model("mlp", providers=[cpu, 3])


def test_user_session_options_are_used_as_given() -> None:
    bundler.onnx.save_model("mlp", make_mlp())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = bundler.onnx.load_model("mlp", session_options=options)
    got = session.get_session_options()
    assert (got.intra_op_num_threads, got.inter_op_num_threads) == (1, 3)
    assert got.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    via_model = bundler.onnx.load_model(bundler.onnx.get("mlp").with_options(session_options=options))
    assert via_model.get_session_options().inter_op_num_threads == 3
    with pytest.raises(ModelError, match=r"session_options must be an onnxruntime.SessionOptions, got dict"):
        bundler.onnx.load_model("mlp", session_options={"intra_op_num_threads": 1})  # type: ignore[arg-type]


def test_default_session_options_use_this_process_cpus() -> None:
    bundler.onnx.save_model("mlp", make_mlp())
    got = bundler.onnx.load_model("mlp").get_session_options()
    assert got.intra_op_num_threads == fonnx.usable_cpus() >= 1
    assert got.inter_op_num_threads == 1


def test_with_options_returns_a_new_model() -> None:
    model = bundler.onnx.save_model("mlp", make_mlp())
    other = model.with_options(providers=["CPUExecutionProvider"])
    assert other is not model and isinstance(other, Model)
    assert model.options == {} and other.options == {"providers": ["CPUExecutionProvider"]}
    assert other.with_options(session_options=None).options == other.options


def test_broken_model_file_is_a_model_error() -> None:
    model = bundler.onnx.save_model("mlp", make_mlp())
    model.model_file.write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"cannot load model mlp:\w+ from .*saved_model.onnx"):
        bundler.onnx.load_model("mlp")


def _cuda_usable() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers() and fonnx.cuda_device_count() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_usable(), reason="needs onnxruntime-gpu and a visible CUDA device")
def test_default_session_uses_cuda_when_present() -> None:
    bundler.onnx.save_model("mlp", make_mlp())
    session = bundler.onnx.load_model("mlp")
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    x = np.ones((4, 64), np.float32)
    # The CUDA provider multiplies in TF32 by default on Ampere and newer: about 3 significant digits.
    np.testing.assert_allclose(
        session.run(None, {"x": x})[0], reference_run(make_mlp(), {"x": x})[0], rtol=1e-2, atol=1e-2
    )


# -- OnnxSession -----------------------------------------------------------------------------------
@pytest.fixture
def multi() -> fonnx.OnnxSession:
    bundler.onnx.save_model("multi", make_multi_io())
    return fonnx.OnnxSession.load("multi")


def test_session_specs(multi: fonnx.OnnxSession) -> None:
    assert [(s.name, s.dtype, s.shape) for s in multi.inputs] == [
        ("a", np.dtype("float32"), ("batch", 4)),
        ("b", np.dtype("float32"), ("batch", 4)),
        ("k", np.dtype("int64"), ("batch", 1)),
    ]
    assert [s.name for s in multi.outputs] == ["sum", "prod", "k2"]
    assert multi.providers == ["CPUExecutionProvider"]


def test_prepare_positional_keyword_and_dict_agree(multi: fonnx.OnnxSession) -> None:
    a = [[1.5, 2, 3, 4]]
    b = np.ones((1, 4))  # float64: cast
    k = [[7]]
    feeds = [
        multi.prepare((a, b, k), {}),
        multi.prepare((), {"k": k, "b": b, "a": a}),
        multi.prepare(({"a": a, "b": b, "k": k},), {}),
        multi.prepare((a,), {"k": k, "b": b}),
    ]
    for feed in feeds:
        assert list(feed) == ["a", "b", "k"]
        assert [v.dtype for v in feed.values()] == [np.float32, np.float32, np.int64]
        np.testing.assert_array_equal(feed["a"], np.array(a, np.float32))
    out = multi.format(multi.run(feeds[0]))
    assert isinstance(out, tuple) and len(out) == 3
    np.testing.assert_array_equal(out[0], [[2.5, 3, 4, 5]])
    np.testing.assert_array_equal(out[2], [[14]])


def test_prepare_casts_ints_and_whole_floats(multi: fonnx.OnnxSession) -> None:
    feed = multi.prepare(([[1, 2, 3, 4]], np.zeros((1, 4), np.int32), np.array([[3.0]])), {})
    assert feed["a"].dtype == np.float32 and feed["b"].dtype == np.float32
    assert feed["k"].dtype == np.int64 and feed["k"][0, 0] == 3


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (np.ones((1, 4)), np.ones((1, 4)), [[1]], 4),
            {},
            r"takes 3 input\(s\) \(a, b, k\) but 4 were given",
        ),
        (
            (),
            {"a": [[1.0] * 4], "bb": [[1.0] * 4], "k": [[1]]},
            "unknown input 'bb' \\(did you mean 'b'\\?\\)",
        ),
        ((np.ones((1, 4)),), {"a": np.ones((1, 4))}, "input 'a' was given twice"),
        ((np.ones((1, 4)),), {}, "missing input\\(s\\) 'b', 'k'; the inputs are a, b, k"),
        (
            (np.ones((1, 5)), np.ones((1, 4)), [[1]]),
            {},
            r"input 'a' expects shape float32 \[batch, 4\] but got shape \[1, 5\]",
        ),
        (
            (np.ones(4), np.ones((1, 4)), [[1]]),
            {},
            r"input 'a' expects shape float32 \[batch, 4\] but got shape \[4\]",
        ),
        (
            (np.ones((1, 4)), np.ones((1, 4)), [[1.5]]),
            {},
            "input 'k' expects int64 but got float64 values that are not",
        ),
        ((np.ones((1, 4)), [[1, 2], [3]], [[1]]), {}, "input 'b' expects .*not an array|input 'b' .*ragged"),
        (
            (np.ones((1, 4)), [["a", "b", "c", "d"]], [[1]]),
            {},
            "input 'b' expects float32 \\[batch, 4\\] but got <U1",
        ),
    ],
)
def test_prepare_errors_name_the_input(
    multi: fonnx.OnnxSession, args: tuple, kwargs: dict, message: str
) -> None:
    with pytest.raises(InferenceInputError, match=message) as info:
        multi.prepare(args, kwargs)
    assert str(info.value).startswith("multi:")
    assert info.value.http_status == 400


def test_prepare_refuses_values_the_dtype_cannot_hold(multi: fonnx.OnnxSession) -> None:
    a = np.ones((1, 4))
    with pytest.raises(
        InferenceInputError, match=r"input 'k' expects int64, whose range is .* got values from"
    ):
        multi.prepare((a, a, [[1e30]]), {})
    with pytest.raises(
        InferenceInputError, match=r"input 'k' expects int64 but got float64 values that are not"
    ):
        multi.prepare((a, a, [[np.inf]]), {})
    with pytest.raises(
        InferenceInputError, match=r"input 'a' expects float32 but some float64 values do not fit"
    ):
        multi.prepare(([[1e300, 0, 0, 0]], a, [[1]]), {})
    feed = multi.prepare((a, a, np.array([[2**40]], np.uint64)), {})
    assert feed["k"][0, 0] == 2**40


def test_prepare_refuses_inputs_disagreeing_on_a_named_dim(multi: fonnx.OnnxSession) -> None:
    with pytest.raises(
        InferenceInputError, match="input 'b' has size 3 on axis 0 \\('batch'\\) but input 'a' has 2"
    ):
        multi.prepare((np.ones((2, 4)), np.ones((3, 4)), [[1], [2]]), {})


def test_single_output_is_an_array() -> None:
    bundler.onnx.save_model("clf", make_classifier(size=8, classes=5))
    session = fonnx.OnnxSession.load("clf")
    out = session.format(session.run(session.prepare((np.random.rand(3, 8, 8, 3),), {})))
    assert isinstance(out, np.ndarray) and out.shape == (3, 5)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)


def test_run_translates_onnxruntime_errors(multi: fonnx.OnnxSession) -> None:
    # Feeds that skip prepare() reach onnxruntime unchecked: its errors still come out as bundler errors.
    with pytest.raises(InferenceInputError, match=r"multi:.*onnxruntime refused the inputs"):
        multi.run(
            {"a": np.ones((1, 4), np.float64), "b": np.ones((1, 4), np.float32), "k": np.ones((1, 1), int)}
        )
    with pytest.raises(ModelError, match=r"multi:.*onnxruntime failed to run the model"):
        multi.run(
            {"a": np.ones((2, 4), np.float32), "b": np.ones((3, 4), np.float32), "k": np.ones((2, 1), int)}
        )


def test_cpu_sessions_run_through_the_bare_call_with_the_same_results(multi: fonnx.OnnxSession) -> None:
    # A CPU-only session skips onnxruntime's per-call Python checks (prepare() has done them).
    assert multi.providers == ["CPUExecutionProvider"] and multi._bare_run is not None
    rng = np.random.default_rng(0)
    feed = multi.prepare((rng.random((3, 4)), rng.random((3, 4)), np.ones((3, 1), int)), {})
    wrapped = multi.session.run(None, feed)
    for ours, theirs in zip(multi.run(feed), wrapped, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # A feed missing an input takes the checked path: a clear message, not a failure inside a kernel.
    with pytest.raises(ModelError, match=r"multi:.*missing from input feed"):
        multi.run({"a": feed["a"], "b": feed["b"]})


def test_public_alias_module_matches_framework_module() -> None:
    import bundler.frameworks.onnx as impl

    assert set(bundler.onnx.__all__) == set(impl.__all__)
    for name in impl.__all__:
        assert getattr(bundler.onnx, name) is getattr(impl, name)


def _one_node(op: str, elem: int, shape: list) -> Any:
    from onnx import helper

    x = helper.make_tensor_value_info("x", elem, shape)
    y = helper.make_tensor_value_info("y", elem, shape)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], op.lower(), [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_bytes_for_a_string_input_are_decoded_not_read_past_their_cells() -> None:
    from onnx import TensorProto

    bundler.onnx.save_model("echo", _one_node("Identity", TensorProto.STRING, ["n", 3]))
    runner = bundler.onnx.get("echo").to_runner()
    runner.init_local()
    out = runner.run.run([[b"a", b"b", b"c"]])  # was [['abcZ\x05' 'bcZ\x05' 'cZ\x05']]
    assert out.tolist() == [["a", "b", "c"]]
    with pytest.raises(InferenceInputError, match="bytes that are not UTF-8"):
        runner.run.run([[b"\xff", b"b", b"c"]])


def test_a_scalar_input_stays_a_scalar() -> None:
    from onnx import TensorProto

    bundler.onnx.save_model("neg", _one_node("Neg", TensorProto.FLOAT, []))
    runner = bundler.onnx.get("neg").to_runner()
    runner.init_local()
    out = runner.run.run(1.5)  # np.ascontiguousarray made it shape (1,)
    assert out.shape == () and float(out) == -1.5
    assert runner.run.run(np.float64(2)).shape == ()


def test_external_data_named_like_a_store_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(
        make_big(None), str(path), save_as_external_data=True, location="model.yaml", size_threshold=0
    )
    with pytest.raises(ModelError, match=r"keeps external data in 'model.yaml', a name the model store uses"):
        bundler.onnx.save_model("big", path)
    assert bundler.models.list() == []


def test_with_options_refuses_a_provider_string() -> None:
    model = bundler.onnx.save_model("mlp", make_mlp())
    with pytest.raises(ProviderError, match=r"must be a list of provider names, e.g. \['CPU"):
        model.with_options(providers="CPUExecutionProvider")  # type: ignore[arg-type]


# -- custom_objects and external_modules (BentoML's save_model arguments) ---------------------------
def test_custom_objects_and_external_modules_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundler_home: Path
) -> None:
    import subprocess
    import sys

    src = tmp_path / "src"
    (src / "tok_pkg").mkdir(parents=True)
    (src / "tok_pkg" / "__init__.py").write_text("from .vocab import Vocab\n")
    (src / "tok_pkg" / "vocab.py").write_text(
        "class Vocab:\n    def __init__(self, words):\n        self.words = words\n"
    )
    (src / "scaler_mod.py").write_text("class Scaler:\n    factor = 2.0\n")
    monkeypatch.syspath_prepend(str(src))
    import scaler_mod  # type: ignore[import-not-found]
    import tok_pkg  # type: ignore[import-not-found]

    saved = bundler.onnx.save_model(
        "mlp",
        make_mlp(),
        custom_objects={
            "labels": ["cat", "dog"],
            "vocab": tok_pkg.Vocab(["a", "b"]),
            "scaler": scaler_mod.Scaler(),
        },
        external_modules=[tok_pkg, scaler_mod],
    )
    assert saved.info["custom_objects"] == ["labels", "scaler", "vocab"]
    assert saved.info["external_modules"] == ["scaler_mod", "tok_pkg"]
    assert verify_manifest(saved.path) == []
    got = bundler.onnx.get("mlp").custom_objects
    assert got["labels"] == ["cat", "dog"] and got["vocab"].words == ["a", "b"]

    # Another process, where the user's modules are not importable: the model's own copies are used.
    code = (
        "import bundler; c = bundler.onnx.get('mlp').custom_objects;"
        " print(c['vocab'].words, c['scaler'].factor, type(c['scaler']).__module__)"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**__import__("os").environ, "PYTHONPATH": str(root), "BUNDLER_HOME": str(bundler_home)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['a', 'b'] 2.0 scaler_mod"

    # A model saved without them has none.
    assert bundler.onnx.save_model("plain", make_mlp()).custom_objects == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"custom_objects": ["labels"]}, r"custom_objects must be a dict, got list"),
        ({"custom_objects": {1: "x"}}, r"custom_objects keys must be str; 1 is not"),
        (
            {"custom_objects": {"fn": lambda x: x}},
            r"custom_objects\['fn'\] \(a function\) cannot be pickled .*defined at module level",
        ),
        ({"external_modules": [np.float32]}, r"external_modules\[0\] is a type, not a module"),
        ({"external_modules": np}, r"external_modules must be a list of modules"),
        (
            {"external_modules": [__import__("sys")]},
            r"external_modules\[0\]: module 'sys' has no source file",
        ),
    ],
)
def test_bad_custom_objects_and_external_modules(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        bundler.onnx.save_model("mlp", make_mlp(), **kwargs)
    assert bundler.models.list() == []


def test_custom_objects_whose_module_is_gone_say_how_to_save_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gone_mod.py").write_text("class Gone:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_mod  # type: ignore[import-not-found]

    bundler.onnx.save_model("mlp", make_mlp(), custom_objects={"x": gone_mod.Gone()})
    (tmp_path / "gone_mod.py").unlink()
    monkeypatch.delitem(__import__("sys").modules, "gone_mod")
    with pytest.raises(
        ModelError,
        match=r"model mlp:\w+: custom_objects cannot be loaded: No module named 'gone_mod'"
        r".*external_modules=",
    ):
        bundler.onnx.get("mlp").custom_objects  # noqa: B018


def test_batch_dim_as_bentomls_input_output_pair() -> None:
    # BentoML's ModelSignature takes batch_dim=(input_axis, output_axis); the same axis twice is an int.
    for batch_dim in [(0, 0), [0, 0]]:
        saved = bundler.onnx.save_model(
            "mlp", make_mlp(), signatures={"run": {"batchable": True, "batch_dim": batch_dim}}
        )
        assert saved.info["signatures"] == {"run": {"batchable": True, "batch_dim": 0}}
    with pytest.raises(
        ModelError,
        match=r"signatures\['run'\]\['batch_dim'\] is \(0, 1\): inputs batched on axis 0 and outputs"
        r" on axis 1 is not supported; export the model with the batch on the same axis",
    ):
        bundler.onnx.save_model(
            "mlp", make_mlp(), signatures={"run": {"batchable": True, "batch_dim": (0, 1)}}
        )
    with pytest.raises(ModelError, match=r"batch_dim'\] must be an int >= 0 or a pair of them"):
        bundler.onnx.save_model("mlp", make_mlp(), signatures={"run": {"batch_dim": (0, 0, 0)}})


def test_save_into_a_full_store_is_a_store_error_and_stores_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from bundler.exceptions import StoreError

    def save_model(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", save_model)
    with pytest.raises(
        StoreError, match=r"cannot write to the model store at .*: No space left on device; free"
    ):
        bundler.onnx.save_model("full", make_mlp())
    assert bundler.models.list() == []
