"""containerize with a real engine: engine detection, the build, and the image actually serving.

Tests marked ``docker`` need a running engine (run shared/tools/container-env.sh). They are skipped only
on a machine without one; with CI=true a missing engine fails them instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import bundler.containerize as cz
from bundler.containerize import Engine, build_command, containerize, detect_engine, render_inputs
from bundler.exceptions import BadInput, ContainerizeError, EngineUnavailable
from bundler.store import Tag, bundle_store, write_manifest

SERVICE = '''\
"""A test service: an affine model behind /predict, and a slow JSON API to test draining."""

from __future__ import annotations

import asyncio

import numpy as np

import bundler
from bundler.io import JSON, NumpyNdarray

runner = bundler.onnx.get("affine:latest").to_runner()

svc = bundler.Service("affine", runners=[runner])


@svc.api(input=NumpyNdarray(dtype="float32", shape=(-1, 4)), output=NumpyNdarray())
async def predict(features: np.ndarray) -> np.ndarray:
    return await runner.run.async_run(features)


@svc.api(input=JSON(), output=JSON())
async def slow(body: dict) -> dict:
    await asyncio.sleep(float(body["seconds"]))
    return {"slept": body["seconds"]}
'''

BENTOFILE = """\
service: "service:svc"
name: affine
description: "An affine test model"
include:
  - "*.py"
python:
  packages:
    - onnx
docker:
  env:
    BUNDLER_LOG_LEVEL: info
"""


# --------------------------------------------------------------------------------------------------------
# Engine detection and the build command (no engine needed)


def _fake_client(path: Path, *, daemon: bool = True, buildx: bool = False, buildkit: bool = False) -> Path:
    """Write a stand-in docker client that answers the probes as told."""
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = version ]; then {"echo 20.10.24" if daemon else "echo Cannot connect to the Docker daemon >&2; exit 1"}; exit $?; fi\n'  # noqa: E501
        f'if [ "$1" = buildx ]; then exit {0 if buildx else 1}; fi\n'
        f'if [ "$1" = build ] && [ "$DOCKER_BUILDKIT" = 1 ]; then exit {0 if buildkit else 1}; fi\n'
        "exit 0\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def only_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(cz, "_WELL_KNOWN_DIRS", ())
    return bin_dir


def test_no_engine_is_a_clear_error_saying_what_to_start(only_fakes: Path) -> None:
    with pytest.raises(EngineUnavailable) as info:
        detect_engine()
    message = str(info.value)
    assert "no docker/podman/buildah client found on PATH" in message
    assert "systemctl start docker" in message and "container-env.sh" in message


@pytest.mark.parametrize("backend", ["podman", "buildah"])
def test_a_missing_daemonless_backend_says_how_to_install_it_not_docker(
    only_fakes: Path, backend: str
) -> None:
    _fake_client(only_fakes / "docker")  # docker is here, but not what was asked for
    with pytest.raises(EngineUnavailable) as info:
        detect_engine(backend)
    message = str(info.value)
    assert f"no {backend} client found on PATH" in message
    assert f"apt-get install {backend}" in message
    assert "docker.io" not in message and "systemctl start docker" not in message
    assert f"--backend {backend}" not in message  # not "pick another" naming the one that is missing
    other = "buildah" if backend == "podman" else "podman"
    assert f"--backend docker|{other}" in message


def test_daemon_not_running_is_reported_per_client(only_fakes: Path) -> None:
    client = _fake_client(only_fakes / "docker", daemon=False)
    with pytest.raises(EngineUnavailable) as info:
        detect_engine("docker")
    assert f"{client}: the Docker daemon does not answer (Cannot connect to the Docker daemon)" in str(
        info.value
    )


def test_daemon_not_running_is_reported_in_words_by_a_client_whose_info_hides_it(only_fakes: Path) -> None:
    """Debian's docker.io 20.10 answers `info --format` without a daemon with a Go template error only."""
    client = only_fakes / "docker"
    client.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = info ]; then echo \'template: :1:2: executing "" at <.ServerVersion>: reflect:'
        " indirection through nil pointer to embedded struct field Info' >&2; exit 1; fi\n"
        'if [ "$1" = version ]; then echo; echo "Cannot connect to the Docker daemon at'
        ' unix:///nowhere.sock. Is the docker daemon running?" >&2; exit 1; fi\n'
        "exit 0\n"
    )
    client.chmod(0o755)
    with pytest.raises(EngineUnavailable) as info:
        detect_engine("docker")
    message = str(info.value)
    assert f"{client}: the Docker daemon does not answer (Cannot connect to the Docker daemon at" in message
    assert "template" not in message


def test_a_daemon_the_user_may_not_use_says_how_to_get_access_not_to_start_it(only_fakes: Path) -> None:
    """A running daemon whose socket the user cannot open (not in the docker group): the usual first try."""
    client = only_fakes / "docker"
    client.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = version ]; then echo; echo "permission denied while trying to connect to the Docker'
        ' daemon socket at unix:///var/run/docker.sock: Get \\"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version\\":'
        ' dial unix /var/run/docker.sock: connect: permission denied" >&2; exit 1; fi\n'
        "exit 0\n"
    )
    client.chmod(0o755)
    with pytest.raises(EngineUnavailable) as info:
        detect_engine("docker")
    message = str(info.value)
    assert f"{client}: this user may not use the Docker daemon (permission denied while trying" in message
    assert "does not answer" not in message and "systemctl start" not in message
    assert "usermod -aG docker" in message


@pytest.mark.parametrize(
    ("buildx", "buildkit", "mode"),
    [(True, False, "buildx"), (False, True, "buildkit"), (False, False, "legacy")],
)
def test_docker_mode_is_probed_not_assumed(only_fakes: Path, buildx: bool, buildkit: bool, mode: str) -> None:
    client = _fake_client(only_fakes / "docker", buildx=buildx, buildkit=buildkit)
    assert detect_engine() == Engine("docker", str(client), mode)


