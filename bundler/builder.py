"""Build a bundle: plan it from the build file (pure, in memory), then write it to the store (I/O).

The bundle version is the digest of everything that goes into it (sources, models, requirements, lock,
wheels, settings, bundler itself), so building unchanged inputs twice gives the same tag; the second build
finds it stored and writes nothing. Files are staged and moved into place in one rename.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .exceptions import BadInput, BuildError, BundlerError, NotFound
from .scan import ServiceInfo, scan_service, uses_images
from .sources import select_sources
from .store import Tag, bundle_store, dump_yaml, home, model_store, sha256_file, verify_manifest

__all__ = ["BuildResult", "build"]

Say = Callable[[str], None]


@dataclass
class PlannedFile:
    rel: str
    source: Path | None = None  # copied (or hard-linked) from here ...
    data: bytes | None = None  # ... or written from memory
    executable: bool = False
    link: bool = False  # hard link when possible (models)
    digest: str = ""


@dataclass
class Plan:
    name: str
    files: list[PlannedFile] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    lock_reused: bool = False


@dataclass(frozen=True)
class BuildResult:
    tag: Tag
    path: Path
    created: bool
    seconds: float
    lock_reused: bool

    def __repr__(self) -> str:
        return f'Bundle(tag="{self.tag}", path="{self.path}/")'


def _digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version_from(digest: str) -> str:
    return base64.b32encode(bytes.fromhex(digest)).decode("ascii").lower()[:16]


def _bundle_name(cfg: Any, svc: ServiceInfo) -> str:
    raw = cfg.name or svc.service_name or svc.module_path.stem
    name = "".join(c if c.isalnum() or c in "-._" else "-" for c in raw.lower()).strip("-._")
    try:
        Tag.parse(name)
    except BundlerError as exc:
        raise BuildError(
            f"{cfg.path}: cannot derive a valid bundle name from {raw!r}: set 'name' ({exc})"
        ) from exc
    return name


def _model_files(tags: list[str]) -> tuple[list[PlannedFile], list[dict[str, Any]]]:
    store = model_store()
    files: list[PlannedFile] = []
    infos: list[dict[str, Any]] = []
    seen = set()
    for text in tags:
        try:
            entry = store.get(text)
        except NotFound as exc:
            raise BuildError(
                f"{exc}; save it first (bundler.onnx.save_model) or fix 'models' in the build file"
            ) from exc
        if entry.tag in seen:  # the same version named twice ("m" in the build file, "m:latest" in code)
            continue
        seen.add(entry.tag)
        base = f"models/{entry.tag.name}/{entry.tag.version}"
        size = 0
        for dirpath, _, filenames in os.walk(entry.path):
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                rel = p.relative_to(entry.path).as_posix()
                files.append(PlannedFile(f"{base}/{rel}", source=p, link=True))
                size += p.stat().st_size
        manifest = entry.path / "manifest.sha256"
        infos.append(
            {
                "tag": str(entry.tag),
                "module": entry.info.get("module", ""),
                "manifest_sha256": sha256_file(manifest) if manifest.is_file() else "",
                "size": size,
            }
        )
    return files, infos


def _conda_yaml(cfg: Any) -> bytes | None:
    conda = cfg.conda
    if conda is None:
        return None
    if conda.environment_yml:
        return (cfg.context / conda.environment_yml).read_bytes()
    env: dict[str, Any] = {"name": "bundler"}
    if conda.channels:
        env["channels"] = list(conda.channels)
    deps: list[Any] = list(conda.dependencies or [])
    if conda.pip:
        deps.append({"pip": list(conda.pip)})
    if deps:
        env["dependencies"] = deps
    return yaml.safe_dump(env, sort_keys=False).encode()


def _lock(
    cfg: Any, wheels_dir: Path, platform: str, resolver: str, offline: bool, images: bool, say: Say
) -> tuple[Any, Any]:
    from . import lock as lockmod
    from .conda import pip_lists
    from .config import image_python

    py = cfg.python
    python_version = image_python(cfg.docker.python_version)
    options = lockmod.LockOptions(
        python_version=python_version,
        platform=platform,
        resolver=resolver,
        index_url=py.index_url,
        extra_index_url=tuple(py.extra_index_url),
        # Local directories are relative to the build file, not to where the resolver runs.
        find_links=tuple(f if "://" in f else str((cfg.context / f).resolve()) for f in py.find_links),
        trusted_host=tuple(py.trusted_host),
        no_index=py.no_index,
        pip_args=py.pip_args,
        lock_packages=py.lock_packages,
        offline=offline,
    )
    req_txt = cfg.context / py.requirements_txt if py.requirements_txt else None
    # A conda section's pip lists are pip requirements: the image installs them with the rest.
    conda_pip = pip_lists(cfg.conda, cfg.context)
    requirements = lockmod.collect_requirements(list(py.packages), req_txt, cfg.context, listed=conda_pip)
    if images:
        requirements += [f"{r}  # {lockmod.IMAGE_ORIGIN}" for r in lockmod.IMAGE_REQUIREMENTS]
    lockmod.build_bundler_wheel(wheels_dir)
    local = []
    for w in py.wheels:
        src = cfg.context / w
        shutil.copyfile(src, wheels_dir / src.name)
        local.append(wheels_dir / src.name)
    say(f"locking Python requirements for {platform}, Python {python_version}")
    result = lockmod.lock(requirements, options, wheels_dir=wheels_dir, local_wheels=local)
    if offline:
        say("downloading every locked wheel for an offline bundle")
        lockmod.download_wheels(result.text, wheels_dir, options)
    return options, result


def _check_service_included(cfg: Any, module_path: Path, sources: list[Any]) -> None:
    """Refuse a build whose include/exclude leave the service module out: the image could not import it."""
    try:
        rel = module_path.resolve().relative_to(cfg.context.resolve()).as_posix()
    except ValueError:
        return  # outside the context: scan_service has said so already
    if rel not in {s.rel for s in sources}:
        raise BuildError(
            f"{cfg.path}: the service module {rel} is not among the bundle's sources: 'include'"
            f" ({list(cfg.include) or ['*']}) and 'exclude' ({list(cfg.exclude)}) leave it out, and the"
            " image could not import it; include it"
        )


def plan_bundle(cfg: Any, *, platform: str, resolver: str, offline: bool, wheels_dir: Path, say: Say) -> Plan:
    """Compute every file of the bundle and its content-derived version; touch nothing in the store."""
    module, _, attribute = cfg.service.partition(":")
    if module.endswith(".py"):
        module_path = cfg.context / module
    else:
        base = cfg.context / module.replace(".", "/")
        module_path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    svc = scan_service(module_path, attribute)
    plan = Plan(_bundle_name(cfg, svc))

    # A home inside the project (BUNDLER_HOME=.bundler in CI) holds the stores: bundled, each build would
    # carry every earlier one (and the one being written), a new version every time.
    sources = select_sources(cfg.context, list(cfg.include), list(cfg.exclude), skip=(home(),))
    _check_service_included(cfg, module_path, sources)
    for src in sources:
        plan.files.append(PlannedFile(f"src/{src.rel}", source=src.path, executable=src.executable))
    python = [module_path, *(s.path for s in sources if s.rel.endswith(".py"))]
    # The service module is usually among the sources too: read each file once.
    images = uses_images(list(dict.fromkeys(path.resolve() for path in python)))

    for i, spec in enumerate(cfg.models):
        if spec.filter:
            # Ignored, it would bundle the newest version, which the filter may have meant to exclude.
            raise BadInput(
                f"bentofile models[{i}]: filter {spec.filter!r} is not supported (bundler would bundle"
                f" {spec.tag!r} regardless of it); name the version in the tag and remove filter"
            )
        if spec.alias:
            say(
                f"warning: models[{i}]: alias {spec.alias!r} is not used;"
                f" the service loads {spec.tag!r} by its tag"
            )
    tags = list(dict.fromkeys([m.tag for m in cfg.models] + svc.model_tags))
    model_files, model_infos = _model_files(tags)
    plan.files += model_files

    from .conda import build_warnings

    # The image has no conda: say what it will lack now, not when the container fails at import.
    for line in build_warnings(cfg):
        say(f"warning: {line}")
    options, lock = _lock(cfg, wheels_dir, platform, resolver, offline, images, say)
    plan.lock_reused = bool(lock.reused)
    plan.files.append(PlannedFile("env/python/requirements.txt", data=lock.requirements_txt.encode()))
    plan.files.append(PlannedFile("env/python/requirements.lock.txt", data=lock.text.encode()))
    for w in sorted(wheels_dir.iterdir()):
        plan.files.append(PlannedFile(f"env/python/wheels/{w.name}", source=w))
    conda = _conda_yaml(cfg)
    if conda is not None:
        plan.files.append(PlannedFile("env/conda/environment.yml", data=conda))
    if cfg.docker.setup_script:
        plan.files.append(
            PlannedFile(
                "env/docker/setup_script", source=cfg.context / cfg.docker.setup_script, executable=True
            )
        )
    if cfg.docker.dockerfile_template:
        # A file of the bundle like any other, so that an edit to it gives a new version; containerize
        # re-renders the BuildKit variant from it (bundler.containerize.TEMPLATE_COPY).
        plan.files.append(
            PlannedFile("env/docker/Dockerfile.template", source=cfg.context / cfg.docker.dockerfile_template)
        )

    settings = cfg.to_dict()
    settings.pop("path", None)
    settings.pop("context", None)
    plan.info = {
        "service": cfg.service,
        "name": plan.name,
        "bundler_version": __version__,
        "labels": dict(cfg.labels),
        "models": model_infos,
        "apis": [{"name": a.name, "route": a.route, "input": a.input, "output": a.output} for a in svc.apis],
        "python": {
            "version": options.python_version,
            "platform": options.platform,
            "resolver": options.resolver,
            "lock_digest": lock.digest,
            "hashed": lock.hashed,
            "offline": offline,
        },
        "docker": settings.get("docker", {}),
        "envs": dict(cfg.envs),
        "build": settings,
    }
    h = hashlib.sha256()
    for f in plan.files:
        if f.data is not None:
            f.digest = _digest_bytes(f.data)
        elif f.link and f.rel.endswith("manifest.sha256"):
            f.digest = sha256_file(f.source)  # type: ignore[arg-type]
        elif f.link:
            f.digest = ""  # covered by the model's manifest, itself hashed above
        else:
            f.digest = sha256_file(f.source)  # type: ignore[arg-type]
        h.update(f"{f.rel}\0{int(f.executable)}\0{f.digest}\n".encode())
    h.update(json.dumps(plan.info, sort_keys=True, default=str).encode())
    plan.version = _version_from(h.hexdigest())
    return plan


def _creation_time() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


# Exits _WRONG_SERVICE, printing {"error": ..., "where": [file, line] or null}, when bundler refused what
# the service gave it (an API name or route taken twice or reserved, a bad descriptor): that fails wherever
# the service imports, unlike a missing dependency.
_WRONG_SERVICE = 3
_DESCRIBE = f"""\
import json, os, sys, traceback
import bundler
from bundler.exceptions import BadInput
from bundler.server.serve import load_service
try:
    svc = load_service(sys.argv[1], working_dir=sys.argv[2])
