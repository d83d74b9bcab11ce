"""Read ``bentofile.yaml``: validate it against ``schemas/bentofile.schema.json`` and the build context.

``validate_file`` returns every problem at once, each with its line and column (from PyYAML node marks),
its key path and a fix; ``load_bentofile`` turns a valid file into frozen dataclasses with the defaults
applied, or raises ``ConfigError`` listing all problems.

The YAML is composed into nodes and built into plain data here (not with ``yaml.safe_load``), so that
every value keeps its position, duplicate keys are caught, alias expansion is bounded (billion laughs),
and unquoted versions keep the text that was written (``python_version: 3.10`` means "3.10", not 3.1).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .exceptions import BundlerError, ConfigError

__all__ = [
    "BentoConfig",
    "CondaOptions",
    "DockerOptions",
    "ModelSpec",
    "Problem",
    "PythonOptions",
    "find_bentofile",
    "image_python",
    "load_bentofile",
    "validate_file",
]

BENTOFILE_NAMES = ("bentofile.yaml", "bentofile.yml")
MAX_FILE_BYTES = 1 << 20
# Nodes visited while building data, counting every alias expansion; real build files have a few hundred.
MAX_NODES = 100_000
MAX_DEPTH = 50
# Unquoted values that YAML would turn into floats and lose digits of (3.10 -> 3.1): keep the source text.
_VERSION_KEYS = {("docker", "python_version"), ("docker", "cuda_version")}
_SCHEMA_FILE = "bentofile.schema.json"
_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing (null)",
}

Path_ = tuple[str | int, ...]


def image_python(python_version: str | None = None) -> str:
    """Return the image's Python X.Y: docker.python_version when set, else the Python that runs bundler."""
    return python_version or f"{sys.version_info.major}.{sys.version_info.minor}"


# -- problems ----------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a build file, with where it is and what to do."""

    file: str
    line: int
    column: int
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.key_path}: {self.message}" if self.key_path else f"{where}: {self.message}"


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Located:
    """Positions of every key and value of the built data, by key path (1-based line/column)."""

    def __init__(self) -> None:
        self.values: dict[Path_, yaml.Node] = {}
        self.keys: dict[Path_, yaml.Node] = {}

    def value_mark(self, path: Path_) -> tuple[int, int]:
        for p in (path[:i] for i in range(len(path), -1, -1)):
            node = self.values.get(p)
            if node is not None:
                return node.start_mark.line + 1, node.start_mark.column + 1
        return 1, 1

    def key_mark(self, path: Path_) -> tuple[int, int]:
        node = self.keys.get(path)
        if node is None:
            return self.value_mark(path)
        return node.start_mark.line + 1, node.start_mark.column + 1


# -- YAML -> data with positions -----------------------------------------------------------------------


class _TooBig(Exception):
    """The node tree is too large, too deep or refers to itself; the message says which."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.line, self.column = line, column


class _Builder:
    """Build plain data from a composed node tree, recording positions and problems."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.where = _Located()
        self.problems: list[Problem] = []
        self.count = 0
        self.open: set[int] = set()  # ids of the collections being built: an alias to one is a loop
        self.constructor = yaml.SafeLoader("")  # only its scalar constructors are used

    def problem(self, node: yaml.Node, path: Path_, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.file, mark.line + 1, mark.column + 1, _dotted(path), message))

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(
                f"the YAML expands to more than {MAX_NODES} values (aliases nested like a 'billion laughs' "
                "attack?); refused, write the values out instead of nesting aliases"
            )
        if len(path) > MAX_DEPTH:
            raise _TooBig(f"the YAML nests deeper than {MAX_DEPTH} levels; refused")
        self.where.values.setdefault(path, node)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if id(node) in self.open:
                mark = node.start_mark
                raise _TooBig(
                    "an alias refers to the value that contains it (an endless loop); refused",
                    mark.line + 1,
                    mark.column + 1,
                )
            self.open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path)
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            finally:
                self.open.discard(id(node))
        if path in _VERSION_KEYS and node.tag in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int"):
            return node.value
        value = self.constructor.construct_object(node, deep=True)
        if isinstance(value, (datetime.date, bytes)):
            # Unquoted dates (and !!binary) are not JSON types: keep the text that was written.
            return node.value
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # Merge keys can grow exponentially before any value is built: refuse them outright.
                self.problem(key_node, path, "merge keys ('<<') are not supported here; write the keys out")
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, path, "a key must be plain text, not a list or mapping")
                continue
            key = self.constructor.construct_object(key_node)
            if not isinstance(key, str):
                self.problem(
                    key_node, path, f"the key {key_node.value!r} is not text; quote it: '{key_node.value}':"
                )
                key = key_node.value
            sub = (*path, key)
            if key in out:
                self.problem(
                    key_node, sub, f"duplicate key {key!r} (first at line {first[key]}); keep one of them"
                )
            else:
                first[key] = key_node.start_mark.line + 1
            self.where.keys[sub] = key_node
            self.where.values.pop(sub, None)  # the last duplicate wins, as in PyYAML
            out[key] = self.build(value_node, sub)
        return out


