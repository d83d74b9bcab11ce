"""Requirements -> a hashed lock file for the *target* platform and Python, resolved with uv (or pip-tools).

The user's requirements and bundler's own serving runtime (:data:`SERVE_REQUIREMENTS`) are resolved together,
so a conflict between them is an error naming both sides, never a silent override. Each input line carries
its origin as a trailing comment (``numpy==1.21.0  # from bentofile python.packages``) so errors can say
where a requirement came from. A lock is cached under ``$BUNDLER_HOME/cache/locks/`` by a digest of all its
inputs: an unchanged rebuild reads it back without running a resolver or touching the network. Each entry
carries the sha256 of its text, so one cut short or edited is resolved again, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from . import __version__
from .exceptions import ConfigError, LockError
from .store import atomic_write_text, home, sha256_file
from .wheels import (
    PLATFORMS,
    build_bundler_wheel,
    build_direct_wheels,
    direct_reference,
    download_wheels,
    parse_lock,
    platform_for,
    run_tool,
    uv_command,
)

__all__ = [
    "IMAGE_ORIGIN",
    "IMAGE_REQUIREMENTS",
    "PLATFORMS",
    "SERVE_REQUIREMENTS",
    "Listed",
    "LockOptions",
    "LockResult",
    "build_bundler_wheel",
    "collect_requirements",
    "download_wheels",
    "host_platform",
    "lock",
    "locked_names",
    "missing_path",
    "requirement_problem",
]

# What an image needs to run `bundler serve`: the first block of pyproject's dependencies (a test keeps the
# two in step). The image installs bundler's wheel with --no-deps and takes these from the lock.
SERVE_REQUIREMENTS: tuple[str, ...] = (
    "numpy>=1.24",
    "onnxruntime>=1.16",
    "starlette>=0.37",
    "uvicorn>=0.29",
    "uvloop>=0.19; sys_platform != 'win32'",
    "httptools>=0.6",
    "orjson>=3.9",
    "prometheus-client>=0.20",
    "python-multipart>=0.0.9",
    "swagger-ui-bundle>=1.1",
    "pyyaml>=6",
    "click>=8.1",
    "httpx>=0.27",
)
# Pillow decodes and encodes bundler.io.Image bodies: a bundle gets it only when its code uses images
# (bundler.scan.uses_images), as BentoML's `io-image` extra does. pyproject lists it with the block above.
IMAGE_REQUIREMENTS: tuple[str, ...] = ("pillow>=10",)
IMAGE_ORIGIN = "required by bundler.io.Image"
BUNDLER_ORIGIN = "required by bundler"
PACKAGES_ORIGIN = "from bentofile python.packages"
# Bump when the lock text format changes, so old cache entries are not reused.
_FORMAT = 1
_INDEX_OPTIONS = (
    "--index-url",
    "-i",
    "--extra-index-url",
    "--find-links",
    "-f",
    "--trusted-host",
    "--no-index",
)
_CONSTRAINT = "-c "
_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.I)
_ARCHIVE = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")
_EXAMPLES = "e.g. 'numpy>=1.24,<2', 'numpy[extra]==1.26.4' or 'name @ git+https://...'"


@dataclass(frozen=True)
class LockOptions:
    """What to resolve for (target Python and platform), with which resolver, and the index settings."""

    python_version: str
    platform: str = "linux/amd64"
    resolver: str = "uv"
    index_url: str | None = None
    extra_index_url: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_host: tuple[str, ...] = ()
    no_index: bool = False
    pip_args: str | None = None
    lock_packages: bool = True
    offline: bool = False


@dataclass(frozen=True)
class LockResult:
    """A lock file's text and facts about it; ``hashed`` False means install without --require-hashes."""

    text: str
    digest: str
    reused: bool
    hashed: bool
    requirements_txt: str


def host_platform() -> str | None:
    """Return this machine's platform in Docker's naming, or None when it is not a Linux target we support."""
    import platform

    machine = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    return f"linux/{machine}" if sys.platform.startswith("linux") and machine else None


# -- collecting the input ------------------------------------------------------------------------------------


