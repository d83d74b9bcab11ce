"""Find a container engine and build a bundle's image with it (the docker CLI through subprocess).

The bundle directory is the build context and is never modified. With BuildKit (buildx, or a classic
client with ``DOCKER_BUILDKIT=1``) the Dockerfile is re-rendered in its BuildKit variant to a temporary
file outside the bundle: a pip cache mount, and the CA bundle as a build secret that no layer keeps.
The legacy builder has no secrets and would keep a COPYed file in a layer, so there the pip step fetches
the CA from a one-shot server on this machine's loopback (host network) and deletes it in the same RUN.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.server
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dockerfile import CA_URL_ARG, summary
from .exceptions import BadInput, ContainerizeError, EngineUnavailable
from .imageref import default_image, parse_image_ref
from .store import bundle_store, verify_manifest

__all__ = ["Engine", "build_command", "containerize", "detect_engine", "render_inputs"]

KINDS = ("docker", "podman", "buildah")
TEMPLATE_COPY = "Dockerfile.template"  # where a bundle keeps the user's docker.dockerfile_template
_PROBE_TIMEOUT = 20
_WELL_KNOWN_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")
_START_HINT = (
    "start the engine (`sudo systemctl start docker`, or `dockerd &`; in this project's CI run"
    " shared/tools/container-env.sh), or pick another with --backend podman|buildah"
)
# A running daemon whose socket this user may not open: starting it again would not help.
_ACCESS_HINT = (
    "let this user use the engine (`sudo usermod -aG docker $USER`, then log in again; or run as root),"
    " or pick another with --backend podman|buildah"
)
_NO_ACCESS = "may not use the Docker daemon"
_CA_PORTS = (20000, 10000)  # first port and how many: below Linux's ephemeral ports (32768-60999)


@dataclass(frozen=True)
class Engine:
    """A usable container engine: its kind, the client binary, and how it builds."""

    kind: str  # docker | podman | buildah
    client: str  # absolute path of the CLI
    mode: str  # buildx | buildkit | legacy

    @property
    def buildkit(self) -> bool:
        """Whether builds understand RUN --mount and --secret."""
        return self.mode in ("buildx", "buildkit")

    def environ(self) -> dict[str, str]:
        """Return the environment to run the client with."""
        env = dict(os.environ)
        if self.kind == "docker":
            env["DOCKER_BUILDKIT"] = "1" if self.mode == "buildkit" else "0" if self.mode == "legacy" else "1"
        return env


def _candidates(name: str) -> list[str]:
    """Every executable called ``name`` on PATH, then in the usual places; each real file once."""
    seen: set[str] = set()
    found: list[str] = []
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d] + list(_WELL_KNOWN_DIRS)
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                found.append(path)
    return found


def _probe(argv: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_PROBE_TIMEOUT, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


_RANK = {"buildx": 0, "buildkit": 1, "legacy": 2}


def _inspect_docker(client: str) -> Engine | str:
    """Return the engine behind one docker client, or why it is unusable; the probes run in parallel."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        # `version`, not `info`: without a daemon, Debian's 20.10 client answers `info --format` with a Go
        # template error only, where `version` says "Cannot connect to the Docker daemon at ...".
        info = pool.submit(_probe, [client, "version", "--format", "{{.Server.Version}}"])
        buildx = pool.submit(_probe, [client, "buildx", "version"])
        # Clients before 23.0 carry BuildKit themselves; newer ones refuse DOCKER_BUILDKIT=1 without buildx.
        kit = pool.submit(_probe, [client, "build", "--help"], {**os.environ, "DOCKER_BUILDKIT": "1"})
    if info.result().returncode != 0:
        last = (info.result().stderr.strip().splitlines() or ["no answer"])[-1]
        if "permission denied" in last.lower():
            return f"{client}: this user {_NO_ACCESS} ({last})"
        return f"{client}: the Docker daemon does not answer ({last})"
    mode = (
        "buildx"
        if buildx.result().returncode == 0
        else "buildkit"
        if kit.result().returncode == 0
        else "legacy"
    )
    return Engine("docker", client, mode)


