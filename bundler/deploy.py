"""Kubernetes manifests for a bundle: Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget.

Building the manifests is pure (``kubernetes_manifests`` returns plain dicts, the same bytes for the same
bundle and options); writing them is separate (``write_manifests``). The numbers that are not options are
derived from what the server does, and documented in ``docs/kubernetes.md``:

- ``/livez`` answers 200 as long as the process serves HTTP; ``/readyz`` answers 503 until every model is
  loaded. The startup probe polls ``/readyz``, so liveness never kills a pod that is still loading models;
  its budget grows with the total size of the models in the bundle (``startup_budget_seconds``).
- On deletion a pod first sleeps ``PRESTOP_SLEEP_S`` (endpoints and kube-proxy on every node take a few
  seconds to stop routing to it), then gets SIGTERM and drains in-flight requests; the grace period covers
  both plus a margin, so the kubelet never SIGKILLs a draining server.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from .exceptions import BadInput
from .imageref import default_image, parse_image_ref
from .store import atomic_write_text, bundle_store, sha256_file

__all__ = [
    "CUDA_PROVIDERS",
    "STARTUP_BASE_S",
    "STARTUP_LOAD_BYTES_PER_S",
    "deploy_kubernetes",
    "kubernetes_manifests",
    "model_bytes",
    "object_name",
    "parse_quantity",
    "startup_budget_seconds",
    "write_manifests",
]

LABEL_PREFIX = "bundler.dev"
CUDA_PROVIDERS = "CUDAExecutionProvider,CPUExecutionProvider"

# Interpreter, onnxruntime and uvicorn start in well under a second on a warm node; 30 s covers a cold
# node (image layers not in the page cache) and a throttled CPU.
STARTUP_BASE_S = 30
# Measured here: onnxruntime builds a CPU session at 240-550 MiB/s of model (tests/test_deploy.py and
# docs/kubernetes.md); 50 MiB/s leaves room for cold disks, graph optimisation of deep graphs and
# small CPU requests.
STARTUP_LOAD_BYTES_PER_S = 50 * 2**20
# CUDA context, cuDNN/cuBLAS handles and copying the weights to the device.
STARTUP_GPU_EXTRA_S = 60
STARTUP_PERIOD_S = 5
# Time for the endpoint removal to reach every node before the server stops accepting connections.
PRESTOP_SLEEP_S = 10
# What the server gets after SIGTERM to finish in-flight requests (batches wait at most max_latency_ms).
DRAIN_S = 30
GRACE_MARGIN_S = 5
CPU_TARGET_UTILIZATION = 70
MAX_REPLICAS = 2**31 - 1  # minReplicas and maxReplicas are int32 in the API

_QUANTITY_RE = re.compile(
    r"^(?P<num>(?:\d+(?:\.\d*)?|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
)
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[-._A-Za-z0-9]{0,61}[A-Za-z0-9])?)?$")


def parse_quantity(value: str, what: str) -> Decimal:
    """Parse a Kubernetes quantity (``500m``, ``2``, ``1.5Gi``, ``1e9``); raise BadInput naming ``what``."""
    text = str(value).strip()
    m = _QUANTITY_RE.match(text)
    if not m:
        raise BadInput(
            f"{what}: {value!r} is not a Kubernetes quantity (use e.g. '500m' or '2' for CPU, "
            "'512Mi' or '4Gi' for memory; suffixes are case-sensitive: Ki Mi Gi Ti, k M G T, m)"
        )
    suffix = m.group("suffix") or ""
    if suffix not in _SUFFIX:
        # A decimal exponent ('1e3', '1E-3'); 'E' and 'Ei' are the exa suffixes.
        return Decimal(m.group("num") + suffix)
    return Decimal(m.group("num")) * _SUFFIX[suffix]


def _check_options(
    *,
    replicas: int,
    min_replicas: int | None,
    max_replicas: int | None,
    cpu: str,
    memory: str,
    gpu: int,
    port: int,
) -> tuple[int, int]:
    for what, value in (
        ("--replicas", replicas),
        ("--min-replicas", min_replicas),
        ("--max-replicas", max_replicas),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadInput(f"{what}: {value!r} must be a whole number of at least 1")
        if value is not None and value > MAX_REPLICAS:
            # The autoscaler's replica counts are int32: the API server refuses the whole object.
            raise BadInput(f"{what}: {value!r} is more than Kubernetes counts replicas to ({MAX_REPLICAS})")
    if min_replicas is not None and replicas not in (1, min_replicas):
        raise BadInput(
            f"--replicas {replicas} and --min-replicas {min_replicas} disagree: --replicas is the "
            "autoscaler's minimum; give one of them"
        )
    low = min_replicas if min_replicas is not None else replicas
    high = max_replicas if max_replicas is not None else min(4 * low, MAX_REPLICAS)
    if low > high:
        raise BadInput(
            f"--min-replicas {low} is more than --max-replicas {high}: give a maximum of at least {low}"
        )
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise BadInput(f"--gpu: {gpu!r} must be a whole number of GPUs per pod (0 for none)")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadInput(f"port: {port!r} must be between 1 and 65535")
    cpus = parse_quantity(cpu, "--cpu")
    if cpus <= 0:
        raise BadInput(f"--cpu: {cpu!r} must be more than 0 (e.g. '500m' or '2')")
    if (cpus * 1000) % 1:
        # Kubernetes counts CPU in whole millicores: '0.0001' would not be the share the pod is given.
        raise BadInput(
            f"--cpu: {cpu!r} is finer than 1m (a thousandth of a CPU), the smallest CPU amount Kubernetes"
            " counts; give whole millicores (e.g. '100m' or '1.5')"
        )
    mem = parse_quantity(memory, "--memory")
    if memory.strip().endswith("m"):
        raise BadInput(
            f"--memory: {memory!r} means {mem} bytes ('m' is milli); did you mean '{memory[:-1]}Mi'?"
        )
    if mem < 64 * 2**20:
        raise BadInput(f"--memory: {memory!r} is less than 64Mi, too little for Python and onnxruntime")
    return low, high


def model_bytes(bundle_info: dict, bundle_dir: Path) -> int:
    """Return the total size of the bundle's models: ``size`` from bundle.yaml, else the files on disk."""
    models = bundle_info.get("models") or []
    if not isinstance(models, list):
        raise BadInput(
            f"{Path(bundle_dir) / 'bundle.yaml'}: models: {models!r} is not a list of models; the file was"
            " changed after `bundler build` (`bundler verify` names what differs): build the bundle again"
        )
    total = 0
    for model in models:
        size = model.get("size") if isinstance(model, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            total += size
            continue
        tag = str(model.get("tag", "") if isinstance(model, dict) else model)
        name, _, version = tag.partition(":")
        total += _dir_bytes(Path(bundle_dir) / "models" / name / version) if name and version else 0
    if total == 0:
        # bundle.yaml without sizes or model tags: count everything the bundle ships under models/.
        total = _dir_bytes(Path(bundle_dir) / "models")
    return total


def _dir_bytes(root: Path) -> int:
    if not root.is_dir():
        return 0
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            p = os.path.join(dirpath, fn)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def startup_budget_seconds(size_bytes: int, *, gpu: int = 0) -> int:
    """Return how long a pod may take to load ``size_bytes`` of models before Kubernetes restarts it."""
    budget = STARTUP_BASE_S + math.ceil(size_bytes / STARTUP_LOAD_BYTES_PER_S)
    if gpu:
        budget += STARTUP_GPU_EXTRA_S
    # Round up to whole probe periods so the budget is exactly period x failureThreshold.
    return math.ceil(budget / STARTUP_PERIOD_S) * STARTUP_PERIOD_S


def _k8s_name(name: str) -> str:
    # Bundle names allow '.' and '_'; Service names are DNS-1035 labels (letters, digits, '-').
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not out or not out[0].isalpha():
        out = f"bundle-{out}".rstrip("-")
    return out[:63].rstrip("-")


def object_name(bundle_name: str, name: str | None = None) -> str:
    """Return the name of the Kubernetes objects: ``name`` (checked), else the bundle's as a DNS label."""
    if name is None:
        return _k8s_name(bundle_name)
    if not _DNS1035_RE.match(name):
        raise BadInput(
            f"--name: {name!r} is not a Kubernetes object name (at most 63 lowercase letters, digits and"
            " '-', starting with a letter and ending with a letter or digit)"
        )
    return name


def _label_value(value: str, key: str) -> str:
    if not _LABEL_VALUE_RE.match(value):
        raise BadInput(
            f"label {key}: {value!r} is not a valid Kubernetes label value (at most 63 of [A-Za-z0-9._-], "
            "starting and ending with a letter or digit)"
        )
    return value


def _cuda_gaps(bundle_info: dict, bundle_dir: Path) -> list[str]:
    """Return what the bundle's image lacks to run the CUDA provider, as far as the bundle records it."""
    gaps = []
    lock = Path(bundle_dir) / "env" / "python" / "requirements.lock.txt"
    pinned: set[str] = set()
    if lock.is_file():
        from .lock import locked_names

        pinned = set(locked_names(lock.read_text(encoding="utf-8", errors="replace")))
        if "onnxruntime-gpu" not in pinned:
            # The CPU onnxruntime has no CUDAExecutionProvider: the server refuses the provider list.
            gaps.append("its requirements.lock.txt has no onnxruntime-gpu")
    docker = bundle_info.get("docker")
    if isinstance(docker, dict) and not any(
        docker.get(key) for key in ("cuda_version", "base_image", "dockerfile_template")
    ):
        # The default base image has no CUDA libraries, unless the lock brings NVIDIA's pip wheels of them.
        wheels = [
            any(p.startswith(prefix) for p in pinned) for prefix in ("nvidia-cuda-runtime", "nvidia-cudnn")
        ]
        if not all(wheels):
            gaps.append("bundle.yaml has no docker.cuda_version (its image has no CUDA libraries)")
    return gaps


def _lock_digest(bundle_info: dict, bundle_dir: Path) -> str | None:
    # bundle.yaml keeps it under python.lock_digest: the sha256 of requirements.lock.txt, as the image's
    # ai.bundler.lock-digest label has it; older or hand-made bundle.yaml files get it from the file.
    python = bundle_info.get("python")
    nested = python.get("lock_digest") if isinstance(python, dict) else None
    digest = bundle_info.get("lock_digest") or nested
    if digest:
        return str(digest)
    lock = Path(bundle_dir) / "env" / "python" / "requirements.lock.txt"
    return sha256_file(lock) if lock.is_file() else None


def kubernetes_manifests(
    bundle_info: dict,
    bundle_dir: Path,
    *,
    image: str | None = None,
    replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    cpu: str = "1",
    memory: str = "1Gi",
    gpu: int = 0,
    namespace: str | None = None,
    port: int = 3000,
    name: str | None = None,
) -> list[dict]:
    """Return the Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget for a bundle."""
    # The API server refuses a quantity with surrounding whitespace, which a shell variable easily adds.
    cpu, memory = str(cpu).strip(), str(memory).strip()
    low, high = _check_options(
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        port=port,
    )
    bundle_name = str(bundle_info.get("name") or "")
    version = str(bundle_info.get("version") or "")
    if not bundle_name or not version:
        raise BadInput(f"{bundle_dir}/bundle.yaml: 'name' and 'version' are required; rebuild the bundle")
    tag = str(bundle_info.get("tag") or f"{bundle_name}:{version}")
    if namespace is not None and not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
        raise BadInput(
            f"--namespace: {namespace!r} is not a Kubernetes namespace name (at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit)"
        )
    gaps = _cuda_gaps(bundle_info, bundle_dir) if gpu else []
    if gaps:
        raise BadInput(
            f"--gpu {gpu}: bundle {tag} is not built for CUDA: {' and '.join(gaps)}, so its pods cannot use"
            " a GPU (with the CPU onnxruntime they never become ready: the CUDA provider fails to load)."
            " To fix: add onnxruntime-gpu to python.packages"
            " and set docker.cuda_version (e.g. '12.4.1') in bentofile.yaml, then `bundler build` and"
            " `bundler containerize` again; or deploy without --gpu"
        )
    if image is None:
        # What `bundler containerize` tags the image with by default.
        image = default_image(bundle_name, version)
        if image is None:
            raise BadInput(f"bundle {tag} gives no valid image name; pass --image REGISTRY/NAME:TAG")
    parse_image_ref(image, "--image")
    size = model_bytes(bundle_info, bundle_dir)
    if size and parse_quantity(memory, "--memory") < size:
        raise BadInput(
            f"--memory: {memory!r} is less than the {size / 2**20:.0f} MiB of models in {tag}; the pod would "
            f"be killed for memory while loading them (give at least {math.ceil(2 * size / 2**30)}Gi)"
        )

    name = object_name(bundle_name, name)
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name}
    labels = {
        **selector,
        "app.kubernetes.io/version": _label_value(version, "app.kubernetes.io/version"),
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/managed-by": "bundler",
        f"{LABEL_PREFIX}/bundle": _label_value(bundle_name, f"{LABEL_PREFIX}/bundle"),
    }
    annotations = {f"{LABEL_PREFIX}/tag": tag}
    digest = _lock_digest(bundle_info, bundle_dir)
    if digest:
        # Label values are capped at 63 characters and exclude ':'; the annotation keeps the whole digest.
        short = digest.partition(":")[2] or digest
        labels[f"{LABEL_PREFIX}/lock-digest"] = _label_value(short[:63], f"{LABEL_PREFIX}/lock-digest")
        annotations[f"{LABEL_PREFIX}/lock-digest"] = digest

    def meta() -> dict[str, Any]:
        out: dict[str, Any] = {"name": name}
        if namespace:
            out["namespace"] = namespace
        return {**out, "labels": dict(labels), "annotations": dict(annotations)}

    budget = startup_budget_seconds(size, gpu=gpu)
    manifests = [
        _deployment(meta(), selector, labels, annotations, image, cpu, memory, gpu, port, budget, size),
        _service(meta(), selector, port),
        _autoscaler(meta(), name, low, high),
        _disruption_budget(meta(), selector),
    ]
    return manifests


