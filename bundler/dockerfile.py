"""Render a bundle's Dockerfile and entrypoint from plain settings: pure functions, no I/O but templates.

Layers go from least to most often changed (base, system packages, user, bundler's env, locked Python
deps, bundler's own wheel, docker.env and envs, setup_script, models, source, metadata), so a source-only
change rebuilds in seconds and a docker.env change reinstalls nothing.
It is a multi-stage build: stage ``locked`` drops bundler's wheel from the files the dependency layer sees;
``base`` holds system packages, the user and bundler's environment; ``deps`` gets the docker.env values pip
reads and installs the lock into the venv (with the offline wheels, which stay in that stage); ``own``
installs bundler's wheel into ``/opt/bundler``, so a new bundler release reuses the dependency layers;
``venv`` drops pip and setuptools, which serving does not need (kept for a setup_script or a
dockerfile_template, which may ``pip install`` into the venv). The final stage copies only ``/opt/venv`` and
``/opt/bundler`` onto ``base`` and sets docker.env and envs, then runs the import check.
Every value that reaches the Dockerfile is validated and quoted here, never in the template:
a bentofile cannot inject shell commands or Dockerfile instructions.

Python lives in a virtual environment at ``/opt/venv``: it works the same on ``python:<X.Y>-slim``, on a
distro Python (CUDA, UBI, Amazon Linux) and on Ubuntu's externally-managed system Python.
CUDA images start from ``nvidia/cuda:<ver>-<cudnn>-runtime-ubuntu22.04`` and get Python from apt: Ubuntu's
own ``python3`` for 3.10, the deadsnakes PPA for other versions (the runtime images ship no Python).
Alpine is refused (onnxruntime has no musl wheels); UBI 8 and Amazon Linux 2023 use dnf and their
``python3.X`` packages (rendered and linted, not built here: no registry to pull those bases from).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any

from .exceptions import BuildError, ConfigError

__all__ = ["render_dockerfile", "render_entrypoint", "settings_problems"]

USER = "bundler"
UID = 1000
HOME = "/home/bundler"
BUNDLE_PATH = f"{HOME}/bundle"
VENV = "/opt/venv"
BUNDLER_DIR = "/opt/bundler"  # bundler's own wheel, outside the venv; a .pth file in the venv points here
PORT = 3000
CA_SECRET = "/run/secrets/ca"
CA_URL_ARG = "BUNDLER_CA_URL"
CA_FETCHED = "/tmp/bundler-ca.pem"
# Bypass any proxy: the URL is the build host's loopback.
_FETCH = (
    "import sys, urllib.request as u; "
    'open(sys.argv[2], "wb").write(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=30).read())'
)
# What `bundler serve` needs at start-up; importing it at build time turns a broken image into a failed build.
# Packages install with --no-compile; this import, run as root in the final stage, writes the bytecode of
# exactly the modules a server loads at start-up (a third of what compiling every module would store).
SERVE_IMPORTS = (
    "import bundler.cli, bundler.server.app, bundler.server.serve, bundler.frameworks.onnx, onnxruntime,"
    " uvicorn.main, uvicorn.loops.auto, uvicorn.protocols.http.auto, uvicorn.lifespan.on"
)
# Files of installed packages that serving never reads: test suites inside packages, type stubs and
# browser source maps. Removed in the venv stage, so they never reach a layer of the image.
PRUNE = (
    r"\( -type d -name tests -path '*/site-packages/*/tests' \)"
    r" -o -name '*.pyi' -o -name '*.js.map' -o -name '*.css.map'"
)
CUDA_UBUNTU = "ubuntu22.04"
SUPPORTED_PYTHON = ("3.10", "3.11", "3.12", "3.13")  # bundler itself needs >= 3.10
CUDA_SYSTEM_PYTHON = "3.10"  # Ubuntu 22.04's python3

_PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*(:[a-z0-9-]+)?([=<>]{1,2}[A-Za-z0-9.+~:_*-]+)?$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What pip reads from the environment: docker.env values it must see when the lock is installed.
_INSTALL_ENV_RE = re.compile(
    r"^(PIP_[A-Z0-9_]+|(HTTPS?|FTP|ALL|NO)_PROXY|(https?|ftp|all|no)_proxy"
    r"|SSL_CERT_(FILE|DIR)|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE)$"
)
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
_CUDA_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
# BentoML's short forms of docker.cuda_version, each the last release of its line that nvidia/cuda publishes
# runtime images for; a major version and 'default' take the release the docs use.
_CUDA_SHORT = {
    "default": "12.4.1",
    "11": "11.8.0",
    "12": "12.4.1",
    "11.2": "11.2.2",
    "11.4": "11.4.3",
    "11.6": "11.6.2",
    "11.7": "11.7.1",
    "11.8": "11.8.0",
    "12.0": "12.0.1",
    "12.1": "12.1.1",
    "12.2": "12.2.2",
    "12.3": "12.3.2",
    "12.4": "12.4.1",
    "12.5": "12.5.1",
    "12.6": "12.6.3",
    "12.8": "12.8.1",
}
_SETUP_SCRIPT = "env/docker/setup_script"
_DISTROS = ("debian", "alpine", "ubi8", "amazonlinux")
_STAGES_FROM_BASE = re.compile(r"^FROM base AS deps$", re.M)
_BASE_STAGE = re.compile(r"^FROM \S+ AS base$", re.M | re.I)


class _Refused(ConfigError):
    """A setting the Dockerfile cannot hold; ``key`` and ``detail`` kept apart for line numbers."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"bentofile.yaml: {key}: {detail}")
        self.key = key
        self.detail = detail


