"""The image: non-root, no build-time secret in any layer, and containerize survives a kill -9 mid-build.

One image is built (with a CA bundle holding a unique marker, and a --build-arg holding another) and reused by
every test here; the kill test builds under another tag and removes it. Docker tests fail under CI=true when
no engine is found, and are skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from bundler.containerize import Engine
from bundler.store import verify_manifest

from .services import QUICKSTART, ROOT, home_env, load_file

pytestmark = pytest.mark.docker
CA_SYSTEM = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Built:
    engine: Engine
    image: str
    home: Path
    tag: str
    ca_marker: str
    arg_marker: str
    containerize_seconds: float


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, BUNDLER_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("BUNDLER_BUNDLE_DIR", None)
    return env


def _bundler(*args: str, home: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bundler", *args],
        env=_env(home),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _docker(engine: Engine, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([engine.client, *args], capture_output=True, text=True, check=check, timeout=300)


@pytest.fixture(scope="module")
def built(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Build the quickstart bundle and its image with a marked CA bundle and a marked build arg."""
    import bundler

    home = tmp_path_factory.mktemp("image-home")
    make_model = load_file(QUICKSTART / "make_model.py", "hardening_image_make_model")
    with home_env(home):
        bundler.onnx.save_model(
            "quickstart", make_model.make_model(), signatures={"run": {"batchable": True}}
        )
    project = tmp_path_factory.mktemp("image-project") / "quickstart"
    shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("__pycache__"))
    r = _bundler("build", str(project), "--output", "json", home=home)
    assert r.returncode == 0, r.stderr
    tag = json.loads(r.stdout)["tag"]
    ca_marker = f"bundler-ca-marker-{secrets.token_hex(8)}"
    arg_marker = f"bundler-arg-marker-{secrets.token_hex(8)}"
    ca = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.write_text(CA_SYSTEM.read_text() + f"\n# {ca_marker}\n")
    image = f"hardening-quickstart:{secrets.token_hex(4)}"
    started = time.monotonic()
    # The legacy builder refuses --ca-bundle (it could only COPY it into a layer): test_containerize.
    secret = ["--ca-bundle", str(ca)] if engine.buildkit else []
    r = _bundler(
        "containerize", tag, "-t", image, *secret, "--build-arg", f"HARDENING={arg_marker}", home=home
    )
    seconds = time.monotonic() - started
    try:
        assert r.returncode == 0, r.stderr[-4000:]
        assert r.stdout.strip().splitlines()[-1] == image
        yield Built(engine, image, home, tag, ca_marker, arg_marker, seconds)
    finally:
        _docker(engine, "rmi", "-f", image, check=False)


# -- secrets ---------------------------------------------------------------------------------------------
def _scan_tar(stream: IO[bytes], markers: list[bytes], where: str, found: list[str]) -> int:
    """Scan every file of a tar stream (and of tars inside it) for the markers; return the layers seen."""
    layers = 0
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            data = tar.extractfile(member) if member.isfile() else None
            if data is None:
                continue
            blob = data.read()
            for marker in markers:
                if marker in blob:
                    found.append(f"{where}{member.name} ({marker.decode()})")
            if blob[257:262] == b"ustar" or member.name.endswith(("layer.tar", ".tar")):
                import io

                layers += 1
                with contextlib.suppress(tarfile.TarError):
                    _scan_tar(io.BytesIO(blob), markers, f"{where}{member.name}:", found)
    return layers