def _detect_docker(problems: list[str]) -> Engine | None:
    clients = _candidates("docker")
    with ThreadPoolExecutor(max_workers=max(1, len(clients))) as pool:
        found = list(pool.map(_inspect_docker, clients))
    problems += [f for f in found if isinstance(f, str)]
    engines = [f for f in found if isinstance(f, Engine)]
    # The best builder wins; among equals, the client first on PATH.
    return min(engines, key=lambda e: _RANK[e.mode]) if engines else None


def _detect_other(kind: str, problems: list[str]) -> Engine | None:
    for client in _candidates(kind):
        check = [client, "info"] if kind == "podman" else [client, "version"]
        result = _probe(check)
        if result.returncode == 0:
            # podman and buildah read RUN --mount and --secret natively.
            return Engine(kind, client, "buildkit")
        last = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        problems.append(f"{client}: not usable ({last})")
    return None


def detect_engine(backend: str | None = None) -> Engine:
    """Return the best usable engine (docker with buildx > BuildKit > legacy, then podman, buildah)."""
    if backend is not None and backend not in KINDS:
        raise BadInput(f"--backend {backend!r} is not supported: choose one of {', '.join(KINDS)}")
    problems: list[str] = []
    for kind in [backend] if backend else list(KINDS):
        engine = _detect_docker(problems) if kind == "docker" else _detect_other(kind, problems)
        if engine is not None:
            return engine
    tried = backend or "/".join(KINDS)
    if not problems and backend in ("podman", "buildah"):
        # Daemonless: nothing to start once installed.
        others = "|".join(k for k in KINDS if k != backend)
        raise EngineUnavailable(
            f"no usable container engine: no {backend} client found on PATH. To fix: install it"
            f" (Debian/Ubuntu: `apt-get install {backend}`), or pick another with --backend {others}"
        )
    if not problems:
        raise EngineUnavailable(
            f"no usable container engine: no {tried} client found on PATH. To fix: install one"
            " (Debian/Ubuntu: `apt-get install docker.io`; or Docker Engine, Podman, Buildah),"
            f" then {_START_HINT}"
        )
    hint = _ACCESS_HINT if any(_NO_ACCESS in p for p in problems) else _START_HINT
    raise EngineUnavailable(f"no usable container engine ({tried}): {'; '.join(problems)}. To fix: {hint}")


def _check_intact(bundle_dir: Path, info: Mapping[str, Any]) -> None:
    """Refuse a bundle that fails its manifest: the image would carry files its version does not cover.

    The stored Dockerfile is the exception: editing it by hand is how to change one image (it is built as
    stored, with a note; see containerize), and the image's content still comes from the checked files.
    """
    problems = [p for p in verify_manifest(bundle_dir) if not p.startswith(f"{_STORED_DOCKERFILE}: ")]
    if problems:
        tag = f"{info.get('name')}:{info.get('version')}"
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise ContainerizeError(
            f"bundle {tag} fails its manifest check ({shown}); it was changed after `bundler build`:"
            " build it again (a changed source gets a new version)"
        )


_STORED_DOCKERFILE = "env/docker/Dockerfile"


def _platform(info: Mapping[str, Any], asked: str | None, output: Callable[[str], Any]) -> str | None:
    """Return the --platform to build for: the one the bundle was locked for (its wheels are for it)."""
    from .lock import host_platform

    locked = (info.get("python") or {}).get("platform")
    if asked and locked and asked != locked:
        raise BadInput(
            f"--platform {asked}: the bundle was locked for {locked}, and its wheels are for that platform;"
            f" build it for {asked} (`bundler build --platform {asked}`) or leave --platform out"
        )
    platform = asked or locked
    host = host_platform()
    if platform and platform == host and not asked:
        return None  # the engine's default: not named, as before (older engines take no --platform)
    if platform and platform != host:
        machine = host or os.uname().machine
        output(f"note: building for {platform} on a {machine} host needs emulation (binfmt/QEMU)")
    return platform


