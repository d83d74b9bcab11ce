"""Find a Service (``module:svc``, a bundle tag or a bundle directory) and serve it with uvicorn."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..exceptions import BadInput, BundlerError, NotFound, StoreError
from ..service import Service
from ..store import Tag, bundle_store, verify_manifest

__all__ = ["app_factory", "load_service", "serve"]

BUNDLE_META = "bundle.yaml"
BENTOFILES = ("bentofile.yaml", "bentofile.yml")
GRACEFUL_SHUTDOWN_S = 30
# serve() hands these to app_factory() in worker / reloader processes.
_ENV_TARGET = "BUNDLER_SERVE_TARGET"
_ENV_WORKDIR = "BUNDLER_SERVE_WORKING_DIR"
log = logging.getLogger("bundler.server")


def _split(target: str) -> tuple[str, str]:
    module, _, attr = target.partition(":")
    if module.endswith(".py"):
        module = module[:-3].replace("/", ".").replace(os.sep, ".")
    return module, attr or "svc"


def _module_dir(module: str, base: Path) -> Path | None:
    """Return where ``module`` would be imported from under ``base``, or None when it is not there."""
    first = module.split(".")[0]
    if (base / f"{first}.py").is_file() or (base / first / "__init__.py").is_file():
        return base
    return None


def _import_service(module: str, attr: str, base: Path, where: str) -> Service:
    base = base.resolve()
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    # A module of the same name imported from elsewhere (another bundle, a test) must not shadow this one.
    cached = sys.modules.get(module)
    if cached is not None:
        cached_file = getattr(cached, "__file__", None) or ""
        if not Path(cached_file).resolve().is_relative_to(base):
            for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
                del sys.modules[name]
    try:
        mod = importlib.import_module(module)
    except BundlerError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == module or module.startswith(f"{exc.name}."):
            raise NotFound(f"{where}: no module {module!r} under {base}") from exc
        raise BadInput(f"{where}: importing {module!r} failed: {exc} (is the package installed?)") from exc
    except Exception as exc:
        raise BadInput(f"{where}: importing {module!r} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = [k for k, v in vars(mod).items() if isinstance(v, Service)]
            hint = f"; it defines {', '.join(found)}" if found else ""
            raise BadInput(f"{where}: module {module!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not isinstance(obj, Service):
        raise BadInput(f"{where}: {module}:{attr} is a {type(obj).__name__}, not a bundler.Service")
    return obj


def _read_service(path: Path, fix: str) -> tuple[dict, str]:
    """Read a bundle.yaml or bentofile.yaml; return its mapping and its ``service`` value."""
    try:
        info = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BadInput(f"{path}: cannot be read as YAML ({exc})") from exc
    service = info.get("service") if isinstance(info, dict) else None
    if not isinstance(service, str) or not service:
        raise BadInput(f"{path}: 'service' is missing; {fix}")
    return info, service


def _check_models(bundle: Path, info: dict, where: str) -> None:
    """Raise StoreError when a model the bundle lists is not in its ``models/``.

    Model tags resolve in the bundle, then in the home store: without this, the home store's model of that
    name (another version, other weights) would be served under the bundle's version.
    """
    for model in info.get("models") or []:
        tag = model.get("tag") if isinstance(model, dict) else None
        if not isinstance(tag, str):
            continue
        name, _, version = tag.partition(":")
        entry = bundle / "models" / name / version
        try:
            model_info = yaml.safe_load((entry / "model.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            missing = entry / "model.yaml"
        else:
            model_file = (
                model_info.get("model_file", "saved_model.onnx") if isinstance(model_info, dict) else ""
            )
            missing = entry / str(model_file)
            if model_file and missing.is_file():
                continue
        raise StoreError(
            f"{where}: the bundle ships model {tag}, but {missing} is missing or unreadable; the bundle is"
            " damaged: build it again, or import it again from its archive"
        )


# What serving runs: checked at start (cheap), unlike models/ (hashing them would slow every start) and
# env/ (an image holds only part of it).
_CHECKED_AT_START = ("src/", BUNDLE_META)


def _warn_if_changed(bundle: Path, info: dict) -> None:
    """Log a warning naming the source files that differ from the bundle's manifest (as `bundler verify`)."""
    problems = verify_manifest(bundle, only=_CHECKED_AT_START)
    if problems:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        log.warning(
            "bundle %s fails its manifest check (%s): it was changed after `bundler build`, and"
            " `bundler containerize` refuses it; serving it as it is (build it again for a version that"
            " covers the change)",
            info.get("tag") or bundle,
            shown,
        )


