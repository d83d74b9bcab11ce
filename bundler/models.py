"""Stored models: the ``Model`` handle and ``bundler.models.{list,get,delete,export_model,import_model}``.

A ``Model`` is a store entry (tag, directory, ``model.yaml``) plus load options; it imports no framework.
Tags resolve in the bundle being served first (``$BUNDLER_BUNDLE_DIR/models``), then in the home store, so
a served bundle uses the models it ships even when the home store has newer ones.
"""

from __future__ import annotations

import builtins
import difflib
import functools
import os
import pickle
import shutil
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import BadInput, ModelError, NotFound, ProviderError, StoreError
from .store import Entry, Store, Tag, model_store, sha256_file

if TYPE_CHECKING:
    from .runner.runner import Runner

__all__ = ["Model", "ModelInfo", "code_notes", "delete", "export_model", "get", "import_model", "list"]

BUNDLE_DIR_ENV = "BUNDLER_BUNDLE_DIR"
CUSTOM_OBJECTS_FILE = "custom_objects.pkl"
EXTERNAL_MODULES_DIR = "external_modules"
# Fixed, so that the same objects give the same bytes (bundle versions are digests of their files).
_PICKLE_PROTOCOL = 4


class ModelInfo(dict):
    """``model.yaml`` as a dict whose keys also read as attributes (``info.labels``), as in BentoML."""

    _kind = "model"

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            if name.startswith("__"):  # copy, pickle and friends probe for dunders: plain AttributeError
                raise AttributeError(name) from None
            close = difflib.get_close_matches(name, [str(k) for k in self], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            tag = f"{self.get('name')}:{self.get('version')}"
            raise AttributeError(
                f"{self._kind} {tag}: info has no {name!r}; {hint}its keys are {', '.join(map(str, self))}"
            ) from None


class Model:
    """A stored model: ``tag``, ``path`` (its directory), ``info`` (``model.yaml``) and load options."""

    def __init__(self, tag: Tag, path: Path, info: dict, *, options: dict[str, Any] | None = None) -> None:
        self.tag = tag
        self.path = Path(path)
        self.info = info if isinstance(info, ModelInfo) else ModelInfo(info)
        self._options: dict[str, Any] = dict(options or {})
        self._custom_objects: dict[str, Any] | None = None

    @classmethod
    def from_entry(cls, entry: Entry) -> Model:
        """Wrap a store entry."""
        return cls(entry.tag, entry.path, entry.info)

    @property
    def module(self) -> str:
        """Return the framework module that saved this model (``bundler.onnx``)."""
        return str(self.info.get("module", ""))

    @property
    def options(self) -> dict[str, Any]:
        """Return the load options set with ``with_options`` (a copy)."""
        return dict(self._options)

    @property
    def model_file(self) -> Path:
        """Return the path of the saved model file inside the entry."""
        return self.path / str(self.info.get("model_file", "saved_model.onnx"))

    @property
    def custom_objects(self) -> dict[str, Any]:
        """Return the objects saved with ``save_model(custom_objects=...)`` (unpickled on first use)."""
        if self._custom_objects is None:
            self._custom_objects = _load_custom_objects(self)
        return self._custom_objects

    def with_options(
        self, *, providers: builtins.list[Any] | None = None, session_options: Any = None
    ) -> Model:
        """Return a new Model that loads with these providers and session options (unset ones are kept)."""
        options = dict(self._options)
        if isinstance(providers, str):  # list("CPUExecutionProvider") would be its letters
            raise ProviderError(f"providers must be a list of provider names, e.g. [{providers!r}]")
        if providers is not None:
            options["providers"] = builtins.list(providers)
        if session_options is not None:
            options["session_options"] = session_options
        return Model(self.tag, self.path, self.info, options=options)

    def to_runner(
        self,
        name: str | None = None,
        max_batch_size: int | None = None,
        max_latency_ms: float | None = None,
        *,
        method_configs: dict[str, dict[str, Any]] | None = None,
        embedded: bool = False,
        **batching: Any,
    ) -> Runner:
        """Return a Runner for this model; batching options apply when the model was saved batchable.

        As in BentoML: ``name`` comes first (``to_runner("sr_runner")``), ``name=""`` means the model's
        name, ``method_configs={"run": {...}}`` holds batching
        options for the ``run`` method (they win over the arguments), and ``embedded`` is accepted:
        bundler's runners always run inside the API server's process.
        """
        from .runner.runner import Runner

        label = name or self.tag.name
        if method_configs is not None:
            if not isinstance(method_configs, Mapping):
                raise BadInput(
                    f"runner {label!r}: method_configs must be a dict like"
                    f" {{'run': {{'max_batch_size': 8}}}}, got {type(method_configs).__name__}"
                )
            for method, options in method_configs.items():
                if method != "run":
                    raise BadInput(
                        f"runner {label!r}: method_configs names {method!r}; ONNX runners have one method,"
                        " 'run' (method_configs={'run': {'max_batch_size': 8}})"
                    )
                if not isinstance(options, Mapping):
                    raise BadInput(
                        f"runner {label!r}: method_configs['run'] must be a dict of batching options,"
                        f" got {type(options).__name__}"
                    )
                options = dict(options)
                max_batch_size = options.pop("max_batch_size", max_batch_size)
                max_latency_ms = options.pop("max_latency_ms", max_latency_ms)
                batching = {**batching, **options}
        if not isinstance(embedded, bool):
            raise BadInput(f"runner {label!r}: embedded must be True or False, got {embedded!r}")
        return Runner(
            self, name=name or None, max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, **batching
        )

    def __repr__(self) -> str:
        return f'Model(tag="{self.tag}", path="{self.path.resolve()}{os.sep}")'

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Model):
            return NotImplemented
        return (self.tag, self.path.resolve(), self._options) == (
            other.tag,
            other.path.resolve(),
            other._options,
        )

    def __hash__(self) -> int:
        return hash((self.tag, self.path.resolve()))


