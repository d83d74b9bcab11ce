"""The local stores of models and bundles: tags, layout, manifests, atomic writes, archives.

Layout: ``$BUNDLER_HOME/{models,bundles}/<name>/<version>/`` with a metadata file (``model.yaml`` or
``bundle.yaml``) and ``manifest.sha256`` (``sha256sum -c`` format) listing every other file. Entries are
assembled in ``<root>/.tmp/`` and moved into place with one ``os.rename``, so a crash never leaves a
half-written entry.

``name`` and ``name:latest`` resolve to the newest entry of that name, derived from the entries themselves
every time (no pointer file to go stale after a crash, a concurrent delete or an import): newest means the
latest ``creation_time`` in the metadata file, then, for equal times (a fixed ``SOURCE_DATE_EPOCH``), the one
stored last (the entry directory's mtime), then the greater version. ``list`` orders by the same key.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import errno
import glob
import gzip
import hashlib
import os
import re
import secrets
import shutil
import stat
import tarfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from .exceptions import BadInput, InvalidTag, NotFound, StoreError, UnsafeArchive

__all__ = [
    "MANIFEST",
    "Entry",
    "Store",
    "Tag",
    "atomic_write_text",
    "bundle_store",
    "dump_yaml",
    "home",
    "model_store",
    "new_version",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
]

# \Z, not $: '$' also matches before a final newline, which let "name\n" through to a directory of that name.
NAME_RE = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?\Z")
MANIFEST = "manifest.sha256"
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_CHUNK = 1 << 20
# How many times a scan of one name is taken again when entries went away under it (concurrent deletes).
_SCANS = 5
# Failed writes that are the store's (its disk), not the input's: they get StoreError and how to fix it.
_FIXES = {
    errno.ENOSPC: "free some space there, or point BUNDLER_HOME at a disk with room",
    errno.EDQUOT: "free some space there, or point BUNDLER_HOME at a disk with room",
    errno.EROFS: "make it writable, or point BUNDLER_HOME at a writable directory",
    errno.EACCES: "make it writable, or point BUNDLER_HOME at a writable directory",
    errno.EPERM: "make it writable, or point BUNDLER_HOME at a writable directory",
}


def home() -> Path:
    """Return the bundler home directory (``$BUNDLER_HOME``, default ``~/bundler``) as an absolute path."""
    # Absolute: resolvers and the service probe run in other working directories, where a relative
    # BUNDLER_HOME would name another (missing) directory.
    path = Path(os.path.abspath(Path(os.environ.get("BUNDLER_HOME") or Path.home() / "bundler").expanduser()))
    # A file in the way would read as an empty store ("not found" for every tag) and fail the first write
    # with a traceback: name it instead. The home itself may be missing; it is made on the first write.
    for p in (path, *path.parents):
        if os.path.exists(p):  # os.path: False, not PermissionError, for what cannot be looked at
            if not os.path.isdir(p):
                what = "BUNDLER_HOME" if os.environ.get("BUNDLER_HOME") else "the default home"
                where = f"{what} {path}" if p == path else f"{what} {path}: {p}"
                raise BadInput(
                    f"{where} is a file, not a directory; set BUNDLER_HOME to a directory (made when missing)"
                )
            break
    return path


def _check_part(value: str, what: str, text: str) -> None:
    if len(value) > 63 or not NAME_RE.match(value):
        raise InvalidTag(
            f"invalid tag {text!r}: the {what} {value!r} must be 1-63 characters of lowercase letters,"
            " digits, '-', '.' and '_', starting and ending with a letter or digit"
        )


@dataclass(frozen=True)
class Tag:
    """A ``name:version`` pair; ``version`` None or ``"latest"`` means the newest."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str | Tag) -> Tag:
        """Parse ``name`` or ``name:version``; raise InvalidTag with the rule otherwise."""
        if isinstance(text, Tag):
            # Checked like a string: Tag("mlp", "latest") is the newest, and Tag("..", "x") no path.
            text = str(text)
        if not isinstance(text, str) or not text:
            raise InvalidTag(f"invalid tag {text!r}: expected 'name' or 'name:version'")
        name, sep, version = text.partition(":")
        _check_part(name, "name", text)
        if sep:
            _check_part(version, "version", text)
        return cls(name, version if sep and version != "latest" else None)

    @property
    def is_latest(self) -> bool:
        return self.version is None

    def __str__(self) -> str:
        return f"{self.name}:{self.version or 'latest'}"