_TOO_DEEP = "the YAML is nested too deeply to read (hundreds of levels); a build file needs a few levels"


def _read_yaml(
    path: Path, file: str, empty: str = "it needs at least 'service: module:attribute'"
) -> tuple[Any, _Located, list[Problem]]:
    """Parse a file into data and positions; problems that stop parsing are returned, not raised."""

    def stop(message: str, line: int = 1, column: int = 1) -> tuple[Any, _Located, list[Problem]]:
        return None, _Located(), [Problem(file, line, column, "", message)]

    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return stop(f"the file is {size} bytes; build files are refused above {MAX_FILE_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return stop(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8")
    except OSError as exc:
        return stop(f"cannot read the file: {exc.strerror or exc}")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        detail = exc.problem or "invalid YAML"
        if exc.context:
            started = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            detail += f" ({exc.context}{started})"
        return stop(f"YAML syntax error: {detail}; check the indentation and quoting", line, column)
    except yaml.YAMLError as exc:
        return stop(f"YAML error: {exc}")
    except RecursionError:
        return stop(_TOO_DEEP)
    if root is None:
        return stop(f"the file is empty; {empty}")
    builder = _Builder(file)
    try:
        data = builder.build(root, ())
    except _TooBig as exc:
        return stop(str(exc), exc.line, exc.column)
    except RecursionError:
        return stop(_TOO_DEEP)
    except yaml.YAMLError as exc:  # a scalar PyYAML cannot construct, e.g. a bad !!timestamp
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return stop(f"YAML error: {getattr(exc, 'problem', exc)}", line, column)
    return data, builder.where, builder.problems


