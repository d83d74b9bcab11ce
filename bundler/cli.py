"""The ``bundler`` command line: parse, call one function, print, exit (0 ok, 1 failure, 2 bad input;
128 + N when stopped by signal N: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .exceptions import BundlerError, ConfigError, NotFound

if TYPE_CHECKING:
    from .store import Store, Tag

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _err(msg: str) -> None:
    click.echo(msg, err=True)


# Stopped by a supervisor, CI runner or `timeout` (SIGTERM), or by a closed terminal (SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP, so cleanup runs as for Ctrl-C (KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _stop_signals_raise(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """Turn ``signals`` into Terminated while the block runs; an ignored one (nohup) stays ignored."""
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        signals = ()  # only the main thread may set handlers (a command called from a test's thread)
    for sig in signals:
        if signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def handle_errors(fn: F, *, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> F:
    """Turn BundlerError into a message on stderr and its exit code; never a traceback for user mistakes.

    SIGTERM and SIGHUP stop a command like Ctrl-C does: what it started (an engine's build, a resolver)
    is stopped and its temporary files removed, then it exits 128 + the signal's number, as a shell would
    report it. ``signals=()`` leaves them to a command that handles them itself (serve drains).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _stop_signals_raise(signals):
                return fn(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems:
                _err(problem)
            n = len(exc.problems)
            _err(f"{n} problem{'s' if n != 1 else ''} found")
            sys.exit(exc.exit_code)
        except BundlerError as exc:
            _err(f"error: {exc}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _err("interrupted")
            sys.exit(130)
        except Terminated as exc:
            _err(f"terminated by {signal.Signals(exc.signum).name}")
            sys.exit(128 + exc.signum)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise  # click's own: the reader went away (`| head`)
            # The machine's, not the input's: the output went to a full disk (`> /dev/full`), say.
            where = f" ({exc.filename})" if exc.filename else ""
            _err(f"error: {exc.strerror or exc}{where}")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _json_key(key: Any) -> str:
    """Return a dict key as json.dumps writes it (1 -> "1", None -> "null"), so keys of mixed types sort."""
    if isinstance(key, str):
        return key
    return json.dumps(key) if key is None or isinstance(key, (bool, int, float)) else str(key)


def _json_ready(value: Any) -> Any:
    """Return ``value`` as strict JSON takes it: keys as strings, NaN and infinities as null.

    Model metadata may hold int keys (sorting them among str ones raised TypeError) and NaN (printed as
    NaN, which jq and JSON.parse refuse).
    """
    if isinstance(value, dict):
        return {_json_key(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _print_json(data: Any) -> None:
    click.echo(json.dumps(_json_ready(data), indent=2, sort_keys=True, default=str, allow_nan=False))


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold")  # a narrow terminal wraps a cell, never cuts it to 'name:…'
    for r in rows:
        # Text, not str: rich reads '[/x]' in a str as markup (a stored file's value crashed the listing).
        table.add_row(*map(Text, r))
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        # A pipe has no width ($COLUMNS or rich's 80 would cut long tags): whole rows, for grep, awk and cut.
        console = Console(soft_wrap=True, width=1 << 16)
    console.print(table)


def _output_option(choices: list[str], help: str) -> Callable[[F], F]:
    """The ``--output/-o`` option with these formats; the first is the default."""
    return click.option(
        "--output",
        "-o",
        "output",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help=help,
    )


output_option = _output_option(["table", "json"], "table for people, json for scripts.")
list_output_option = _output_option(["table", "json", "yaml"], "table for people, json or yaml for scripts.")
get_output_option = _output_option(
    ["yaml", "json", "path"], "yaml for people, json for scripts, path for the directory alone."
)

# BentoML's delete asks first unless -y; bundler never asks, and takes -y so such scripts run unchanged.
yes_option = click.option(
    "-y",
    "--yes",
    "--assume-yes",
    "_yes",
    is_flag=True,
    help="Accepted for BentoML scripts (nothing is asked).",
)


def _show(tag: object, path: Path, info: dict, output: str) -> None:
    if output == "path":
        click.echo(str(path))
        return
    # The full tag under the same key for a model as for a bundle (and as in `list -o json`).
    data = {"path": str(path), "tag": str(tag), **info}
    if output == "json":
        _print_json(data)
    else:
        from .store import dump_yaml

        click.echo(dump_yaml(data).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# The running code's version: a checkout on PYTHONPATH has no installed metadata (or another copy's).
@click.version_option(__version__, prog_name="bundler")
def main() -> None:
    """Build, serve and containerize ONNX model services from a bentofile.yaml."""


# -- build side -------------------------------------------------------------------------------------
@main.command()
@click.argument("bentofile", type=click.Path(exists=True, path_type=Path))
@click.option("--schema-only", is_flag=True, help="Check the file alone, not the files it names.")
@handle_errors
def validate(bentofile: Path, schema_only: bool) -> None:
    """Check a bentofile.yaml and report every problem at once (exit 2 when there are any)."""
    from .conda import build_warnings
    from .config import load_bentofile, validate_file

    problems = validate_file(bentofile, schema_only=schema_only)
    if problems:
        for p in problems:
            _err(str(p))
        _err(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found")
        sys.exit(2)
    # Valid, but the build will warn about it: conda packages that the pip-only image does not install.
    cfg = load_bentofile(bentofile, schema_only=schema_only)
    for line in build_warnings(cfg, environment_file=not schema_only):
        _err(f"note: {line}")
    click.echo(f"{bentofile}: valid")


@main.command()
@click.argument("bentofile", default=".", type=click.Path(path_type=Path))
@click.option("--platform", default="linux/amd64", show_default=True, help="Target platform of the image.")
@click.option("--offline", is_flag=True, default=None, help="Also put every locked wheel into the bundle.")
@click.option("--resolver", type=click.Choice(["uv", "pip-tools"]), default="uv", show_default=True)
@output_option
@handle_errors
def build(bentofile: Path, platform: str, offline: bool | None, resolver: str, output: str) -> None:
    """Build a bundle from BENTOFILE (or a directory holding bentofile.yaml) into the local store."""
    from .builder import build as do_build

    result = do_build(bentofile, platform=platform, resolver=resolver, offline=offline, say=_say)
    if output == "json":
        _print_json(
            {
                "tag": str(result.tag),
                "path": str(result.path),
                "created": result.created,
                "seconds": result.seconds,
            }
        )
        return
    state = "built" if result.created else "unchanged, already stored"
    click.echo(f"{result!r}  ({state}, {result.seconds:.2f} s)")


# -- bundles ----------------------------------------------------------------------------------------
def _print_list(output: str, title: str, columns: dict[str, str], records: list[dict[str, Any]]) -> None:
    """Print records as a table (``columns`` maps a header to its key) or as JSON or YAML."""
    if output == "json":
        _print_json(records)
    elif output == "yaml":
        from .store import dump_yaml

        click.echo(dump_yaml(_json_ready(records)).rstrip())
    else:

        def cell(value: Any) -> str:
            if isinstance(value, list):
                return ", ".join(map(str, value))
            return "" if value is None else str(value)

        _table(title, list(columns), [[cell(r.get(key)) for key in columns.values()] for r in records])


def _record(tag: object, path: Path, info: dict, **more: Any) -> dict[str, Any]:
    # The keys `get` prints for the same entry: creation_time, not another name for it.
    return {"tag": str(tag), "path": str(path), "creation_time": info.get("creation_time"), **more}


@main.command("list")
@click.argument("name", required=False)
@list_output_option
@handle_errors
def list_bundles(name: str | None, output: str) -> None:
    """List stored bundles, newest first within a name."""
    from . import bundles

    damaged: list[str] = []
    items = bundles.list(name, on_damaged=damaged.append)
    records = [_record(b.tag, b.path, b.info, apis=_routes(b.info.get("apis"))) for b in items]
    _print_list(output, "Bundles", {"Tag": "tag", "Created": "creation_time", "APIs": "apis"}, records)
    _warn_damaged(damaged)


def _routes(apis: object) -> list[str]:
    # bundle.yaml is read as written; a hand-edited one must not crash the whole listing.
    if not isinstance(apis, list):
        return []
    return [str(a.get("route", "")) for a in apis if isinstance(a, dict)]


def _warn_damaged(messages: list[str]) -> None:
    for msg in messages:
        _err(f"warning: {msg}")


@main.command("get")
@click.argument("tag")
@get_output_option
@handle_errors
def get_bundle(tag: str, output: str) -> None:
    """Show a bundle's metadata (or only its directory)."""
    from . import bundles

    b = bundles.get(tag)
    _show(b.tag, b.path, b.info, output)


@main.command("delete")
@click.argument("tags", nargs=-1, required=True)
@yes_option
@handle_errors
def delete_bundle(tags: tuple[str, ...], _yes: bool) -> None:
    """Delete bundles from the store (every TAG is checked first: one not found deletes none)."""
    from . import bundles
    from .store import bundle_store

    _delete_all(bundle_store(), tags, bundles.delete)


def _delete_all(store: Store, tags: tuple[str, ...], delete: Callable[[Tag], Tag]) -> None:
    # Resolved up front: a typo in the third tag must not leave the first two deleted, and `svc svc:latest`
    # names one entry, not the newest and then the one that became newest.
    found: list[Tag] = []
    errors: list[BundlerError] = []
    for tag in tags:
        try:
            full = store.resolve(tag)
        except BundlerError as exc:
            errors.append(exc)
            continue
        if full not in found:
            found.append(full)
    if errors:
        for error in errors:
            _err(f"error: {error}")
        _err("nothing deleted")
        sys.exit(max(error.exit_code for error in errors))
    for full in found:
        click.echo(f"deleted {store.kind} {delete(full)}")


@main.command("export")
@click.argument("tag")
@click.argument("path", type=click.Path(path_type=str))  # a str: keep the trailing slash of a directory
@handle_errors
def export_bundle(tag: str, path: str) -> None:
    """Write a bundle to a deterministic .tar.gz: PATH is the file, or a directory (existing or ending /)."""
    from . import bundles

    click.echo(str(bundles.export_bundle(tag, path)))


@main.command("import")
@click.argument("path", type=click.Path(path_type=str))  # a str: "" must not become "."
@handle_errors
def import_bundle(path: str) -> None:
    """Import a bundle archive (verified against its manifest; unsafe archives are refused)."""
    from . import bundles

    click.echo(f"imported {bundles.import_bundle(path)!r}")


@main.command()
@click.argument("tag")
@click.option("--model", "is_model", is_flag=True, help="TAG names a model, not a bundle.")
@handle_errors
def verify(tag: str, is_model: bool) -> None:
    """Check a stored bundle (or model) against its sha256 manifest; name every file that differs."""
    from .store import bundle_store, model_store

    store = model_store() if is_model else bundle_store()
    try:
        full = store.resolve(tag)
    except NotFound as exc:
        # A model's tag without --model (or the reverse): name the flag rather than only "not found".
        other = bundle_store() if is_model else model_store()
        try:
            other.resolve(tag)
        except BundlerError:
            raise exc from None
        fix = f"bundler verify {tag}" if is_model else f"bundler verify --model {tag}"
        raise NotFound(f"{exc}; {tag} is a {other.kind}: `{fix}`") from exc
    problems = store.verify(full)
    if problems:
        for problem in problems:
            _err(f"{store.kind} {full}: {problem}")
        sys.exit(1)
    click.echo(f"{store.kind} {full}: every file matches its manifest")


# -- models -----------------------------------------------------------------------------------------
@main.group()
def models() -> None:
    """Manage the local model store."""


@models.command("list")
@click.argument("name", required=False)
@list_output_option
@handle_errors
def list_models(name: str | None, output: str) -> None:
    """List stored models, newest first within a name."""
    from . import models as m

    damaged: list[str] = []
    items = m.list(name, on_damaged=damaged.append)
    records = [_record(x.tag, x.path, x.info, module=x.info.get("module")) for x in items]
    _print_list(output, "Models", {"Tag": "tag", "Module": "module", "Created": "creation_time"}, records)
    _warn_damaged(damaged)


@models.command("get")
@click.argument("tag")
@get_output_option
@handle_errors
def get_model(tag: str, output: str) -> None:
    """Show a model's metadata (or only its directory)."""
    from . import models as m

    x = m.get(tag)
    _show(x.tag, x.path, x.info, output)


@models.command("delete")
@click.argument("tags", nargs=-1, required=True)
@yes_option
@handle_errors
def delete_model(tags: tuple[str, ...], _yes: bool) -> None:
    """Delete models from the store (every TAG is checked first: one not found deletes none)."""
    from . import models as m
    from .store import model_store

    _delete_all(model_store(), tags, m.delete)


@models.command("export")
@click.argument("tag")
@click.argument("path", type=click.Path(path_type=str))  # a str: keep the trailing slash of a directory
@handle_errors
def export_model(tag: str, path: str) -> None:
    """Write a model to a deterministic .tar.gz: PATH is the file, or a directory (existing or ending /)."""
    from . import models as m

    click.echo(str(m.export_model(tag, path)))


@models.command("import")
@click.argument("path", type=click.Path(path_type=str))  # a str: "" must not become "."
@handle_errors
def import_model(path: str) -> None:
    """Import a model archive (sha256-verified; unsafe archives are refused)."""
    from . import models as m

    model = m.import_model(path)
    click.echo(f"imported {model!r}")
    notes = m.code_notes(model)
    if notes:
        # Like BentoML, bundler unpickles custom objects when asked: the importer must know what that runs.
        _err(
            f"note: model {model.tag} holds {' and '.join(notes)}; use it only if you trust whoever made"
            f" {path}"
        )


# -- serving and images -----------------------------------------------------------------------------
class _EnvOption(click.Option):
    """An option whose bad value, when it came from its environment variable, is said to come from there.

    click says "Invalid value for '--port'" for PORT=abc, an option the command line did not give.
    """

    def consume_value(self, ctx: click.Context, opts: Any) -> Any:
        value, source = super().consume_value(ctx, opts)
        ctx.meta[f"bundler.source.{self.name}"] = source
        return value, source

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        from click.core import ParameterSource

        try:
            return super().process_value(ctx, value)
        except click.BadParameter as exc:
            if ctx.meta.get(f"bundler.source.{self.name}") is ParameterSource.ENVIRONMENT:
                exc.message = f"{exc.message.rstrip('.')} (from ${self.envvar}; fix or unset it)"
            raise


@main.command()
@click.argument("target", default=".")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    default=3000,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="PORT",
    cls=_EnvOption,
    help="Also from $PORT (as in the image).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes; each has its own runners, queue and /metrics figures (to scale, add pods).",
)
@click.option("--reload", is_flag=True, help="Restart when the service's source changes (development).")
@click.option(
    "--max-body-size",
    type=int,
    default=None,
    help="Largest request body in bytes (default $BUNDLER_MAX_BODY_SIZE, else 32 MiB).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="BUNDLER_LOG_LEVEL",
    cls=_EnvOption,
    type=click.Choice(["critical", "error", "warning", "info", "debug", "trace"], case_sensitive=False),
    help="Also from $BUNDLER_LOG_LEVEL (bentofile docker.env).",
)
@functools.partial(handle_errors, signals=())  # uvicorn drains on SIGTERM
def serve(
    target: str, host: str, port: int, workers: int, reload: bool, max_body_size: int | None, log_level: str
) -> None:
    """Serve TARGET over HTTP: module:svc, a bundle tag, a bundle directory, or a project directory (its
    bentofile.yaml names the service); the default is the current directory."""
    from .server.serve import serve as run_server

    kwargs: dict[str, Any] = {
        "host": host,
        "port": port,
        "workers": workers,
        "reload": reload,
        "log_level": log_level,
    }
    if max_body_size is not None:
        kwargs["max_body_size"] = max_body_size
    run_server(target, **kwargs)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{v!r} is not KEY=VALUE", param_hint=what)
        out[key] = val
    return out


@main.command()
@click.argument("tag")
@click.option("-t", "--tag", "image_tags", multiple=True, help="Image name[:tag] (repeatable).")
@click.option("--backend", type=click.Choice(["docker", "podman", "buildah"]), default=None)
@click.option(
    "--platform", default=None, help="Target platform (default: the one the bundle was built and locked for)."
)
@click.option("--build-arg", multiple=True, help="KEY=VALUE passed to the build (repeatable).")
@click.option("--no-cache", is_flag=True)
@click.option(
    "--progress", type=click.Choice(["auto", "plain", "tty", "quiet"]), default="auto", show_default=True
)
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA certificates for a TLS-inspecting proxy, used during the build only.",
)
@click.option(
    "--network",
    default=None,
    help="Network for the build's RUN steps (default: the engine's; 'none' for offline bundles).",
)
@handle_errors
def containerize(
    tag: str,
    image_tags: tuple[str, ...],
    backend: str | None,
    platform: str | None,
    build_arg: tuple[str, ...],
    no_cache: bool,
    progress: str,
    ca_bundle: Path | None,
    network: str | None,
) -> None:
    """Build a container image from the bundle TAG with a real engine; print the image tag."""
    from . import bundles
    from .docker import containerize as do_containerize

    b = bundles.get(tag)
    quiet = progress == "quiet"
    images = do_containerize(
        b.path,
        b.info,
        tags=list(image_tags),
        backend=backend,
        platform=platform,
        build_args=_pairs(build_arg, "--build-arg"),
        no_cache=no_cache,
        progress=progress,
        ca_bundle=ca_bundle,
        network=network,
        output=(lambda _line: None) if quiet else _say,
    )
    for image in images:
        click.echo(image)


@main.group()
def deploy() -> None:
    """Generate deployment manifests from a bundle."""


@deploy.command("kubernetes")
@click.argument("tag")
@click.option("--image", default=None, help="REGISTRY/NAME:TAG the cluster pulls (default <name>:<version>).")
@click.option("--replicas", type=int, default=1, show_default=True)
@click.option("--min-replicas", type=int, default=None)
@click.option("--max-replicas", type=int, default=None)
@click.option("--cpu", default="1", show_default=True)
@click.option("--memory", default="1Gi", show_default=True)
@click.option("--gpu", type=int, default=0, show_default=True)
@click.option("--namespace", default=None)
@click.option(
    "--name",
    "object_name",
    default=None,
    help="Name of the Kubernetes objects (default: the bundle name, '.' and '_' turned into '-').",
)
# A str: "" must not become "." (the manifests would land in the current directory).
@click.option("-o", "--output-dir", "out_dir", required=True, type=click.Path(path_type=str))
@handle_errors
def deploy_kubernetes(
    tag: str,
    image: str | None,
    replicas: int,
    min_replicas: int | None,
    max_replicas: int | None,
    cpu: str,
    memory: str,
    gpu: int,
    namespace: str | None,
    object_name: str | None,
    out_dir: str,
) -> None:
    """Write Kubernetes manifests (Deployment, Service, HPA, PDB) for the bundle TAG."""
    from .deploy import deploy_kubernetes as write_for_tag

    options = {
        "image": image,
        "replicas": replicas,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
    }
    options.update({"cpu": cpu, "memory": memory, "gpu": gpu, "namespace": namespace, "name": object_name})
    for p in write_for_tag(tag, out_dir, say=_say, **options):
        click.echo(str(p))


if __name__ == "__main__":  # pragma: no cover
    main()