def requirement_problem(line: str) -> str | None:
    """Return why one python.packages entry or requirements line is not a requirement pip reads, else None."""
    text = line.split(" #", 1)[0].strip()
    # Options, URLs, local paths and archives are pip's to read (or the lock's to refuse), not PEP 508 text.
    if not text or text.startswith("-") or _URL.match(text) or direct_reference(text) is not None:
        return None
    if "/" in text.split(";", 1)[0] or text.endswith(_ARCHIVE):
        return None
    # pip's per-requirement options (--hash=..., --config-settings ...) follow the requirement itself.
    spec = re.split(r"\s+--", text, maxsplit=1)[0]
    try:
        Requirement(spec)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "invalid"
        return f"{text!r} is not a valid requirement ({reason}); write it as pip would, {_EXAMPLES}"
    return None


def _logical_lines(path: Path, shown: str) -> list[tuple[int, str]]:
    """Return (line number, text) of a requirements file with continuations joined and comments dropped."""
    try:
        content = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text: {exc.reason}"
        raise LockError(f"cannot read the requirements file {shown} ({reason}); fix or replace it") from exc
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(content.splitlines(), 1):
        text = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        text = (pending + text.strip()).strip()
        pending = ""
        if text:
            out.append((start, text))
    return out


def _absolute(value: str, base: Path) -> str:
    """Make a local path in a requirement absolute (relative to its file); leave names and URLs alone."""
    if value.startswith(("./", "../")) or value in (".", ".."):
        return str((base / value).resolve())
    # pip reads 'wheels/a-1.0-py3-none-any.whl' and 'a-1.0.tar.gz' as paths too; the resolver runs in
    # another directory, where a relative one names nothing.
    head = re.split(r"\s|;", value, maxsplit=1)[0]
    if (
        head
        and not head.startswith(("/", "-", "file:"))
        and "@" not in head
        and not _URL.match(head)
        and ("/" in head or head.endswith(_ARCHIVE))
    ):
        return str((base / value).resolve())
    return value


def _not_editable(requirement: str) -> str:
    """Return a requirement without `-e`/`--editable`: an image installs the project, never a checkout."""
    text = requirement.strip()
    for flag in ("-e ", "--editable ", "--editable="):
        if text.startswith(flag):
            return text[len(flag) :].strip()
    return text


def missing_path(requirement: str, base: Path) -> str | None:
    """Return the local path a requirement names (relative to base) when nothing is there, else None."""
    # pip would fail to build it, with a message that names neither the file nor the line.
    target = re.split(r"\s|;", _absolute(_not_editable(requirement), base), maxsplit=1)[0]
    target = re.sub(r"\[[^\]]*\]$", "", target)  # ./pkg[extra]
    if not target.startswith("/") or Path(target).exists():
        return None
    return target


def _line_problems(text: str, base: Path, where: str, relative_to: str) -> list[str]:
    """Return what is wrong with one requirement line: its syntax, or a local path that names nothing."""
    problems = []
    problem = requirement_problem(text)
    if problem:
        problems.append(f"{where}: {problem}")
    missing = missing_path(text, base)
    if missing:
        problems.append(
            f"{where}: {text.strip()!r}: no such file or directory {missing}; fix the path (relative to"
            f" {relative_to})"
        )
    return problems


def _read_file(
    path: Path, context: Path, seen: tuple[Path, ...], out: list[str], constraint: bool, bad: list[str]
) -> None:
    shown = os.path.relpath(path, context) if path.is_relative_to(context) else str(path)
    if path in seen:
        raise LockError(
            f"{shown}: requirements files include each other in a loop ({' -> '.join(map(str, seen))})"
        )
    if not path.is_file():
        parent = f" (included from {seen[-1]})" if seen else ""
        raise LockError(f"requirements file {shown} not found{parent}: fix the path, relative to {context}")
    for number, text in _logical_lines(path, shown):
        origin = f"from {shown}:{number}"
        option, _, value = text.partition(" ")
        if "=" in option and option.startswith("--"):
            option, _, value = text.partition("=")
        value = value.strip()
        if option in ("-r", "--requirement", "-c", "--constraint"):
            nested = (path.parent / value).resolve()
            nested_constraint = constraint or option in ("-c", "--constraint")
            _read_file(nested, context, (*seen, path), out, nested_constraint, bad)
        elif option in _INDEX_OPTIONS:
            if option in ("--find-links", "-f"):
                value = _absolute(value, path.parent)
            out.append(f"{option} {value}".strip())
        elif option in ("-e", "--editable"):
            missing = missing_path(value, path.parent)
            if missing:
                bad.append(
                    f"{shown}:{number}: {value!r}: no such directory {missing}; fix the path (relative"
                    " to the requirements file)"
                )
            out.append(f"{_absolute(value, path.parent)}  # {origin}")
        elif text.startswith("-"):
            raise LockError(
                f"{shown}:{number}: the option {option!r} is not supported in a bundle's requirements file;"
                " keep requirement lines, -r/-c and index options (--index-url, --extra-index-url,"
                " --find-links, --trusted-host, --no-index), and put pip flags in bentofile python.pip_args"
            )
        else:
            bad += _line_problems(text, path.parent, f"{shown}:{number}", "the requirements file")
            line = f"{_absolute(text, path.parent)}  # {origin}"
            out.append(_CONSTRAINT + line if constraint else line)