# -- schema ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    from .resources import data_dir

    with open(data_dir("schemas") / _SCHEMA_FILE, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    # jsonschema (with referencing/rpds) takes ~0.1 s to import: only pay for it when validating.
    import jsonschema

    return jsonschema.Draft202012Validator(_schema())


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"


def _expected(types: Any) -> str:
    names = [_TYPE_NAMES.get(t, t) for t in ([types] if isinstance(types, str) else types) if t != "null"]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _all_keys() -> dict[str, list[str]]:
    """Map each known key to the sections it belongs in, for 'did you mean docker.python_version'."""
    out: dict[str, list[str]] = {}
    props = _schema()["properties"]
    for section, sub in props.items():
        out.setdefault(section, []).append(section)
        for key in sub.get("properties", {}):
            out.setdefault(key, []).append(f"{section}.{key}")
    return out


_KEY_HINTS = {
    "version": "the version is made by the build from the content, not set in the build file",
}


def _unknown_key_message(key: str, allowed: list[str], section: Path_) -> str:
    message = f"unknown key {key!r}"
    if key in _KEY_HINTS:
        return f"{message}; {_KEY_HINTS[key]}"
    elsewhere = [p for p in _all_keys().get(key, []) if p.rpartition(".")[0] != _dotted(section)]
    if elsewhere:
        return f"{message} here (did you mean {elsewhere[0]!r}?)"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    return f"{message}; allowed keys: {', '.join(sorted(allowed))}"


def _schema_problems(data: Any, where: _Located, file: str) -> list[Problem]:
    out: list[Problem] = []
    for error in _validator().iter_errors(data):
        out += _explain(error, where, file)
    return out


def _explain(error: Any, where: _Located, file: str) -> Iterator[Problem]:
    """Turn one jsonschema error into problems a person can act on."""
    path: Path_ = tuple(error.absolute_path)
    instance = error.instance
    hint = error.schema.get("x-hint") if isinstance(error.schema, dict) else None
    suffix = f"; {hint}" if hint else ""

    def at(message: str, key: bool = False) -> Problem:
        line, column = where.key_mark(path) if key else where.value_mark(path)
        return Problem(file, line, column, _dotted(path), message)

    kind = error.validator
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = list(error.schema.get("properties", {}))
        for key in instance:
            if key not in allowed:
                sub = (*path, key)
                line, column = where.key_mark(sub)
                yield Problem(file, line, column, _dotted(sub), _unknown_key_message(key, allowed, path))
    elif kind in ("anyOf", "oneOf"):
        # Branches are told apart by type: explain the branch of the value's type, else list the types.
        branch_errors = [e for e in error.context if not (e.validator == "type" and not e.relative_path)]
        if branch_errors:
            first_branch = branch_errors[0].relative_schema_path[0]
            for sub in branch_errors:
                if sub.relative_schema_path[0] == first_branch:
                    yield from _explain(sub, where, file)
        else:
            types = [e.validator_value for e in error.context if e.validator == "type"]
            flat = [t for ts in types for t in ([ts] if isinstance(ts, str) else ts)]
            yield at(f"expected {_expected(flat)}, got {_type_name(instance)}{suffix}")
    elif kind == "type":
        yield at(f"expected {_expected(error.validator_value)}, got {_type_name(instance)}{suffix}")
    elif kind == "required":
        missing = [k for k in error.validator_value if k not in instance]
        for key in missing:
            example = " (e.g. 'service: service:svc')" if key == "service" else ""
            yield at(f"the required key {key!r} is missing; add it{example}")
    elif kind == "enum":
        choices = [c for c in error.validator_value if c is not None]
        close = difflib.get_close_matches(str(instance), [str(c) for c in choices], n=1, cutoff=0.5)
        did = f" (did you mean {close[0]!r}?)" if close else ""
        yield at(f"{instance!r} is not one of {', '.join(map(str, choices))}{did}")
    elif kind == "pattern" and "propertyNames" in error.relative_schema_path:
        # jsonschema reports a bad key at its mapping: point at the key itself.
        path = (*path, instance)
        yield at(f"{instance!r} is not a valid name{suffix}", key=True)
    elif kind == "pattern":
        yield at(f"{instance!r} is not valid{suffix or ' (it must match ' + error.validator_value + ')'}")
    elif kind in ("minLength", "maxLength"):
        limit = error.validator_value
        words = "must not be empty" if kind == "minLength" and limit == 1 else f"{kind} is {limit}"
        yield at(f"{instance!r} {words}{suffix}")
    else:
        yield at(f"{error.message}{suffix}")


def _pip_entries(data: dict[str, Any]) -> Iterator[tuple[Path_, str]]:
    """Yield the pip requirements a build file lists: python.packages and the conda pip lists."""
    python = data.get("python")
    packages = python.get("packages") if isinstance(python, dict) else None
    conda: dict[str, Any] = data["conda"] if isinstance(data.get("conda"), dict) else {}
    lists: list[tuple[Path_, Any]] = [
        (("python", "packages"), packages),
        (("conda", "pip"), conda.get("pip")),
    ]
    deps = conda.get("dependencies")
    for i, dep in enumerate(deps if isinstance(deps, list) else []):
        if isinstance(dep, dict):
            lists.append((("conda", "dependencies", i, "pip"), dep.get("pip")))
    for at, entries in lists:
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, str):
                yield (*at, i), entry


