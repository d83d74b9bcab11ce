"""Select the build context's source files: include/exclude and ignore files with gitignore semantics.

Ignored directories are pruned, never walked. Nothing outside the build context is ever selected: a
symbolic link that resolves outside it is refused (when it would be included), one inside it is followed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pathspec

from .exceptions import BadInput, BuildError

__all__ = ["IGNORE_FILES", "SourceFile", "select_sources"]

IGNORE_FILES = (".bundlerignore", ".bentoignore")
# Never part of a bundle: caches and VCS data make builds irreproducible and leak history.
ALWAYS_EXCLUDED = ["__pycache__/", "*.py[cod]", ".git/", ".hg/", ".svn/", ".venv/", ".ipynb_checkpoints/"]


@dataclass(frozen=True)
class SourceFile:
    rel: str  # posix path inside src/
    path: Path  # real file on disk (inside the context)
    executable: bool


def _spec(lines: list[str]) -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines(lines)


class _Ignores:
    """The ignore-file specs found so far, each relative to the directory holding it."""

    def __init__(self, base: list[str]) -> None:
        self.specs: list[tuple[str, pathspec.PathSpec]] = [("", _spec(base))]

    def load(self, rel_dir: str, directory: Path) -> None:
        for name in IGNORE_FILES:
            f = directory / name
            if f.is_file():
                try:
                    text = f.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    why = "it is not UTF-8" if isinstance(exc, UnicodeDecodeError) else exc.strerror or exc
                    raise BadInput(f"{f}: cannot read the ignore file ({why}); fix or remove it") from exc
                self.specs.append((rel_dir, _spec(text.splitlines())))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        for base, spec in self.specs:
            if base and not rel.startswith(base + "/"):
                continue
            sub = rel[len(base) + 1 :] if base else rel
            if spec.match_file(sub + "/" if is_dir else sub):
                return True
        return False


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# Characters a bundle's manifest (one "digest  path" line per file) cannot carry in a path.
_UNLISTABLE = frozenset(map(chr, [*range(32), 127]))


def select_sources(
    context: Path, include: list[str], exclude: list[str], *, skip: tuple[Path, ...] = ()
) -> list[SourceFile]:
    """Return the files of the build context that go into ``src/``, sorted by path.

    Directories in ``skip`` (the bundler home) are never walked, whatever the patterns say.
    """
    root = context.resolve()
    skipped = {p.resolve() for p in skip}
    includes = _spec(include or ["*"])
    ignores = _Ignores([*ALWAYS_EXCLUDED, *exclude])
    out: dict[str, SourceFile] = {}

    def walk(directory: Path, rel_dir: str, ancestors: frozenset[Path] = frozenset()) -> None:
        real = directory.resolve()
        if real in ancestors or (rel_dir and real in skipped):  # a link back up the tree (a loop), the home
            return
        ancestors = ancestors | {real}
        ignores.load(rel_dir, directory)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise BuildError(f"{directory}: cannot read directory: {exc}") from exc
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=True)
            if ignores.ignored(rel, is_dir):
                continue
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if not _inside(target, root):
                    if is_dir or includes.match_file(rel):
                        raise BadInput(
                            f"{context / rel}: refused: the symbolic link points outside the build context"
                            f" (to {target}); copy the file into the context or add it to 'exclude'"
                        )
                    continue
            if is_dir:
                walk(Path(entry.path), rel, ancestors)
            elif entry.is_file(follow_symlinks=True) and includes.match_file(rel):
                if any(ch in rel for ch in _UNLISTABLE):
                    # The manifest lists one "digest  path" per line: such a name could not be verified.
                    raise BadInput(
                        f"{str(context / rel)!r}: refused: a control character (newline, tab, ...) in a"
                        " source file's name; rename the file or add it to 'exclude'"
                    )
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    # Undecodable bytes (os.fsdecode's surrogates) cannot be written into the manifest.
                    shown = os.fsencode(context / rel).decode("ascii", "backslashreplace")
                    raise BadInput(
                        f"'{shown}': refused: the name is not UTF-8 (written in another encoding);"
                        " rename the file or add it to 'exclude'"
                    ) from None
                real_file = Path(entry.path).resolve()
                out[rel] = SourceFile(rel, real_file, os.access(real_file, os.X_OK))

    walk(root, "")
    return [out[k] for k in sorted(out)]