# -- custom objects and external modules ----------------------------------------------------------------
def _load_custom_objects(model: Model) -> dict[str, Any]:
    path = model.path / CUSTOM_OBJECTS_FILE
    if not path.is_file():
        return {}
    modules = model.path / EXTERNAL_MODULES_DIR
    if modules.is_dir() and str(modules) not in sys.path:
        # Appended, not prepended: a module the process can already import (the service's own source) wins.
        sys.path.append(str(modules))
    try:
        with path.open("rb") as f:
            objects = pickle.load(f)
    except (ImportError, AttributeError) as exc:
        raise ModelError(
            f"model {model.tag}: custom_objects cannot be loaded: {exc}; make the code that defines them"
            " importable here (install it, or add it to the bundle's source), or save the model again with"
            " save_model(..., external_modules=[the_module])"
        ) from exc
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise StoreError(
            f"model {model.tag}: {CUSTOM_OBJECTS_FILE} cannot be read ({exc}); the entry is damaged:"
            f" delete it (`bundler models delete {model.tag}`), then save or import it"
        ) from exc
    return dict(objects)


def code_notes(model: Model) -> builtins.list[str]:
    """Return what in a stored model is code that using it can run: its pickled objects, its modules.

    Read from the entry's files, not from what model.yaml says about them: an archive can say anything.
    """
    notes = []
    if (model.path / CUSTOM_OBJECTS_FILE).exists():
        notes.append("custom objects (a pickle: reading Model.custom_objects runs code from it)")
    modules = model.path / EXTERNAL_MODULES_DIR
    if modules.is_dir():
        names = sorted(p.name.removesuffix(".py") for p in modules.iterdir() if p.name != "__pycache__")
        notes.append(
            f"external modules (Python code: {', '.join(names)}), importable once its custom objects load"
        )
    return notes


def _kind(value: object) -> str:
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return "a function"
    return f"a {type(value).__name__}"


def write_custom_objects(staged: Path, objects: object, where: str) -> builtins.list[str]:
    """Pickle ``custom_objects`` into a staged model entry; return their names (none: no file)."""
    if objects is None:
        return []
    if not isinstance(objects, Mapping):
        raise ModelError(f"{where}: custom_objects must be a dict, got {type(objects).__name__}")
    for key, value in objects.items():
        if not isinstance(key, str):
            raise ModelError(f"{where}: custom_objects keys must be str; {key!r} is not")
        try:
            pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:  # pickling raises PicklingError, TypeError, AttributeError, ...
            raise ModelError(
                f"{where}: custom_objects[{key!r}] ({_kind(value)}) cannot be pickled ({exc}); give objects"
                " whose classes and functions are defined at module level (not lambdas or local classes),"
                " or save what they hold instead"
            ) from exc
    if not objects:
        return []
    data = pickle.dumps(dict(objects), protocol=_PICKLE_PROTOCOL)
    (staged / CUSTOM_OBJECTS_FILE).write_bytes(data)
    return sorted(objects)


def write_external_modules(staged: Path, modules: object, where: str) -> builtins.list[str]:
    """Copy the source of user modules into a staged model entry; return their names."""
    if modules is None:
        return []
    if isinstance(modules, (str, bytes, types.ModuleType)) or not isinstance(modules, (builtins.list, tuple)):
        raise ModelError(
            f"{where}: external_modules must be a list of modules (e.g. external_modules=[my_tokenizer]),"
            f" got {type(modules).__name__}"
        )
    names = []
    for i, module in enumerate(modules):
        if not isinstance(module, types.ModuleType):
            raise ModelError(
                f"{where}: external_modules[{i}] is {_kind(module)}, not a module; pass the module itself"
                " (import my_module; external_modules=[my_module])"
            )
        file = getattr(module, "__file__", None)
        if not file or not str(file).endswith(".py"):
            raise ModelError(
                f"{where}: external_modules[{i}]: module {module.__name__!r} has no source file to save"
                " (built-in or compiled modules are installed, not saved: list them in the build file's"
                " python.packages)"
            )
        rel = Path(*module.__name__.split("."))
        dest = staged / EXTERNAL_MODULES_DIR
        if hasattr(module, "__path__"):  # a package: its whole directory
            shutil.copytree(
                Path(file).parent,
                dest / rel,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,
            )
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, (dest / rel).with_suffix(".py"))
        names.append(module.__name__)
    return sorted(names)


