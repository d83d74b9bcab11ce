"""load_service (module:svc, bundle dir, bundle tag) and serve() in real subprocesses (SIGTERM drain)."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

import bundler
from bundler.exceptions import BadInput, NotFound, StoreError
from bundler.server.serve import load_service
from bundler.store import verify_manifest, write_manifest
from tests.models import make_mlp, reference_run

ROOT = Path(__file__).resolve().parent.parent

SERVICE = """
import bundler
from bundler.io import JSON

svc = bundler.Service("{name}")
other = 42

@svc.api(input=JSON(), output=JSON())
def hello(obj):
    return {{"hello": obj, "from": "{name}"}}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def make_bundle(root: Path, name: str = "demo", version: str = "v1", module: str = "service") -> Path:
    write(root / "src" / f"{module}.py", SERVICE.format(name=name))
    write(root / "bundle.yaml", yaml.safe_dump({"tag": f"{name}:{version}", "service": f"{module}:svc"}))
    return root


@pytest.fixture(autouse=True)
def restore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_service sets BUNDLER_BUNDLE_DIR for the process; let monkeypatch put it back after each test.
    monkeypatch.setenv("BUNDLER_BUNDLE_DIR", "")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)  # set by serving a bundle


# -- load_service ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["svcmod_a:svc", "svcmod_a", "svcmod_a.py:svc"])
def test_module_targets(tmp_path: Path, target: str) -> None:
    write(tmp_path / "svcmod_a.py", SERVICE.format(name="mod-a"))
    svc = load_service(target, working_dir=tmp_path)
    assert isinstance(svc, bundler.Service) and svc.name == "mod-a" and list(svc.apis) == ["hello"]


@pytest.mark.parametrize(
    ("source", "target", "error", "match"),
    [
        (SERVICE.format(name="x"), "svcmod_b:nope", BadInput, "has no attribute 'nope'; it defines svc"),
        (SERVICE.format(name="x"), "svcmod_b:other", BadInput, "is a int, not a bundler.Service"),
        ("raise RuntimeError('no GPU here')", "svcmod_b:svc", BadInput, "RuntimeError: no GPU here"),
        ("import not_a_module_xyz", "svcmod_b:svc", BadInput, "not_a_module_xyz"),
        (SERVICE.format(name="x"), "elsewhere:svc", NotFound, "no module 'elsewhere'"),
    ],
)
def test_module_target_errors(tmp_path: Path, source: str, target: str, error: type, match: str) -> None:
    write(tmp_path / "svcmod_b.py", source)
    sys.modules.pop("svcmod_b", None)
    with pytest.raises(error, match=match):
        load_service(target, working_dir=tmp_path)


@pytest.mark.parametrize("target", ["proj/svcmod_f.py:svc", "proj/svcmod_f.py", "./proj/svcmod_f.py:svc"])
def test_a_path_to_the_service_module(tmp_path: Path, target: str) -> None:
    # It said "found no module 'proj.svcmod_f'": a module file's path works as `cd proj && serve ...` does.
    write(tmp_path / "proj" / "helper_f.py", "NAME = 'from-path'\n")
    write(
        tmp_path / "proj" / "svcmod_f.py",
        "import bundler\nfrom helper_f import NAME\nsvc = bundler.Service(NAME)\n",
    )
    sys.modules.pop("svcmod_f", None)
    assert load_service(target, working_dir=tmp_path).name == "from-path"


def test_directory_without_bundle_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match=r"without bundle\.yaml or bentofile\.yaml"):
        load_service("empty", working_dir=tmp_path)


@pytest.mark.parametrize("target", ["/no/such/bundle", "./gone", "builds/gone/"])
def test_a_missing_directory_is_named_as_one(tmp_path: Path, target: str) -> None:
    # It said "found no module '/no/such/bundle' ... and no bundle '/no/such/bundle' in the store" (a wrong
    # BUNDLE_DIR in the image's entrypoint gets this message).
    with pytest.raises(BadInput, match=r"serve '.+': no such directory /.+; give a bundle directory"):
        load_service(target, working_dir=tmp_path)


