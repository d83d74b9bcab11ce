"""Kubernetes manifests: valid for three Kubernetes versions, safe defaults, probes that match the server."""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
import re
import threading
import time
from pathlib import Path

import kubernetes_validate
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from onnx import TensorProto, helper, numpy_helper

import bundler.containerize as cz
from bundler.deploy import (
    CUDA_PROVIDERS,
    STARTUP_BASE_S,
    STARTUP_LOAD_BYTES_PER_S,
    deploy_kubernetes,
    kubernetes_manifests,
    parse_quantity,
    startup_budget_seconds,
    write_manifests,
)
from bundler.exceptions import BadInput
from bundler.store import Tag, bundle_store

DIGEST = "sha256:" + hashlib.sha256(b"lock").hexdigest()
INFO = {
    "name": "sr",
    "version": "0ab1cd2ef3gh4jkm",
    "tag": "sr:0ab1cd2ef3gh4jkm",
    "lock_digest": DIGEST,
    "models": [{"tag": "sr-model:0ab1cd2ef3gh4jkp", "size": 120 * 2**20}],
    "apis": [{"name": "sr", "route": "/sr"}],
}
LABEL_KEY_RE = re.compile(
    r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-._A-Za-z0-9]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[-._A-Za-z0-9]{0,61}[A-Za-z0-9])?)?$")
DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _three_versions() -> list[str]:
    """Return the newest Kubernetes minor version kubernetes-validate ships, and the two before it."""
    minors = sorted({tuple(int(p) for p in v.split(".")[:2]) for v in all_versions()})
    return [f"{major}.{minor}.0" for major, minor in minors[-3:]]


VERSIONS = _three_versions()

OPTION_SETS = {
    "defaults": {},
    "gpu-namespace-image": {
        "gpu": 2,
        "namespace": "ml-prod",
        "image": "registry.example.com:5000/team/sr:1.2",
    },
    "autoscale-range": {"min_replicas": 2, "max_replicas": 10, "cpu": "500m", "memory": "2.5Gi"},
    "fixed-replicas-port": {"replicas": 3, "max_replicas": 3, "port": 8080, "cpu": "4", "memory": "16Gi"},
}


def _kinds(manifests: list[dict]) -> dict[str, dict]:
    return {m["kind"]: m for m in manifests}