def test_no_build_secret_in_any_layer_history_or_config(built: Built, tally: Any) -> None:
    markers = [built.ca_marker.encode(), built.arg_marker.encode()]
    found: list[str] = []
    history = _docker(built.engine, "history", "--no-trunc", built.image).stdout
    inspect = _docker(built.engine, "image", "inspect", built.image).stdout
    for text, where in ((history, "docker history"), (inspect, "docker image inspect")):
        found += [f"{where} ({m.decode()})" for m in markers if m in text.encode()]
    save = subprocess.Popen([built.engine.client, "save", built.image], stdout=subprocess.PIPE)
    assert save.stdout is not None
    # A control: bundle.yaml (in the last COPY layer) holds the tag, so the scan does see file contents.
    control = f"tag: {built.tag}".encode()
    layers = _scan_tar(save.stdout, [*markers, control], "", found)
    assert save.wait(timeout=300) == 0
    seen_control = [f for f in found if control.decode() in f]
    found = [f for f in found if f not in seen_control]
    tally("image: secrets", "layers scanned, no marker" if not found else "marker found", layers)
    tally("image: secrets", "history and config, no marker" if not found else "marker found", 2)
    assert layers >= 5, "docker save held fewer layers than the Dockerfile makes"
    assert any("bundle.yaml" in f for f in seen_control), "the scan did not see bundle.yaml in any layer"
    assert not found, f"a build-time secret reached the image: {found}"


# -- non-root --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_image_runs_as_non_root_and_serves(built: Built, tally: Any) -> None:
    user = _docker(built.engine, "image", "inspect", "-f", "{{.Config.User}}", built.image).stdout.strip()
    assert user and user.split(":")[0] not in ("", "0", "root"), user
    port = _free_port()
    name = f"hardening-{secrets.token_hex(4)}"
    _docker(built.engine, "run", "-d", "--name", name, "--network", "host", "-e", f"PORT={port}", built.image)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", json=[[5.1, 3.5, 1.4, 0.2]], timeout=10)
        assert r.status_code == 200, r.text
        uid = _docker(built.engine, "exec", name, "id", "-u").stdout.strip()
        server_uid = _docker(built.engine, "exec", name, "sh", "-c", "awk '/^Uid:/{print $2}' /proc/1/status")
        writable = _docker(built.engine, "exec", name, "sh", "-c", "touch /usr/bin/x 2>&1; echo $?").stdout
        tally("image: non-root", "uid " + uid)
        assert uid != "0" and server_uid.stdout.strip() != "0"
        assert writable.strip().splitlines()[-1] != "0", "the server's user can write to /usr/bin"
    finally:
        _docker(built.engine, "rm", "-f", name, check=False)


# -- kill -9 mid-build -----------------------------------------------------------------------------------
def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_9_during_containerize_then_again(built: Built, tally: Any) -> None:
    image = f"hardening-killed:{secrets.token_hex(4)}"
    argv = [sys.executable, "-m", "bundler", "containerize", built.tag, "-t", image, "--no-cache"]
    proc = subprocess.Popen(
        argv, env=_env(built.home), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        # Wait until the engine runs build steps, then kill bundler (only bundler, as an OOM kill would).
        for line in proc.stdout:
            lines.append(line)
            if "RUN python3 -m venv" in line or "pip install" in line:
                break
        time.sleep(0.3)
        assert proc.poll() is None, "containerize ended before the kill:\n" + "".join(lines[-20:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        tally("image: kill containerize", "killed mid-build")
        # Its engine client (a child) loses its output pipe; give it a while to go, then clean up after it.
        deadline = time.monotonic() + 30
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        orphaned = _group_alive(proc.pid)
        tally("image: kill containerize", "engine client outlived it" if orphaned else "engine client gone")
        if orphaned:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        name, version = built.tag.split(":")
        assert verify_manifest(built.home / "bundles" / name / version) == []  # the bundle is untouched
        r = _bundler("containerize", built.tag, "-t", image, home=built.home)
        assert r.returncode == 0, r.stderr[-4000:]
        assert _docker(built.engine, "image", "inspect", image, check=False).returncode == 0
        tally("image: kill containerize", "rerun succeeded")
        # The killed one's scratch directory (its rendered Dockerfile) went with the rerun's start.
        assert not list((built.home / "bundles" / ".tmp").glob(f"containerize-{proc.pid}-*"))
        tally("image: kill containerize", "scratch of the killed one removed")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _docker(built.engine, "rmi", "-f", image, check=False)
