"""Wheels a bundle carries: bundler's own, built VCS/local requirements, and every locked wheel for offline.

Target platforms are named like Docker's (``linux/amd64``, ``linux/arm64``); :data:`PLATFORMS` maps each to
uv's ``--python-platform`` and to the wheel tags pip accepts for it. Built and downloaded wheels are cached
under ``$BUNDLER_HOME/cache/`` so an unchanged rebuild neither builds nor downloads anything.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import url2pathname

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from .exceptions import BuildError, LockError
from .store import home, sha256_file

if TYPE_CHECKING:
    from .lock import LockOptions

__all__ = [
    "PLATFORMS",
    "LockedPackage",
    "Platform",
    "build_bundler_wheel",
    "build_direct_wheels",
    "download_wheels",
    "parse_lock",
    "uv_command",
]

# A fixed mtime for every archive member (1980-01-02, the earliest a zip can hold), whatever SOURCE_DATE_EPOCH
# the caller set: built wheels are part of the bundle's version, and a tag must not follow the clock.
_EPOCH = "315619200"
_STAMP = (1980, 1, 2, 0, 0, 0)
_VCS = ("git+", "hg+", "svn+", "bzr+")
_COMMIT = re.compile(r"@[0-9a-f]{40}(?:#|$)")


@dataclass(frozen=True)
class Platform:
    """One target platform: uv's name for it and the manylinux tags pip may pick for it."""

    name: str
    uv: str
    arch: str

    @property
    def pip_platforms(self) -> list[str]:
        # uv resolves for glibc 2.28 (Debian bookworm slim images have 2.36); accept every older manylinux.
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(28, 16, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += [
                "manylinux_2_12_x86_64",
                "manylinux2010_x86_64",
                "manylinux_2_5_x86_64",
                "manylinux1_x86_64",
            ]
        return tags

    def tags(self, python_version: str) -> set[Tag]:
        """Return every wheel tag CPython ``python_version`` on this platform installs."""
        version = tuple(int(part) for part in python_version.split(".")[:2])
        return set(cpython_tags(version, platforms=self.pip_platforms)) | set(
            compatible_tags(version, f"cp{version[0]}{version[1]}", self.pip_platforms)
        )


PLATFORMS = {
    "linux/amd64": Platform("linux/amd64", "x86_64-manylinux_2_28", "x86_64"),
    "linux/arm64": Platform("linux/arm64", "aarch64-manylinux_2_28", "aarch64"),
}


def platform_for(name: str) -> Platform:
    """Return the Platform called ``name``; raise LockError listing the supported ones otherwise."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise LockError(
            f"unsupported target platform {name!r}: choose one of {', '.join(PLATFORMS)}"
            " (bundler build --platform)"
        ) from None


def uv_command() -> list[str]:
    """Return the command that runs uv: the one on PATH, else the binary shipped in the ``uv`` wheel."""
    found = shutil.which("uv")
    if found:
        return [found]
    try:
        from uv import find_uv_bin

        return [find_uv_bin()]
    except (ImportError, FileNotFoundError):
        raise LockError(
            "uv is not installed: it resolves and builds bundle dependencies; run `pip install uv`"
        ) from None


def tool_env() -> dict[str, str]:
    """Return the environment for uv and pip: reproducible archives, and the system's trusted CAs."""
    env = dict(os.environ)
    # Forced, not defaulted: a caller's SOURCE_DATE_EPOCH (meant for the bundle's creation time) would
    # otherwise stamp the wheels built here and change the bundle's tag with it.
    env["SOURCE_DATE_EPOCH"] = _EPOCH
    # Corporate TLS-inspecting proxies put their CA in the system store; uv ignores it without this.
    if "SSL_CERT_FILE" not in env:
        env.setdefault("UV_NATIVE_TLS", "1")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def run_tool(args: Sequence[str], *, cwd: Path | None = None, what: str) -> subprocess.CompletedProcess[str]:
    """Run uv or pip, capturing output; raise LockError if the program itself is missing."""
    try:
        return subprocess.run(
            list(args), cwd=cwd, env=tool_env(), capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise LockError(f"cannot run {args[0]} to {what}: {exc}") from exc


def _copy_into(path: Path, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / path.name
    if not target.exists() or sha256_file(target) != sha256_file(path):
        shutil.copyfile(path, target)
    return target


def _store_in_cache(built: Path, cache_dir: Path) -> Path:
    """Move a freshly built directory into the cache in one rename (another build may have won the race)."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(built, cache_dir)
    except OSError:
        shutil.rmtree(built, ignore_errors=True)
    return cache_dir


# -- bundler's own wheel -------------------------------------------------------------------------------------


def _source_root() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"bundler"', pyproject.read_text("utf-8")):
        return root
    return None


def _source_key(root: Path) -> str:
    """Hash everything that goes into bundler's wheel, so an unchanged tree reuses the cached wheel."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for top in ("bundler", "templates", "schemas"):
        if (root / top).is_dir():
            files += [
                p
                for p in (root / top).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
            ]
    files += [root / name for name in ("pyproject.toml", "README.md") if (root / name).is_file()]
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def _repack_installed(out_dir: Path) -> Path:
    """Rebuild the wheel of an installed (non-checkout) bundler from its RECORD, byte for byte stable."""
    import zipfile
    from importlib import metadata

    dist = metadata.distribution("bundler")
    tag = "py3-none-any"
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"bundler-{dist.version}-{tag}.whl"
    members = sorted(
        str(f)
        for f in dist.files or []
        if "__pycache__" not in f.parts
        and not str(f).endswith((".pyc", ".pth"))
        and ".dist-info" not in f.parts[0]
    )
    info = f"bundler-{dist.version}.dist-info"
    record: list[str] = []
    stamp = _STAMP
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:

        def add(name: str, data: bytes) -> None:
            zi = zipfile.ZipInfo(name, stamp)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={b64},{len(data)}")

        for name in members:
            add(name, Path(dist.locate_file(name)).read_bytes())  # type: ignore[arg-type]
        add(f"{info}/METADATA", (dist.read_text("METADATA") or "").encode())
        add(
            f"{info}/WHEEL",
            f"Wheel-Version: 1.0\nGenerator: bundler\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
        )
        if dist.read_text("entry_points.txt"):
            add(f"{info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode())
        record.append(f"{info}/RECORD,,")
        zi = zipfile.ZipInfo(f"{info}/RECORD", stamp)
        zi.external_attr = 0o644 << 16
        zf.writestr(zi, "\n".join(record) + "\n")
    return wheel


def _stamped(wheel: Path) -> bool:
    """Tell whether every member of ``wheel`` carries the fixed timestamp (a wheel this code built)."""
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            return all(info.date_time == _STAMP for info in zf.infolist())
    except (OSError, zipfile.BadZipFile):
        return False


def build_bundler_wheel(dest_dir: Path) -> Path:
    """Put a wheel of the running bundler into ``dest_dir``; build it only when its sources changed."""
    root = _source_root()
    if root is None:
        with tempfile.TemporaryDirectory() as tmp:
            return _copy_into(_repack_installed(Path(tmp)), dest_dir)
    cache_dir = home() / "cache" / "bundler-wheel" / _source_key(root)
    cached = sorted(cache_dir.glob("bundler-*.whl")) if cache_dir.is_dir() else []
    if cached and not _stamped(cached[0]):
        # Not stamped as run_tool builds (built under a caller's SOURCE_DATE_EPOCH, as bundler once let
        # through, or damaged): its bytes would set this home's tags apart from a fresh home's. Rebuild.
        shutil.rmtree(cache_dir, ignore_errors=True)
        cached = []
    if not cached:
        (home() / "cache").mkdir(parents=True, exist_ok=True)
        build_dir = Path(tempfile.mkdtemp(prefix=".tmp-bundler-wheel-", dir=home() / "cache"))
        try:
            proc = run_tool(
                [*uv_command(), "build", "--wheel", "--quiet", "--out-dir", str(build_dir), str(root)],
                what="build bundler's own wheel",
            )
        except BaseException:  # Ctrl-C, SIGTERM: each stopped build left a directory in the cache
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
        if proc.returncode != 0:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise BuildError(
                f"cannot build bundler's own wheel from {root} (uv build failed):\n{proc.stderr.strip()}\n"
                "fix the error above in the bundler checkout, or install bundler from a wheel"
            )
        (build_dir / ".gitignore").unlink(missing_ok=True)
        cached = sorted(_store_in_cache(build_dir, cache_dir).glob("bundler-*.whl"))
    return _copy_into(cached[0], dest_dir)


# -- VCS and local-path requirements -------------------------------------------------------------------------


def direct_reference(line: str) -> str | None:
    """Return what pip must build for a VCS URL or local path requirement line, else None."""
    text = line.split(" #", 1)[0].strip()
    if text.startswith(_VCS) or text.startswith(("/", "./", "../", "file:")):
        return text
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    if req.url and (req.url.startswith(_VCS) or req.url.startswith("file:")):
        return text
    return None


def _local_dir(source: str) -> Path | None:
    """Return the local project directory a requirement's source names, else None (a URL or a file)."""
    url = urlsplit(source)
    if url.fragment or url.scheme not in ("", "file"):  # file:///repo#subdirectory=pkg: pip picks the dir
        return None
    path = Path(url2pathname(url.path)) if url.scheme else Path(source)
    return path if path.is_dir() else None


def _build_one(target: str, out_dir: Path) -> Path:
    try:
        # pip 23 rejects `name @ git+file://...`; the bare URL builds the same project.
        source = Requirement(target).url or target
    except InvalidRequirement:
        source = target
    with tempfile.TemporaryDirectory(prefix="bundler-src-") as tmp:
        local = _local_dir(source)
        if local is not None:
            # pip builds a directory in place: setuptools would leave build/ and *.egg-info in the user's
            # project (sources of the next build), and a stale build/lib in the next wheel. Build a copy.
            copy = Path(tmp) / "project"
            shutil.copytree(local, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
            source = str(copy)
        args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out_dir)]
        proc = run_tool([*args, source], what=f"build {target}")
    wheels = sorted(out_dir.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise LockError(
            f"cannot build a wheel for the requirement {target!r} (pip wheel failed):\n{tail}\n"
            "check the URL/path and that it is a Python project, or build the wheel yourself and list it"
            " in bentofile python.wheels"
        )
    return wheels[0]


def _shown(target: str) -> str:
    """Name a direct reference in the bundle's requirements.txt: a local path by its last part only."""
    if target.startswith(_VCS):
        return target
    try:
        location = Requirement(target).url or target
    except InvalidRequirement:
        location = target
    if location.startswith(_VCS):
        return target
    # A host path would make the bundle (and its tag) depend on where the project is checked out.
    return "local path " + (location.rstrip("/").rsplit("/", 1)[-1] or location)


def build_direct_wheels(lines: Iterable[str], wheels_dir: Path) -> list[str]:
    """Build VCS and local-path requirements into ``wheels_dir``; return lines with them pinned by name."""
    out = []
    for line in lines:
        target = direct_reference(line)
        if target is None:
            out.append(line)
            continue
        origin = line.split(" #", 1)[1].strip() if " #" in line else ""
        # A commit-pinned VCS URL always builds the same wheel, so it is cached; branches and paths are not.
        cacheable = any(vcs in target for vcs in _VCS) and bool(_COMMIT.search(target))
        cache_dir = home() / "cache" / "wheels" / "vcs" / hashlib.sha256(target.encode()).hexdigest()[:32]
        cached = sorted(cache_dir.glob("*.whl")) if cacheable and cache_dir.is_dir() else []
        if cached:
            wheel = cached[0]
        else:
            with tempfile.TemporaryDirectory() as tmp:
                built = _build_one(target, Path(tmp))
                if cacheable:
                    staged = Path(tempfile.mkdtemp(dir=Path(tmp)))
                    shutil.move(built, staged / built.name)
                    wheel = _store_in_cache(staged, cache_dir) / built.name
                else:
                    wheel = _copy_into(built, wheels_dir)
        wheel = _copy_into(wheel, wheels_dir)
        name, version, _, _ = parse_wheel_filename(wheel.name)
        out.append(f"{name}=={version}  # built from {_shown(target)}" + (f" ({origin})" if origin else ""))
    return out


# -- the offline wheel set -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockedPackage:
    """One ``name==version`` entry of a lock file and the hashes it allows."""

    name: str
    version: str
    hashes: frozenset[str]
    line: str


def parse_lock(text: str) -> tuple[list[LockedPackage], list[str]]:
    """Split a lock file into pinned packages and its other requirement lines (unpinned, options)."""
    joined = re.sub(r"\\\n", " ", text)
    packages, others = [], []
    for raw in joined.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            others.append(line)
            continue
        parts = shlex.split(line)
        hashes = frozenset(p.split(":", 1)[1] for p in parts if p.startswith("--hash=sha256:"))
        spec = " ".join(p for p in parts if not p.startswith("--hash="))
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            others.append(spec)
            continue
        pins = [s for s in req.specifier if s.operator in ("==", "===")]
        if len(pins) == 1 and not req.url:
            packages.append(LockedPackage(canonicalize_name(req.name), pins[0].version, hashes, spec))
        else:
            others.append(spec)
    return packages, others


def _fits(wheel: Path, package: LockedPackage, tags: set[Tag]) -> bool:
    try:
        name, _, _, wheel_tags = parse_wheel_filename(wheel.name)
    except ValueError:
        return False
    return name == package.name and bool(wheel_tags & tags)


def _pip_index_args(options: LockOptions) -> list[str]:
    args: list[str] = []
    if options.index_url:
        args += ["--index-url", options.index_url]
    for url in options.extra_index_url:
        args += ["--extra-index-url", url]
    for link in options.find_links:
        args += ["--find-links", link]
    for host in options.trusted_host:
        args += ["--trusted-host", host]
    if options.no_index:
        args.append("--no-index")
    return args


# pip retries a request it cannot make, then says "No matching distribution": these lines tell the two apart.
_NETWORK = re.compile(
    r"connection broken by|Could not fetch URL|ProxyError|NewConnectionError|SSLError|Max retries exceeded"
    r"|Temporary failure in name resolution|Read timed out"
)


def _missing_wheel_error(stderr: str, options: LockOptions, where: str) -> LockError:
    names = re.findall(r"(?:No matching distribution found for|satisfies the requirement) (\S+)", stderr)
    tail = "\n".join(stderr.strip().splitlines()[-6:])
    network = [line.strip() for line in stderr.splitlines() if _NETWORK.search(line)]
    if network:
        indexes = [options.index_url or "https://pypi.org/simple", *options.extra_index_url]
        return LockError(
            f"cannot download the locked wheels ({where}): the package index"
            f" ({', '.join(indexes)}) could not be reached:\n  {network[-1]}\n"
            "check the network (proxy, SSL_CERT_FILE) and python.index_url / extra_index_url;"
            " wheels downloaded once are reused from the cache without the network"
        )
    if names:
        return LockError(
            f"no wheel of {names[-1]} for {options.platform}, CPython {options.python_version} ({where}):"
            f" an offline bundle needs a binary wheel of every package.\n{tail}\n"
            "build that wheel for the target yourself and list it in bentofile python.wheels,"
            " pin a version that ships one, or build without --offline"
        )
    if "DO NOT MATCH THE HASHES" in stderr:
        return LockError(f"a downloaded wheel does not match the hashes in the lock ({where}):\n{tail}")
    return LockError(f"cannot download the locked wheels ({where}):\n{tail}")


def _pip_download(options: LockOptions, args: list[str], where: str) -> None:
    platform = platform_for(options.platform)
    proc = run_tool(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", *(f"--platform={p}" for p in platform.pip_platforms),
         f"--python-version={options.python_version}", "--implementation=cp", *_pip_index_args(options),
         *args],
        what="download wheels",
    )  # fmt: skip
    if proc.returncode != 0:
        raise _missing_wheel_error(proc.stderr, options, where)


def _from_cache(
    package: LockedPackage, have: dict[str, Path], cache: Path, dest: Path, tags: set[Tag]
) -> Path | None:
    """Return a wheel for ``package`` already in ``dest`` or in the download cache (copied into ``dest``)."""
    for digest in sorted(package.hashes):
        if digest in have and _fits(have[digest], package, tags):
            return have[digest]
        cached = next(iter((cache / digest).glob("*.whl")), None) if (cache / digest).is_dir() else None
        if cached is not None and _fits(cached, package, tags):
            return _copy_into(cached, dest)
    return None


def download_wheels(lock_text: str, dest: Path, options: LockOptions) -> list[Path]:
    """Put a wheel of every locked package for the target into ``dest``, checked against the lock's hashes."""
    tags = platform_for(options.platform).tags(options.python_version)
    packages, others = parse_lock(lock_text)
    dest.mkdir(parents=True, exist_ok=True)
    unpinned = [o for o in others if not o.startswith("-")]
    if unpinned or any(not p.hashes for p in packages):
        # An unhashed lock (python.lock_packages: false) was never resolved: pip resolves it for the target.
        with tempfile.TemporaryDirectory() as tmp:
            req_file = Path(tmp) / "requirements.txt"
            req_file.write_text("\n".join([p.line for p in packages] + unpinned) + "\n", "utf-8")
            _pip_download(
                options, ["--find-links", str(dest), "-r", str(req_file), "-d", str(dest)], "unlocked"
            )
        return sorted(dest.glob("*.whl"))

    cache = home() / "cache" / "wheels"
    have = {sha256_file(p): p for p in dest.glob("*.whl")}
    found: list[Path] = []
    missing: list[LockedPackage] = []
    for package in packages:
        hit = _from_cache(package, have, cache, dest, tags)
        if hit is None:
            missing.append(package)
        else:
            found.append(hit)
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".tmp-download-", dir=cache) as tmp:
            req_file, out = Path(tmp) / "lock.txt", Path(tmp) / "out"
            req_file.write_text(
                "".join(
                    p.line + "".join(f" --hash=sha256:{h}" for h in sorted(p.hashes)) + "\n" for p in missing
                ),
                "utf-8",
            )
            where = f"{len(missing)} of {len(packages)} packages"
            _pip_download(
                options, ["--no-deps", "--require-hashes", "-r", str(req_file), "-d", str(out)], where
            )
            by_name = {p.name: p for p in missing}
            for wheel in sorted(out.glob("*")):
                digest = sha256_file(wheel)
                entry = by_name.get(canonicalize_name(wheel.name.split("-", 1)[0]))
                # pip checked the hashes too; this also catches a wheel for the wrong platform or package.
                if entry is None or digest not in entry.hashes or not _fits(wheel, entry, tags):
                    raise LockError(
                        f"pip downloaded {wheel.name}, which the lock does not allow for {options.platform}"
                        f" (sha256 {digest}); delete {cache} and build again"
                    )
                if not (cache / digest).is_dir():
                    staged = Path(tempfile.mkdtemp(dir=tmp))
                    shutil.copyfile(wheel, staged / wheel.name)
                    _store_in_cache(staged, cache / digest)
                found.append(_copy_into(wheel, dest))
    return sorted(set(found))