def test_project_directory_uses_the_bentofile_service(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write(project / "svcmod_c.py", SERVICE.format(name="from-project"))
    write(project / "bentofile.yaml", 'service: "svcmod_c:svc"\ninclude: ["*.py"]\n')
    assert load_service(".", working_dir=project).name == "from-project"
    write(project / "bentofile.yaml", "include: ['*.py']\n")
    with pytest.raises(BadInput, match="'service' is missing"):
        load_service(str(project))


def test_a_build_file_or_bundle_yaml_names_the_service(tmp_path: Path) -> None:
    # `bundler serve bentofile.yaml` said "found no module 'bentofile.yaml'" (build takes the file).
    project = tmp_path / "proj"
    write(project / "svcmod_d.py", SERVICE.format(name="from-file"))
    write(project / "prod.yml", 'service: "svcmod_d:svc"\n')
    assert load_service("prod.yml", working_dir=project).name == "from-file"
    bundle = make_bundle(tmp_path / "b2", name="demo-two", version="v2", module="svcmod_e")
    assert load_service(str(bundle / "bundle.yaml")).version == "v2"


def test_bundle_directory_sets_bundle_dir_and_version(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b1", name="demo-one", version="v7")
    svc = load_service(str(bundle))
    assert (svc.name, svc.version) == ("demo-one", "v7")
    assert os.environ["BUNDLER_BUNDLE_DIR"] == str(bundle.resolve())
    assert svc.openapi()["info"]["version"] == "v7"


def test_two_bundles_with_the_same_module_name_do_not_shadow(tmp_path: Path) -> None:
    first = load_service(str(make_bundle(tmp_path / "one", name="first")))
    second = load_service(str(make_bundle(tmp_path / "two", name="second")))
    assert (first.name, second.name) == ("first", "second")


def test_serving_a_bundle_writes_no_bytecode_into_it(tmp_path: Path) -> None:
    # Python caches the service's bytecode in src/__pycache__/: in a stored bundle that was a file outside
    # its manifest, so `bundler serve quickstart:latest` made `bundler verify`, export and containerize
    # refuse the bundle as "changed after `bundler build`" (the README's own quick start).
    bundle = make_bundle(tmp_path / "b", name="demo", version="v1")
    write_manifest(bundle)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = f"from bundler.server.serve import load_service; load_service({str(bundle)!r})"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=60)
    assert verify_manifest(bundle) == []
    assert not list(bundle.rglob("*.pyc"))


def test_a_bundle_missing_a_model_it_ships_is_refused(tmp_path: Path) -> None:
    # The home store has a model of that name: it was served, silently, in place of the bundle's own.
    home_model = bundler.onnx.save_model("tiny", make_mlp(None, in_dim=4, hidden=8, out=2))
    bundle = make_bundle(tmp_path / "b", name="demo", version="v1")
    info = yaml.safe_load((bundle / "bundle.yaml").read_text())
    info["models"] = [{"tag": "tiny:shipped1", "module": "bundler.onnx"}]
    write(bundle / "bundle.yaml", yaml.safe_dump(info))
    with pytest.raises(
        StoreError, match=r"bundle.yaml: the bundle ships model tiny:shipped1, but .*model.yaml"
    ):
        load_service(str(bundle))
    shutil.copytree(home_model.path, bundle / "models" / "tiny" / "shipped1")
    (bundle / "models" / "tiny" / "shipped1" / "saved_model.onnx").unlink()
    with pytest.raises(StoreError, match=r"tiny/shipped1/saved_model.onnx is missing"):
        load_service(str(bundle))
    shutil.copy(home_model.model_file, bundle / "models" / "tiny" / "shipped1")
    assert load_service(str(bundle)).name == "demo"


def test_a_bundle_changed_after_build_is_served_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As `bundler verify` would report (containerize refuses it); its models are not hashed at each start.
    bundle = make_bundle(tmp_path / "b", name="demo", version="v1")
    write(bundle / "models" / "m" / "v1" / "model.yaml", "name: m\n")
    write_manifest(bundle)
    caplog.set_level(logging.WARNING, logger="bundler.server")
    load_service(str(bundle))
    assert not caplog.records
    write(bundle / "src" / "service.py", SERVICE.format(name="edited"))
    write(bundle / "models" / "m" / "v1" / "model.yaml", "name: m2\n")
    load_service(str(bundle))
    [record] = caplog.records
    assert "bundle demo:v1 fails its manifest check (src/service.py: sha256 differs" in record.getMessage()
    assert "models/" not in record.getMessage()


def test_bundle_tag_from_the_store(bundler_home: Path, tmp_path: Path) -> None:
    make_bundle(bundler_home / "bundles" / "demo" / "v1", name="demo", version="v1")
    make_bundle(bundler_home / "bundles" / "demo" / "v2", name="demo", version="v2")
    (bundler_home / "bundles" / "demo" / "latest").write_text("v2")
    assert load_service("demo:v1", working_dir=tmp_path).version == "v1"
    assert load_service("demo", working_dir=tmp_path).version == "v2"
    with pytest.raises(NotFound, match=r"no bundle 'ghost:v1' in the store \(see `bundler list`\)"):
        load_service("ghost:v1", working_dir=tmp_path)
    with pytest.raises(NotFound, match=r"no bundle 'dem:latest' in the store \(did you mean bundle 'demo'\?"):
        load_service("dem:latest", working_dir=tmp_path)  # a typo


# -- serve() in a subprocess -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    target: str, cwd: Path, env: dict[str, str] | None = None, **options: object
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = ", ".join(f"{k}={v!r}" for k, v in {"port": port, "log_level": "warning", **options}.items())
    code = f"from bundler.server.serve import serve; serve({target!r}, {args})"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=full_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not become ready in 30s")


# A single-worker serve() exits 0 after a SIGTERM drain. With --workers or --reload, uvicorn's supervisor
# re-raises the signal once it has shut down, so a clean exit there reads -15 (143 in a shell).
CLEAN_EXIT = (0, -signal.SIGTERM)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


# A sync API that sleeps as long as its request says.
SLOW_SERVICE = """
import time
import bundler
from bundler.io import JSON

svc = bundler.Service("slow")

@svc.api(input=JSON(), output=JSON())
def wait(obj):
    time.sleep(obj["seconds"])
    return {"slept": obj["seconds"]}
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_drains_an_in_flight_request(tmp_path: Path, signum: signal.Signals) -> None:
    # SIGHUP (the terminal of `bundler serve` closed) killed the server with its requests in flight.
    write(tmp_path / "slowsvc.py", SLOW_SERVICE)
    proc, url = start("slowsvc:svc", tmp_path)
    try:
        result: dict[str, object] = {}

        def call() -> None:
            try:
                r = httpx.post(f"{url}/wait", json={"seconds": 1.5}, timeout=10)
                result["status"], result["body"] = r.status_code, r.json()
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.5)  # the request is in the API function now
        proc.send_signal(signum)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/livez", timeout=1)  # no new connections while draining
        thread.join(10)
        assert result == {"status": 200, "body": {"slept": 1.5}}
        assert proc.wait(10) == 0  # drained: a clean exit, not a death by SIGTERM (uvicorn's 143)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_a_bundle_directory_with_its_own_model(tmp_path: Path, bundler_home: Path) -> None:
    # The model lives only inside the bundle; the server's BUNDLER_HOME is empty.
    proto = make_mlp(None, in_dim=4, hidden=8, out=2)
    model = bundler.onnx.save_model("tiny", proto)
    bundle = tmp_path / "bundle"
    shutil.copytree(bundler_home / "models", bundle / "models")
    write(
        bundle / "src" / "service.py",
        """
        import bundler
        from bundler.io import NumpyNdarray

        runner = bundler.onnx.get("tiny:latest").to_runner()
        svc = bundler.Service("tiny-svc", runners=[runner])

        @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
        def predict(x):
            return runner.run.run(x)
        """,
    )
    write(
        bundle / "bundle.yaml",
        yaml.safe_dump({"tag": f"tiny-svc:{model.tag.version}", "service": "service:svc"}),
    )
    empty_home = tmp_path / "empty-home"
    proc, url = start(str(bundle), tmp_path, env={"BUNDLER_HOME": str(empty_home)})
    try:
        x = np.ones((3, 4), np.float32)
        r = httpx.post(f"{url}/predict", json=x.tolist())
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            np.asarray(r.json(), np.float32), reference_run(proto, {"x": x})[0], rtol=1e-5
        )
        assert httpx.get(f"{url}/docs.json").json()["info"]["version"] == model.tag.version
    finally:
        assert stop(proc) == 0


def test_served_apis_answer_a_websocket_upgrade_as_http(tmp_path: Path) -> None:
    # No route takes a WebSocket: uvicorn's WebSocket protocol answered a bodiless text/plain 403.
    write(tmp_path / "wsvc.py", SERVICE.format(name="ws"))
    proc, url = start("wsvc:svc", tmp_path)
    upgrade = {"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13"}
    try:
        r = httpx.get(f"{url}/hello", headers={**upgrade, "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="})
    finally:
        assert stop(proc) == 0
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"].startswith("method not allowed: GET /hello")


def test_metrics_do_not_depend_on_prometheus_multiproc_dir(tmp_path: Path) -> None:
    # With $PROMETHEUS_MULTIPROC_DIR set (gunicorn setups, base images), prometheus-client's Gauge keeps its
    # value in a file there: a missing or read-only directory failed the queue-depth gauge once the model
    # had loaded, and the server answered 503 "still loading" for good, with nothing in the log.
    bundler.onnx.save_model(
        "tiny", make_mlp(None, in_dim=4, hidden=8, out=2), signatures={"run": {"batchable": True}}
    )
    write(
        tmp_path / "tinysvc.py",
        """
        import bundler
        from bundler.io import NumpyNdarray

        runner = bundler.onnx.get("tiny:latest").to_runner()
        svc = bundler.Service("tiny-svc", runners=[runner])

        @svc.api(input=NumpyNdarray(), output=NumpyNdarray())
        async def predict(x):
            return await runner.run.async_run(x)
        """,
    )
    missing = tmp_path / "missing"
    proc, url = start("tinysvc:svc", tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(missing)})
    try:
        assert httpx.post(f"{url}/predict", json=np.ones((3, 4)).tolist()).status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        assert stop(proc) == 0
    assert 'bundler_runner_queue_depth{runner="tiny"} 0.0' in metrics
    assert 'bundler_runner_batch_size_sum{runner="tiny"} 3.0' in metrics
    assert not missing.exists()


@pytest.mark.slow
def test_serve_with_two_workers(tmp_path: Path) -> None:
    write(tmp_path / "twosvc.py", SERVICE.format(name="two"))
    proc, url = start("twosvc:svc", tmp_path, workers=2, max_body_size=64)
    try:
        assert httpx.post(f"{url}/hello", json=1).json() == {"hello": 1, "from": "two"}
        assert httpx.post(f"{url}/hello", json="x" * 100).status_code == 413  # the limit reached the workers
    finally:
        assert stop(proc) in CLEAN_EXIT


@pytest.mark.slow
def test_reload_picks_up_a_source_change(tmp_path: Path) -> None:
    write(tmp_path / "reloadsvc.py", SERVICE.format(name="before"))
    proc, url = start("reloadsvc:svc", tmp_path, reload=True)
    try:
        assert httpx.post(f"{url}/hello", json=0).json()["from"] == "before"
        write(tmp_path / "reloadsvc.py", SERVICE.format(name="after"))
        deadline = time.monotonic() + 30
        rewrite_at = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline and seen != "after":
            if time.monotonic() > rewrite_at:
                # On a loaded machine the watcher can miss the first write: save again, as a user would.
                write(tmp_path / "reloadsvc.py", SERVICE.format(name="after") + "\n")
                rewrite_at = time.monotonic() + 5
            try:
                seen = httpx.post(f"{url}/hello", json=0, timeout=2).json()["from"]
            except httpx.TransportError:
                pass  # the worker is restarting
            time.sleep(0.2)
        assert seen == "after"
    finally:
        assert stop(proc) in CLEAN_EXIT


def test_a_worker_that_cannot_load_the_service_says_why_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Saving a syntax error under --reload printed uvicorn's 70-line traceback of the worker process.
    from bundler.server.serve import app_factory

    write(tmp_path / "brokensvc.py", SERVICE.format(name="x") + "\ndef broken(:\n")
    sys.modules.pop("brokensvc", None)
    monkeypatch.setenv("BUNDLER_SERVE_TARGET", "brokensvc:svc")
    monkeypatch.setenv("BUNDLER_SERVE_WORKING_DIR", str(tmp_path))
    with caplog.at_level(logging.ERROR, logger="bundler"), pytest.raises(SystemExit) as exited:
        app_factory()
    assert exited.value.code == BadInput.exit_code
    [record] = caplog.records
    assert "importing 'brokensvc' failed: SyntaxError" in record.getMessage()
    assert record.exc_info is None


@pytest.mark.parametrize(
    ("host", "port", "logged"),
    [
        ("127.0.0.1", 3917, "serving hi on http://127.0.0.1:3917 (docs at /docs)"),
        ("::1", 3917, "serving hi on http://[::1]:3917 (docs at /docs)"),  # was http://::1:3917
        ("127.0.0.1", 0, "serving hi on http://127.0.0.1 at a free port that uvicorn names below"),  # was :0
    ],
)
def test_the_serving_line_is_a_url_to_open(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    host: str,
    port: int,
    logged: str,
) -> None:
    import bundler.server.serve as serve_module

    class Server:
        def __init__(self, config: object) -> None:
            pass

        def run(self) -> None:
            pass

    write(tmp_path / "hisvc.py", SERVICE.format(name="hi"))
    sys.modules.pop("hisvc", None)
    monkeypatch.setattr(serve_module, "_server_class", lambda: Server)
    monkeypatch.setattr(serve_module, "_check_address", lambda host, port: None)
    caplog.set_level(logging.INFO, logger="bundler.server")
    serve_module.serve("hisvc:svc", host=host, port=port, working_dir=tmp_path)
    assert logged in [r.getMessage() for r in caplog.records]
    # With --workers the parent said nothing of the service (uvicorn only its own "running on").
    caplog.clear()
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: None)
    for name in (
        "BUNDLER_SERVE_TARGET",
        "BUNDLER_SERVE_WORKING_DIR",
        "BUNDLER_MAX_BODY_SIZE",
        "BUNDLER_LOG_LEVEL",
    ):
        monkeypatch.setenv(name, "")  # serve() hands them to the workers; put back after the test
    serve_module.serve("hisvc:svc", host=host, port=port, working_dir=tmp_path, workers=2)
    assert logged in [r.getMessage() for r in caplog.records]


def test_cli_log_level_comes_from_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import bundler.server.serve as serve_module
    from bundler import cli

    got: list[str] = []
    monkeypatch.setattr(serve_module, "serve", lambda target, **kw: got.append(kw["log_level"]))
    monkeypatch.setenv("BUNDLER_LOG_LEVEL", "WARNING")  # the examples set it in docker.env
    assert CliRunner().invoke(cli.main, ["serve", "x:svc"]).exit_code == 0
    assert CliRunner().invoke(cli.main, ["serve", "x:svc", "--log-level", "debug"]).exit_code == 0
    assert got == ["warning", "debug"]  # the option wins over the variable
    bad = CliRunner().invoke(cli.main, ["serve", "x:svc", "--log-level", "verbose"])
    assert bad.exit_code == 2 and "'verbose' is not one of" in bad.output  # was uvicorn's KeyError


@pytest.mark.parametrize("options", [[], ["--workers", "2"]])
def test_serve_on_a_busy_port_says_so_and_exits_2(tmp_path: Path, options: list[str]) -> None:
    write(tmp_path / "busysvc.py", SERVICE.format(name="busy"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [sys.executable, "-m", "bundler", "serve", "busysvc:svc", "--port", str(port), *options]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    # It was uvicorn's log line and exit 3 (after the service's models had loaded).
    assert done.returncode == 2, done.stderr
    assert f"error: serve: cannot listen on 127.0.0.1:{port} (Address already in use)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_service_that_configures_logging_gets_each_bundler_line_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A service.py calling logging.basicConfig() printed every bundler line (access log included) twice.
    from bundler.server.serve import _configure_logging

    bundler_logger = logging.getLogger("bundler")
    monkeypatch.setattr(bundler_logger, "handlers", [])
    monkeypatch.setattr(bundler_logger, "level", bundler_logger.level)
    monkeypatch.setattr(logging.root, "handlers", [])
    _configure_logging("info")
    access = logging.getLogger("bundler.access")
    access.info("GET /first 200")
    assert capsys.readouterr().err.count("GET /first 200") == 1
    seen: list[str] = []
    root_handler = logging.Handler()
    root_handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.root.addHandler(root_handler)  # what the service's logging.basicConfig() does
    access.info("GET /second 200")
    assert seen == ["GET /second 200"] and "GET /second" not in capsys.readouterr().err


def test_workers_drain_their_requests_on_sighup(tmp_path: Path) -> None:
    # A closed terminal sends SIGHUP to the whole process group: with --workers, uvicorn's workers left it
    # to the default action and died with their requests in flight (the client got a dropped connection).
    write(tmp_path / "slowsvc.py", SLOW_SERVICE)
    proc, url = start("slowsvc:svc", tmp_path, workers=2)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            calls = [
                pool.submit(httpx.post, f"{url}/wait", json={"seconds": 1.5}, timeout=10) for _ in range(4)
            ]
            time.sleep(0.5)  # the requests are in the API function now
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            workers = [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
            assert len(workers) == 2
            for pid in workers:
                os.kill(pid, signal.SIGHUP)
            assert [c.result().status_code for c in calls] == [200] * 4
    finally:
        assert stop(proc) in CLEAN_EXIT