def _load_bundle(bundle: Path) -> Service:
    bundle = bundle.resolve()
    meta = bundle / BUNDLE_META
    info, service = _read_service(meta, "it should name the service as 'module:svc'")
    _check_models(bundle, info, str(meta))
    _warn_if_changed(bundle, info)
    # Model tags resolve inside the bundle first (see bundler.models).
    os.environ["BUNDLER_BUNDLE_DIR"] = str(bundle)
    # src/__pycache__/ is outside the manifest: serving a stored bundle must not make it fail `bundler
    # verify` (and so export and containerize). Worker processes come through here too.
    sys.dont_write_bytecode = True
    module, attr = _split(service)
    svc = _import_service(module, attr, bundle / "src", str(meta))
    tag = info.get("tag") or ""
    if isinstance(tag, str) and ":" in tag:
        svc.version = tag.split(":", 1)[1]
    if isinstance(info.get("description"), str):
        svc.description = info["description"]
    return svc


def _load_project(bentofile: Path) -> Service:
    """Import the service a project's bentofile names (its ``service`` key), from the project directory."""
    _, service = _read_service(bentofile, "set it to 'module:svc' (e.g. service: \"service:svc\")")
    module, attr = _split(service)
    return _import_service(module, attr, bentofile.parent, f"{bentofile}: service")


def load_service(target: str, *, working_dir: str | os.PathLike[str] | None = None) -> Service:
    """Return the Service named by ``module[:attr]``, a bundle tag or directory, or a project directory."""
    if not isinstance(target, str) or not target.strip():
        raise BadInput(
            "serve: give a service as 'module:svc', a bundle tag 'name[:version]' or a bundle directory"
        )
    target = target.strip()
    base = Path(working_dir) if working_dir is not None else Path.cwd()
    as_path = base / target
    if as_path.is_dir():
        if (as_path / BUNDLE_META).is_file():
            return _load_bundle(as_path)
        for name in BENTOFILES:
            if (as_path / name).is_file():
                return _load_project(as_path / name)
        raise BadInput(
            f"{as_path}: a directory without {BUNDLE_META} or bentofile.yaml; give a bundle, a project"
            " directory or 'module:svc'"
        )
    if as_path.is_file() and as_path.suffix in (".yaml", ".yml"):
        # `bundler serve bentofile.yaml`, as `bundler build bentofile.yaml` (or a bundle's bundle.yaml).
        if as_path.name == BUNDLE_META:
            return _load_bundle(as_path.parent)
        return _load_project(as_path)
    file_part, _, attr_part = target.partition(":")
    if file_part.endswith(".py") and (base / file_part).is_file():
        # `bundler serve path/to/service.py:svc` imports it from its directory, as `cd path/to && bundler
        # serve service.py:svc` does (its sibling modules import as they do there); it was "no module".
        module_file = base / file_part
        return _import_service(module_file.stem, attr_part or "svc", module_file.parent, target)
    module, attr = _split(target)
    if _module_dir(module, base) is not None:
        return _import_service(module, attr, base, target)
    try:
        tag = Tag.parse(target)
    except BadInput:
        tag = None
    if tag is not None:
        try:
            path = bundle_store().path(tag)
        except NotFound:
            pass
        else:
            return _load_bundle(path)
    looks_like_path = "/" in target or os.sep in target or target.startswith(".")
    if looks_like_path and not target.partition(":")[0].endswith(".py"):  # neither a tag nor a module
        raise BadInput(
            f"serve {target!r}: no such directory {as_path}; give a bundle directory, a bundle tag or"
            " 'module:svc'"
        )
    close = bundle_store().did_you_mean(tag.name) if tag is not None else None
    hint = f" (did you mean bundle {close!r}? see `bundler list`)" if close else " (see `bundler list`)"
    raise NotFound(
        f"serve {target!r}: found no module {module!r} in {base} and no bundle {target!r} in the store"
        f"{hint}; give 'module:svc', a bundle tag or a bundle directory"
    )


def _check_address(host: str, port: int) -> None:
    """Raise BadInput unless ``host:port`` can be listened on (uvicorn would log it and exit 3)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind((host, port))
    except OSError as exc:
        raise BadInput(
            f"serve: cannot listen on {host}:{port} ({exc.strerror or exc}); stop what uses that port or"
            " choose another with --port, and give --host an address of this machine (e.g. 127.0.0.1)"
        ) from exc


def _unless_root_logs(record: logging.LogRecord) -> bool:
    """Let bundler's handler write a record only while the root logger has no handler.

    A service that calls ``logging.basicConfig()`` (a common first line) gave the root logger one: every
    bundler line, the access log's too, went to stderr twice, once in each format. Its configuration wins.
    """
    return not logging.root.handlers


def _configure_logging(log_level: str) -> None:
    level = getattr(logging, log_level.upper(), logging.INFO)
    logger = logging.getLogger("bundler")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_unless_root_logs)
        logger.addHandler(handler)


def _hangup_drains(on_term: Any) -> Any:
    """Make SIGHUP (a closed terminal) call ``on_term`` as SIGTERM would; return the handler it replaced.

    uvicorn leaves SIGHUP to its default action, which killed the server with its requests in flight.
    Nothing changes (None) off the main thread or where SIGHUP is ignored (nohup).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGHUP, lambda _sig, frame: on_term(signal.SIGTERM, frame))