def test_the_best_of_several_docker_clients_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _fake_client(first / "docker")  # a new client without buildx: legacy only
    best = _fake_client(second / "docker", buildkit=True)  # an older client with built-in BuildKit
    monkeypatch.setenv("PATH", f"{first}{os.pathsep}{second}")
    monkeypatch.setattr(cz, "_WELL_KNOWN_DIRS", ())
    assert detect_engine() == Engine("docker", str(best), "buildkit")


def _write_pid(pid_file: Path) -> str:
    """Return shell lines that write the pid to ``pid_file`` whole (the test reads it once it exists)."""
    mv = shutil.which("mv", path="/usr/bin:/bin")  # by path: some tests' PATH holds only fake clients
    return f"echo $$ > {pid_file}.tmp\n{mv} {pid_file}.tmp {pid_file}\n"


def test_an_interrupted_build_stops_the_engine_client(tmp_path: Path) -> None:
    """SIGINT sent to bundler alone (a CI runner, a supervisor) must not leave the build running on, to tag
    the image after bundler has said "interrupted"."""
    pid_file = tmp_path / "pid"
    client = tmp_path / "docker"
    client.write_text(f'#!/bin/sh\necho "#1 building"\n{_write_pid(pid_file)}exec sleep 60\n')
    client.chmod(0o755)

    def interrupt(line: str) -> None:
        while not pid_file.exists():
            time.sleep(0.01)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cz._stream([str(client), "build"], os.environ, interrupt)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # gone, and reaped
        os.kill(pid, 0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_stops_the_engine_client_like_ctrl_c(
    tmp_path: Path, only_fakes: Path, signum: signal.Signals
) -> None:
    """`timeout`, a CI runner or a supervisor stops bundler with SIGTERM, a closed terminal with SIGHUP:
    the build must stop too, the scratch directory go, and the exit code say which signal it was."""
    pid_file = tmp_path / "pid"
    # A client with buildx, the best mode: first on PATH, it wins over the machine's real clients.
    client = only_fakes / "docker"
    client.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = version ]; then echo 20.10.24; exit 0; fi\n'
        'if [ "$1 $2" = "buildx version" ]; then echo v0.11.2; exit 0; fi\n'
        'if [ "$1 $2" != "buildx build" ]; then exit 1; fi\n'
        f'echo "#1 building"\n{_write_pid(pid_file)}exec {shutil.which("sleep", path="/usr/bin:/bin")} 60\n'
    )
    client.chmod(0o755)
    store = bundle_store()
    with store.staging() as staged:
        (staged / "bundle.yaml").write_text(yaml.safe_dump(INFO))
        fake_bundle(staged, INFO)
        store.commit(staged, Tag("a", "v1"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bundler", "containerize", "a:v1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the client has exec'd its sleep
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert err.rstrip().splitlines()[-1] == f"terminated by {signum.name}"
    assert "Traceback" not in err
    with pytest.raises(ProcessLookupError):  # the build stopped with bundler
        os.kill(int(pid_file.read_text()), 0)
    assert not list(store.tmp_root().glob("containerize-*"))


def test_unknown_backend_is_bad_input() -> None:
    with pytest.raises(BadInput, match="--backend 'rkt' is not supported"):
        detect_engine("rkt")


def test_build_command_per_mode(tmp_path: Path) -> None:
    ctx, dockerfile = tmp_path / "bundle", tmp_path / "Dockerfile"
    kit = build_command(
        Engine("docker", "/usr/bin/docker", "buildkit"),
        ctx,
        dockerfile,
        ["a:1", "reg/a:latest"],
        platform="linux/arm64",
        build_args={"B": "2", "A": "1"},
        no_cache=True,
        ca_bundle=tmp_path / "ca.pem",
        network="none",
    )
    assert kit == [
        "/usr/bin/docker", "build", "-f", str(dockerfile), "-t", "a:1", "-t", "reg/a:latest",
        "--progress", "plain", "--platform", "linux/arm64", "--build-arg", "A=1", "--build-arg", "B=2",
        "--no-cache", "--secret", f"id=ca,src={tmp_path / 'ca.pem'}", "--network", "none", str(ctx),
    ]  # fmt: skip
    buildx = build_command(Engine("docker", "/d", "buildx"), ctx, dockerfile, ["a:1"])
    assert buildx[:4] == ["/d", "buildx", "build", "--load"]
    legacy = build_command(Engine("docker", "/d", "legacy"), ctx, dockerfile, ["a:1"])
    assert "--progress" not in legacy and legacy[-1] == str(ctx)
    assert Engine("docker", "/d", "legacy").environ()["DOCKER_BUILDKIT"] == "0"
    assert Engine("docker", "/d", "buildkit").environ()["DOCKER_BUILDKIT"] == "1"


INFO: dict[str, Any] = {
    "name": "a",
    "version": "v1",
    "tag": "a:v1",
    "bundler_version": "0.1.0",
    "labels": {"k": "v"},
    "models": [{"tag": "m:1"}],
    "apis": [{"name": "predict", "route": "predict"}],
    "python": {"version": "3.11", "lock_digest": "d", "hashed": True, "offline": False},
    "docker": {"distro": "debian", "env": {"X": "1"}, "setup_script": "setup.sh"},
    "envs": {},
    "build": {"description": "first line\nsecond"},
}


def fake_bundle(root: Path, info: dict[str, Any]) -> Path:
    """Write just the Dockerfile a bundle with this bundle.yaml would have."""
    from bundler.dockerfile import render_dockerfile

    stored = root / "env" / "docker" / "Dockerfile"
    stored.parent.mkdir(parents=True)
    stored.write_text(render_dockerfile(*render_inputs(info, root)))
    write_manifest(root)
    return root


def _logging_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the engine a fake docker client that writes its arguments to the returned file, one a line."""
    client = tmp_path / "docker"
    log = tmp_path / "argv.txt"
    client.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\nexit 0\n')
    client.chmod(0o755)
    monkeypatch.setattr(cz, "detect_engine", lambda backend=None: Engine("docker", str(client), "buildkit"))
    return log


def test_ca_bundle_on_a_hand_edited_dockerfile_or_without_host_network_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    bundle = fake_bundle(tmp_path / "bundle", INFO)
    for mode in ("legacy", "buildkit"):
        monkeypatch.setattr(
            cz, "detect_engine", lambda backend=None, m=mode: Engine("docker", "/nonexistent", m)
        )
        stored = bundle / "env" / "docker" / "Dockerfile"
        original = stored.read_text()
        stored.write_text(original + "RUN echo edited\n")
        with pytest.raises(ContainerizeError, match="hand-edited"):
            containerize(bundle, INFO, ca_bundle=ca, output=lambda _: None)
        stored.write_text(original)
    # The legacy builder fetches the CA over the host's loopback, which another network cannot reach.
    monkeypatch.setattr(cz, "detect_engine", lambda backend=None: Engine("docker", "/nonexistent", "legacy"))
    with pytest.raises(ContainerizeError, match=r"needs the host network .* not --network bridge"):
        containerize(bundle, INFO, ca_bundle=ca, network="bridge", output=lambda _: None)


@pytest.mark.parametrize("with_ca", [False, True])
def test_a_pip_step_that_cannot_verify_tls_says_how_to_pass_the_proxy_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_ca: bool
) -> None:
    client = tmp_path / "docker"
    verify_failed = (
        "#11 2.527 WARNING: Retrying (Retry(total=4)) after connection broken by"
        " 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify"
        " failed: self-signed certificate in certificate chain (_ssl.c:992)'))': /simple/anyio/"
    )
    client.write_text(f"#!/bin/sh\necho {shlex.quote(verify_failed)}\nexit 1\n")
    client.chmod(0o755)
    monkeypatch.setattr(cz, "detect_engine", lambda backend=None: Engine("docker", str(client), "buildkit"))
    bundle = fake_bundle(tmp_path / "bundle", INFO)
    ca = tmp_path / "ca.pem"
    ca.write_text("not the proxy's CA\n")
    with pytest.raises(ContainerizeError) as err:
        containerize(bundle, INFO, ca_bundle=ca if with_ca else None, output=lambda _: None)
    message = str(err.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message  # the engine's lines, as before
    if with_ca:
        assert f"--ca-bundle {ca} does not hold the CA" in message
    else:
        assert "pass --ca-bundle FILE" in message and "bundler build --offline" in message


_NO_HOST = 'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host'


@pytest.mark.parametrize(
    ("mode", "engine_output"),
    [
        (
            "buildkit",  # Debian's 20.10 client; buildx prints the same "> [internal] load metadata" block
            "#3 [internal] load metadata for docker.io/library/python:3.12-slim\n"
            f"#3 ERROR: failed to do request: Head: {_NO_HOST}\n"
            "------\n > [internal] load metadata for docker.io/library/python:3.12-slim:\n------\n"
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: failed to do",
        ),
        (
            "legacy",
            "Sending build context to Docker daemon  259.1kB\n\n"
            f"Step 1/30 : FROM python:3.12-slim AS locked\n{_NO_HOST}",
        ),
    ],
    ids=["buildkit", "legacy"],
)
def test_a_base_image_the_engine_cannot_pull_is_named_with_how_to_provide_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, engine_output: str
) -> None:
    client = tmp_path / "docker"
    client.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(engine_output)}\nexit 1\n")
    client.chmod(0o755)
    monkeypatch.setattr(cz, "detect_engine", lambda backend=None: Engine("docker", str(client), mode))
    bundle = fake_bundle(tmp_path / "bundle", INFO)
    with pytest.raises(ContainerizeError) as err:
        containerize(bundle, INFO, output=lambda _: None)
    message = str(err.value)
    assert "no such host" in message  # the engine's lines, as before
    image = "docker.io/library/python:3.12-slim" if mode == "buildkit" else "python:3.12-slim"
    assert f"the engine could not get the base image {image}" in message
    assert f"docker pull {image}" in message and "docker.base_image" in message
    assert "a failed RUN" not in message


def test_containerize_scratch_lives_in_the_store_and_a_killed_ones_is_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundler.store import bundle_store

    bundle = fake_bundle(tmp_path / "bundle", INFO)
    log = _logging_client(tmp_path, monkeypatch)
    # What a containerize killed with SIGKILL left: its process is gone (no such pid).
    left = bundle_store().tmp_root() / "containerize-999999999-abc"
    left.mkdir()
    (left / "Dockerfile").write_text("FROM scratch\n")
    assert containerize(bundle, INFO, output=lambda _: None) == ["a:v1"]
    argv = log.read_text().splitlines()
    dockerfile = Path(argv[argv.index("-f") + 1])  # the BuildKit variant, written to scratch
    assert dockerfile.parent.parent == bundle_store().root / ".tmp"
    assert dockerfile.parent.name.startswith(f"containerize-{os.getpid()}-")
    assert not left.exists() and not dockerfile.exists()


def test_legacy_ca_variant_fetches_and_deletes_the_ca_in_the_pip_step(tmp_path: Path) -> None:
    from bundler.dockerfile import render_dockerfile

    text = render_dockerfile(*render_inputs(INFO, tmp_path), ca_fetch=True)
    lines = text.replace("\\\n", " ").splitlines()
    pip = next(i for i, line in enumerate(lines) if "requirements.lock.txt" in line)
    assert lines[pip - 1] == "ARG BUNDLER_CA_URL"
    step = " ".join(lines[pip].split())
    assert "trap 'rm -f /tmp/bundler-ca.pem' EXIT" in step
    assert step.index('"$BUNDLER_CA_URL" /tmp/bundler-ca.pem') < step.index("PIP_CERT=/tmp/bundler-ca.pem")
    assert "COPY" not in step and text.count("BUNDLER_CA_URL") == 2


def test_one_shot_server_serves_only_its_token(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    with cz._serve_once(ca) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url).content == ca.read_bytes()
        assert httpx.get(url.rsplit("/", 1)[0] + "/guess").status_code == 404
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_the_ca_url_is_the_same_each_build_so_the_legacy_builder_reuses_its_pip_layer(tmp_path: Path) -> None:
    """The legacy builder keys a RUN's cache on the build args it sees: a new URL each time reinstalled the
    whole lock on every containerize --ca-bundle."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    with cz._serve_once(ca) as first:
        pass
    with cz._serve_once(ca) as second:
        assert httpx.get(second).content == ca.read_bytes()
    assert second == first
    # Its port taken (another build serving the same CA): another port, still served.
    with cz._serve_once(ca) as held, cz._serve_once(ca) as other:
        assert held == first and other != held
        assert httpx.get(other).content == ca.read_bytes()
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nanother\n")
    with cz._serve_once(ca) as changed:
        assert changed != first


def test_not_a_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ContainerizeError, match=r"is not a bundle: .* is missing; run `bundler build` first"):
        containerize(tmp_path, {"name": "a", "version": "1"}, output=lambda _: None)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["H3-Bad:Tag"], r"^-t: 'H3-Bad:Tag' is not an image reference: 'H3-Bad' has uppercase letters"),
        (["ok:1", "x:1:2"], r"^-t: 'x:1:2' is not an image reference: tag '1:2'"),
        (["x@sha256:" + "0" * 64], r"^-t: .* a digest \('@...'\) cannot be given to a new image"),
        # `-t "$IMAGE"` with IMAGE unset: refused, not silently built under the default tag.
        ([""], r"^-t: '' is not an image reference: it is empty"),
        (["ok:1", ""], r"^-t: '' is not an image reference: it is empty"),
    ],
)
def test_bad_image_tags_are_bad_input_before_any_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tags: list[str], message: str
) -> None:
    def no_engine(backend: str | None = None) -> Engine:
        raise AssertionError("the engine was looked for before the tags were checked")

    monkeypatch.setattr(cz, "detect_engine", no_engine)
    bundle = fake_bundle(tmp_path / "bundle", INFO)
    with pytest.raises(BadInput, match=message):
        containerize(bundle, INFO, tags=tags, output=lambda _: None)