def _fail(key: str, value: Any, rule: str) -> ConfigError:
    return _Refused(key, f"{value!r} {rule}")


def _python_version(docker: dict[str, Any], facts: dict[str, Any]) -> str:
    value = docker.get("python_version") or facts.get("python_version") or "3.11"
    if not isinstance(value, str):
        # YAML reads 3.10 as the float 3.1, so only strings are trusted.
        raise _fail("docker.python_version", str(value), "must be a quoted string such as '3.11'")
    if not _PYTHON_RE.match(value) or value not in SUPPORTED_PYTHON:
        raise _fail(
            "docker.python_version",
            value,
            f"is not supported (choose {SUPPORTED_PYTHON[0]}–{SUPPORTED_PYTHON[-1]})",
        )
    return value


def _package(index: int, package: Any) -> str:
    if not isinstance(package, str) or not _PACKAGE_RE.match(package):
        raise _fail(
            f"docker.system_packages[{index}]",
            package,
            "is not a package name (letters, digits, '+', '-', '.', optionally '=version');"
            " put commands in docker.setup_script instead",
        )
    return package


def _packages(docker: dict[str, Any]) -> list[str]:
    return [_package(i, package) for i, package in enumerate(docker.get("system_packages") or [])]


def _image(value: Any, key: str) -> str:
    from .imageref import image_ref_problem

    why = image_ref_problem(value) if isinstance(value, str) else "it is not a string"
    if why is not None:
        raise _fail(
            key, value, f"is not an image reference like 'python:3.11-slim' or 'registry/name:tag': {why}"
        )
    return value


def cuda_version(value: str) -> str:
    """Return the full CUDA version a build file's docker.cuda_version means: '11.6' and '12' (BentoML's
    short forms) name the newest release of that line, 'default' the CUDA 12 one."""
    full = _CUDA_SHORT.get(value, value)
    if not _CUDA_RE.match(full):
        raise _fail(
            "docker.cuda_version",
            value,
            "is not a CUDA version bundler knows; give a full one such as '12.4.1' or '11.8.0', or one of"
            f" {', '.join(repr(k) for k in _CUDA_SHORT)}",
        )
    return full