def _requirement_problems(data: dict[str, Any], where: _Located, file: str) -> list[Problem]:
    """Report pip entries that are not requirements, before a resolver calls them conflicts."""
    from .dockerfile import pip_args_problem
    from .lock import requirement_problem

    out = []
    python = data.get("python")
    pip_args = python.get("pip_args") if isinstance(python, dict) else None
    if isinstance(pip_args, str):
        message = pip_args_problem(pip_args)
        if message:
            line, column = where.value_mark(("python", "pip_args"))
            out.append(Problem(file, line, column, "python.pip_args", message))
    for at, entry in _pip_entries(data):
        message = requirement_problem(entry)
        if message:
            line, column = where.value_mark(at)
            out.append(Problem(file, line, column, _dotted(at), message))
    return out


# -- checks against the build context -------------------------------------------------------------------


def _inside(context: Path, relpath: str) -> tuple[Path, bool]:
    target = (context / Path(relpath).expanduser()).resolve()
    return target, target == context or context in target.parents


def _service_left_out(
    data: dict[str, Any], context: Path, module_file: Path, problem: Callable[[Path_, str], None]
) -> None:
    """Report include/exclude patterns that leave the service module out of the bundle's sources."""
    from .sources import select_sources

    include, exclude = data.get("include"), data.get("exclude")
    if not isinstance(include, (list, type(None))) or not isinstance(exclude, (list, type(None))):
        return  # the schema reports these
    at: Path_ = ("include",) if include else ("exclude",) if exclude else ()
    patterns = [p for p in (include or []) if isinstance(p, str)]
    ignored = [p for p in (exclude or []) if isinstance(p, str)]
    try:
        sources = select_sources(context, patterns, ignored)
    except BundlerError:
        return  # a link out of the context, an unlistable name: the build names the file
    rel = module_file.relative_to(context).as_posix()
    if rel not in {s.rel for s in sources}:
        # The build would bundle a src/ the image cannot import the service from.
        problem(
            at,
            f"the service module {rel} is not among the bundle's sources: 'include' ({patterns or ['*']})"
            f" and 'exclude' ({ignored}) leave it out; make 'include' match {rel!r} and 'exclude' not",
        )


