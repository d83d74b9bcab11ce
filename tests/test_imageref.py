"""Image references: the distribution grammar, the messages for bad ones, and a bundle's default image."""

from __future__ import annotations

import pytest

from bundler.exceptions import BadInput
from bundler.imageref import ImageRef, default_image, parse_image_ref

HEX64 = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX64}"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("ubuntu", ImageRef(None, "ubuntu", None, None)),
        ("a_b__c-d:tag", ImageRef(None, "a_b__c-d", "tag", None)),
        ("a---b.c:V1_x.y-z", ImageRef(None, "a---b.c", "V1_x.y-z", None)),
        ("library/ubuntu:22.04", ImageRef(None, "library/ubuntu", "22.04", None)),
        ("localhost/x", ImageRef("localhost", "x", None, None)),
        ("localhost:5000/a/b:1.0", ImageRef("localhost:5000", "a/b", "1.0", None)),
        (
            "registry.example.com/x@sha256:" + HEX64,
            ImageRef("registry.example.com", "x", None, f"sha256:{HEX64}"),
        ),
        ("Reg.Example.com:443/team/sr:1.2", ImageRef("Reg.Example.com:443", "team/sr", "1.2", None)),
        ("[::1]:5000/x:1", ImageRef("[::1]:5000", "x", "1", None)),
        ("x:1@sha256:" + HEX64, ImageRef(None, "x", "1", "sha256:" + HEX64)),
        ("x@sha512:" + "f" * 128, ImageRef(None, "x", None, "sha512:" + "f" * 128)),
        ("x:" + "t" * 128, ImageRef(None, "x", "t" * 128, None)),
    ],
)
def test_valid_references_parse_and_round_trip(text: str, parsed: ImageRef) -> None:
    ref = parse_image_ref(text, "--image")
    assert ref == parsed
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("UPPER/x:1", r"'UPPER' has uppercase letters; repository names are lowercase \('upper'\)"),
        ("H3-Bad:Tag", r"'H3-Bad' has uppercase letters"),
        ("x:", r"the tag after ':' is empty"),
        ("x:1:2", r"tag '1:2' must be 1-128 of letters"),
        ("repo/x:-bad", r"tag '-bad' must be .* not starting with '.' or '-'"),
        ("x:" + "t" * 129, r"tag 't+' must be 1-128"),
        ("a@b", r"digest 'b' must be sha256:<64 hex digits>"),
        ("x@sha256:zz", r"digest 'sha256:zz': sha256 takes 64 lowercase hex digits"),
        ("x@sha256:" + HEX64.upper(), r"digest 'sha256:[0-9A-F]+': sha256 takes 64 lowercase hex digits"),
        ("x@md5:" + HEX64, r"digest 'md5:.*' must be sha256"),
        ("my..model:1", r"'my..model' is not a repository path component"),
        ("a___b", r"'a___b' is not a repository path component"),
        ("a._b", r"'a._b' is not a repository path component"),
        ("-a", r"'-a' is not a repository path component"),
        ("a//b", r"it has an empty path component"),
        ("a/", r"it has an empty path component"),
        ("my image", r"it is empty or holds whitespace"),
        ("", r"it is empty or holds whitespace"),
        ("bad_host.example.com/x", r"'bad_host.example.com' is not a registry host"),
        ("x" * 256, r"the repository name is 256 characters long \(at most 255\)"),
    ],
)
def test_bad_references_are_bad_input_naming_the_option_and_why(text: str, why: str) -> None:
    with pytest.raises(BadInput, match=rf"^--image: .* is not an image reference: {why}") as info:
        parse_image_ref(text, "--image")
    assert repr(text) in str(info.value)
    assert info.value.exit_code == 2


def test_a_new_image_takes_no_digest() -> None:
    assert parse_image_ref("x@sha256:" + HEX64, "--image").digest
    with pytest.raises(BadInput, match=r"^-t: 'x@sha256:.*' is not an image reference: a digest"):
        parse_image_ref("x@sha256:" + HEX64, "-t", allow_digest=False)


@pytest.mark.parametrize(
    ("name", "image"),
    [
        # Valid image names keep the plain name:version default.
        ("quickstart", "quickstart:ttbsbyxfk2ph2ygr"),
        ("9lives_super.res", "9lives_super.res:ttbsbyxfk2ph2ygr"),
        ("a__b", "a__b:ttbsbyxfk2ph2ygr"),
        ("x--y", "x--y:ttbsbyxfk2ph2ygr"),
        # Bundle names Docker refuses: each bad run of separators becomes its first character.
        ("my..model", "my.model:ttbsbyxfk2ph2ygr"),
        ("a___b", "a_b:ttbsbyxfk2ph2ygr"),
        ("a._-b", "a.b:ttbsbyxfk2ph2ygr"),
        ("a-.b", "a-b:ttbsbyxfk2ph2ygr"),
    ],
)
def test_default_image_is_valid_and_keeps_valid_names(name: str, image: str) -> None:
    assert default_image(name, "ttbsbyxfk2ph2ygr") == image
    parse_image_ref(image, "test")


def test_default_image_gives_up_on_what_it_cannot_mend() -> None:
    """A hand-edited bundle.yaml may hold anything; the callers then ask for -t / --image."""
    assert default_image("Bad Name", "v1") is None
    assert default_image("team/sr", "v1") is None
    assert default_image("sr", "-v1") is None