def _cuda_base(cuda: str) -> str:
    match = _CUDA_RE.match(cuda_version(cuda))
    assert match is not None  # cuda_version returns full versions only
    cuda = match[0]
    major, minor = int(match[1]), int(match[2])
    # nvidia/cuda tag names changed: cudnn8 up to 12.2, cudnn9 for 12.3, plain "cudnn" from 12.4.
    cudnn = "cudnn8" if (major, minor) < (12, 3) else "cudnn9" if (major, minor) == (12, 3) else "cudnn"
    return f"nvidia/cuda:{cuda}-{cudnn}-runtime-{CUDA_UBUNTU}"


def _user_setup() -> list[str]:
    """Return the commands that make the image's user, uid and gid UID.

    Some bases have an account with that id already (ubuntu:24.04's ``ubuntu``, uid and gid 1000), where
    groupadd and useradd fail: it gives way, as Dockerfiles for those bases do with ``userdel ubuntu``.
    """
    return [
        f'if user="$(getent passwd {UID})"; then userdel "${{user%%:*}}"; fi',
        f'if group="$(getent group {UID})"; then groupdel "${{group%%:*}}"; fi',
        f"groupadd --gid {UID} {USER}",
        f"useradd --uid {UID} --gid {UID} --create-home --home-dir {HOME} --shell /bin/sh {USER}",
    ]


