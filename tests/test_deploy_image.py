"""Kubernetes manifests against the real image: run it as the Deployment says, probe it as kubelet would.

The container runs with the manifest's security context (uid 1000, read-only root file system, all
capabilities dropped, /tmp as the only writable place) and environment; the probes' paths, ports and
timings come from the generated Deployment, and the drain from its grace period.
"""

from __future__ import annotations

import os
import runpy
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bundler.builder import build
from bundler.deploy import kubernetes_manifests

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _container(manifests: list[dict]) -> dict:
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]


def test_image_honours_the_deployment_probes_security_and_drain(tmp_path: Path, engine: Any) -> None:
    work = tmp_path / "quickstart"
    shutil.copytree(ROOT / "examples/quickstart", work, ignore=shutil.ignore_patterns("__pycache__"))
    runpy.run_path(str(work / "make_model.py"), run_name="__main__")
    bundle = build(work)
    from bundler import bundles
    from bundler.docker import containerize

    info = bundles.get(bundle.tag).info
    image = f"bundler-deploy-test:{secrets.token_hex(4)}"
    containerize(bundle.path, info, tags=[image], output=lambda _line: None)
    pod = _container(kubernetes_manifests(info, bundle.path))
    spec = pod["containers"][0]
    port = _free_port()
    env = [f"{e['name']}={e['value']}" for e in spec["env"] if e["name"] != "PORT"] + [f"PORT={port}"]
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    tmp_mount = next(v["mountPath"] for v in spec["volumeMounts"] if v["name"] == "tmp")
    name = f"bundler-deploy-{secrets.token_hex(4)}"
    cmd = [engine.client, "run", "-d", "--rm", "--name", name, "--network", "host", "--read-only"]
    cmd += ["--tmpfs", f"{tmp_mount}:rw,size=64m", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    cmd += ["--user", f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    for e in env:
        cmd += ["-e", e]
    started = time.monotonic()
    subprocess.run([*cmd, image], check=True, capture_output=True, timeout=60)
    try:
        ready_path = spec["readinessProbe"]["httpGet"]["path"]
        startup = spec["startupProbe"]
        budget = startup["failureThreshold"] * startup["periodSeconds"]
        seen: list[int | str] = []
        while time.monotonic() - started < budget:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code
            except httpx.TransportError:
                status = "refused"
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                break
            time.sleep(0.02)
        assert seen[-1] == 200, f"{ready_path} never turned 200 within the startup probe's {budget}s: {seen}"
        # Before ready, the probe path answers 503 (models loading) or nothing yet (process starting).
        assert set(seen[:-1]) <= {"refused", 503}, seen
        assert startup["httpGet"]["path"] == ready_path
        live = spec["livenessProbe"]["httpGet"]["path"]
        assert httpx.get(f"http://127.0.0.1:{port}{live}", timeout=2).status_code == 200
        reply = httpx.post(f"http://127.0.0.1:{port}/predict", json=[[5.1, 3.5, 1.4, 0.2]], timeout=10)
        assert reply.status_code == 200 and len(reply.json()[0]) == 3
        # Kubernetes sends SIGTERM after preStop and kills after the grace period: the server must be gone
        # well within it (docker stop's -t is the same contract).
        grace = pod["terminationGracePeriodSeconds"]
        stop_started = time.monotonic()
        subprocess.run([engine.client, "stop", "-t", str(grace), name], check=True, capture_output=True)
        assert time.monotonic() - stop_started < grace
    finally:
        subprocess.run([engine.client, "rm", "-f", name], capture_output=True)
        subprocess.run([engine.client, "rmi", "-f", image], capture_output=True)