def test_a_bundle_name_docker_refuses_gets_a_valid_default_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'my..model' is a valid bundle name but not an image name: the image is tagged my.model:<version>."""
    info = {**INFO, "name": "my..model", "tag": "my..model:v1"}
    bundle = fake_bundle(tmp_path / "bundle", info)
    log = _logging_client(tmp_path, monkeypatch)
    assert containerize(bundle, info, output=lambda _: None) == ["my.model:v1"]
    argv = log.read_text().splitlines()
    assert argv[argv.index("-t") + 1] == "my.model:v1"


# --------------------------------------------------------------------------------------------------------
# Real engine


def make_model() -> onnx.ModelProto:
    """Return ``y = x W + b`` for x[batch, 4] -> y[batch, 3] with fixed weights."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 1, (4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 1, (3,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class Project:
    """A bentofile project with its model saved, in a home shared by one test module."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root, self.home = root, home
        self.images: list[str] = []
        self.wheel: Path | None = None

    @contextlib.contextmanager
    def env(self) -> Iterator[None]:
        import bundler.lock

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BUNDLER_HOME", str(self.home))
            if self.wheel is None:
                self.wheel = bundler.lock.build_bundler_wheel(self.home / "frozen-wheel")
            # bundler's wheel is built from the working tree, which may change under a running test session;
            # freeze it, so that "a source-only change" changes the user's source only.
            frozen = self.wheel
            mp.setattr(bundler.lock, "build_bundler_wheel", lambda dest: Path(shutil.copy2(frozen, dest)))
            yield

    def build(self, root: Path | None = None, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
        """Build the bundle with the real builder; return its directory and bundle.yaml."""
        from bundler import bundles
        from bundler.builder import build

        with self.env():
            result = build(root or self.root, **kwargs)
            bundle = bundles.get(str(result.tag))
        return bundle.path, bundle.info

    def containerize(self, bundle: Path, info: dict[str, Any], **kwargs: Any) -> tuple[str, list[str]]:
        lines: list[str] = []
        with self.env():
            tags = containerize(bundle, info, output=lines.append, **kwargs)
        self.images += tags
        return tags[0], lines


@pytest.fixture(scope="module")
def project(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    import bundler

    root = tmp_path_factory.mktemp("affine")
    (root / "service.py").write_text(SERVICE)
    (root / "bentofile.yaml").write_text(BENTOFILE)
    proj = Project(root, tmp_path_factory.mktemp("home"))
    with proj.env():
        bundler.onnx.save_model("affine", make_model(), signatures={"run": {"batchable": True}})
    yield proj
    if proj.images:
        subprocess.run([engine.client, "rmi", "-f", *sorted(set(proj.images))], capture_output=True)


@pytest.fixture(scope="module")
def image(project: Project) -> tuple[str, Path]:
    bundle, info = project.build()
    tag, _ = project.containerize(bundle, info)
    return tag, bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(engine: Engine, image: str, port: int) -> Iterator[str]:
    """Run the image on the host network with PORT set; remove the container afterwards."""
    name = f"bundler-test-{secrets.token_hex(4)}"
    subprocess.run(
        [engine.client, "run", "-d", "--name", name, "--network", "host", "-e", f"PORT={port}", image],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run([engine.client, "rm", "-f", name], capture_output=True)


def wait_ready(port: int, timeout: float = 30.0) -> float:
    """Poll /readyz until 200; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"/readyz on port {port} did not turn 200 within {timeout}s")