def _container(manifests: list[dict]) -> dict:
    return _kinds(manifests)["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_ships_three_kubernetes_versions() -> None:
    assert len(VERSIONS) == 3
    majors_minors = [tuple(int(p) for p in v.split(".")[:2]) for v in VERSIONS]
    assert majors_minors[2][1] - majors_minors[0][1] == 2


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_manifests_validate_against_kubernetes_schemas(tmp_path: Path, options: dict, version: str) -> None:
    manifests = kubernetes_manifests(INFO, tmp_path, **options)
    assert [m["kind"] for m in manifests] == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    for manifest in manifests:
        # strict: unknown fields are errors, so a misspelled key cannot slip through.
        assert kubernetes_validate.validate(manifest, version, strict=True) == version.rsplit(".", 1)[0]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}),
        lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="45"),
        lambda d: d["spec"].update(selector="app=sr"),
    ],
    ids=["misspelled-key", "string-for-integer", "wrong-shape"],
)
def test_schema_check_catches_broken_manifests(tmp_path: Path, mutate) -> None:
    deployment = copy.deepcopy(kubernetes_manifests(INFO, tmp_path)[0])
    mutate(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_names_labels_and_quantities_are_valid(tmp_path: Path, options: dict) -> None:
    info = {**INFO, "name": "9lives_super.res", "tag": "9lives_super.res:0ab1cd2ef3gh4jkm"}
    manifests = kubernetes_manifests(info, tmp_path, **options)
    for m in manifests:
        assert DNS1035_RE.match(m["metadata"]["name"]), m["metadata"]["name"]
        labels = dict(m["metadata"]["labels"])
        if m["kind"] == "Deployment":
            labels.update(m["spec"]["template"]["metadata"]["labels"])
        for key, value in labels.items():
            assert LABEL_KEY_RE.match(key), key
            assert LABEL_VALUE_RE.match(value) and len(value) <= 63, (key, value)
        assert m["metadata"]["annotations"]["bundler.dev/tag"] == info["tag"]
        assert m["metadata"]["annotations"]["bundler.dev/lock-digest"] == DIGEST
        assert DIGEST.startswith("sha256:" + m["metadata"]["labels"]["bundler.dev/lock-digest"])
        assert m["metadata"].get("namespace") == options.get("namespace")
    resources = _container(manifests)["resources"]
    for value in [*resources["requests"].values(), resources["limits"]["cpu"], resources["limits"]["memory"]]:
        assert parse_quantity(value, "test") > 0


def test_selector_is_stable_across_versions(tmp_path: Path) -> None:
    """A new bundle version must roll the same Deployment: the immutable selector may not name the version."""
    old = _kinds(kubernetes_manifests(INFO, tmp_path))
    new = _kinds(kubernetes_manifests({**INFO, "version": "zzzz", "tag": "sr:zzzz"}, tmp_path))
    assert old["Deployment"]["spec"]["selector"] == new["Deployment"]["spec"]["selector"]
    assert old["Service"]["spec"]["selector"] == new["Service"]["spec"]["selector"]
    assert (
        old["Deployment"]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"]
        == INFO["version"]
    )
    pod_labels = new["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert new["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert new["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_pod_is_restricted_non_root_and_read_only(tmp_path: Path) -> None:
    manifests = kubernetes_manifests(INFO, tmp_path)
    pod = _kinds(manifests)["Deployment"]["spec"]["template"]["spec"]
    c = _container(manifests)
    # The Pod Security "restricted" profile, checked field by field.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]
    assert pod["automountServiceAccountToken"] is False


def test_probes_drain_and_autoscaler(tmp_path: Path) -> None:
    manifests = kubernetes_manifests(INFO, tmp_path, min_replicas=2, max_replicas=6)
    kinds = _kinds(manifests)
    c = _container(manifests)
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"name": "PORT", "value": "3000"} in c["env"]
    assert c["ports"][0]["containerPort"] == 3000
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = kinds["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + 30
    # The HorizontalPodAutoscaler owns the replica count; a spec.replicas would undo it on every apply.
    assert "replicas" not in kinds["Deployment"]["spec"]
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"


def test_default_maximum_stays_an_int32(tmp_path: Path) -> None:
    """4 x a large minimum would overflow the API's int32 maxReplicas: the default stops at its limit."""
    spec = _kinds(kubernetes_manifests(INFO, tmp_path, min_replicas=2**30))["HorizontalPodAutoscaler"]["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2**30, 2**31 - 1)


def test_replicas_defaults(tmp_path: Path) -> None:
    hpa = _kinds(kubernetes_manifests(INFO, tmp_path, replicas=3))["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    hpa = _kinds(kubernetes_manifests(INFO, tmp_path, min_replicas=2))["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)


def test_gpu_sets_limit_providers_and_scheduling_hints(tmp_path: Path) -> None:
    cpu_only = kubernetes_manifests(INFO, tmp_path)
    assert "nvidia.com/gpu" not in _container(cpu_only)["resources"]["limits"]
    assert "BUNDLER_PROVIDERS" not in {e["name"] for e in _container(cpu_only)["env"]}
    assert "tolerations" not in _kinds(cpu_only)["Deployment"]["spec"]["template"]["spec"]

    gpu = kubernetes_manifests(INFO, tmp_path, gpu=2)
    c = _container(gpu)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"name": "BUNDLER_PROVIDERS", "value": CUDA_PROVIDERS} in c["env"]
    pod = _kinds(gpu)["Deployment"]["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # CUDA initialisation gets its own share of the startup budget.
    assert c["startupProbe"]["failureThreshold"] > _container(cpu_only)["startupProbe"]["failureThreshold"]


def _recorded(root: Path, lock: list[str], **docker: str | None) -> dict:
    """Write a lock pinning ``lock`` under ``root``; return INFO with ``docker`` as bundle.yaml has it."""
    path = root / "env" / "python" / "requirements.lock.txt"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"{p} \\\n    --hash=sha256:00\n    # via -r requirements.in\n" for p in lock))
    keys = {"cuda_version": None, "base_image": None, "dockerfile_template": None}
    return {**INFO, "docker": {"distro": "debian", **keys, **docker}}


CPU_LOCK = ["numpy==2.0.0", "onnxruntime==1.20.0"]
GPU_LOCK = [*CPU_LOCK, "onnxruntime-gpu==1.20.0"]


@pytest.mark.parametrize(
    ("lock", "docker", "gaps"),
    [
        (
            CPU_LOCK,
            {},
            r"its requirements.lock.txt has no onnxruntime-gpu and bundle.yaml has no docker.cuda_version",
        ),
        (CPU_LOCK, {"cuda_version": "12.4.1"}, r"its requirements.lock.txt has no onnxruntime-gpu, so"),
        (GPU_LOCK, {}, r"bundle.yaml has no docker.cuda_version \(its image has no CUDA libraries\), so"),
    ],
)
def test_gpu_on_a_bundle_not_built_for_cuda_is_refused(
    tmp_path: Path, lock: list[str], docker: dict, gaps: str
) -> None:
    """With --gpu the pods ask for the CUDA provider: a CPU-only image would never become ready."""
    info = _recorded(tmp_path, lock, **docker)
    kubernetes_manifests(info, tmp_path)  # fine on CPU
    with pytest.raises(BadInput, match=rf"^--gpu 1: bundle sr:\w+ is not built for CUDA: {gaps}") as err:
        kubernetes_manifests(info, tmp_path, gpu=1)
    assert "add onnxruntime-gpu to python.packages and set docker.cuda_version" in str(err.value)


@pytest.mark.parametrize(
    ("lock", "docker"),
    [
        (GPU_LOCK, {"cuda_version": "12.4.1"}),
        (["onnxruntime_GPU==1.20.0"], {"cuda_version": "11.8.0"}),
        # CUDA from NVIDIA's pip wheels (onnxruntime-gpu[cuda,cudnn]), or from the user's own base image.
        ([*GPU_LOCK, "nvidia-cuda-runtime-cu12==12.4.127", "nvidia-cudnn-cu12==9.1.0.70"], {}),
        (GPU_LOCK, {"base_image": "nvcr.io/nvidia/pytorch:24.05-py3"}),
    ],
)
def test_gpu_on_a_bundle_built_for_cuda(tmp_path: Path, lock: list[str], docker: dict) -> None:
    c = _container(kubernetes_manifests(_recorded(tmp_path, lock, **docker), tmp_path, gpu=1))
    assert {"name": "BUNDLER_PROVIDERS", "value": CUDA_PROVIDERS} in c["env"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replicas": 0}, r"--replicas: 0 must be a whole number of at least 1"),
        ({"replicas": True}, r"--replicas: True must be"),
        ({"min_replicas": 5, "max_replicas": 2}, r"--min-replicas 5 is more than --max-replicas 2"),
        ({"max_replicas": 0}, r"--max-replicas: 0 must be"),
        ({"max_replicas": 2**31}, r"--max-replicas: 2147483648 is more than Kubernetes counts replicas to"),
        ({"min_replicas": 2**31}, r"--min-replicas: 2147483648 is more than Kubernetes counts"),
        ({"replicas": 3, "min_replicas": 2}, r"--replicas 3 and --min-replicas 2 disagree"),
        ({"cpu": "1 core"}, r"--cpu: '1 core' is not a Kubernetes quantity"),
        ({"cpu": "0"}, r"--cpu: '0' must be more than 0"),
        ({"cpu": "-1"}, r"--cpu: '-1' is not a Kubernetes quantity"),
        ({"cpu": "0.0001"}, r"--cpu: '0.0001' is finer than 1m .*e.g. '100m'"),
        ({"cpu": "1e-4"}, r"--cpu: '1e-4' is finer than 1m"),
        ({"cpu": "0.5m"}, r"--cpu: '0.5m' is finer than 1m"),
        ({"cpu": "1.0005"}, r"--cpu: '1.0005' is finer than 1m"),
        ({"memory": "1GB"}, r"--memory: '1GB' is not a Kubernetes quantity"),
        ({"memory": "1gi"}, r"--memory: '1gi' is not a Kubernetes quantity.*case-sensitive"),
        ({"memory": "512m"}, r"did you mean '512Mi'"),
        ({"memory": "10Mi"}, r"less than 64Mi"),
        ({"memory": "100Mi"}, r"less than the 120 MiB of models in sr:0ab1cd2ef3gh4jkm"),
        ({"gpu": -1}, r"--gpu: -1 must be a whole number"),
        ({"namespace": "ML_Prod"}, r"--namespace: 'ML_Prod' is not a Kubernetes namespace name"),
        ({"image": "my image"}, r"--image: 'my image' is not an image reference"),
        ({"image": "UPPER/x:1"}, r"--image: 'UPPER/x:1' is not an image reference: 'UPPER' has uppercase"),
        ({"image": "x:"}, r"--image: 'x:' is not an image reference: the tag after ':' is empty"),
        ({"image": "x:1:2"}, r"--image: 'x:1:2' is not an image reference: tag '1:2'"),
        ({"image": "a@b"}, r"--image: 'a@b' is not an image reference: digest 'b'"),
        ({"image": "repo/x:-bad"}, r"--image: 'repo/x:-bad' is not an image reference: tag '-bad'"),
        ({"image": "x@sha256:zz"}, r"--image: 'x@sha256:zz' is not an image reference: digest 'sha256:zz'"),
        ({"port": 70000}, r"port: 70000 must be between 1 and 65535"),
        ({"name": "my.model"}, r"--name: 'my.model' is not a Kubernetes object name"),
        ({"name": "9lives"}, r"--name: '9lives' is not a Kubernetes object name"),
        ({"name": "x" * 64}, r"--name: 'x+' is not a Kubernetes object name"),
    ],
)
def test_bad_options_are_bad_input(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        kubernetes_manifests(INFO, tmp_path, **options)


@pytest.mark.parametrize(("cpu", "memory"), [(" 500m", "2Gi "), ("2\t", "\n1.5Gi")])
def test_quantities_are_written_without_the_whitespace_they_were_given_with(
    tmp_path: Path, cpu: str, memory: str
) -> None:
    """The API server refuses ' 2Gi' ('quantities must match the regular expression ...')."""
    resources = _container(kubernetes_manifests(INFO, tmp_path, cpu=cpu, memory=memory))["resources"]
    for kind in ("requests", "limits"):
        assert resources[kind]["cpu"] == cpu.strip()
        assert resources[kind]["memory"] == memory.strip()


@pytest.mark.parametrize("models", [5, "m:v1", {"tag": "m:v1"}, True])
def test_a_bundle_yaml_whose_models_are_not_a_list_is_bad_input(tmp_path: Path, models: object) -> None:
    """A hand-edited bundle.yaml: a message naming the key and the fix, not a TypeError."""
    with pytest.raises(BadInput, match=r"bundle.yaml: models: .* is not a list .*bundler build"):
        kubernetes_manifests({**INFO, "models": models}, tmp_path)


@pytest.mark.parametrize(
    ("name", "image"),
    [("sr", "sr:0ab1cd2ef3gh4jkm"), ("9lives_super.res", "9lives_super.res:0ab1cd2ef3gh4jkm"),
     ("my..model", "my.model:0ab1cd2ef3gh4jkm"), ("a___b", "a_b:0ab1cd2ef3gh4jkm")],
)  # fmt: skip
def test_default_image_is_what_containerize_tags(tmp_path: Path, name: str, image: str) -> None:
    """A bundle name Docker refuses ('my..model') still gives a valid default image, the containerize one."""
    info = {**INFO, "name": name, "tag": f"{name}:{INFO['version']}"}
    assert _container(kubernetes_manifests(info, tmp_path))["image"] == image
    assert cz._image_tags(info, ()) == [image]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        ("1.5Gi", str(3 * 2**29)),
        ("1e3", "1000"),
        ("1k", "1000"),
        ("1Mi", str(2**20)),
        ("1E", str(10**18)),
        ("1Ei", str(2**60)),
        ("2E3", "2000"),
    ],
)
def test_parse_quantity(text: str, value: str) -> None:
    assert parse_quantity(text, "x") == type(parse_quantity("1", "x"))(value)