def _context_problems(data: dict[str, Any], where: _Located, file: str, context: Path) -> list[Problem]:
    out: list[Problem] = []
    context = context.resolve()

    def problem(path: Path_, message: str) -> None:
        line, column = where.value_mark(path)
        out.append(Problem(file, line, column, _dotted(path), message))

    def need_file(path: Path_, relpath: str, what: str, text: bool = False) -> Path | None:
        target, inside = _inside(context, relpath)
        if not inside:
            problem(path, f"{relpath!r} is outside the build context {context}; move the {what} into it")
            return None
        if not target.is_file():
            problem(
                path,
                f"{what} {relpath!r} not found in the build context {context}; create it or fix the path",
            )
            return None
        if text:
            # The build reads it as UTF-8 text: say so here rather than fail there with a traceback.
            try:
                target.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                problem(
                    path,
                    f"{what} {relpath!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as"
                    " UTF-8",
                )
                return None
            except OSError as exc:
                problem(path, f"{what} {relpath!r} cannot be read ({exc.strerror or exc})")
                return None
        return target

    service = data.get("service")
    if isinstance(service, str) and ":" in service:
        module = service.partition(":")[0]
        candidates = (
            [module]
            if module.endswith(".py")
            else [module.replace(".", "/") + ".py", module.replace(".", "/")]
        )
        found = None
        for rel in candidates:
            target, inside = _inside(context, rel)
            if inside and (target.is_file() or (target / "__init__.py").is_file()):
                found = target if target.is_file() else target / "__init__.py"
                break
        if found is None:
            problem(("service",), f"module file {candidates[0]!r} not found in the build context {context}")
        else:
            from .scan import missing_attribute

            # A typo after ':' would otherwise build a bundle whose server cannot find its service.
            missing = missing_attribute(found, service.partition(":")[2])
            if missing:
                problem(("service",), f"module {missing}")
            _service_left_out(data, context, found, problem)

    include = data.get("include")
    for i, pattern in enumerate(include if isinstance(include, list) else []):
        # Patterns match paths inside the context, so '..' never matches: say so instead of ignoring it.
        if isinstance(pattern, str) and ".." in pattern.strip().lstrip("!").replace("\\", "/").split("/"):
            problem(
                ("include", i),
                f"pattern {pattern!r} reaches outside the build context {context} ('..'); patterns match"
                " paths inside it: copy the files into the context",
            )

    description = data.get("description")
    if isinstance(description, str) and description.startswith("file:"):
        need_file(("description",), description[5:].strip(), "description file", text=True)

    sections: list[dict[str, Any]] = [
        data[k] if isinstance(data.get(k), dict) else {} for k in ("docker", "python", "conda")
    ]
    docker, python, conda = sections
    if isinstance(docker.get("env"), str):
        need_file(("docker", "env"), docker["env"], ".env file", text=True)
    if isinstance(docker.get("dockerfile_template"), str):
        need_file(
            ("docker", "dockerfile_template"), docker["dockerfile_template"], "Dockerfile template", text=True
        )
    if isinstance(docker.get("setup_script"), str):
        # Its mode on this machine does not matter: the bundle stores it executable and the image runs
        # `chmod +x` on it, as BentoML's does; without a shebang the image's /bin/sh runs it.
        script = need_file(("docker", "setup_script"), docker["setup_script"], "setup script")
        if script is not None:
            try:
                with script.open("rb") as f:
                    first = f.readline()
            except OSError as exc:
                problem(("docker", "setup_script"), f"setup script cannot be read ({exc.strerror or exc})")
            else:
                if first.endswith(b"\r\n"):
                    # '#!/bin/sh\r' names an interpreter that does not exist: "not found" at image build.
                    problem(
                        ("docker", "setup_script"),
                        f"setup script {docker['setup_script']!r} has Windows (CRLF) line endings, which"
                        " the image's Linux shell cannot run; convert it to LF line endings (e.g."
                        f" dos2unix {docker['setup_script']})",
                    )
    if isinstance(python.get("requirements_txt"), str):
        reqs_file = need_file(("python", "requirements_txt"), python["requirements_txt"], "requirements file")
        if reqs_file is not None:
            from .lock import collect_requirements

            # Read it as the build will (nested -r/-c too), so validate reports what build would refuse.
            try:
                collect_requirements([], reqs_file, context)
            except ConfigError as exc:
                for message in exc.problems:
                    problem(("python", "requirements_txt"), message)
            except BundlerError as exc:
                problem(("python", "requirements_txt"), str(exc))
    from .lock import missing_path

    for at, entry in _pip_entries(data):
        missing = missing_path(entry, context)
        if missing:
            problem(
                at,
                f"{entry.strip()!r}: no such file or directory {missing}; fix the path (relative to the"
                " build file)",
            )
    if isinstance(python.get("find_links"), list):
        for i, link in enumerate(python["find_links"]):
            if isinstance(link, str) and "://" not in link and not (context / link).is_dir():
                problem(
                    ("python", "find_links", i),
                    f"find-links directory {link!r} not found (relative paths start at the build file's"
                    f" directory, {context}); create it or fix the path",
                )
    if isinstance(python.get("wheels"), list):
        for i, wheel in enumerate(python["wheels"]):
            if isinstance(wheel, str):
                need_file(("python", "wheels", i), wheel, "wheel")
    if isinstance(conda.get("environment_yml"), str):
        env_file = need_file(("conda", "environment_yml"), conda["environment_yml"], "conda environment file")
        if env_file is not None:
            # The bundle ships it as is: a broken one would only fail when conda reads it in the image.
            for p in _conda_env_problems(env_file, conda["environment_yml"]):
                problem(("conda", "environment_yml"), f"conda environment file {p}")
    return out