def step_cache(lines: list[str]) -> dict[str, bool]:
    """Map each build step's instruction to whether the engine reused it from cache."""
    steps: dict[str, str] = {}
    cached: dict[str, bool] = {}
    current = ""
    for line in lines:
        if m := re.match(r"^#(\d+) \[[^\]]*\d+/\d+\] (.*)$", line):  # BuildKit: "#9 [stage-0 5/11] RUN ..."
            steps[m[1]] = m[2]
            cached.setdefault(m[2], False)
        elif m := re.match(r"^#(\d+) CACHED$", line):
            if m[1] in steps:
                cached[steps[m[1]]] = True
        elif m := re.match(r"^Step \d+/\d+ : (.*)$", line):  # legacy builder
            current = m[1]
            cached.setdefault(current, False)
        elif line.strip() == "---> Using cache" and current:
            cached[current] = True
    return cached


def cached_step(cache: dict[str, bool], prefix: str) -> bool:
    matches = [
        hit for step, hit in cache.items() if re.sub(r"^RUN (--mount=\S+ )*", "RUN ", step).startswith(prefix)
    ]
    assert matches, f"no build step starts with {prefix!r}: {list(cache)}"
    return all(matches)


@pytest.mark.docker
def test_image_serves_the_same_predictions_as_in_process(engine: Engine, image: tuple[str, Path]) -> None:
    import onnxruntime as ort

    tag, _ = image
    port = free_port()
    features = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    expected = ort.InferenceSession(make_model().SerializeToString()).run(None, {"x": features})[0]
    with running(engine, tag, port) as name:
        wait_ready(port)
        response = httpx.post(f"http://127.0.0.1:{port}/predict", json=features.tolist(), timeout=10)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(
            np.asarray(response.json(), dtype=np.float32), expected, rtol=1e-5, atol=1e-6
        )
        uid = subprocess.run(
            [engine.client, "exec", name, "id", "-u"], capture_output=True, text=True, check=True
        )
        assert uid.stdout.strip() == "1000"
    user = subprocess.run(
        [engine.client, "image", "inspect", "-f", "{{.Config.User}}", tag],
        capture_output=True,
        text=True,
        check=True,
    )
    assert user.stdout.strip() == "1000:1000"