def _onnx_model(path: Path, megabytes: int) -> int:
    n = int((megabytes * 2**20 / 4) ** 0.5)
    weight = numpy_helper.from_array(np.random.default_rng(0).random((n, n), dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph), path)
    return path.stat().st_size


def test_startup_budget_grows_with_models_on_disk(tmp_path: Path) -> None:
    """Sizes missing from bundle.yaml are read from the bundle's models/ directory."""
    small = tmp_path / "small"
    big = tmp_path / "big"
    info = {**INFO, "models": [{"tag": "m:v1"}]}
    _onnx_model(small / "models" / "m" / "v1" / "saved_model.onnx", 1)
    weights = big / "models" / "m" / "v1" / "saved_model.onnx.data"
    weights.parent.mkdir(parents=True)
    with open(weights, "wb") as f:  # sparse: the size is what counts, not the bytes
        f.truncate(3 * 2**30)
    size = weights.stat().st_size
    probe_small = _container(kubernetes_manifests(info, small))["startupProbe"]
    probe_big = _container(kubernetes_manifests(info, big, memory="8Gi"))["startupProbe"]
    budget_big = probe_big["periodSeconds"] * probe_big["failureThreshold"]
    assert budget_big == startup_budget_seconds(size)
    assert budget_big >= STARTUP_BASE_S + size / STARTUP_LOAD_BYTES_PER_S
    assert probe_big["failureThreshold"] > probe_small["failureThreshold"]
    pod = _kinds(kubernetes_manifests(info, big, memory="8Gi"))["Deployment"]["spec"]["template"]
    assert pod["metadata"]["annotations"]["bundler.dev/model-bytes"] == str(size)


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def test_docs_startup_budget_table_is_what_the_code_computes() -> None:
    """Every size in docs/kubernetes.md's budget table (both ends of a range) gets the budget it shows."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "kubernetes.md").read_text()
    table = doc.split("| models | CPU budget | GPU budget |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    assert len(rows) >= 4
    for models, cpu, gpu in rows:
        sizes = []
        for part in models.split(" to "):
            m = re.fullmatch(r"(none)|(\d+(?:\.\d+)?) (B|KiB|MiB|GiB)", part)
            assert m, f"docs/kubernetes.md: {models!r}: {part!r} is not a size the test can check"
            sizes.append(0 if m[1] else int(float(m[2]) * _UNITS[m[3]]))
        for size in sizes:
            assert f"{startup_budget_seconds(size)} s" == cpu, (models, size)
            assert f"{startup_budget_seconds(size, gpu=1)} s" == gpu, (models, size)


def test_startup_rate_holds_for_a_real_session(tmp_path: Path) -> None:
    """onnxruntime loads faster than the rate the startup budget assumes, with room to spare."""
    path = tmp_path / "m.onnx"
    size = _onnx_model(path, 60)
    start = time.perf_counter()
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    elapsed = time.perf_counter() - start
    assert elapsed < size / STARTUP_LOAD_BYTES_PER_S, f"{size / elapsed / 2**20:.0f} MiB/s"


def test_write_manifests_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    manifests = kubernetes_manifests(INFO, tmp_path, gpu=1, namespace="ml")
    first = write_manifests(manifests, tmp_path / "a")
    second = write_manifests(kubernetes_manifests(INFO, tmp_path, gpu=1, namespace="ml"), tmp_path / "b")
    assert [p.name for p in first] == ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
    for a, b, m in zip(first, second, manifests, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert yaml.safe_load(a.read_text()) == m
    again = write_manifests(manifests, tmp_path / "a")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in second]


def test_write_manifests_replaces_only_its_own_files_for_the_same_bundle(tmp_path: Path) -> None:
    """-o k8s/ for a second bundle, or a directory holding the user's own service.yaml: nothing is lost."""
    out = tmp_path / "k8s"
    write_manifests(kubernetes_manifests(INFO, tmp_path), out)
    newer = {**INFO, "version": "zzzz", "tag": "sr:zzzz"}
    write_manifests(kubernetes_manifests(newer, tmp_path), out)  # a new version: replaced
    assert "sr:zzzz" in (out / "deployment.yaml").read_text()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = {**INFO, "name": "other", "tag": "other:v1"}
    with pytest.raises(
        BadInput, match=r"deployment.yaml holds the manifests of bundle sr:zzzz, and would be"
    ):
        write_manifests(kubernetes_manifests(other, tmp_path), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "service.yaml").write_text("apiVersion: v1\nkind: Service\n")
    with pytest.raises(BadInput, match=r"service.yaml is not a file `bundler deploy kubernetes` wrote"):
        write_manifests(kubernetes_manifests(INFO, tmp_path), mine)
    assert sorted(os.listdir(mine)) == ["service.yaml"]
    assert (mine / "service.yaml").read_text() == "apiVersion: v1\nkind: Service\n"