def _drain_on_hangup() -> None:
    """In a --workers or --reload worker, drain on SIGHUP as on SIGTERM, as a single ``serve()`` does.

    A closed terminal sends SIGHUP to the whole process group. The app is built inside the worker's
    ``capture_signals()``, so SIGTERM's handler here is that server's ``handle_exit``.
    """
    term = signal.getsignal(signal.SIGTERM)
    if callable(term):
        _hangup_drains(term)


def app_factory() -> Any:
    """Build the app in a uvicorn worker or reloader process from the settings ``serve()`` left in env."""
    from .app import build_app

    target = os.environ.get(_ENV_TARGET)
    if not target:
        raise BadInput(f"app_factory: ${_ENV_TARGET} is not set; start the server with `bundler serve`")
    _configure_logging(os.environ.get("BUNDLER_LOG_LEVEL", "info"))
    _drain_on_hangup()
    try:
        svc = load_service(target, working_dir=os.environ.get(_ENV_WORKDIR) or None)
    except BundlerError as exc:
        # A source saved with a mistake under --reload: one line, as `bundler serve` says it at start, not
        # uvicorn's traceback of the worker; the reloader starts a worker again on the next save.
        log.error("%s", exc)
        sys.exit(exc.exit_code)
    return build_app(svc)


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):  # type: ignore[misc]
        """uvicorn's Server, exiting 0 after a SIGTERM drain.

        uvicorn re-raises the signal once it has shut down, so a clean, drained stop read as a death by
        SIGTERM (exit 143). SIGINT is still re-raised (Ctrl-C ends in KeyboardInterrupt, as usual).
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            hup = _hangup_drains(self.handle_exit)  # a closed terminal drains as SIGTERM does
            try:
                with super().capture_signals():
                    yield
                    captured = getattr(self, "_captured_signals", None)
                    if captured is not None:
                        captured[:] = [s for s in captured if s != signal.SIGTERM]
            finally:
                if hup is not None:
                    signal.signal(signal.SIGHUP, hup)

    return Server


def serve(
    target: str,
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    workers: int = 1,
    reload: bool = False,
    max_body_size: int | None = None,
    log_level: str = "info",
    working_dir: str | os.PathLike[str] | None = None,
    timeout_graceful_shutdown: int = GRACEFUL_SHUTDOWN_S,
) -> None:
    """Serve a service with uvicorn until SIGINT/SIGTERM (which drains in-flight requests, then exits)."""
    import uvicorn

    from .app import build_app, max_body_size_from_env
    from .http import http_protocol

    if workers < 1:
        raise BadInput(f"serve: workers={workers}: expected 1 or more")
    if reload and workers > 1:
        raise BadInput("serve: --reload and --workers > 1 cannot be combined; pick one")
    limit = max_body_size if max_body_size is not None else max_body_size_from_env()
    if limit <= 0:
        raise BadInput(f"serve: max_body_size={limit}: expected a positive number of bytes")
    _check_address(host, port)  # before the service's models load, not after
    _configure_logging(log_level)
    base = Path(working_dir).resolve() if working_dir is not None else Path.cwd()
    svc = load_service(target, working_dir=base)  # fail here, in the parent, on a bad target
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,  # bundler.access logs one line per request with its duration
        "timeout_graceful_shutdown": timeout_graceful_shutdown,
        "server_header": False,
        "http": http_protocol(),  # uvicorn's httptools protocol, one write per response
        # No route takes a WebSocket: an upgrade to one is served as HTTP (a JSON 405), not a bodiless 403.
        "ws": "none",
    }
    # Said with --workers and --reload too: their logs named neither the service nor its docs.
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    if port:
        log.info("serving %s on http://%s:%d (docs at /docs)", svc.name, shown, port)
    else:
        log.info("serving %s on http://%s at a free port that uvicorn names below", svc.name, shown)
    if workers == 1 and not reload:
        app = build_app(svc, max_body_size=limit)
        _server_class()(uvicorn.Config(app, **common)).run()
        return
    os.environ[_ENV_TARGET] = target
    os.environ[_ENV_WORKDIR] = str(base)
    os.environ["BUNDLER_MAX_BODY_SIZE"] = str(limit)
    os.environ["BUNDLER_LOG_LEVEL"] = log_level
    bundle_dir = os.environ.get("BUNDLER_BUNDLE_DIR")
    reload_dirs = [str(Path(bundle_dir) / "src")] if bundle_dir else [str(base)]
    uvicorn.run(
        "bundler.server.serve:app_factory",
        factory=True,
        workers=workers if not reload else None,
        reload=reload,
        reload_dirs=reload_dirs if reload else None,
        **common,
    )