def _conda_env_problems(path: Path, shown: str) -> list[Problem]:
    """Check an environment.yml as conda reads it: a mapping with lists of channels and dependencies."""
    from .lock import missing_path, requirement_problem

    data, where, problems = _read_yaml(path, shown, empty="list the conda packages under 'dependencies:'")
    if data is None or problems:
        return problems

    def wrong(at: Path_, message: str) -> None:
        line, column = where.value_mark(at)
        problems.append(Problem(shown, line, column, _dotted(at), message))

    if not isinstance(data, dict):
        wrong(
            (), f"the top level must be a mapping (name:, channels:, dependencies:), got {_type_name(data)}"
        )
        return problems
    for key in ("channels", "dependencies"):
        value = data.get(key)
        if value is not None and not isinstance(value, list):
            wrong((key,), f"must be a list, got {_type_name(value)}")
    channels = data.get("channels")
    for i, channel in enumerate(channels if isinstance(channels, list) else []):
        if not isinstance(channel, str):
            wrong(("channels", i), f"a channel must be a name, got {_type_name(channel)}")
    deps = data.get("dependencies")
    for i, dep in enumerate(deps if isinstance(deps, list) else []):
        if isinstance(dep, str):
            continue
        if isinstance(dep, dict) and list(dep) == ["pip"]:
            pip = dep["pip"]
            if not isinstance(pip, list) or not all(isinstance(r, str) for r in pip):
                got = "" if isinstance(pip, list) else f", got {_type_name(pip)}"
                wrong(("dependencies", i, "pip"), f"must be a list of pip requirement strings{got}")
                continue
            # The build locks these with python.packages; conda runs pip in this file's directory.
            for j, entry in enumerate(pip):
                message = requirement_problem(entry)
                missing = missing_path(entry, path.parent)
                if missing:
                    message = (
                        f"{entry.strip()!r}: no such file or directory {missing}; fix the path (relative to"
                        " the conda environment file)"
                    )
                if message:
                    wrong(("dependencies", i, "pip", j), message)
        else:
            wrong(
                ("dependencies", i),
                f"got {_type_name(dep)}; list conda packages as strings, plus at most one"
                " '- pip: [...]' entry of pip requirements",
            )
    return problems


def _setting_path(key: str, data: dict[str, Any]) -> Path_:
    """Return the key path of a setting the Dockerfile names 'docker.system_packages[1]', 'labels.a.b', ..."""
    section, _, rest = key.partition(".")
    if section == "labels":
        return ("labels", rest)
    if section == "envs":
        names = [e.get("name") if isinstance(e, dict) else None for e in data.get("envs") or []]
        return ("envs", names.index(rest), "value") if rest in names else ("envs",)
    name, _, sub = rest.partition(".")
    item = re.fullmatch(r"(\w+)\[(\d+)\]", name)
    if item:
        return (section, item[1], int(item[2]))
    return (section, name, sub) if sub else (section, name)


def _well_typed(data: dict[str, Any], schema: list[Problem]) -> dict[str, Any]:
    """Return data's docker keys, envs and labels without the entries that have schema problems."""
    flagged = [p.key_path for p in schema]

    def clean(path: str) -> bool:
        return not any(k == path or k.startswith((f"{path}.", f"{path}[")) for k in flagged)

    docker, envs, labels = data.get("docker"), data.get("envs"), data.get("labels")
    return {
        "docker": {k: v for k, v in docker.items() if clean(f"docker.{k}")}
        if isinstance(docker, dict) and "docker" not in flagged
        else {},
        "envs": [e for i, e in enumerate(envs) if clean(f"envs[{i}]")]
        if isinstance(envs, list) and "envs" not in flagged
        else [],
        "labels": {k: v for k, v in labels.items() if clean(f"labels.{k}")}
        if isinstance(labels, dict) and "labels" not in flagged
        else {},
    }


def _docker_problems(
    checked: dict[str, Any], data: dict[str, Any], where: _Located, file: str, context: Path
) -> list[Problem]:
    """Settings the schema takes (real-world files use them) but the image cannot: Python 3.8, Alpine, ...

    ``checked`` holds the settings to check (:func:`_well_typed`), ``data`` the whole file, to locate them.
    """
    from .dockerfile import settings_problems

    docker = checked["docker"]
    try:
        env = _docker_env(docker.get("env"), context)
    except (OSError, UnicodeDecodeError):
        env = {}  # an unreadable .env file is a context problem already
    facts = {
        "python_version": image_python(),  # the default the build falls back to
        "envs": {e["name"]: _text(e.get("value")) for e in checked["envs"]},
        "labels": {str(k): _text(v) for k, v in checked["labels"].items()},
    }
    out = []
    for key, message in settings_problems({**docker, "env": env}, facts):
        line, column = where.value_mark(_setting_path(key, data))
        out.append(Problem(file, line, column, key, message))
    return out