def test_write_manifests_refuses_what_is_not_a_file_it_wrote_before_writing_any(tmp_path: Path) -> None:
    """A directory or a dangling link where a manifest goes: refused by name, and nothing written."""
    manifests = kubernetes_manifests(INFO, tmp_path)
    (tmp_path / "a" / "hpa.yaml").mkdir(parents=True)
    with pytest.raises(BadInput, match=r"^-o .*/a: .*/a/hpa.yaml is a directory, where the manifest"):
        write_manifests(manifests, tmp_path / "a")
    assert os.listdir(tmp_path / "a") == ["hpa.yaml"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "pdb.yaml").symlink_to(tmp_path / "nowhere")
    with pytest.raises(BadInput, match=r"/b/pdb.yaml is not a file `bundler deploy kubernetes` wrote"):
        write_manifests(manifests, tmp_path / "b")
    assert os.listdir(tmp_path / "b") == ["pdb.yaml"]
    assert (tmp_path / "b" / "pdb.yaml").is_symlink()


def test_write_manifests_refuses_a_file_as_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(BadInput, match="is not a directory"):
        write_manifests(kubernetes_manifests(INFO, tmp_path), target)


def test_write_manifests_where_no_directory_can_be(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below a regular file, or where nothing can be created: one message naming -o, exit 2, no traceback."""
    manifests = kubernetes_manifests(INFO, tmp_path)
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "deployment.yaml").write_text("x")
    below_a_file = tmp_path / "k8s" / "deployment.yaml" / "sub"
    with pytest.raises(
        BadInput, match=r"^-o .*/sub: cannot write the manifests there \(.*/k8s/deployment.yaml is a file"
    ):
        write_manifests(manifests, below_a_file)

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # as /proc, or a directory of another user, would
    with pytest.raises(BadInput, match=r"^-o .*/new: cannot write the manifests there \(Permission denied\)"):
        write_manifests(manifests, tmp_path / "new")


def _store_bundle() -> None:
    """Store a minimal bundle sr:v1 for the CLI to deploy."""
    store = bundle_store()
    with store.staging() as staged:
        (staged / "bundle.yaml").write_text(yaml.safe_dump({"name": "sr", "version": "v1", "models": []}))
        store.commit(staged, Tag("sr", "v1"))


def test_cli_output_dir_errors_are_one_line(tmp_path: Path) -> None:
    cli = pytest.importorskip("bundler.cli")
    from click.testing import CliRunner

    _store_bundle()
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "sub", Path("/proc/nope")):
        result = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "sr:v1", "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: -o {out}: cannot write the manifests there")
        assert len(result.output.splitlines()) == 1


def test_cli_refuses_an_empty_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-o "$DIR" with DIR unset: exit 2, not four manifests in the current directory."""
    cli = pytest.importorskip("bundler.cli")
    from click.testing import CliRunner

    _store_bundle()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "sr:v1", "-o", ""])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: -o: no directory given (an empty path)")
    assert os.listdir(tmp_path) == []


