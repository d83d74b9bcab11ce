"""Docker/OCI image references: check them before an engine or a kubelet does, and name a bundle's image.

The grammar is the one of ``distribution/reference`` (what ``docker build -t``, ``docker push`` and the
kubelet parse)::

    reference  := name [":" tag] ["@" digest]
    name       := [host [":" port] "/"] component ("/" component)*      (at most 255 characters)
    component  := [a-z0-9]+ (separator [a-z0-9]+)*       separator := "." | "_" | "__" | "-"+
    host       := DNS labels joined by "." ([A-Za-z0-9], "-" inside), or "[IPv6]"
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex   (sha256: 64, sha384: 96, sha512: 128 lowercase hex digits)

As in ``docker``, the first component names a registry host only when it holds a ``.`` or a ``:port``, or
is ``localhost``; anything else is a repository path component, and must be lowercase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .exceptions import BadInput

__all__ = ["ImageRef", "default_image", "image_ref_problem", "parse_image_ref"]

NAME_MAX = 255
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^\w[\w.-]{0,127}$", re.ASCII)
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
# Runs of separator characters that a component may hold ('.', '_', '__', '-', '--', ...).
_SEPARATORS_RE = re.compile(r"[._-]+")
_VALID_SEPARATOR_RE = re.compile(r"^(?:\.|_|__|-+)$")
_EXAMPLE = "e.g. registry.example.com/team/sr:1.0"


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference; ``str()`` gives it back as written."""

    host: str | None  # registry host[:port], None for Docker Hub / the engine's default
    path: str  # repository path: lowercase components joined by '/'
    tag: str | None
    digest: str | None  # "sha256:<hex>"

    @property
    def name(self) -> str:
        """Return the repository name with its registry host, without tag or digest."""
        return f"{self.host}/{self.path}" if self.host else self.path

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return f"{self.name}{tag}{digest}"


def _problem(text: str, *, allow_digest: bool) -> tuple[ImageRef | None, str]:
    """Return the parsed reference, or None and why ``text`` is not one."""
    if not text or text != text.strip() or any(c.isspace() for c in text):
        return None, "it is empty or holds whitespace"
    rest, at, digest = text.partition("@")
    if at:
        if not allow_digest:
            return None, "a digest ('@...') cannot be given to a new image; give name:tag"
        algorithm, colon, hexpart = digest.partition(":")
        if not colon or algorithm not in _DIGEST_HEX:
            return None, f"digest {digest!r} must be sha256:<64 hex digits> (or sha384, sha512)"
        if not re.fullmatch(rf"[0-9a-f]{{{_DIGEST_HEX[algorithm]}}}", hexpart):
            return None, f"digest {digest!r}: {algorithm} takes {_DIGEST_HEX[algorithm]} lowercase hex digits"
    # A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    slash = rest.rfind("/")
    name, colon, tag = rest[slash + 1 :].partition(":")
    name = rest[: slash + 1] + name
    if colon and not _TAG_RE.match(tag):
        if not tag:
            return None, "the tag after ':' is empty (leave out ':' for 'latest')"
        return None, (
            f"tag {tag!r} must be 1-128 of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        )
    if not name:
        return None, "the repository name is empty"
    if len(name) > NAME_MAX:
        return None, f"the repository name is {len(name)} characters long (at most {NAME_MAX})"
    first, sep, remainder = name.partition("/")
    host = None
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.match(first):
            return None, f"{first!r} is not a registry host[:port]"
        host, name = first, remainder
    for component in name.split("/"):
        if _COMPONENT_RE.match(component):
            continue
        if not component:
            return None, "it has an empty path component ('//', or a leading or trailing '/')"
        if _COMPONENT_RE.match(component.lower()):
            lower = component.lower()
            return None, f"{component!r} has uppercase letters; repository names are lowercase ({lower!r})"
        return None, (
            f"{component!r} is not a repository path component (lowercase letters and digits, separated"
            " by one '.', one or two '_', or '-'s)"
        )
    return ImageRef(host, name, tag if colon else None, digest if at else None), ""


def parse_image_ref(text: str, what: str, *, allow_digest: bool = True) -> ImageRef:
    """Parse an image reference; raise BadInput naming ``what`` (the option) and saying why it is bad."""
    ref, why = _problem(str(text), allow_digest=allow_digest)
    if ref is None:
        raise BadInput(f"{what}: {text!r} is not an image reference: {why} ({_EXAMPLE})")
    return ref


def image_ref_problem(text: str) -> str | None:
    """Return why ``text`` is not an image reference, or None when it is one."""
    ref, why = _problem(str(text), allow_digest=True)
    return None if ref is not None else why


def default_image(name: str, version: str) -> str | None:
    """Return ``name:version`` as an image reference (a name Docker refuses mended), or None if none fits."""
    # Bundle names allow any run of '.', '_' and '-' between letters and digits; image names allow only
    # '.', '_', '__' or '-'s. Each run they refuse becomes its first character: 'my..model' -> 'my.model'.
    repo = _SEPARATORS_RE.sub(lambda m: m[0] if _VALID_SEPARATOR_RE.match(m[0]) else m[0][0], name)
    ref, _ = _problem(f"{repo}:{version}", allow_digest=False)
    # Only a plain repository name will do: a bundle name is never a registry host or a path.
    return str(ref) if ref is not None and ref.host is None and "/" not in ref.path else None