# -- public entry points --------------------------------------------------------------------------------


def find_bentofile(path: str | os.PathLike[str]) -> Path:
    """Return the build file at path, or the bentofile.yaml (then .yml) in a directory; raise ConfigError."""
    p = Path(path)
    if p.is_dir():
        for name in BENTOFILE_NAMES:
            if (p / name).is_file():
                return p / name
        raise ConfigError(
            f"{p}: no {' or '.join(BENTOFILE_NAMES)} in this directory; create one or name the file"
        )
    if not p.is_file():
        raise ConfigError(f"{p}: no such build file; check the path (or pass the project directory)")
    if p.suffix == ".py":
        # `bundler build service.py` (as `bundler serve service.py`) read Python as YAML: "syntax error".
        raise ConfigError(
            f"{p}: a Python module, not a build file; pass the bentofile.yaml that names it (or its"
            " directory)"
        )
    return p


def _check(path: Path, schema_only: bool) -> tuple[Any, list[Problem]]:
    file = str(path)
    data, where, problems = _read_yaml(path, file)
    if data is None and problems:
        return None, problems
    if not isinstance(data, dict):
        line, column = where.value_mark(())
        problems.append(
            Problem(
                file,
                line,
                column,
                "",
                f"the top level must be a mapping of keys (service:, python:, ...), got {_type_name(data)}",
            )
        )
        return None, sorted(problems)
    schema = _schema_problems(data, where, file)
    problems += schema + _requirement_problems(data, where, file)
    if not schema_only:
        problems += _context_problems(data, where, file, path.parent)
        # Only the settings with the types the schema promises; the others are reported already, and
        # one of them must not hide a refused setting elsewhere (every problem at once).
        problems += _docker_problems(_well_typed(data, schema), data, where, file, path.parent)
    return data, sorted(set(problems))


def validate_file(path: str | os.PathLike[str], *, schema_only: bool = False) -> list[Problem]:
    """Return every problem in a build file (empty when valid), sorted by file position."""
    p = Path(path)
    if p.is_dir():
        try:
            p = find_bentofile(p)
        except ConfigError as exc:
            # The message starts with the path that Problem names: once, not as ".:1:1: .: no bentofile".
            return [Problem(str(path), 1, 1, "", str(exc).removeprefix(f"{p}: "))]
    if not p.is_file():
        return [Problem(str(p), 1, 1, "", "no such build file; check the path")]
    try:
        find_bentofile(p)
    except ConfigError as exc:
        return [Problem(str(p), 1, 1, "", str(exc).removeprefix(f"{p}: "))]
    return _check(p, schema_only)[1]


def load_bentofile(path: str | os.PathLike[str], *, schema_only: bool = False) -> BentoConfig:
    """Load and validate a build file (or a directory holding one); raise ConfigError with every problem."""
    p = find_bentofile(path)
    data, problems = _check(p, schema_only)
    if problems:
        lines = [str(pr) for pr in problems]
        n = len(problems)
        count = f"{n} problem{'s' if n != 1 else ''} in {p}; fix {'them' if n != 1 else 'it'} and run again"
        raise ConfigError("\n".join([*lines, count]), problems=lines)
    return _to_config(p, data)


# -- the validated configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class DockerOptions:
    """The ``docker:`` section with defaults applied; ``env`` is always a mapping."""

    distro: str = "debian"
    python_version: str | None = None
    cuda_version: str | None = None
    system_packages: list[str] = field(default_factory=list)
    base_image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup_script: str | None = None
    dockerfile_template: str | None = None