def test_deploy_kubernetes_from_the_store(tmp_path: Path) -> None:
    """Without lock_digest in bundle.yaml, the digest is the sha256 of the bundle's lock file."""
    store = bundle_store()
    info = {"name": "sr", "version": "v1", "models": [{"tag": "m:v1"}], "apis": []}
    with store.staging() as staged:
        (staged / "bundle.yaml").write_text(yaml.safe_dump(info))
        lock = staged / "env" / "python" / "requirements.lock.txt"
        lock.parent.mkdir(parents=True)
        lock.write_text("numpy==2.0.0 --hash=sha256:00\n")
        size = _onnx_model(staged / "models" / "m" / "v1" / "saved_model.onnx", 1)
        store.commit(staged, Tag("sr", "v1"))
    paths = deploy_kubernetes("sr:latest", tmp_path / "k8s", max_replicas=2)
    deployment = yaml.safe_load(paths[0].read_text())
    expected = hashlib.sha256(b"numpy==2.0.0 --hash=sha256:00\n").hexdigest()
    assert deployment["metadata"]["annotations"] == {
        "bundler.dev/tag": "sr:v1",
        "bundler.dev/lock-digest": expected,
    }
    assert deployment["spec"]["template"]["metadata"]["annotations"]["bundler.dev/model-bytes"] == str(size)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "sr:v1"
    for path in paths:
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), VERSIONS[-1], strict=True)