def _stores() -> builtins.list[Store]:
    """Return the stores to search, the served bundle's first."""
    stores = []
    bundle_dir = os.environ.get(BUNDLE_DIR_ENV)
    if bundle_dir:
        stores.append(Store(Path(bundle_dir) / "models", "model", "model.yaml"))
    stores.append(model_store())
    return stores


def _locate(tag: str | Tag) -> tuple[Store, Tag]:
    """Return the store holding a tag and the full tag; NotFound names every place searched."""
    parsed = Tag.parse(tag)
    stores = _stores()
    for store in stores:
        try:
            return store, store.resolve(parsed)
        except NotFound:
            continue
    where = " or ".join(str(s.root) for s in stores)
    what = f"model {parsed}" if parsed.version else f"model {parsed.name!r}"
    close = next(filter(None, (s.did_you_mean(parsed.name) for s in stores)), None)
    hint = f"; did you mean {close!r}? See" if close else "; see"
    raise NotFound(f"{what} not found in {where}{hint} `bundler models list`, or save it with save_model()")


def get(tag: str | Tag) -> Model:
    """Return the stored model for ``name[:version]`` (``latest`` when no version)."""
    store, full = _locate(tag)
    return Model.from_entry(store.get(full))


def list(name: str | None = None, *, on_damaged: Callable[[str], None] | None = None) -> builtins.list[Model]:
    """Return every stored model (or those of one name), newest first within a name.

    Damaged entries are left out and reported to ``on_damaged`` (default: a warning each).
    """
    if name is not None:
        Tag.parse(name)
    seen: set[Tag] = set()
    out: builtins.list[Model] = []
    for store in _stores():
        for entry in store.list(name, on_damaged=on_damaged):
            if entry.tag not in seen:
                seen.add(entry.tag)
                out.append(Model.from_entry(entry))
    return out


def delete(tag: str | Tag) -> Tag:
    """Delete a model from the home store; return its full tag."""
    return model_store().delete(tag)


def export_model(tag: str | Tag, path: str | Path) -> Path:
    """Write a ``.tar.gz`` archive of a model to ``path`` (a file, or a directory to put it in)."""
    store, full = _locate(tag)
    return store.export(full, path)


def verify_model_file(model: Model) -> None:
    """Check the model file against the sha256 in ``model.yaml``; raise StoreError when they differ."""
    expected = model.info.get("sha256")
    try:
        actual = sha256_file(model.model_file)
    except OSError as exc:
        raise StoreError(
            f"model {model.tag}: {model.model_file.name} cannot be read ({exc.strerror or exc}); the entry is"
            f" damaged: delete it (`bundler models delete {model.tag}`), then save or import it"
        ) from exc
    if expected != actual:
        raise StoreError(
            f"model {model.tag}: {model.model_file.name} has sha256 {actual} but model.yaml says {expected};"
            f" the entry is damaged: delete it (`bundler models delete {model.tag}`), then save or import it"
        )


def _check_archived_model(archive: Path, staged: Path, tag: Tag, info: dict) -> None:
    """Refuse an archived model whose model.yaml names a model file it lacks, or one with another sha256."""
    rel = info.get("model_file", "saved_model.onnx")
    where = f"{archive}: model {tag}"
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise BadInput(f"{where}: model.yaml: model_file {rel!r} is not the name of a file in the archive")
    if not (staged / rel).is_file():
        raise BadInput(
            f"{where}: model.yaml names the model file {rel!r}, which is not in the archive;"
            " export the model again from a store that holds it"
        )
    expected, actual = info.get("sha256"), sha256_file(staged / rel)
    if expected != actual:
        raise StoreError(
            f"{where}: {rel} has sha256 {actual} but model.yaml says {expected}; the archive is damaged"
            " or was edited: export the model again"
        )
    from .frameworks.onnx import check_external_data

    check_external_data(staged / rel, where)


def import_model(path: str | Path) -> Model:
    """Import a model archive made by ``export_model`` into the home store (all checks first); return it."""
    store = model_store()
    tag, created = store.import_(path, check=functools.partial(_check_archived_model, Path(path)))
    model = Model.from_entry(store.get(tag))
    if not created:
        verify_model_file(model)  # the copy already stored: say so when it is damaged
    return model