def _quoted(words: list[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


def _base(docker: dict[str, Any], python: str) -> tuple[str, list[str], list[str], str]:
    """Return the base image, the root set-up commands, hadolint ignores and the Python to make the venv."""
    distro = docker.get("distro") or "debian"
    if distro not in _DISTROS:
        raise _fail("docker.distro", distro, f"is not one of {', '.join(_DISTROS)}")
    if distro == "alpine":
        raise _fail(
            "docker.distro",
            distro,
            "is not supported: onnxruntime publishes no musl (Alpine) wheels;"
            " use distro 'debian' (the default) or a glibc-based docker.base_image",
        )
    packages = _packages(docker)
    base_image = docker.get("base_image")
    cuda = docker.get("cuda_version")
    ignore: list[str] = []
    if distro in ("ubi8", "amazonlinux"):
        if cuda and not base_image:
            # Its base has no CUDA libraries: the image would run the models on the CPU without a word.
            raise _fail(
                "docker.distro",
                distro,
                "has no CUDA images here, so docker.cuda_version would be ignored; use distro 'debian'"
                " (the default) for CUDA, or a docker.base_image that has the CUDA libraries",
            )
        image = "registry.access.redhat.com/ubi8/ubi:8.10" if distro == "ubi8" else "amazonlinux:2023"
        interpreter = f"python{python}"
        extra = [] if base_image else [interpreter, f"{interpreter}-pip"]
        # useradd comes from shadow-utils, which neither minimal base ships.
        install = [*extra, "shadow-utils", *packages]
        dnf = [
            f"dnf install -y --setopt=install_weak_deps=False --nodocs {_quoted(install)}",
            "dnf clean all",
        ]
        ignore = [
            "# Python and useradd come from the distro's repositories, versioned by its release.",
            "# hadolint ignore=DL3041",
        ]
        if base_image:
            image = _image(base_image, "docker.base_image")
            interpreter = "python3"
        return image, dnf, ignore, interpreter
    apt_packages = list(packages)
    interpreter = "python3"
    commands: list[str] = []
    if base_image:
        image = _image(base_image, "docker.base_image")
    elif cuda:
        image = _cuda_base(str(cuda))
        if python == CUDA_SYSTEM_PYTHON:
            apt_packages = ["python3", "python3-venv", *apt_packages]
        else:
            interpreter = f"python{python}"
            apt_packages = [interpreter, f"{interpreter}-venv", *apt_packages]
            commands += [
                "apt-get update",
                "apt-get install -y --no-install-recommends software-properties-common gpg-agent",
                "add-apt-repository -y ppa:deadsnakes/ppa",
            ]
        ignore.append(
            "# Python comes from the CUDA image's Ubuntu release, whose versions are not ours to pin."
        )
        ignore.append("# hadolint ignore=DL3008")
    else:
        image = f"python:{python}-slim"
    if apt_packages:
        if "apt-get update" not in commands:
            commands.append("apt-get update")
        commands += [
            f"apt-get install -y --no-install-recommends {_quoted(apt_packages)}",
            "rm -rf /var/lib/apt/lists/*",
        ]
        if not ignore and any("=" not in p for p in apt_packages):
            ignore.append(
                "# docker.system_packages lists unpinned packages; pin them as name=version to fix this."
            )
            ignore.append("# hadolint ignore=DL3008")
    return image, commands, ignore, interpreter


def _env_lines() -> list[str]:
    """Return bundler's own environment, which every stage shares."""
    env: dict[str, str] = {
        "PATH": f"{VENV}/bin:$PATH",
        "PYTHONUNBUFFERED": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "BUNDLE_DIR": BUNDLE_PATH,
        "BUNDLER_BUNDLE_DIR": BUNDLE_PATH,
        "BUNDLER_HOME": f"{HOME}/.bundler",
        "PORT": str(PORT),
    }
    return [f"{key}={value}" for key, value in env.items()]


def _user_env(docker: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (name, NAME="quoted value") for docker.env, then envs (a later one wins, as in one ENV)."""
    found: list[tuple[str, str]] = []
    for source in ("docker.env", "envs"):
        values = (docker.get("env") if source == "docker.env" else facts.get("envs")) or {}
        for key, value in sorted(dict(values).items()):
            if not _ENV_KEY_RE.match(str(key)):
                raise _fail(
                    f"{source}.{key}", key, "is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                )
            found.append((str(key), f"{key}={_dquote(value, f'{source}.{key}')}"))
    return found


def _dquote(value: Any, key: str) -> str:
    """Quote a value for ENV/LABEL: double quotes, with backslash, quote and $ escaped."""
    text = "" if value is None else str(value)
    if "\n" in text or "\r" in text:
        raise _fail(key, text, "contains a line break, which a Dockerfile cannot hold; use one line")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _labels(facts: dict[str, Any]) -> list[str]:
    labels: dict[str, Any] = {
        "org.opencontainers.image.title": facts["name"],
        "org.opencontainers.image.version": facts["version"],
        "org.opencontainers.image.description": facts.get("description")
        or f"{facts['tag']} served by bundler",
    }
    # `created` only when the builder pins it (SOURCE_DATE_EPOCH): a wall-clock date breaks reproducibility.
    for optional in ("created", "source"):
        if facts.get(optional):
            labels[f"org.opencontainers.image.{optional}"] = facts[optional]
    labels["ai.bundler.tag"] = facts["tag"]
    labels["ai.bundler.lock-digest"] = facts.get("lock_digest") or ""
    labels["ai.bundler.apis"] = ",".join(facts.get("apis") or [])
    for key, value in sorted((facts.get("labels") or {}).items()):
        labels[_label_key(key)] = value
    return [f"{key}={_dquote(value, f'labels.{key}')}" for key, value in labels.items()]


def _label_key(key: Any) -> str:
    if not _LABEL_KEY_RE.match(str(key)):
        raise _fail(f"labels.{key}", key, "is not a label key (letters, digits, '.', '_', '/', '-')")
    return str(key)


def _ca_env(path: str) -> str:
    """Return the assignments that point pip's CA settings at ``path``."""
    # pip's requests takes REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) over PIP_CERT: a base image that sets one
    # (to its own CAs) would otherwise win over --ca-bundle.
    return " ".join(
        f"{key}={path}" for key in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    )


def pip_args_problem(pip_args: str | None) -> str | None:
    """Return why python.pip_args cannot reach the image's pip install, or None."""
    try:
        words = shlex.split(pip_args or "")
    except ValueError as exc:
        return f"{pip_args!r} cannot be split into words ({exc}); balance its quotes"
    if any(ch in word for word in words for ch in "\r\n\0"):
        return f"{pip_args!r} has a line break inside a quoted word; write it on one line"
    return None


def _pip_args_words(pip_args: str | None) -> list[str]:
    problem = pip_args_problem(pip_args)
    if problem:
        raise _Refused("python.pip_args", problem)
    return shlex.split(pip_args or "")


def _pip_steps(facts: dict[str, Any], buildkit: bool, ca_fetch: bool) -> dict[str, Any]:
    lock = "env/python/requirements.lock.txt"
    wheels = "env/python/wheels"
    options = ["--require-hashes"] if facts.get("hashed", True) else []
    options += ["--no-index", "--find-links", wheels] if facts.get("offline") else ["--find-links", wheels]
    cache = [] if buildkit else ["--no-cache-dir"]
    cache.append("--no-compile")
    pip = f"{VENV}/bin/python -m pip install"
    steps = []
    run = bundler_run = "RUN"
    if buildkit:
        pip_cache = "--mount=type=cache,target=/root/.cache/pip"
        # The CA bundle is a build secret: mounted for this RUN only, never written to a layer.
        run = f"RUN {pip_cache} --mount=type=secret,id=ca,target={CA_SECRET}"
        bundler_run = f"RUN {pip_cache}"
        steps.append(f"if [ -f {CA_SECRET} ]; then export {_ca_env(CA_SECRET)}; fi")
    elif ca_fetch:
        # The legacy builder has no secrets: fetch the CA from a one-shot server on the build host and
        # delete it when this RUN's shell exits, before the layer is committed.
        run = f"ARG {CA_URL_ARG}\nRUN"
        steps += [
            f"trap {shlex.quote(f'rm -f {CA_FETCHED}')} EXIT",
            f'python3 -c {shlex.quote(_FETCH)} "${CA_URL_ARG}" {CA_FETCHED}',
            f"export {_ca_env(CA_FETCHED)}",
        ]
    # python.pip_args reach the install as BentoML's install script passes them, after bundler's options.
    user = _pip_args_words(facts.get("pip_args"))
    steps.append(f"{pip} {_quoted([*cache, *options, *user, '-r', lock])}")
    return {
        "pip_run": run,
        "pip_steps": steps,
        "bundler_run": bundler_run,
        "bundler_install": f"{pip} {_quoted([*cache, '--no-deps', '--target', BUNDLER_DIR])}"
        f" {wheels}/bundler-*.whl",
    }


def _venv_finish(keep_pip: bool) -> list[str]:
    """Return the commands that point the venv at bundler's directory, drop pip and prune unread files."""
    pth = (
        f'import sysconfig; open(sysconfig.get_path("purelib") + "/bundler.pth", "w").write("{BUNDLER_DIR}")'
    )
    lock = "env/python/requirements.lock.txt"
    commands = [
        f"{VENV}/bin/python -c {shlex.quote(pth)}",
        f"ln -s {BUNDLER_DIR}/bin/bundler {VENV}/bin/bundler",
    ]
    if not keep_pip:  # a setup_script or a dockerfile_template may `pip install` into the venv
        # `python -m venv` put pip (and setuptools before 3.12) there to install the lock; serving needs
        # neither. pip removes exactly the files it recorded; a lock that pins either one keeps it.
        uninstall = f'grep -qi "^$p==" {lock} || {VENV}/bin/python -m pip uninstall -y -q "$p"'
        commands.append(f"for p in setuptools pip; do {uninstall}; done")
    # onnxruntime's wheel also carries its C library for C-API users (onnxruntime-genai loads it from
    # there); onnxruntime's Python module does not load it. Kept when the lock has any other onnxruntime*.
    c_api = f"{VENV}/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*"
    only_ort = f"[ \"$(grep -ci '^onnxruntime[a-z0-9._-]*==' {lock})\" = 1 ]"
    return [
        *commands,
        f"find {VENV}/lib -depth \\( {PRUNE} \\) -exec rm -rf {{}} +",
        f"if {only_ort}; then rm -f {c_api}; fi",
    ]


def _exposed_port(docker: dict[str, Any], facts: dict[str, Any]) -> int:
    """Return the port the server listens on in the image: $PORT, which docker.env or envs may set."""
    port: Any = PORT
    for source, values in (("docker.env", docker.get("env")), ("envs", facts.get("envs"))):
        if values and "PORT" in dict(values):
            port = dict(values)["PORT"]
            key = f"{source}.PORT"
    if port is PORT:
        return PORT
    try:
        number = int(str(port).strip())
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise _fail(key, port, "is not a TCP port number (1-65535); the server listens on $PORT")
    return number


def settings_problems(docker: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (key, message) for every setting rendering would refuse, each key checked on its own.

    ``docker`` is the build file's docker section (``env`` a mapping); ``facts`` needs ``python_version``
    (the default), ``envs`` and ``labels``. Checked with the build file, so a build that cannot render its
    Dockerfile stops before it resolves any lock, with every problem at once.
    """
    found: list[tuple[str, str]] = []

    def check(fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except _Refused as exc:
            found.append((exc.key, exc.detail))

    check(_python_version, docker, facts)
    distro = docker.get("distro") or "debian"
    check(_base, {k: docker.get(k) for k in ("distro", "cuda_version", "base_image")}, SUPPORTED_PYTHON[0])
    for i, package in enumerate(docker.get("system_packages") or []):
        check(_package, i, package)
    if docker.get("base_image"):
        check(_image, docker["base_image"], "docker.base_image")
    elif docker.get("cuda_version") and distro not in ("ubi8", "amazonlinux"):
        check(_cuda_base, str(docker["cuda_version"]))
    for key, value in (docker.get("env") or {}).items():
        check(_user_env, {"env": {key: value}}, {})
    for key, value in (facts.get("envs") or {}).items():
        check(_user_env, {}, {"envs": {key: value}})
    for key, value in (facts.get("labels") or {}).items():
        check(_label_key, key)
        check(_dquote, value, f"labels.{key}")
    check(_exposed_port, docker, facts)
    return found


def summary(description: str | None) -> str:
    """Return the one line an image label shows of a description: its first line, Markdown heading marks
    removed (a README's "# quickstart" -> "quickstart")."""
    first = next(iter((description or "").strip().splitlines()), "")
    return first.lstrip("#").strip() if first.startswith("#") else first.strip()


def template_context(
    docker: dict[str, Any], facts: dict[str, Any], *, buildkit: bool = False, ca_fetch: bool = False
) -> dict[str, Any]:
    """Return the validated, quoted values the Dockerfile template lays out."""
    for key in ("name", "version", "tag"):
        if not facts.get(key):
            raise BuildError(
                f"cannot render the Dockerfile: the bundle facts lack {key!r} (a bug in the caller)"
            )
    python = _python_version(docker, facts)
    image, root_setup, ignore, interpreter = _base(docker, python)
    setup_script = docker.get("setup_script")
    if setup_script and setup_script != _SETUP_SCRIPT:
        raise BuildError(
            f"cannot render the Dockerfile: setup_script must be copied to {_SETUP_SCRIPT} in the bundle,"
            f" got {setup_script!r} (a bug in the caller)"
        )
    pip = _pip_steps(facts, buildkit, ca_fetch)
    user_env = _user_env(docker, facts)
    return {
        "bundler_version": facts.get("bundler_version") or "unknown",
        "tag": facts["tag"],
        "base_image": image,
        "root_setup": root_setup,
        "hadolint_ignore": ignore,
        "user_setup": _user_setup(),
        "env_lines": _env_lines(),
        # docker.env and envs change more often than the lock: set in the final stage, they reinstall
        # nothing. The dependency stage gets only what pip itself reads (an index, a proxy, a CA).
        "install_env_lines": [line for key, line in user_env if _INSTALL_ENV_RE.match(key)],
        "user_env_lines": [line for _, line in user_env],
        "pip_run": pip["pip_run"],
        "pip_setup": [f"{interpreter} -m venv {VENV}", *pip["pip_steps"]],
        "bundler_run": pip["bundler_run"],
        "bundler_install": pip["bundler_install"],
        "bundler_dir": BUNDLER_DIR,
        # BentoML's docs `RUN pip install ...` in a template: `pip` must be the venv's, not the base's.
        "venv_finish": _venv_finish(keep_pip=bool(setup_script or docker.get("dockerfile_template"))),
        "setup_script": setup_script,
        "venv": VENV,
        # onnxruntime writes a device id and a session file under HOME and TMPDIR on import: point both at
        # a directory deleted in the same RUN, so no image (and no container started from it) shares them.
        "import_run": 'check="$(mktemp -d)"'
        f' && HOME="$check" TMPDIR="$check" {VENV}/bin/python -c {shlex.quote(SERVE_IMPORTS)}'
        ' && rm -rf "$check"',
        "has_models": bool(facts.get("has_models", True)),
        "label_lines": _labels(facts),
        "port": _exposed_port(docker, facts),
        # BentoML's names, for user templates that extend ours.
        "bento__user": USER,
        "bento__uid_gid": UID,
        "bento__home": HOME,
        "bento__path": BUNDLE_PATH,
        "python_version": python,
    }


def _environment(loader: Any) -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        loader=loader,
        autoescape=False,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
    )


def render_dockerfile(
    docker: dict[str, Any], facts: dict[str, Any], *, buildkit: bool = False, ca_fetch: bool = False
) -> str:
    """Render the bundle's Dockerfile.

    ``buildkit``: add a pip cache mount and the CA bundle as a secret mount. ``ca_fetch`` (legacy builder):
    fetch the CA from the URL in build arg BUNDLER_CA_URL for the pip step only.
    """
    from jinja2 import FileSystemLoader, TemplateError

    from .resources import data_dir

    context = template_context(docker, facts, buildkit=buildkit, ca_fetch=ca_fetch)
    env = _environment(FileSystemLoader(str(data_dir("templates"))))
    base = env.get_template("Dockerfile.j2")
    user_template = docker.get("dockerfile_template")
    if not user_template:
        return _tidy(base.render(context))
    try:
        template = env.from_string(user_template)
        text = _tidy(template.render({**context, "bento_base_template": base}))
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" line {line}" if line else ""
        raise ConfigError(
            f"bentofile.yaml: docker.dockerfile_template{where}: {exc}; the template must"
            " `{% extends bento_base_template %}` and override blocks such as SETUP_BENTO_COMPONENTS"
        ) from exc
    # The later stages start `FROM base`: an overridden SETUP_BENTO_BASE_IMAGE must still name that stage.
    if _STAGES_FROM_BASE.search(text) and not _BASE_STAGE.search(text):
        raise ConfigError(
            "bentofile.yaml: docker.dockerfile_template: block SETUP_BENTO_BASE_IMAGE must keep a stage named"
            " 'base' (`FROM <image> AS base`), which the dependency stages build on; start the block with"
            " `{{ super() }}` or end its FROM line with `AS base`"
        )
    return text


def _tidy(text: str) -> str:
    """Collapse the blank lines template blocks leave behind, so output is stable and readable."""
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def render_entrypoint(facts: dict[str, Any]) -> str:
    """Render the container's entrypoint: serve the bundle, or run the command given to `docker run`."""
    from jinja2 import FileSystemLoader

    from .resources import data_dir

    env = _environment(FileSystemLoader(str(data_dir("templates"))))
    return env.get_template("entrypoint.sh.j2").render(
        bundler_version=facts.get("bundler_version") or "unknown",
        tag=facts["tag"],
        bundle_path=BUNDLE_PATH,
        port=PORT,
        venv=VENV,
    )