@dataclass(frozen=True)
class Listed:
    """Requirements listed like python.packages elsewhere (a conda pip list), read as python.packages are.

    ``where`` names the list in errors (``bentofile conda.pip`` -> ``bentofile conda.pip[0]: ...``),
    ``origin`` is each line's comment, and relative paths start at ``base``.
    """

    where: str
    origin: str
    entries: tuple[str, ...]
    base: Path
    base_name: str = "the build file"


def _listed(items: Listed, out: list[str], bad: list[str]) -> None:
    for i, entry in enumerate(items.entries):
        p = _not_editable(entry)
        option, _, value = p.partition("=" if p.startswith("--") and "=" in p.split(" ", 1)[0] else " ")
        if option in _INDEX_OPTIONS:
            # As in a requirements file: a local find-links place is relative to where it is written.
            value = value.strip()
            out.append(
                f"{option} {_absolute(value, items.base) if option in ('--find-links', '-f') else value}"
            )
            continue
        bad += _line_problems(p, items.base, f"{items.where}[{i}]", items.base_name)
        if p:
            out.append(f"{_absolute(p, items.base)}  # {items.origin}")


def collect_requirements(
    packages: list[str], requirements_txt: Path | None, context: Path, *, listed: tuple[Listed, ...] = ()
) -> list[str]:
    """Flatten python.packages, ``listed`` (conda pip lists) and requirements_txt into lines with origins.

    Files named by requirements_txt are read with their nested -r/-c files.
    Requirement lines end with ``  # from <where>``; index options (``--index-url URL`` ...) are kept as
    lines; constraints from ``-c`` files are lines starting with ``-c `` followed by the constraint.
    Raise ConfigError naming every line that is not a requirement (before any resolver sees it).
    """
    out: list[str] = []
    bad: list[str] = []
    for items in (Listed("bentofile python.packages", PACKAGES_ORIGIN, tuple(packages), context), *listed):
        _listed(items, out, bad)
    if requirements_txt is not None:
        path = requirements_txt if requirements_txt.is_absolute() else context / requirements_txt
        _read_file(path.resolve(), context.resolve(), (), out, False, bad)
    if bad:
        raise ConfigError("\n".join(bad), problems=bad)
    return out


def _requirement(line: str) -> str:
    return line.split(" #", 1)[0].strip()


def _origin(line: str) -> str:
    return line.split(" #", 1)[1].strip() if " #" in line else PACKAGES_ORIGIN


# -- errors --------------------------------------------------------------------------------------------------