def _deployment(
    metadata: dict,
    selector: dict[str, str],
    labels: dict[str, str],
    annotations: dict[str, str],
    image: str,
    cpu: str,
    memory: str,
    gpu: int,
    port: int,
    budget: int,
    size: int,
) -> dict:
    # The root file system is read-only: everything that writes (temp files, caches, the bundler store
    # of user code) is pointed at the /tmp emptyDir. Models are read from the bundle in the image.
    env = [
        {"name": "PORT", "value": str(port)},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "BUNDLER_HOME", "value": "/tmp/bundler-home"},
    ]
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpu:
        env.append({"name": "BUNDLER_PROVIDERS", "value": CUDA_PROVIDERS})
        limits["nvidia.com/gpu"] = gpu
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        # requests == limits: Guaranteed QoS (last to be evicted) and a CPU share onnxruntime can count on.
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": STARTUP_PERIOD_S,
            "timeoutSeconds": 2,
            "failureThreshold": budget // STARTUP_PERIOD_S,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": "http"},
            "periodSeconds": 10,
            # A busy event loop answers late, not never: tolerate 30 s before a restart.
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_annotations = {
        **annotations,
        f"{LABEL_PREFIX}/model-bytes": str(size),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_S + DRAIN_S + GRACE_MARGIN_S,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(selector)},
            }
        ],
    }
    if gpu:
        # Hints for typical GPU nodes: GPU feature discovery sets the label, cloud GPU pools set the taint.
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        # No spec.replicas: the HorizontalPodAutoscaler owns the count, and a replicas field here would
        # reset it on every `kubectl apply`.
        "spec": {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": dict(selector)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def _service(metadata: dict, selector: dict[str, str], port: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _autoscaler(metadata: dict, name: str, low: int, high: int) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": CPU_TARGET_UTILIZATION},
                    },
                }
            ],
            "behavior": {
                # New pods take the startup budget to load models: scale up at once, scale down slowly.
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 30}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                },
            },
        },
    }