except BadInput as exc:
    frames = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(bundler.__file__) + os.sep
    if exc.__cause__ is not None or not frames or not frames[-1].filename.startswith(package):
        raise  # an import that failed (a missing dependency): it may import where the bundle runs
    own = [f for f in frames if f.filename.startswith(sys.argv[2] + os.sep)]
    where = [os.path.relpath(own[-1].filename, sys.argv[2]), own[-1].lineno] if own else None
    print(json.dumps({{"error": str(exc), "where": where}}))
    sys.exit({_WRONG_SERVICE})
print(json.dumps(svc.openapi(), sort_keys=True))
"""


def _openapi(staged: Path, service: str, say: Say, context: Path) -> dict[str, Any] | None:
    """Ask the service itself for its OpenAPI document, in a subprocess; None when it cannot import here.

    Raises BadInput when bundler refused the service's own definitions: the bundle could never serve.
    """
    # No bytecode: __pycache__ written into the staged src/ would enter the manifest.
    env = dict(os.environ, BUNDLER_BUNDLE_DIR=str(staged), PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-B", "-c", _DESCRIBE, service, str((staged / "src").resolve())],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=staged / "src",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"note: could not import the service to describe its APIs ({exc}); apis from the source only")
        return None
    if proc.returncode == _WRONG_SERVICE:
        try:
            wrong = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            wrong = None  # the service itself exited 3 at import
        if isinstance(wrong, dict):
            # Stored, it was a bundle whose every start failed (BentoML's build, which imports, refuses it).
            where = f"{context / wrong['where'][0]}:{wrong['where'][1]}: " if wrong["where"] else ""
            raise BadInput(f"{where}{wrong['error']}; the bundle could not serve: fix the service")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        say(f"note: the service does not import here ({last}); apis/openapi.yaml from the source only")
        return None
    try:
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return doc if isinstance(doc, dict) else None


def _fallback_openapi(plan: Plan) -> dict[str, Any]:
    paths = {
        f"/{a['route']}": {
            "post": {
                "operationId": a["name"],
                "summary": f"{a['input']} -> {a['output']}",
                "responses": {"200": {"description": "Successful Response"}},
            }
        }
        for a in plan.info["apis"]
    }
    return {"openapi": "3.0.2", "info": {"title": plan.name, "version": plan.version}, "paths": paths}


def _render_docker(cfg: Any, plan: Plan, tag: Tag) -> tuple[str, str]:
    from .docker import render_dockerfile, render_entrypoint
    from .dockerfile import summary

    docker = dict(plan.info["docker"])
    docker["setup_script"] = "env/docker/setup_script" if cfg.docker.setup_script else None
    if cfg.docker.dockerfile_template:
        docker["dockerfile_template"] = (cfg.context / cfg.docker.dockerfile_template).read_text(
            encoding="utf-8"
        )
    py = plan.info["python"]
    facts = {
        "name": tag.name,
        "version": tag.version,
        "tag": str(tag),
        "python_version": py["version"],
        "lock_digest": py["lock_digest"],
        "apis": [a["route"] for a in plan.info["apis"]],
        "has_models": bool(plan.info["models"]),
        "offline": py["offline"],
        "hashed": py["hashed"],
        "pip_args": cfg.python.pip_args,
        "envs": plan.info["envs"],
        "labels": plan.info["labels"],
        "bundler_version": __version__,
        "description": summary(cfg.description),
    }
    return render_dockerfile(docker, facts), render_entrypoint(facts)


def _place(f: PlannedFile, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if f.data is not None:
        dest.write_bytes(f.data)
    else:
        assert f.source is not None
        linked = False
        if f.link:
            with contextlib.suppress(OSError):
                os.link(f.source, dest)
                linked = True
        if not linked:
            shutil.copyfile(f.source, dest)
    if not f.link:
        dest.chmod(0o755 if f.executable else 0o644)


def write_bundle(cfg: Any, plan: Plan, say: Say, *, replace: bool = False) -> tuple[Path, bool]:
    """Stage the planned files plus the generated ones and commit them to the bundle store.

    With ``replace``, a bundle stored under the same tag (a damaged copy) is replaced.
    """
    store = bundle_store()
    tag = Tag(plan.name, plan.version)
    for model in plan.info["models"]:
        # The version covers each model's manifest, not its bytes: check them before linking them in.
        damaged = verify_manifest(model_store().path(model["tag"]))
        if damaged:
            raise BuildError(
                f"model {model['tag']} fails its manifest check ({'; '.join(damaged)});"
                " save or import it again"
            )
    with store.staging() as staged:
        for f in plan.files:
            _place(f, staged / f.rel)
        info = {"name": tag.name, "version": tag.version, "tag": str(tag), "creation_time": _creation_time()}
        info.update(plan.info)
        say("rendering the Dockerfile and entrypoint")
        dockerfile, entrypoint = _render_docker(cfg, plan, tag)
        (staged / "env/docker").mkdir(parents=True, exist_ok=True)
        (staged / "env/docker/Dockerfile").write_text(dockerfile, encoding="utf-8")
        ep = staged / "env/docker/entrypoint.sh"
        ep.write_text(entrypoint, encoding="utf-8")
        ep.chmod(0o755)
        readme = cfg.description or f"# {tag.name}\n\nA bundle built by bundler {__version__}.\n"
        (staged / "README.md").write_text(
            readme if readme.endswith("\n") else readme + "\n", encoding="utf-8"
        )
        say("describing the APIs")
        doc = _openapi(staged, cfg.service, say, cfg.context) or _fallback_openapi(plan)
        doc.setdefault("info", {})["version"] = tag.version
        (staged / "apis").mkdir(exist_ok=True)
        (staged / "apis/openapi.yaml").write_text(yaml.safe_dump(doc, sort_keys=True), encoding="utf-8")
        (staged / "bundle.yaml").write_text(dump_yaml(info), encoding="utf-8")
        return store.commit(staged, tag, exist_ok=True, replace=replace)


def build(
    bentofile: str | Path = ".",
    *,
    platform: str = "linux/amd64",
    resolver: str = "uv",
    offline: bool | None = None,
    say: Say | None = None,
) -> BuildResult:
    """Validate the build file, plan the bundle and store it unless an identical one is stored already."""
    from .config import load_bentofile

    started = time.perf_counter()
    say = say or (lambda _msg: None)
    cfg = load_bentofile(Path(bentofile))
    if platform not in ("linux/amd64", "linux/arm64"):
        raise BadInput(f"--platform {platform!r} is not supported (choose linux/amd64 or linux/arm64)")
    want_offline = cfg.python.offline if offline is None else offline
    store = bundle_store()
    with store.staging("wheels") as wheels:  # removed after the build (never committed)
        plan = plan_bundle(
            cfg, platform=platform, resolver=resolver, offline=want_offline, wheels_dir=wheels, say=say
        )
        tag = Tag(plan.name, plan.version)
        existing = store.root / plan.name / plan.version
        damaged = verify_manifest(existing) if existing.exists() else []
        if existing.exists() and not damaged:
            path, created = existing, False
        else:
            if damaged:
                problems = "; ".join(damaged[:3]) + ("; ..." if len(damaged) > 3 else "")
                say(f"the stored bundle {tag} fails its manifest check ({problems}); replacing it")
            path, created = write_bundle(cfg, plan, say, replace=bool(damaged))
    return BuildResult(tag, path, created, time.perf_counter() - started, plan.lock_reused)