def test_probes_match_the_real_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real uvicorn: /readyz is 503 while the model loads and 200 after; /livez is 200 throughout."""
    httpx = pytest.importorskip("httpx")
    app_module = pytest.importorskip("bundler.server.app")
    testing = pytest.importorskip("bundler.server.testing")
    import bundler
    from bundler.io import NumpyNdarray
    from bundler.runner.runner import Runner
    from tests.models import make_mlp

    model = bundler.onnx.save_model("mlp", make_mlp(), signatures={"run": {"batchable": True}})
    runner = bundler.onnx.get(str(model.tag)).to_runner()
    svc = bundler.Service("probe", runners=[runner])

    @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
    def predict(x: np.ndarray) -> np.ndarray:
        return runner.run.run(x)

    # Hold the (real) session load until the test has seen the server before its model is loaded.
    loading = threading.Event()
    release = threading.Event()
    real_load = Runner._load

    def gated_load(self: Runner):
        loading.set()
        assert release.wait(20), "the test never released the model load"
        return real_load(self)

    monkeypatch.setattr(Runner, "_load", gated_load)
    container = _container(kubernetes_manifests(INFO, tmp_path))
    live_path = container["livenessProbe"]["httpGet"]["path"]
    ready_path = container["readinessProbe"]["httpGet"]["path"]
    assert container["startupProbe"]["httpGet"]["path"] == ready_path
    timeout = container["readinessProbe"]["timeoutSeconds"]

    with (
        testing.running(app_module.build_app(svc)) as url,
        httpx.Client(base_url=url, timeout=timeout) as client,
    ):
        assert loading.wait(10)
        assert client.get(live_path).status_code == 200
        starting = client.get(ready_path)
        assert starting.status_code == 503, starting.text
        assert starting.headers.get("retry-after")
        release.set()
        start = time.monotonic()
        budget = startup_budget_seconds(0)
        while client.get(ready_path).status_code != 200:
            assert time.monotonic() - start < budget, f"not ready within the startup budget of {budget}s"
            time.sleep(0.05)
        assert client.get(live_path).status_code == 200
        # The metric docs/kubernetes.md tells the Prometheus adapter to scale on.
        metrics = client.get("/metrics").text
        assert 'bundler_runner_queue_depth{runner="mlp"}' in metrics


def test_grace_period_covers_the_servers_drain(tmp_path: Path) -> None:
    """terminationGracePeriodSeconds = preStop sleep + the server's graceful-shutdown timeout + margin."""
    serve = pytest.importorskip("bundler.server.serve")
    drain = inspect.signature(serve.serve).parameters["timeout_graceful_shutdown"].default
    c = _container(kubernetes_manifests(INFO, tmp_path))
    pod = _kinds(kubernetes_manifests(INFO, tmp_path))["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > c["lifecycle"]["preStop"]["sleep"]["seconds"] + drain


def test_writable_paths_are_on_empty_dirs(tmp_path: Path) -> None:
    """With a read-only root, every directory the env points writers at must be an emptyDir mount."""
    manifests = kubernetes_manifests(INFO, tmp_path)
    pod = _kinds(manifests)["Deployment"]["spec"]["template"]["spec"]
    c = _container(manifests)
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in empty]
    env = {e["name"]: e["value"] for e in c["env"]}
    for name in ("TMPDIR", "XDG_CACHE_HOME", "BUNDLER_HOME"):
        assert any(env[name] == m or env[name].startswith(m + "/") for m in mounts), (name, env[name])