def _image_tags(info: Mapping[str, Any], tags: Iterable[str]) -> list[str]:
    chosen = list(tags)  # an empty -t ("$IMAGE" unset) is refused below, not taken as "no -t"
    for t in chosen:
        parse_image_ref(t, "-t", allow_digest=False)  # bad input, not a failure deep inside the engine
    if chosen:
        return chosen
    name, version = info.get("name"), info.get("version")
    if not name or not version:
        name, _, version = str(info.get("tag") or "").partition(":")
    if not name or not version:
        raise ContainerizeError("bundle.yaml has no name and version to tag the image with; pass -t NAME:TAG")
    # The same default as `bundler deploy kubernetes --image`; a name Docker refuses is mended.
    image = default_image(str(name), str(version))
    if image is None:
        raise ContainerizeError(f"bundle {name}:{version} gives no valid image name; pass -t NAME:TAG")
    return [image]


def render_inputs(info: Mapping[str, Any], bundle_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rebuild the renderer's ``docker`` and ``facts`` dicts from a bundle's bundle.yaml."""
    from . import __version__

    python = dict(info.get("python") or {})
    docker = dict(info.get("docker") or {})
    docker["setup_script"] = "env/docker/setup_script" if docker.get("setup_script") else None
    template = docker.get("dockerfile_template")
    if template:
        # The builder renders from the template's text: look for it where a bundle may carry it.
        candidates = [bundle_dir / "env" / "docker" / TEMPLATE_COPY, bundle_dir / "src" / str(template)]
        found = next((c for c in candidates if c.is_file()), None)
        docker["dockerfile_template"] = found.read_text(encoding="utf-8") if found else None
    description = str((info.get("build") or {}).get("description") or "").strip()
    facts = {
        "name": info.get("name"),
        "version": info.get("version"),
        "tag": info.get("tag") or f"{info.get('name')}:{info.get('version')}",
        "python_version": python.get("version"),
        "lock_digest": python.get("lock_digest") or info.get("lock_digest"),
        "apis": [a["route"] if isinstance(a, dict) else str(a) for a in info.get("apis") or []],
        "has_models": bool(info.get("models")),
        "offline": bool(python.get("offline")),
        "hashed": python.get("hashed", True),
        "pip_args": ((info.get("build") or {}).get("python") or {}).get("pip_args"),
        "envs": info.get("envs") or {},
        "labels": info.get("labels") or {},
        "bundler_version": info.get("bundler_version") or __version__,
        "description": summary(description),
    }
    return docker, facts


def _rerender(bundle_dir: Path, info: Mapping[str, Any], **variant: bool) -> str | None:
    """Return a variant of the Dockerfile, or None when bundle.yaml does not reproduce the stored one."""
    from .dockerfile import render_dockerfile

    stored = bundle_dir / "env" / "docker" / "Dockerfile"
    try:
        docker, facts = render_inputs(info, bundle_dir)
        if render_dockerfile(docker, facts) != stored.read_text(encoding="utf-8"):
            return None
        return render_dockerfile(docker, facts, **variant)
    except Exception:  # any doubt -> build the stored Dockerfile exactly as written
        return None


@contextlib.contextmanager
def _serve_once(path: Path) -> Iterator[str]:
    """Serve one file on the loopback at a URL named by its content for as long as the block runs.

    The URL is a build arg, and the legacy builder keys a RUN's cache on its build args: the same URL for
    the same file (a port picked from its digest, outside the ephemeral range) keeps the pip layer cached
    from one containerize to the next. A CA certificate is public, so a name that is its digest hides
    nothing; when that port is taken, any free port serves (that build reinstalls the lock).
    """
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    token = digest[:32]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != f"/{token}":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    try:
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", _CA_PORTS[0] + int(digest, 16) % _CA_PORTS[1]), Handler
        )
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{token}"
    finally:
        server.shutdown()
        server.server_close()


def build_command(
    engine: Engine,
    context: Path,
    dockerfile: Path,
    tags: Sequence[str],
    *,
    platform: str | None = None,
    build_args: Mapping[str, str] | None = None,
    no_cache: bool = False,
    progress: str = "auto",
    ca_bundle: Path | None = None,
    network: str | None = None,
) -> list[str]:
    """Return the argv that builds ``context`` with ``engine`` (pure: runs nothing)."""
    if engine.kind == "buildah":
        argv = [engine.client, "build", "--layers"]
    elif engine.mode == "buildx":
        argv = [engine.client, "buildx", "build", "--load"]
    else:
        argv = [engine.client, "build"]
    argv += ["-f", str(dockerfile)]
    for tag in tags:
        argv += ["-t", tag]
    if engine.kind == "docker" and engine.buildkit:
        # Output is piped line by line, so only "tty" (asked for explicitly) is passed through.
        argv += ["--progress", "tty" if progress == "tty" else "plain"]
    if platform:
        argv += ["--platform", platform]
    for key, value in sorted((build_args or {}).items()):
        argv += ["--build-arg", f"{key}={value}"]
    if no_cache:
        argv.append("--no-cache")
    if ca_bundle is not None:
        argv += ["--secret", f"id=ca,src={ca_bundle}"]
    if network:
        argv += ["--network", network]
    argv.append(str(context))
    return argv


def _stream(argv: list[str], env: Mapping[str, str], output: Callable[[str], Any]) -> tuple[int, list[str]]:
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=dict(env)
        )
    except OSError as exc:
        raise EngineUnavailable(f"cannot run {argv[0]}: {exc}. To fix: {_START_HINT}") from exc
    assert proc.stdout is not None
    with proc:
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                output(line)
        except BaseException:
            # Ctrl-C in a terminal reaches the client too, but a signal sent to bundler alone (a CI runner,
            # a supervisor) would leave the build running on, to tag the image after "interrupted".
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return proc.returncode, list(tail)


def containerize(
    bundle_dir: Path,
    info: Mapping[str, Any],
    *,
    tags: Sequence[str] = (),
    backend: str | None = None,
    platform: str | None = None,
    build_args: Mapping[str, str] | None = None,
    no_cache: bool = False,
    progress: str = "auto",
    ca_bundle: Path | None = None,
    network: str | None = None,
    output: Callable[[str], Any] = print,
) -> list[str]:
    """Build the image of the bundle at ``bundle_dir``; return its tags (default ``<name>:<version>``)."""
    bundle_dir = Path(bundle_dir)
    stored = bundle_dir / "env" / "docker" / "Dockerfile"
    if not stored.is_file():
        raise ContainerizeError(
            f"{bundle_dir} is not a bundle: {stored} is missing; run `bundler build` first"
        )
    _check_intact(bundle_dir, info)
    platform = _platform(info, platform, output)
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise BadInput(f"--ca-bundle {ca_bundle}: no such file")
    image_tags = _image_tags(info, tags)
    engine = detect_engine(backend)
    offline = bool((info.get("python") or {}).get("offline"))
    if offline and network is None:
        network = "none"  # an offline bundle carries every wheel: prove the build needs no network
    if offline and ca_bundle is not None:
        output("note: an offline bundle builds without network, so --ca-bundle is not needed and not used")
        ca_bundle = None
    args = dict(build_args or {})
    with (
        # In the store's scratch directory, named by this process: a kill -9 leaves it for the next
        # command to remove, not in /tmp for good.
        tempfile.TemporaryDirectory(
            prefix=f"containerize-{os.getpid()}-", dir=bundle_store().tmp_root()
        ) as scratch,
        contextlib.ExitStack() as stack,
    ):
        dockerfile = stored
        secret = None
        fetch_ca = ca_bundle is not None and not engine.buildkit
        variant = _rerender(bundle_dir, info, buildkit=engine.buildkit, ca_fetch=fetch_ca)
        if variant is None and ca_bundle is not None:
            raise ContainerizeError(
                f"{stored} does not match its bundle.yaml (hand-edited?), so bundler cannot add the CA"
                " bundle to its pip step; rebuild the bundle with `bundler build`, or drop --ca-bundle"
            )
        if variant is None and engine.buildkit:
            output(f"note: {stored} is not what bundle.yaml renders; building it as stored (no pip cache)")
        if variant is not None and (engine.buildkit or fetch_ca):
            dockerfile = Path(scratch) / "Dockerfile"
            dockerfile.write_text(variant, encoding="utf-8")
        if ca_bundle is not None and engine.buildkit:
            secret = ca_bundle
        elif fetch_ca and ca_bundle is not None:
            # No build secrets here: the pip step fetches the CA from this machine's loopback and deletes
            # it before its layer is committed. Reaching the loopback needs the host network.
            if network not in (None, "host"):
                raise ContainerizeError(
                    f"--ca-bundle with the {engine.mode} builder needs the host network (the build fetches"
                    f" the CA from this machine's loopback), not --network {network}; use BuildKit for both"
                )
            network = "host"
            args[CA_URL_ARG] = stack.enter_context(_serve_once(ca_bundle))
        argv = build_command(
            engine,
            bundle_dir,
            dockerfile,
            image_tags,
            platform=platform,
            build_args=args,
            no_cache=no_cache,
            progress=progress,
            ca_bundle=secret,
            network=network,
        )
        output(f"building {', '.join(image_tags)} with {engine.kind} ({engine.mode}): {' '.join(argv)}")
        code, tail = _stream(argv, engine.environ(), output)
    if code != 0:
        last = "\n".join(tail[-25:])
        raise ContainerizeError(
            f"{engine.kind} build of {bundle_dir} failed (exit {code}); the engine's last lines:\n{last}\n"
            f"{_failure_hint(tail, ca_bundle)}"
        )
    return image_tags


# The base image the engine failed to get: BuildKit's error summary, or the legacy builder's last step.
_METADATA_FAILED = re.compile(r"^\s*> \[internal\] load metadata for (\S+):$")
_LEGACY_STEP = re.compile(r"^Step \d+/\d+ : (?:FROM (\S+))?")


def _unpulled_base(tail: Sequence[str]) -> str | None:
    """Return the base image the engine's output says it could not get, if that is why the build failed."""
    for line in tail:
        if match := _METADATA_FAILED.match(line):
            return match[1]
    steps = [m for line in tail if (m := _LEGACY_STEP.match(line))]
    return steps[-1][1] if steps else None  # None also when the failed step is not a FROM


def _failure_hint(tail: Sequence[str], ca_bundle: Path | None) -> str:
    """Return what to do about a failed build, named when the engine's output says why."""
    base = _unpulled_base(tail)
    if base is not None:
        return (
            f"the engine could not get the base image {base}: check its name, `docker login` to its"
            f" registry if it is private, or give the engine a copy (`docker pull {base}` where a registry"
            " is reachable, `docker load` where none is); bentofile.yaml chooses it with docker.base_image"
            " (or docker.python_version and docker.distro), then `bundler build` again"
        )
    if any("CERTIFICATE_VERIFY_FAILED" in line for line in tail):
        # The usual cause: a TLS-inspecting proxy whose CA the base image does not trust.
        if ca_bundle is not None:
            return (
                f"pip in the build could not verify a TLS certificate: --ca-bundle {ca_bundle} does not hold"
                " the CA that signed it (a TLS-inspecting proxy's?); pass the file that does, or build the"
                " bundle with `bundler build --offline`, whose image build needs no network"
            )
        return (
            "pip in the build could not verify a TLS certificate: a TLS-inspecting proxy whose CA the base"
            " image does not trust? To fix: pass --ca-bundle FILE with that CA (e.g."
            " /etc/ssl/certs/ca-certificates.crt where this machine trusts it), or build the bundle with"
            " `bundler build --offline`, whose image build needs no network"
        )
    return "Fix the cause above (a failed RUN names its step), then run containerize again"