def new_version() -> str:
    """Return a fresh version: 10 time-ordered characters (ms) and 6 random ones, lowercase base32."""
    ms = time.time_ns() // 1_000_000
    stamp = "".join(_CROCKFORD[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    rand = "".join(secrets.choice(_CROCKFORD) for _ in range(6))
    return stamp + rand


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(root: Path) -> str:
    """Write ``manifest.sha256`` for every file under root; return the manifest text."""
    text = "".join(f"{sha256_file(root / rel)}  {rel}\n" for rel in _files(root))
    (root / MANIFEST).write_text(text, encoding="utf-8")
    return text


def verify_manifest(root: Path, only: tuple[str, ...] | None = None) -> list[str]:
    """Check every file under root against its manifest; return one problem per differing file.

    ``only`` limits the check to the files whose path starts with one of these prefixes.
    """
    mpath = root / MANIFEST
    if not mpath.is_file():
        return [f"{root}: {MANIFEST} is missing"]
    try:
        text = mpath.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{MANIFEST}: cannot be read ({exc})"]
    expected: dict[str, str] = {}
    for line in text.splitlines():
        digest, _, rel = line.partition("  ")
        if only is None or rel.startswith(only):
            expected[rel] = digest
    problems = []
    present = {rel for rel in _files(root) if only is None or rel.startswith(only)}
    for rel, digest in sorted(expected.items()):
        if rel not in present:
            problems.append(f"{rel}: missing")
        elif sha256_file(root / rel) != digest:
            problems.append(f"{rel}: sha256 differs from the manifest")
    problems += [f"{rel}: not in the manifest" for rel in sorted(present - expected.keys())]
    return problems


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to path through a temporary file and ``os.replace`` (creating its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _PlainDumper(yaml.SafeDumper):
    """A SafeDumper that writes a value shared by two keys out twice, never as an ``&id001`` anchor."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def dump_yaml(data: object) -> str:
    """Return data as plain YAML (keys in insertion order, no anchors or aliases) for the metadata files."""
    # Metadata files are read by people and other tools: '*id001' where a section is repeated reads as
    # a puzzle, and a section's text would change with whichever key happened to come first.
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False)


@dataclass(frozen=True)
class Entry:
    """One stored model or bundle."""

    tag: Tag
    path: Path
    info: dict

    @property
    def created(self) -> str:
        return str(self.info.get("creation_time", ""))


_NEVER = datetime.min.replace(tzinfo=timezone.utc)


def _when(created: object) -> datetime:
    """Return a creation time as an aware datetime; an unreadable or missing one sorts as the oldest."""
    if isinstance(created, datetime):
        when = created
    else:
        text = str(created or "").strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return _NEVER
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class _Unreadable(Exception):
    """An entry's metadata file exists but cannot be read or parsed (the message says why)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """One store directory (models or bundles) with ``<name>/<version>/`` entries."""

    def __init__(self, root: Path, kind: str, meta_file: str) -> None:
        self.root = Path(root)
        self.kind = kind
        self.meta_file = meta_file

    # -- reading -------------------------------------------------------------------------------
    def _versions(self, name: str) -> tuple[list[Path], bool]:
        """Return the entry directories of one name, and whether one that was listed went away meanwhile."""
        try:
            children = builtins.list((self.root / name).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return [], False  # no such name, or its last entry was deleted meanwhile
        found, vanished = [], False
        for p in children:
            if NAME_RE.match(p.name):
                if (p / self.meta_file).is_file():
                    found.append(p)
                elif not p.exists():
                    vanished = True
        return found, vanished

    def _read_info(self, path: Path) -> dict:
        """Return an entry's metadata; FileNotFoundError when it is gone, _Unreadable when it is damaged."""
        try:
            with open(path / self.meta_file, encoding="utf-8") as f:
                info = yaml.safe_load(f)
        except FileNotFoundError:
            raise
        except yaml.MarkedYAMLError as exc:
            line = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
            raise _Unreadable(f"not valid YAML: {exc.problem or exc.context}{line}") from exc
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise _Unreadable(f"not valid YAML: {exc}") from exc
        except OSError as exc:
            raise _Unreadable(exc.strerror or str(exc)) from exc
        if not isinstance(info, dict):
            raise _Unreadable(f"expected a mapping, found {type(info).__name__}")
        return info

    def _damaged(self, tag: Tag, reason: str) -> str:
        verify = "verify --model" if self.kind == "model" else "verify"
        return (
            f"{self.kind} {tag} is damaged: its {self.meta_file} cannot be read ({reason}); check it with"
            f" `bundler {verify} {tag}`, delete it with `bundler {self._cli}delete {tag}` and store it again"
        )

    def _scan(self, name: str) -> tuple[builtins.list[Entry], builtins.list[str]]:
        """Return the readable entries of one name, newest first, and one message per damaged entry.

        "Newest" is described in the module docstring; a damaged entry has no readable creation time, so it
        takes no part in it (and ``latest`` never resolves to it).
        """
        # A directory listing taken while another process stores one entry and deletes another may hold
        # neither (the new one not yet listed, the old one gone before it is read): `latest` would be "not
        # found" while an entry is stored at every moment. An entry that went away is the sign: scan again.
        for _ in range(_SCANS):
            keyed = []
            damaged = []
            paths, vanished = self._versions(name)
            for p in paths:
                tag = Tag(name, p.name)
                try:
                    info = self._read_info(p)
                    stored = p.stat().st_mtime_ns
                except FileNotFoundError:
                    vanished = True  # deleted meanwhile by another process
                    continue
                except _Unreadable as exc:
                    damaged.append(self._damaged(tag, str(exc)))
                    continue
                key = (_when(info.get("creation_time")), stored, p.name)
                keyed.append((key, Entry(tag, p, info)))
            if not vanished:
                break
        keyed.sort(key=lambda pair: pair[0], reverse=True)
        return [entry for _, entry in keyed], sorted(damaged)

    def resolve(self, tag: str | Tag) -> Tag:
        """Return the full tag (``latest`` resolved); raise NotFound when there is no such entry."""
        t = Tag.parse(tag)
        if t.version is not None:
            if (self.root / t.name / t.version / self.meta_file).is_file():
                return t
            raise NotFound(f"{self.kind} {t} not found in {self.root}{self._hint(t.name)}")
        entries, damaged = self._scan(t.name)
        if entries:
            return entries[0].tag
        if damaged:
            raise StoreError(f"{self.kind} {t.name!r} has no readable entry: " + "; ".join(damaged))
        raise NotFound(f"{self.kind} {t.name!r} not found in {self.root}{self._hint(t.name)}")

    def _hint(self, name: str) -> str:
        close = self.did_you_mean(name)
        see = f"see `bundler {self._cli}list`"
        return f"; did you mean {close!r}? ({see})" if close else f" ({see})"

    def did_you_mean(self, name: str) -> str | None:
        """Return a stored name close to ``name`` when ``name`` itself is not stored (a typo), else None."""
        if self._versions(name)[0]:
            return None  # the name is stored: the version is what is wrong
        try:
            names = [
                p.name for p in self.root.iterdir() if NAME_RE.match(p.name) and self._versions(p.name)[0]
            ]
        except OSError:
            return None
        close = difflib.get_close_matches(name, sorted(names), n=1)
        return close[0] if close else None

    @property
    def _cli(self) -> str:
        return "models " if self.kind == "model" else ""

    def path(self, tag: str | Tag) -> Path:
        """Return the directory of a stored entry."""
        t = self.resolve(tag)
        return self.root / t.name / str(t.version)

    def get(self, tag: str | Tag) -> Entry:
        """Return the stored entry for a tag."""
        t = self.resolve(tag)
        p = self.root / t.name / str(t.version)
        try:
            return Entry(t, p, self._read_info(p))
        except FileNotFoundError as exc:
            raise NotFound(f"{self.kind} {t} not found in {self.root} (deleted meanwhile)") from exc
        except _Unreadable as exc:
            raise StoreError(self._damaged(t, str(exc))) from exc

    def list(
        self, name: str | None = None, *, on_damaged: Callable[[str], None] | None = None
    ) -> list[Entry]:
        """Return every readable entry (optionally of one name), newest first within a name.

        A damaged entry (its metadata file cannot be read) is left out and reported, one message each, to
        ``on_damaged`` (default: a warning), so that one bad entry does not hide the others.
        """
        if name is not None:
            tag = Tag.parse(name)  # InvalidTag (exit 2) for a name that cannot be stored: "Bad Name", "../x"
            if tag.version is not None:
                raise BadInput(f"list takes a name, not a tag: {name!r}; to see that one, get {name}")
            name = tag.name
        if not self.root.is_dir():
            return []
        names = [name] if name else sorted(p.name for p in self.root.iterdir() if NAME_RE.match(p.name))
        report = on_damaged or (lambda msg: warnings.warn(msg, stacklevel=3))
        out: list[Entry] = []
        for n in names:
            entries, damaged = self._scan(n)
            out += entries
            for msg in damaged:
                report(msg)
        return out

    def verify(self, tag: str | Tag) -> builtins.list[str]:
        """Check an entry against its manifest; return the problems (empty when intact)."""
        return verify_manifest(self.path(tag))

    # -- writing -------------------------------------------------------------------------------
    def _cannot_write(self, exc: OSError) -> StoreError:
        fix = _FIXES.get(exc.errno or 0, "check that it is a writable directory")
        return StoreError(
            f"cannot write to the {self.kind} store at {self.root}: {exc.strerror or exc}; {fix}"
            " (nothing was stored)"
        )

    def _write_error(self, exc: OSError) -> StoreError | None:
        """Return the StoreError for a write into the store that failed (disk full, read-only), else None."""
        inside = exc.filename is None or str(exc.filename).startswith(f"{self.root}{os.sep}")
        return self._cannot_write(exc) if exc.errno in _FIXES and inside else None

    def tmp_root(self) -> Path:
        """Return the store's scratch directory (on its file system), first removing what dead processes left.

        Scratch entries are named ``<what>-<pid>-<random>``, so a process killed mid-way (kill -9) leaves
        nothing behind for longer than the next command's start.
        """
        tmp = self.root / ".tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only, or a file where the directory goes
            raise self._cannot_write(exc) from exc
        # Leftovers of killed processes: remove those whose owner is gone.
        for p in tmp.iterdir():
            parts = p.name.split("-")
            if len(parts) >= 2 and parts[-2].isdigit() and not _pid_alive(int(parts[-2])):
                shutil.rmtree(p, ignore_errors=True)
        return tmp

    @contextlib.contextmanager
    def staging(self, what: str = "stage") -> Iterator[Path]:
        """Yield an empty directory on the store's file system; it is removed unless committed."""
        d = self.tmp_root() / f"{what}-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            d.mkdir()
        except OSError as exc:
            raise self._cannot_write(exc) from exc
        try:
            yield d
        except OSError as exc:
            # A disk that fills up (or turns read-only) while an entry is written: say so, not a traceback.
            error = self._write_error(exc)
            if error is None:
                raise
            raise error from exc
        finally:
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)

    def commit(
        self, staged: Path, tag: Tag, *, exist_ok: bool = False, replace: bool = False
    ) -> tuple[Path, bool]:
        """Write the manifest into ``staged`` and move it to ``<name>/<version>``; return (path, created).

        With ``exist_ok``, an entry already stored under the same tag is kept as it is (content-derived
        versions: same tag means same content) and ``created`` is False. With ``replace``, one already
        stored is removed first (a damaged copy of the same content); a crash in between leaves the tag
        absent, never half-written.
        """
        if tag.version is None or tag.version == "latest":
            raise BadInput(f"cannot store {self.kind} {tag.name!r} without a version ('latest' is reserved)")
        write_manifest(staged)
        final = self.root / tag.name / tag.version
        if replace:
            with contextlib.suppress(FileNotFoundError):  # a concurrent import or build removed it first
                self._discard(final)
        created = self._move_into_place(staged, final, tag, exist_ok)
        self._drop_pointer(tag.name)
        return final, created

    def _move_into_place(self, staged: Path, final: Path, tag: Tag, exist_ok: bool) -> bool:
        """Rename staged to final; return True, or False when an equal entry is there and exist_ok."""
        for _ in range(3):
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staged, final)
                return True
            except FileNotFoundError as exc:
                if staged.is_dir():
                    continue  # a concurrent delete of the name's last entry removed <name>/ after mkdir
                raise StoreError(f"cannot store {self.kind} {tag} at {final}: {exc}") from exc
            except OSError as exc:
                if not final.exists():
                    raise StoreError(f"cannot store {self.kind} {tag} at {final}: {exc}") from exc
                if not exist_ok:
                    raise StoreError(f"{self.kind} {tag} already exists at {final}") from exc
                shutil.rmtree(staged, ignore_errors=True)
                return False
        raise StoreError(f"cannot store {self.kind} {tag}: {final.parent} was removed each time it was made")

    def delete(self, tag: str | Tag) -> Tag:
        """Delete one entry (atomically: renamed away first); return its full tag."""
        t = self.resolve(tag)
        src = self.root / t.name / str(t.version)
        try:
            self._discard(src)
        except FileNotFoundError as exc:
            # Resolved, then deleted by a concurrent command before this one got to it.
            raise NotFound(f"{self.kind} {t} not found in {self.root} (deleted meanwhile)") from exc
        except OSError as exc:
            raise StoreError(f"cannot delete {self.kind} {t} at {src}: {exc.strerror or exc}") from exc
        self._drop_pointer(t.name)
        with contextlib.suppress(OSError):
            (self.root / t.name).rmdir()  # only when that was the name's last entry
        return t

    def _discard(self, entry: Path) -> None:
        """Remove an entry atomically (renamed into the scratch directory, then deleted); OSError if not."""
        trash = self.tmp_root() / f"trash-{os.getpid()}-{secrets.token_hex(6)}"
        os.rename(entry, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _drop_pointer(self, name: str) -> None:
        # Stores written before latest was derived from the entries hold a `<name>/latest` pointer file;
        # nothing reads it any more, so remove it rather than leave a stale-looking file behind.
        with contextlib.suppress(OSError):
            (self.root / name / "latest").unlink()

    # -- archives ------------------------------------------------------------------------------
    def export(self, tag: str | Tag, dest: str | Path) -> Path:
        """Write a deterministic ``.tar.gz`` of one entry; return its path.

        ``dest`` is the archive's path, or a directory to write ``<name>-<version>.tar.gz`` into: one that
        exists, or one named with a trailing slash (``out/``), which is made when missing.
        """
        if not str(dest).strip():
            # Path("") is "." and would put the archive in the working directory without being asked to.
            raise BadInput("no archive path given (an empty path); name the .tar.gz file or a directory")
        t = self.resolve(tag)
        src = self.root / t.name / str(t.version)
        problems = verify_manifest(src)
        if problems:
            raise StoreError(f"{self.kind} {t} fails its manifest check: " + "; ".join(problems))
        as_dir = isinstance(dest, str) and dest.endswith(("/", os.sep))
        dest = Path(dest)
        where = os.path.realpath(dest if as_dir or dest.is_dir() else dest.parent)
        for root in {self.root, home() / "models", home() / "bundles"}:
            if (where + os.sep).startswith(os.path.realpath(root) + os.sep):
                # In a stored entry, the archive would be a file its manifest does not list: a damaged entry.
                raise BadInput(f"cannot write the archive into the store ({root}); name a place outside it")
        if as_dir:
            try:
                dest.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BadInput(
                    f"cannot make the directory {dest} for the archive: {exc.strerror or exc}"
                ) from exc
        if dest.is_dir():
            dest = dest / f"{t.name}-{t.version}.tar.gz"
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
        # Streamed to a temporary file beside the destination, renamed into place when complete.
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        _remove_dead_parts(dest)
        try:
            with open(tmp, "wb") as out:
                with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=mtime) as gz:
                    with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                        for rel in [*_files(src), MANIFEST]:
                            p = src / rel
                            info = tarfile.TarInfo(rel)
                            info.size = p.stat().st_size
                            info.mtime = mtime
                            info.mode = 0o755 if os.access(p, os.X_OK) else 0o644
                            info.uid = info.gid = 0
                            info.uname = info.gname = ""
                            with open(p, "rb") as f:
                                tar.addfile(info, f)
            os.replace(tmp, dest)
        except OSError as exc:
            raise BadInput(f"cannot write the archive {dest}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def import_(
        self, archive: str | Path, *, check: Callable[[Path, Tag, dict], None] | None = None
    ) -> tuple[Tag, bool]:
        """Import an archive made by ``export``; return (tag, created). Unsafe archives are refused.

        Everything is checked in the staging directory before the one rename that stores it (``check``,
        given the staged directory, the tag and the metadata, adds the checks of one kind of entry), so a
        refused or interrupted import stores nothing.
        """
        export = "bundler models export" if self.kind == "model" else "bundler export"
        if not str(archive).strip():
            # Path("") is "." (the working directory): name the real mistake instead.
            raise BadInput(f"no archive given (an empty path); name the .tar.gz file that '{export}' wrote")
        archive = Path(archive)
        if archive.is_dir():
            raise BadInput(
                f"{archive}: is a directory, not an archive; name the .tar.gz file that '{export}' wrote"
            )
        if not archive.exists():
            raise BadInput(f"{archive}: no such archive file; check the path")
        if not archive.is_file():
            raise BadInput(f"{archive}: not a regular file; name the .tar.gz file that '{export}' wrote")
        with self.staging() as staged:
            try:
                with tarfile.open(archive, mode="r:*") as tar:
                    members = tar.getmembers()
                    for m in members:
                        _check_member(archive, m)
                    self._check_room(archive, members, staged)
                    for m in members:
                        target = staged / m.name
                        if m.isdir():
                            target.mkdir(parents=True, exist_ok=True)
                            continue
                        target.parent.mkdir(parents=True, exist_ok=True)
                        src = tar.extractfile(m)
                        assert src is not None
                        with open(target, "wb") as out:
                            shutil.copyfileobj(src, out)
                        if m.mode & 0o111:
                            target.chmod(0o755)
            except OSError as exc:
                error = self._write_error(exc)
                if error is not None:
                    raise error from exc
                raise BadInput(f"{archive}: not a readable .tar.gz archive ({exc})") from exc
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                what = "zlib error: " if isinstance(exc, zlib.error) else ""
                raise BadInput(f"{archive}: not a readable .tar.gz archive ({what}{exc})") from exc
            for required in (self.meta_file, MANIFEST):
                if not (staged / required).is_file():
                    hint = ""
                    if self.kind == "model" and (staged / "bundle.yaml").is_file():
                        hint = "; it is a bundle archive: import it with 'bundler import'"
                    elif self.kind == "bundle" and (staged / "model.yaml").is_file():
                        hint = "; it is a model archive: import it with 'bundler models import'"
                    raise BadInput(
                        f"{archive}: not a bundler {self.kind} archive ({required} is missing){hint}"
                    )
            problems = verify_manifest(staged)
            if problems:
                raise StoreError(f"{archive}: fails its sha256 manifest check: " + "; ".join(problems))
            try:
                info = self._read_info(staged)
            except _Unreadable as exc:
                raise BadInput(f"{archive}: {self.meta_file} cannot be read ({exc})") from exc
            tag = self._archive_tag(archive, info)
            if check is not None:
                check(staged, tag, info)
            stored = self.root / tag.name / str(tag.version)
            # The same tag stored intact: kept. Stored but damaged: the archive, checked above, replaces it.
            damaged = bool(verify_manifest(stored)) if stored.exists() else False
            if stored.exists() and not damaged:
                return tag, False
            _, created = self.commit(staged, tag, exist_ok=True, replace=damaged)
            return tag, created

    def _check_room(self, archive: Path, members: builtins.list[tarfile.TarInfo], staged: Path) -> None:
        """Refuse an archive whose files (as its headers declare) do not fit the store's free space."""
        # Before writing a byte: a gzip bomb (a few MB unpacking to many GB) would fill the disk first.
        need = sum(m.size for m in members if m.isfile())
        free = shutil.disk_usage(staged).free
        if need > free:
            raise StoreError(
                f"{archive}: unpacks to {_size(need)}, more than the {_size(free)} free in {self.root};"
                " free some space there, or point BUNDLER_HOME at a disk with room (nothing was stored)"
            )

    def _archive_tag(self, archive: Path, info: dict) -> Tag:
        name, version = info.get("name"), info.get("version")
        where = f"{archive}: {self.meta_file}"
        if version == "latest":
            raise BadInput(
                f"{where}: version 'latest' is reserved (it names the newest entry of {name!r}), so nothing"
                f" can be stored under it; export the {self.kind} again from the store that holds it"
            )
        try:
            tag = Tag.parse(f"{name}:{version}")
        except InvalidTag as exc:
            raise BadInput(f"{where} has no valid name and version ({exc})") from exc
        return tag


def _remove_dead_parts(dest: Path) -> None:
    """Remove the ``.<archive>.<pid>.part`` files that exports killed mid-way (kill -9) left beside dest."""
    with contextlib.suppress(OSError):
        for part in dest.parent.glob(f".{glob.escape(dest.name)}.*.part"):
            pid = part.name[len(dest.name) + 2 : -len(".part")]
            if pid.isdigit() and not _pid_alive(int(pid)):
                part.unlink(missing_ok=True)


def _size(n: int) -> str:
    """Return a byte count for people: ``3.0 MB``."""
    size, unit = float(n), "bytes"
    for bigger in ("kB", "MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def _check_member(archive: Path, m: tarfile.TarInfo) -> None:
    name = m.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise UnsafeArchive(f"{archive}: refused: member {name!r} has an absolute path")
    parts = Path(name).parts
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: refused: member {name!r} points outside the archive ('..')")
    if m.issym() or m.islnk():
        raise UnsafeArchive(f"{archive}: refused: member {name!r} is a link")
    if not (m.isfile() or m.isdir()):
        raise UnsafeArchive(f"{archive}: refused: member {name!r} is a device, fifo or other special file")
    if m.mode & (stat.S_ISUID | stat.S_ISGID):
        raise UnsafeArchive(f"{archive}: refused: member {name!r} is setuid/setgid")


def model_store() -> Store:
    """Return the model store under the current home."""
    return Store(home() / "models", "model", "model.yaml")


def bundle_store() -> Store:
    """Return the bundle store under the current home."""
    return Store(home() / "bundles", "bundle", "bundle.yaml")