@pytest.mark.docker
def test_docker_stop_drains_an_in_flight_request(engine: Engine, image: tuple[str, Path]) -> None:
    tag, _ = image
    port = free_port()
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/slow", json={"seconds": 2}, timeout=20)
            result["status"], result["body"] = r.status_code, r.json()
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)

    with running(engine, tag, port) as name:
        wait_ready(port)
        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)  # the request is now sleeping inside the server
        started = time.monotonic()
        subprocess.run([engine.client, "stop", "-t", "10", name], check=True, capture_output=True)
        stopped_in = time.monotonic() - started
        caller.join(20)
        code = subprocess.run(
            [engine.client, "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True
        )
    assert result.get("status") == 200, result
    assert result["body"] == {"slept": 2}
    assert stopped_in < 10, f"docker stop took {stopped_in:.1f}s: SIGTERM did not reach the server"
    assert code.stdout.strip() == "0"


@pytest.mark.docker
def test_other_commands_pass_through_the_entrypoint(engine: Engine, image: tuple[str, Path]) -> None:
    tag, _ = image
    out = subprocess.run(
        [engine.client, "run", "--rm", tag, "python", "-c", "import onnxruntime, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "/opt/venv"


@pytest.mark.docker
def test_the_image_holds_no_pip_no_setuptools_and_no_wheels(engine: Engine, image: tuple[str, Path]) -> None:
    tag, _ = image
    probe = (
        "import importlib.util as u, importlib.metadata as m, os, sys;"
        " print([n for n in ('pip', 'setuptools', 'pkg_resources') if u.find_spec(n)]);"
        " print(m.version('bundler'), sys.modules['bundler'].__file__ if __import__('bundler') else '');"
        " print(sorted(os.listdir('env/python')))"
    )
    out = subprocess.run(
        [engine.client, "run", "--rm", tag, "python", "-c", probe], capture_output=True, text=True, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "[]", out.stdout
    assert lines[1].endswith("/opt/bundler/bundler/__init__.py"), out.stdout
    assert lines[2] == "['requirements.lock.txt']", out.stdout  # no wheels, no pip cache
    cli = subprocess.run(
        [engine.client, "run", "--rm", tag, "bundler", "--help"], capture_output=True, text=True
    )
    assert cli.returncode == 0 and "Usage: bundler" in cli.stdout, cli.stderr
    # The import check at build time left no onnxruntime device or session id for every container to share.
    leftovers = subprocess.run(
        [engine.client, "run", "--rm", "--user", "0", tag, "sh", "-c", "ls -A /tmp /root/.cache 2>&1"],
        capture_output=True,
        text=True,
    )
    assert ".ses" not in leftovers.stdout and "Microsoft" not in leftovers.stdout, leftovers.stdout


@pytest.mark.docker
def test_the_image_drops_what_serving_never_reads_and_keeps_start_up_bytecode(
    engine: Engine, image: tuple[str, Path]
) -> None:
    tag, _ = image
    probe = """
import glob, importlib.util as u, os
sp = glob.glob("/opt/venv/lib/python3*/site-packages")[0]
def count(pattern):
    return len(glob.glob(f"{sp}/{pattern}", recursive=True))
c_api = count("onnxruntime/capi/libonnxruntime.so*")
print(count("*/**/tests/"), count("**/*.pyi"), count("**/*.js.map"), c_api)
print(bool(u.find_spec("PIL")), bool(u.find_spec("watchfiles")), bool(u.find_spec("uvloop")))
started = ("uvicorn.main", "onnxruntime", "numpy", "starlette.applications", "bundler.server.app")
print([m for m in started if not os.path.exists(u.find_spec(m).cached)])
print(count("onnxruntime/transformers/__pycache__/*.pyc"))
"""
    out = subprocess.run(
        [engine.client, "run", "--rm", tag, "python", "-c", probe], capture_output=True, text=True, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "0 0 0 0", out.stdout  # no test suites, stubs, source maps, nor the C-API library
    assert lines[1] == "False False True", out.stdout  # the quickstart takes no images; uvloop serves
    assert lines[2] == "[]", out.stdout  # the modules a server imports at start-up have their bytecode
    assert lines[3] == "0", out.stdout  # and modules it does not import have none


@pytest.mark.docker
def test_a_new_bundler_wheel_reuses_the_dependency_layers(
    project: Project, image: tuple[str, Path], tmp_path: Path
) -> None:
    _, first_bundle = image
    assert project.wheel is not None
    frozen = project.wheel
    changed = Path(shutil.copy2(frozen, tmp_path / frozen.name))
    with zipfile.ZipFile(changed, "a") as wheel:
        wheel.writestr("bundler/_release_marker.txt", secrets.token_hex(8))
    project.wheel = changed
    try:
        bundle, info = project.build()
        _, lines = project.containerize(bundle, info)
    finally:
        project.wheel = frozen
    assert bundle != first_bundle
    cache = step_cache(lines)
    # numpy and onnxruntime are not reinstalled, nor copied again into the image.
    for reused in ("RUN python3 -m venv", "COPY --from=venv /opt/venv"):
        assert cached_step(cache, reused), f"{reused!r} was rebuilt:\n" + "\n".join(lines[-60:])
    assert not cached_step(cache, "COPY --from=own /opt/bundler")


@pytest.mark.docker
def test_source_only_change_reuses_every_dependency_and_model_layer(
    project: Project, image: tuple[str, Path]
) -> None:
    _, first_bundle = image
    service = project.root / "service.py"
    original = service.read_text()
    service.write_text(original + f"\n# edited {secrets.token_hex(4)}\n")
    try:
        bundle, info = project.build()
    finally:
        service.write_text(original)
    assert bundle != first_bundle
    _, lines = project.containerize(bundle, info)
    cache = step_cache(lines)
    # bundler's own wheel may differ (it is built from the working tree); the dependency layer must not care.
    for reused in (
        "COPY --from=locked /locked/",
        "RUN python3 -m venv",
        "COPY --from=venv /opt/venv",
        "COPY models/",
    ):
        assert cached_step(cache, reused), f"{reused!r} was rebuilt:\n" + "\n".join(lines[-60:])
    assert not cached_step(cache, "COPY src/")


@pytest.mark.docker
def test_a_docker_env_change_reinstalls_nothing_and_reaches_the_image(
    engine: Engine, project: Project, image: tuple[str, Path]
) -> None:
    bentofile = project.root / "bentofile.yaml"
    token = secrets.token_hex(4)
    bentofile.write_text(BENTOFILE.replace("    BUNDLER_LOG_LEVEL: info\n", f"    EDITED: {token}\n"))
    try:
        bundle, info = project.build()
    finally:
        bentofile.write_text(BENTOFILE)
    tag, lines = project.containerize(bundle, info)
    cache = step_cache(lines)
    for reused in ("RUN python3 -m venv", "COPY --from=venv /opt/venv", "COPY --from=own /opt/bundler"):
        assert cached_step(cache, reused), f"{reused!r} was rebuilt:\n" + "\n".join(lines[-60:])
    out = subprocess.run(
        [engine.client, "run", "--rm", tag, "sh", "-c", 'echo "$EDITED|$BUNDLER_LOG_LEVEL"'],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == f"{token}|", out.stderr


@pytest.mark.docker
def test_the_bundle_directory_is_left_untouched(project: Project, image: tuple[str, Path]) -> None:
    from bundler.store import verify_manifest

    _, bundle = image
    assert verify_manifest(bundle) == []  # no changed, added or missing file
    assert not list(bundle.rglob("*.buildkit*")) and not (bundle / ".dockerignore").exists()


def files_containing(engine: Engine, image: str, needle: bytes) -> tuple[int, list[str]]:
    """Return how many layers `docker save` gives for the image, and every file in them holding needle."""
    save = subprocess.Popen([engine.client, "save", image], stdout=subprocess.PIPE)
    assert save.stdout is not None
    found, layers = [], 0
    with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
        for member in outer:
            data = outer.extractfile(member) if member.isfile() else None
            if data is None:
                continue
            if member.name.endswith("layer.tar"):
                layers += 1
                with tarfile.open(fileobj=data, mode="r|") as layer:
                    for entry in layer:
                        content = layer.extractfile(entry) if entry.isfile() else None
                        if content is not None and needle in content.read():
                            found.append(f"{member.name}:{entry.name}")
            elif needle in data.read():
                found.append(member.name)
    assert save.wait() == 0
    return layers, found


def marked_ca(tmp_path: Path) -> tuple[Path, str]:
    """Return a copy of the system CA bundle with a unique comment to look for in the image."""
    marker = f"bundler-ca-marker-{secrets.token_hex(8)}"
    ca = tmp_path / "ca.pem"
    ca.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text() + f"\n# {marker}\n")
    return ca, marker


@pytest.mark.docker
def test_ca_bundle_is_used_as_a_secret_and_is_in_no_layer(
    engine: Engine, project: Project, image: tuple[str, Path], tmp_path: Path
) -> None:
    if not engine.buildkit:
        pytest.skip("--ca-bundle needs BuildKit; the refusal is tested without an engine")
    _, bundle = image
    ca, marker = marked_ca(tmp_path)
    with project.env():
        from bundler import bundles

        info = bundles.get(f"{bundle.parent.name}:{bundle.name}").info
    tag, lines = project.containerize(bundle, info, tags=[f"affine-ca:{secrets.token_hex(4)}"], ca_bundle=ca,
                                      no_cache=True)  # fmt: skip
    assert any("--secret id=ca,src=" in line for line in lines[:1])
    assert any("--mount=type=secret,id=ca" in line for line in lines), "the pip step did not mount the secret"
    layers, found = files_containing(engine, tag, marker.encode())
    assert layers > 3
    assert not found, f"the CA bundle leaked into the image: {found}"


NO_PROXY_CA_BASE = """\
FROM python:3.11-slim
# Debian's CA bundle only, without the proxy's CA; and set where pip's requests reads it first.
RUN update-ca-certificates --fresh >/dev/null
ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
"""


@pytest.mark.docker
def test_ca_bundle_lets_a_base_without_the_proxy_ca_install_the_lock(
    engine: Engine, project: Project, tmp_path: Path
) -> None:
    if not engine.buildkit:
        pytest.skip("the legacy builder's CA fetch is tested on its own")
    base = f"affine-no-ca-base:{secrets.token_hex(4)}"
    context = tmp_path / "base"
    context.mkdir()
    (context / "Dockerfile").write_text(NO_PROXY_CA_BASE)
    subprocess.run(
        [engine.client, "build", "-q", "-t", base, str(context)],
        check=True,
        capture_output=True,
        env=engine.environ(),
    )
    project.images.append(base)
    root = tmp_path / "project"
    root.mkdir()
    (root / "service.py").write_text(SERVICE)
    (root / "bentofile.yaml").write_text(BENTOFILE + f"  base_image: {base}\n")
    bundle, info = project.build(root)
    ca = Path("/etc/ssl/certs/ca-certificates.crt")  # this machine's bundle, with the proxy's CA
    _, lines = project.containerize(bundle, info, ca_bundle=ca, no_cache=True)
    assert any("Successfully installed" in line for line in lines), "the pip step did not run"


@pytest.mark.docker
def test_offline_bundle_builds_with_no_network(engine: Engine, project: Project) -> None:
    bundle, info = project.build(offline=True)
    assert info["python"]["offline"] is True
    tag, lines = project.containerize(bundle, info)
    assert "--network none" in lines[0]
    out = subprocess.run(
        [engine.client, "run", "--rm", "--network", "none", tag, "python", "-c", "import bundler.server.app"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    # The bundled wheels were installed in a build stage; none of them reaches the image.
    wheels = subprocess.run(
        [
            engine.client,
            "run",
            "--rm",
            tag,
            "sh",
            "-c",
            "find /opt /home/bundler -name '*.whl'; ls env/python",
        ],
        capture_output=True,
        text=True,
    )
    assert wheels.stdout.split() == ["requirements.lock.txt"], wheels.stdout + wheels.stderr


OPTIONS_BENTOFILE = """\
service: "service:svc"
name: affine-options
include:
  - "*.py"
docker:
  system_packages:
    - jq
  env:
    GREETING: 'hello "world" $HOME'
  setup_script: setup.sh
  dockerfile_template: Dockerfile.template
envs:
  - name: RUNTIME_FLAG
    value: "on"
"""
OPTIONS_TEMPLATE = """\
{% extends bento_base_template %}
{% block SETUP_BENTO_COMPONENTS %}
{{ super() }}
RUN echo "templated for {{ bento__user }}" > /home/bundler/template-marker
{% endblock %}
"""


@pytest.mark.docker
def test_bentofile_docker_options_reach_the_image(engine: Engine, project: Project, tmp_path: Path) -> None:
    root = tmp_path / "options"
    root.mkdir()
    (root / "service.py").write_text(SERVICE)
    (root / "bentofile.yaml").write_text(OPTIONS_BENTOFILE)
    (root / "Dockerfile.template").write_text(OPTIONS_TEMPLATE)
    setup = root / "setup.sh"
    setup.write_text("#!/bin/sh\nset -e\necho setup-ran > /etc/setup-marker\n")
    setup.chmod(0o755)
    bundle, info = project.build(root)
    tag, _ = project.containerize(bundle, info)
    probe = (
        'jq --version; cat /etc/setup-marker /home/bundler/template-marker; echo "$GREETING|$RUNTIME_FLAG"'
    )
    out = subprocess.run(
        [engine.client, "run", "--rm", tag, "sh", "-c", probe], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "jq-1.6",
        "setup-ran",
        "templated for bundler",
        'hello "world" $HOME|on',
    ]


@pytest.mark.docker
def test_an_image_that_cannot_start_fails_the_build_with_the_engine_output(
    engine: Engine, project: Project, tmp_path: Path
) -> None:
    script = project.root / "break.sh"
    script.write_text("#!/bin/sh\n/opt/venv/bin/python -m pip uninstall -y starlette\n")
    script.chmod(0o755)
    bentofile = project.root / "bentofile.yaml"
    original = bentofile.read_text()
    bentofile.write_text(original.replace("docker:\n", "docker:\n  setup_script: break.sh\n"))
    try:
        bundle, info = project.build()
    finally:
        bentofile.write_text(original)
        script.unlink()
    with pytest.raises(ContainerizeError) as err:
        project.containerize(bundle, info)
    message = str(err.value)
    assert "build of" in message and "failed (exit" in message
    assert "No module named 'starlette'" in message


@pytest.mark.docker
@pytest.mark.slow
def test_legacy_builder_builds_the_stored_dockerfile_and_fetches_the_ca_without_keeping_it(
    engine: Engine, project: Project, image: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if engine.kind != "docker":
        pytest.skip("the legacy builder is docker's")
    _, bundle = image
    legacy = Engine("docker", engine.client, "legacy")
    monkeypatch.setattr(cz, "detect_engine", lambda backend=None: legacy)
    with project.env():
        from bundler import bundles

        info = bundles.get(f"{bundle.parent.name}:{bundle.name}").info
    _, lines = project.containerize(bundle, info, tags=[f"affine-legacy:{secrets.token_hex(4)}"])
    assert f"-f {bundle / 'env/docker/Dockerfile'}" in lines[0]
    assert any(line.startswith("Step ") for line in lines), "not the legacy builder's output"

    # --ca-bundle: fetched from a one-shot loopback server during the pip step, then gone.
    ca, marker = marked_ca(tmp_path)
    tag, lines = project.containerize(
        bundle, info, tags=[f"affine-legacy-ca:{secrets.token_hex(4)}"], ca_bundle=ca, no_cache=True
    )
    assert "--network host" in lines[0] and "BUNDLER_CA_URL=http://127.0.0.1:" in lines[0]
    assert any("Successfully installed" in line for line in lines), "the pip step did not run"
    layers, found = files_containing(engine, tag, marker.encode())
    assert layers > 3
    assert not found, f"the CA bundle leaked into the image: {found}"


def test_render_inputs_reproduce_the_stored_dockerfile(tmp_path: Path) -> None:
    """The BuildKit variant is only used when bundle.yaml re-renders the stored Dockerfile exactly."""
    from bundler.dockerfile import render_dockerfile

    info = {**INFO, "docker": dict(INFO["docker"])}
    docker, facts = render_inputs(info, tmp_path)
    assert docker["setup_script"] == "env/docker/setup_script"
    assert facts["apis"] == ["predict"] and facts["has_models"] and facts["description"] == "first line"
    stored = tmp_path / "env" / "docker" / "Dockerfile"
    stored.parent.mkdir(parents=True)
    stored.write_text(render_dockerfile(docker, facts))
    assert "--mount=type=cache" in (cz._rerender(tmp_path, info, buildkit=True) or "")
    stored.write_text(stored.read_text() + "RUN echo hand-edited\n")
    assert cz._rerender(tmp_path, info, buildkit=True) is None

    # A user template is found where the bundle keeps it, so its bundle gets the BuildKit variant too.
    info["docker"]["dockerfile_template"] = "docker/custom.j2"
    template = (
        "{% extends bento_base_template %}{% block SETUP_BENTO_USER %}{{ super() }}RUN true\n{% endblock %}"
    )
    (stored.parent / cz.TEMPLATE_COPY).write_text(template)
    docker, facts = render_inputs(info, tmp_path)
    assert docker["dockerfile_template"] == template
    stored.write_text(render_dockerfile(docker, facts))
    variant = cz._rerender(tmp_path, info, buildkit=True) or ""
    assert "--mount=type=cache" in variant and "RUN true" in variant


@pytest.mark.docker
def test_a_hand_edited_dockerfile_is_built_as_stored(
    engine: Engine, project: Project, image: tuple[str, Path], tmp_path: Path
) -> None:
    import yaml

    _, bundle = image
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    dockerfile = copy / "env" / "docker" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + 'LABEL edited="by hand"\n')
    info = yaml.safe_load((copy / "bundle.yaml").read_text())
    tag, lines = project.containerize(copy, info, tags=[f"affine-edited:{secrets.token_hex(4)}"])
    if engine.buildkit:
        assert any(line.startswith("note: ") and "building it as stored" in line for line in lines)
    label = subprocess.run(
        [engine.client, "image", "inspect", "-f", '{{ index .Config.Labels "edited" }}', tag],
        capture_output=True,
        text=True,
        check=True,
    )
    assert label.stdout.strip() == "by hand"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="host platform assumed linux/amd64")
def test_the_image_is_built_for_the_platform_the_bundle_was_locked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _logging_client(tmp_path, monkeypatch)
    notes: list[str] = []
    for platform, expected in (("linux/amd64", None), ("linux/arm64", "linux/arm64")):
        info = {**INFO, "python": {**INFO["python"], "platform": platform}}
        bundle = fake_bundle(tmp_path / platform.replace("/", "-"), info)
        containerize(bundle, info, output=notes.append)
        argv = log.read_text().splitlines()
        got = argv[argv.index("--platform") + 1] if "--platform" in argv else None
        assert got == expected  # the host's own platform is left to the engine, as before
        with pytest.raises(BadInput, match=rf"--platform linux/386: the bundle was locked for {platform}"):
            containerize(bundle, info, platform="linux/386", output=notes.append)
    assert any("building for linux/arm64 on a linux/amd64 host needs emulation" in n for n in notes)


def test_a_bundle_changed_after_its_build_is_not_containerized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _logging_client(tmp_path, monkeypatch)
    bundle = tmp_path / "bundle"
    (bundle / "src").mkdir(parents=True)
    (bundle / "src" / "service.py").write_text("svc = 1\n")
    fake_bundle(bundle, INFO)
    (bundle / "src" / "service.py").write_text("svc = 2\n")
    with pytest.raises(
        ContainerizeError, match=r"a:v1 fails its manifest check \(src/service.py: sha256 differs"
    ):
        containerize(bundle, INFO, output=lambda _: None)
    assert not log.exists()  # the engine was never called
    # The stored Dockerfile alone may be edited by hand (it is built as stored): not refused.
    (bundle / "src" / "service.py").write_text("svc = 1\n")
    dockerfile = bundle / "env" / "docker" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + 'LABEL edited="by hand"\n')
    assert containerize(bundle, INFO, output=lambda _: None) == ["a:v1"]


@pytest.mark.parametrize(
    "existing",
    [
        "",  # python:3.11-slim: nobody has id 1000
        # ubuntu:24.04's account: user and group `ubuntu`, 1000 both (groupadd failed: "GID '1000' already
        # exists", so containerize failed on such a base)
        "groupadd --gid 1000 ubuntu && useradd --uid 1000 --gid 1000 --create-home ubuntu",
        "groupadd --gid 1000 staff2",  # only the group
    ],
    ids=["none", "user-and-group", "group-only"],
)
def test_the_image_user_is_made_on_a_base_that_has_an_account_with_its_id(
    engine: Engine, existing: str
) -> None:
    from bundler.dockerfile import HOME, UID, USER, _user_setup

    script = " && ".join(
        [existing or "true", *_user_setup(), f"id -nu {UID}", f"id -ng {UID}", "echo ~bundler"]
    )
    result = subprocess.run(
        [engine.client, "run", "--rm", "--network", "none", "python:3.11-slim", "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [USER, USER, HOME]