@dataclass(frozen=True)
class PythonOptions:
    """The ``python:`` section with defaults applied; ``offline`` is bundler's extension."""

    packages: list[str] = field(default_factory=list)
    requirements_txt: str | None = None
    lock_packages: bool = True
    pack_git_packages: bool = True
    index_url: str | None = None
    extra_index_url: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    trusted_host: list[str] = field(default_factory=list)
    no_index: bool = False
    pip_args: str | None = None
    wheels: list[str] = field(default_factory=list)
    offline: bool = False


@dataclass(frozen=True)
class CondaOptions:
    """The ``conda:`` section (present only when the file uses conda)."""

    channels: list[str] = field(default_factory=list)
    dependencies: list[Any] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)
    environment_yml: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One ``models:`` entry: a tag, with an optional filter and alias."""

    tag: str
    filter: str | None = None
    alias: str | None = None


@dataclass(frozen=True)
class BentoConfig:
    """A validated build file with defaults applied."""

    path: Path
    context: Path
    service: str
    name: str | None = None
    description: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    docker: DockerOptions = field(default_factory=DockerOptions)
    python: PythonOptions = field(default_factory=PythonOptions)
    conda: CondaOptions | None = None
    models: list[ModelSpec] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON-able data for bundle.yaml."""
        # No paths of this machine: two builds of the same project must give identical bytes.
        out = dataclasses.asdict(self)
        del out["path"], out["context"]
        return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _parse_dotenv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def _docker_env(env: Any, context: Path) -> dict[str, str]:
    if isinstance(env, dict):
        return {k: _text(v) for k, v in env.items()}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    if isinstance(env, str):
        target, inside = _inside(context.resolve(), env)
        if inside and target.is_file():
            return _parse_dotenv(target.read_text(encoding="utf-8"))
    return {}


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in (data.get(key) or {}).items() if v is not None}


def _to_config(path: Path, data: dict[str, Any]) -> BentoConfig:
    context = path.parent
    description = data.get("description")
    if isinstance(description, str) and description.startswith("file:"):
        target, inside = _inside(context.resolve(), description[5:].strip())
        description = target.read_text(encoding="utf-8") if inside and target.is_file() else None

    d = _section(data, "docker")
    docker = DockerOptions(
        distro=d.get("distro", "debian"),
        python_version=d.get("python_version"),
        cuda_version=d.get("cuda_version"),
        system_packages=list(d.get("system_packages", [])),
        base_image=d.get("base_image"),
        env=_docker_env(d.get("env"), context),
        setup_script=d.get("setup_script"),
        dockerfile_template=d.get("dockerfile_template"),
    )
    p = _section(data, "python")
    python = PythonOptions(
        packages=list(p.get("packages", [])),
        requirements_txt=p.get("requirements_txt"),
        lock_packages=p.get("lock_packages", True),
        pack_git_packages=p.get("pack_git_packages", True),
        index_url=p.get("index_url"),
        extra_index_url=_strings(p.get("extra_index_url")),
        find_links=_strings(p.get("find_links")),
        trusted_host=_strings(p.get("trusted_host")),
        no_index=p.get("no_index", False),
        pip_args=p.get("pip_args"),
        wheels=list(p.get("wheels", [])),
        offline=p.get("offline", False),
    )
    c = _section(data, "conda")
    conda = (
        CondaOptions(
            channels=list(c.get("channels", [])),
            dependencies=list(c.get("dependencies", [])),
            pip=list(c.get("pip", [])),
            environment_yml=c.get("environment_yml"),
        )
        if c
        else None
    )
    models = [
        ModelSpec(tag=m) if isinstance(m, str) else ModelSpec(m["tag"], m.get("filter"), m.get("alias"))
        for m in data.get("models") or []
    ]
    return BentoConfig(
        path=path,
        context=context,
        service=data["service"],
        name=data.get("name"),
        description=description,
        labels={str(k): _text(v) for k, v in (data.get("labels") or {}).items()},
        include=list(data["include"]) if data.get("include") is not None else ["*"],
        exclude=list(data.get("exclude") or []),
        docker=docker,
        python=python,
        conda=conda,
        models=models,
        envs={e["name"]: _text(e.get("value")) for e in data.get("envs") or []},
        args=dict(data.get("args") or {}),
    )