def _disruption_budget(metadata: dict, selector: dict[str, str]) -> dict:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {
            # maxUnavailable, not minAvailable: with one replica minAvailable=1 would block node drains.
            "maxUnavailable": 1,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
            "selector": {"matchLabels": dict(selector)},
        },
    }


_FILE_NAMES = {
    "Deployment": "deployment.yaml",
    "Service": "service.yaml",
    "HorizontalPodAutoscaler": "hpa.yaml",
    "PodDisruptionBudget": "pdb.yaml",
}


_HEADER = "# Generated by `bundler deploy kubernetes` from bundle "


def _check_replaceable(path: Path, tag: str, out_dir: Path) -> None:
    """Refuse to overwrite a file this command did not write, or wrote for another bundle."""
    if not os.path.lexists(path):
        return
    if path.is_dir():
        # os.replace cannot put a file there: refused now, before the other manifests are written.
        raise BadInput(
            f"-o {out_dir}: {path} is a directory, where the manifest file goes; give the manifests a"
            " directory of their own (or remove it)"
        )
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        first = ""  # a dangling link or an unreadable file: not one this command wrote
    if not first.startswith(_HEADER):
        raise BadInput(
            f"-o {out_dir}: {path} is not a file `bundler deploy kubernetes` wrote, and would be replaced;"
            " give the manifests a directory of their own (or remove the file)"
        )
    old = first[len(_HEADER) :].partition(";")[0]
    if old.partition(":")[0] != tag.partition(":")[0]:
        raise BadInput(
            f"-o {out_dir}: {path} holds the manifests of bundle {old}, and would be replaced by those of"
            f" {tag}; give each bundle a directory of its own"
        )