def _resolver_error(output: str, inputs: list[str], options: LockOptions) -> LockError:
    """Turn a resolver's failure into one message naming the packages and the requirements that clash."""
    target = f"{options.platform}, CPython {options.python_version}"
    lines = [ln.rstrip() for ln in output.strip().splitlines() if ln.strip()]
    cause = [ln.strip() for ln in lines if not ln.lstrip().startswith(("warning:", "WARNING:"))][-12:]
    words = {canonicalize_name(w) for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", output)}
    involved = []
    for line in inputs:
        try:
            name = canonicalize_name(Requirement(_requirement(line).removeprefix(_CONSTRAINT)).name)
        except InvalidRequirement:
            continue
        if name in words:
            involved.append(f"{_requirement(line)} ({_origin(line)})")
    missing = re.search(r"Because (\S+?) was not found in the package registry", output) or re.search(
        r"No matching distribution found for (\S+)", output
    )
    if missing:
        return LockError(
            f"cannot lock the Python requirements for {target}: package {missing.group(1)!r} was not found"
            f" on the package index (asked for by {', '.join(involved) or missing.group(1)}).\n"
            "check its spelling, or set python.index_url / python.extra_index_url to the index that has it"
        )
    network = (
        r"Failed to fetch|Could not fetch|Request failed after|connection (refused|reset)|dns error|certif"
    )
    if re.search(network, output, re.I) and not re.search(r"No solution found", output):
        return LockError(
            f"cannot lock the Python requirements for {target}: the package index could not be reached:\n"
            + "\n".join(f"  {ln}" for ln in cause)
            + "\ncheck the network (proxy, SSL_CERT_FILE) and python.index_url / extra_index_url;"
            " an unchanged rebuild reuses its cached lock without the network"
        )
    clash = "; ".join(involved) if involved else "(see the resolver's explanation below)"
    return LockError(
        f"cannot lock the Python requirements for {target}: these requirements conflict: {clash}.\n"
        + "\n".join(f"  {ln}" for ln in cause)
        + "\nrelax or remove one of them in bentofile.yaml python.packages / python.requirements_txt"
    )


# -- resolving -----------------------------------------------------------------------------------------------


def _index_lines(options: LockOptions, index_inputs: list[str], has_local: bool) -> list[str]:
    """Return the index options the image's pip needs; host-local find-links dirs become ``wheels``."""
    lines = []
    if options.index_url:
        lines.append(f"--index-url {options.index_url}")
    lines += [f"--extra-index-url {u}" for u in options.extra_index_url]
    lines += [f"--trusted-host {h}" for h in options.trusted_host]
    lines += [f"--find-links {f}" for f in options.find_links if "://" in f]
    for line in index_inputs:
        option, _, value = line.partition(" ")
        if option not in ("--find-links", "-f") or "://" in value:
            lines.append(line)
    if options.no_index:
        lines.append("--no-index")
    if has_local:
        # pip reads a relative --find-links in a requirements file relative to that file: env/python/wheels.
        lines.append("--find-links wheels")
    return list(dict.fromkeys(lines))


# pip_args is for `pip install` in the image; only these flags change what resolves, so only they reach the
# resolver (with their value, if they take one). Others (--no-cache-dir, --upgrade, ...) are install-only.
_RESOLUTION_FLAGS = {
    "--pre": False, "--index-url": True, "-i": True, "--extra-index-url": True, "--find-links": True,
    "-f": True, "--no-index": False, "--trusted-host": True, "--only-binary": True, "--no-binary": True,
}  # fmt: skip


def _pip_args_for_resolver(pip_args: str | None, resolver: str) -> list[str]:
    """Return the resolution-relevant flags of bentofile python.pip_args, spelled for ``resolver``."""
    words = shlex.split(pip_args or "")
    out: list[str] = []
    i = 0
    while i < len(words):
        flag, eq, value = words[i].partition("=")
        takes_value = _RESOLUTION_FLAGS.get(flag)
        if takes_value and not eq:
            i += 1
            if i == len(words):
                raise LockError(f"bentofile python.pip_args: {flag} needs a value ({pip_args!r})")
            value = words[i]
        i += 1
        if takes_value is None:
            continue
        if resolver == "uv" and flag == "--pre":
            out += ["--prerelease", "allow"]
        elif resolver == "uv" and flag == "--trusted-host":
            out += ["--allow-insecure-host", value]
        else:
            out += [flag, value] if takes_value else [flag]
    return out


def _resolver_args(options: LockOptions, wheels_dir: Path) -> list[str]:
    args = []
    if options.index_url:
        args += ["--index-url", options.index_url]
    for url in options.extra_index_url:
        args += ["--extra-index-url", url]
    for link in (*options.find_links, str(wheels_dir)):
        args += ["--find-links", link]
    if options.no_index:
        args.append("--no-index")
    return args + _pip_args_for_resolver(options.pip_args, options.resolver)


def _run_uv(work: Path, options: LockOptions, extra: list[str], has_constraints: bool) -> str:
    platform = platform_for(options.platform)
    args = [
        *uv_command(), "pip", "compile", "requirements.in", "--generate-hashes", "--no-header", "--quiet",
        "--python-version", options.python_version, "--python-platform", platform.uv,
        "--output-file", "requirements.lock", *extra,
    ]  # fmt: skip
    return _compile(args, work, "--allow-insecure-host", options, has_constraints)


def _run_pip_tools(work: Path, options: LockOptions, extra: list[str], has_constraints: bool) -> str:
    host = host_platform()
    host_python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if options.platform != host or options.python_version != host_python:
        raise LockError(
            "the pip-tools resolver can only lock for this machine"
            f" ({host or sys.platform}, Python {host_python}), not {options.platform} with Python"
            f" {options.python_version}: use the default resolver (uv), or build on a matching machine"
        )
    args = [
        sys.executable, "-m", "piptools", "compile", "requirements.in", "--generate-hashes", "--no-header",
        "--quiet", "--no-emit-index-url", "--no-emit-find-links", "--strip-extras", "--allow-unsafe",
        "--output-file", "requirements.lock", *extra,
    ]  # fmt: skip
    return _compile(args, work, "--trusted-host", options, has_constraints)


def _compile(args: list[str], work: Path, trusted_flag: str, options: LockOptions, constraints: bool) -> str:
    """Run a resolver's compile command in ``work``; return the lock it wrote."""
    for host in options.trusted_host:
        args += [trusted_flag, host]
    if constraints:
        args += ["--constraint", "constraints.txt"]
    proc = run_tool(args, cwd=work, what="resolve requirements")
    if proc.returncode != 0:
        raise _ToolFailed(proc.stderr + proc.stdout)
    return (work / "requirements.lock").read_text("utf-8")


class _ToolFailed(Exception):
    pass


_RESOLVERS = {"uv": _run_uv, "pip-tools": _run_pip_tools}


def _local_links(options: LockOptions, index_inputs: list[str]) -> list[Path]:
    """Return the host directories (or files) that python.find_links and requirements files point pip at."""
    values = [*options.find_links]
    for line in index_inputs:
        option, _, value = line.partition(" ")
        if option in ("--find-links", "-f"):
            values.append(value.strip())
    return [Path(v) for v in dict.fromkeys(values) if "://" not in v]


def _linked_files(links: list[Path]) -> dict[str, Path]:
    """Map the sha256 of every distribution in host-local find-links places to its file."""
    files: list[Path] = []
    for link in links:
        files += sorted(link.iterdir()) if link.is_dir() else [link]
    return {sha256_file(f): f for f in reversed(files) if f.is_file() and f.name.lower().endswith(_ARCHIVE)}


def _carry_linked(text: str, linked: dict[str, Path], wheels_dir: Path) -> None:
    """Copy into ``wheels_dir`` the host find-links files the lock pins: the image cannot see the host."""
    for package in parse_lock(text)[0]:
        for digest in sorted(package.hashes & linked.keys()):
            target = wheels_dir / linked[digest].name
            if not target.exists():
                shutil.copyfile(linked[digest], target)


def _cache_key(
    requirements: list[str], constraints: list[str], options: LockOptions, local: list[str]
) -> str:
    fields = asdict(options)
    fields.pop("offline")  # the same lock serves online and offline bundles
    # A host directory counts by what is in it (in `local`), not by where it is: a checkout elsewhere
    # locks the same, and a wheel added to it is a new input.
    fields["find_links"] = [f for f in options.find_links if "://" in f]
    blob = {
        "format": _FORMAT,
        "requirements": sorted(requirements),
        "constraints": sorted(constraints),
        "serve": list(SERVE_REQUIREMENTS),
        "local_wheels": sorted(local),
        "options": fields,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _read_cached(entry: Path) -> str | None:
    """Return a cached lock's text, or None (removing the entry) when it is absent or not whole."""
    try:
        stored = json.loads(entry.read_text("utf-8"))
        text = stored["text"]
        whole = hashlib.sha256(text.encode()).hexdigest() == stored["sha256"]
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        whole = False
    if not whole:
        # Cut short or edited (a full disk, a copied home, a hand edit): resolve again, never install it.
        entry.unlink(missing_ok=True)
        return None
    return str(text)


def _header(options: LockOptions, key: str, hashed: bool) -> list[str]:
    platform = platform_for(options.platform)
    resolver = options.resolver if hashed else "no resolver"
    install = "--require-hashes --no-deps" if hashed else "(no hashes: python.lock_packages is false)"
    return [
        f"# Generated by bundler {__version__} with {resolver}; do not edit.",
        f"# target: {platform.name} ({platform.uv}), CPython {options.python_version}",
        f"# inputs sha256: {key}",
        f"# install: pip install {install} -r requirements.lock.txt",
    ]


def lock(
    requirements: list[str],
    options: LockOptions,
    *,
    wheels_dir: Path,
    local_wheels: list[Path] | tuple[Path, ...] = (),
) -> LockResult:
    """Resolve ``requirements`` plus bundler's serving runtime into a hashed lock for the target platform."""
    if options.resolver not in _RESOLVERS:
        raise LockError(f"unknown resolver {options.resolver!r}: choose one of {', '.join(_RESOLVERS)}")
    platform_for(options.platform)
    if not re.fullmatch(r"3\.\d{1,2}", options.python_version):
        raise LockError(
            f"python version {options.python_version!r} is not X.Y (e.g. '3.11'): fix docker.python_version"
        )
    wheels_dir.mkdir(parents=True, exist_ok=True)
    user_lines = [ln for ln in requirements if not ln.startswith(_INDEX_OPTIONS)]
    reqs = build_direct_wheels([ln for ln in user_lines if not ln.startswith(_CONSTRAINT)], wheels_dir)
    constraints = [ln.removeprefix(_CONSTRAINT) for ln in user_lines if ln.startswith(_CONSTRAINT)]
    local: list[str] = []
    for wheel in local_wheels:
        if wheel.parent.resolve() != wheels_dir.resolve():
            raise LockError(f"local wheel {wheel} must be copied into {wheels_dir} before locking")
        name, version, _, _ = parse_wheel_filename(wheel.name)
        reqs.append(f"{name}=={version}  # from bentofile python.wheels: {wheel.name}")
        local.append(f"{wheel.name}={sha256_file(wheel)}")
    # Everything the resolver reads from wheels_dir (built VCS/path wheels included) is part of the key.
    local += [
        f"{p.name}={sha256_file(p)}"
        for p in sorted(wheels_dir.glob("*.whl"))
        if not p.name.startswith("bundler-")
    ]
    inputs = [*reqs, *(f"{r}  # {BUNDLER_ORIGIN}" for r in SERVE_REQUIREMENTS)]
    index_inputs = [ln for ln in requirements if ln.startswith(_INDEX_OPTIONS)]
    links = _local_links(options, index_inputs)
    linked = _linked_files(links)
    # Host find-links places enter the key by their files, not by their paths.
    remote_index = [ln for ln in index_inputs if Path(ln.partition(" ")[2].strip()) not in links]
    key = _cache_key(
        [_requirement(ln) for ln in inputs] + remote_index,
        [_requirement(c) for c in constraints],
        options,
        local + [f"find-links: {f.name}={digest}" for digest, f in linked.items()],
    )
    has_local = bool(local) or bool(linked)
    # A host directory in the bundle's requirements.txt would give each checkout its own bundle tag; the
    # files the lock pins from it travel in wheels/, as the lock says.
    shown_index = dict.fromkeys(
        "--find-links wheels" if Path(ln.partition(" ")[2].strip()) in links else ln for ln in index_inputs
    )
    requirements_txt = "\n".join([*shown_index, *reqs, *(f"# constraint: {c}" for c in constraints)]) + "\n"
    cached = home() / "cache" / "locks" / f"{key}.json"
    text = _read_cached(cached)
    if text is not None:
        _carry_linked(text, linked, wheels_dir)
        return LockResult(
            text, hashlib.sha256(text.encode()).hexdigest(), True, options.lock_packages, requirements_txt
        )

    head = [*_header(options, key, options.lock_packages), *_index_lines(options, index_inputs, has_local)]
    if not options.lock_packages:
        body = "\n".join(dict.fromkeys(_requirement(ln) for ln in inputs)) + "\n"
    else:
        with tempfile.TemporaryDirectory(prefix="bundler-lock-") as tmp:
            work = Path(tmp)
            # Origin comments stay in the input so the resolver's "# via" notes and our errors can name them.
            (work / "requirements.in").write_text("\n".join([*index_inputs, *inputs]) + "\n", "utf-8")
            if constraints:
                (work / "constraints.txt").write_text("\n".join(constraints) + "\n", "utf-8")
            extra = _resolver_args(options, wheels_dir)
            try:
                body = _RESOLVERS[options.resolver](work, options, extra, bool(constraints))
            except _ToolFailed as exc:
                raise _resolver_error(
                    str(exc), inputs + [_CONSTRAINT + c for c in constraints], options
                ) from None
        # uv annotates with the temporary input's name; keep the text free of anything machine-specific.
        body = body.replace(str(wheels_dir.resolve()), "wheels").replace(str(wheels_dir), "wheels")
    text = "\n".join(head) + "\n" + body
    digest = hashlib.sha256(text.encode()).hexdigest()
    atomic_write_text(cached, json.dumps({"sha256": digest, "text": text}, sort_keys=True))
    _carry_linked(text, linked, wheels_dir)
    return LockResult(text, digest, False, options.lock_packages, requirements_txt)


def locked_names(lock_text: str) -> list[str]:
    """Return the canonical names pinned in a lock file (for reports and tests)."""
    return [p.name for p in parse_lock(lock_text)[0]]