def test_docs_autoscaler_example_validates_and_names_the_servers_metric() -> None:
    """The queue-depth HorizontalPodAutoscaler in docs/kubernetes.md is valid and scales on a real metric."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "kubernetes.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    hpas = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "HorizontalPodAutoscaler"]
    assert len(hpas) == 1
    for version in VERSIONS:
        kubernetes_validate.validate(hpas[0], version, strict=True)
    names = [m["pods"]["metric"]["name"] for m in hpas[0]["spec"]["metrics"] if m["type"] == "Pods"]
    metrics = pytest.importorskip("bundler.server.metrics")
    rendered = metrics.Metrics("sr").render().decode()
    assert names and all(f"# TYPE {n} gauge" in rendered for n in names)


def test_lock_digest_as_the_builder_writes_it(tmp_path: Path) -> None:
    """bundle.yaml from `bundler build` keeps a bare hex digest under python.lock_digest."""
    digest = hashlib.sha256(b"numpy==2.0.0\n").hexdigest()
    info = {k: v for k, v in INFO.items() if k != "lock_digest"} | {"python": {"lock_digest": digest}}
    meta = kubernetes_manifests(info, tmp_path)[0]["metadata"]
    assert meta["annotations"]["bundler.dev/lock-digest"] == digest
    assert meta["labels"]["bundler.dev/lock-digest"] == digest[:63]
    no_digest = {k: v for k, v in INFO.items() if k != "lock_digest"}
    assert "bundler.dev/lock-digest" not in kubernetes_manifests(no_digest, tmp_path)[0]["metadata"]["labels"]


def test_cli_writes_manifests_and_refuses_bad_options(tmp_path: Path) -> None:
    """`bundler deploy kubernetes`: four files on success; exit 2 and the message on bad input."""
    cli = pytest.importorskip("bundler.cli")
    from click.testing import CliRunner

    _store_bundle()
    out = tmp_path / "k8s"
    ok = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "sr:latest", "--gpu", "1", "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    assert sorted(os.listdir(out)) == ["deployment.yaml", "hpa.yaml", "pdb.yaml", "service.yaml"]
    bad = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "sr:v1", "--memory", "1GB", "-o", str(out)])
    assert bad.exit_code == 2
    assert "--memory: '1GB' is not a Kubernetes quantity" in bad.output


def test_cli_refuses_gpu_for_a_cpu_only_bundle(tmp_path: Path) -> None:
    """What `bundler build` records for a CPU bundle: no docker.cuda_version, the CPU onnxruntime locked."""
    cli = pytest.importorskip("bundler.cli")
    from click.testing import CliRunner

    store = bundle_store()
    with store.staging() as staged:
        info = _recorded(staged, CPU_LOCK)
        (staged / "bundle.yaml").write_text(yaml.safe_dump({**info, "version": "v1", "tag": "sr:v1"}))
        store.commit(staged, Tag("sr", "v1"))
    out = tmp_path / "k8s"
    result = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "sr:v1", "--gpu", "1", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --gpu 1: bundle sr:v1 is not built for CUDA")
    assert not out.exists()


def _store_bare_bundles(*names: str) -> None:
    """Store a bundle of version v1 with no models under each name (deploy reads only bundle.yaml)."""
    store = bundle_store()
    for name in names:
        with store.staging() as staged:
            (staged / "bundle.yaml").write_text(yaml.safe_dump({"name": name, "version": "v1", "models": []}))
            store.commit(staged, Tag(name, "v1"))


def test_bundles_whose_names_map_to_one_object_name_are_told_and_can_be_named(tmp_path: Path) -> None:
    """'my.model' and 'my-model' both become 'my-model': applied to one namespace, the second would take
    over the first one's Deployment and Service. The command says so, and --name keeps them apart."""
    cli = pytest.importorskip("bundler.cli")
    from click.testing import CliRunner

    _store_bare_bundles("my.model", "my-model")
    plain = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "my-model:v1", "-o", str(tmp_path / "a")])
    assert plain.exit_code == 0, plain.output
    assert "note:" not in plain.output
    dotted = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "my.model:v1", "-o", str(tmp_path / "b")])
    assert dotted.exit_code == 0, dotted.output
    assert "note: the Kubernetes objects of bundle 'my.model' are named 'my-model'" in dotted.output
    assert "give each its own --name" in dotted.output
    args = ["deploy", "kubernetes", "my.model:v1", "--name", "my-dot-model", "-o", str(tmp_path / "c")]
    named = CliRunner().invoke(cli.main, args)
    assert named.exit_code == 0, named.output
    assert "note:" not in named.output
    manifests = [yaml.safe_load((tmp_path / "c" / f).read_text()) for f in sorted(os.listdir(tmp_path / "c"))]
    for m in manifests:
        assert m["metadata"]["name"] == "my-dot-model"
        assert m["metadata"]["labels"]["app.kubernetes.io/name"] == "my-dot-model"
        assert m["metadata"]["labels"]["bundler.dev/bundle"] == "my.model"
        kubernetes_validate.validate(m, VERSIONS[-1], strict=True)
    hpa = next(m for m in manifests if m["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "my-dot-model"


def test_object_name_note_gives_the_reason_for_a_leading_digit(tmp_path: Path) -> None:
    """'1model' becomes 'bundle-1model' because a Service name starts with a letter; the note said it was
    because a Kubernetes name allows no '.' or '_', which the name does not have."""
    cli = pytest.importorskip("bundler.cli")
    from click.testing import CliRunner

    _store_bare_bundles("1model", "2.model")
    digit = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "1model:v1", "-o", str(tmp_path / "a")])
    assert digit.exit_code == 0, digit.output
    reason = "bundle '1model' are named 'bundle-1model' (a Kubernetes name starts with a letter)"
    assert reason in digit.output
    both = CliRunner().invoke(cli.main, ["deploy", "kubernetes", "2.model:v1", "-o", str(tmp_path / "b")])
    assert both.exit_code == 0, both.output
    reasons = "named 'bundle-2-model' (a Kubernetes name allows no '.' or '_' and starts with a letter)"
    assert reasons in both.output