def write_manifests(manifests: list[dict], out_dir: Path) -> list[Path]:
    """Write one YAML file per manifest into ``out_dir`` (created if needed); return the paths in order.

    Files already there are replaced only when they hold earlier manifests of the same bundle.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"-o {out_dir}: exists and is not a directory; give a directory for the manifests")
    files = []
    for manifest in manifests:
        kind = str(manifest.get("kind", ""))
        file_name = _FILE_NAMES.get(kind) or f"{kind.lower() or 'manifest'}.yaml"
        tag = str(manifest.get("metadata", {}).get("annotations", {}).get(f"{LABEL_PREFIX}/tag", ""))
        header = f"{_HEADER}{tag}; rerun it rather than edit.\n"
        body = yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)
        _check_replaceable(out_dir / file_name, tag, out_dir)
        files.append((out_dir / file_name, header + body))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, text in files:
            atomic_write_text(path, text)
    except OSError as exc:
        # A file on the way (-o deployment.yaml/sub), /proc, no permission, a full disk: all about -o.
        blocker = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker else exc.strerror or str(exc)
        raise BadInput(
            f"-o {out_dir}: cannot write the manifests there ({why}); give a directory you can write to"
        ) from exc
    return [path for path, _ in files]


def deploy_kubernetes(
    tag: str, out_dir: Path | str, *, say: Callable[[str], Any] | None = None, **options: Any
) -> list[Path]:
    """Write Kubernetes manifests for a stored bundle into ``out_dir`` (options: ``kubernetes_manifests``)."""
    if not str(out_dir):
        # An unset shell variable (-o "$DIR"): Path("") is the current directory, which nobody asked for.
        raise BadInput("-o: no directory given (an empty path); name the directory for the manifests")
    entry = bundle_store().get(tag)
    info = dict(entry.info)
    info.setdefault("tag", str(entry.tag))
    paths = write_manifests(kubernetes_manifests(info, entry.path, **options), Path(out_dir))
    bundle_name = str(info.get("name") or "")
    derived = _k8s_name(bundle_name)
    if say is not None and options.get("name") is None and derived != bundle_name:
        # 'my.model', 'my_model' and 'my-model' all become 'my-model': applied to one namespace, the second
        # would take over the first one's Deployment and Service.
        why = []
        if re.search(r"[._]", bundle_name):
            why.append("allows no '.' or '_'")
        if not bundle_name[:1].isalpha():
            why.append("starts with a letter")
        say(
            f"note: the Kubernetes objects of bundle {bundle_name!r} are named {derived!r} (a Kubernetes"
            f" name {' and '.join(why)}); a bundle whose name differs only in '.', '_' or '-' gets the"
            " same name and would replace them in the same namespace: give each its own --name"
        )
    return paths
