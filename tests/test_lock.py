"""Locking for the target platform: real uv / pip-tools runs against PyPI, the lock cache, bundler's wheel,
VCS and local wheels, and offline wheel downloads verified against the lock's hashes."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundler import lock as lock_mod
from bundler import wheels as wheels_mod
from bundler.exceptions import BundlerError, ConfigError, LockError
from bundler.lock import (
    IMAGE_REQUIREMENTS,
    SERVE_REQUIREMENTS,
    Listed,
    LockOptions,
    build_bundler_wheel,
    collect_requirements,
    download_wheels,
    lock,
    locked_names,
)
from bundler.store import sha256_file
from bundler.wheels import parse_lock

ROOT = Path(__file__).resolve().parent.parent
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """Write a minimal pure-Python wheel by hand (no build backend, no network)."""
    directory.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(zipfile.ZipInfo(member, (1980, 1, 2, 0, 0, 0)), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{member},sha256={digest},{len(data)}")
        zf.writestr(
            zipfile.ZipInfo(f"{info}/RECORD", (1980, 1, 2, 0, 0, 0)),
            "\n".join(record) + f"\n{info}/RECORD,,\n",
        )
    return path


def _subset(text: str, names: set[str]) -> str:
    """Keep only the named packages of a lock (to download a few wheels, not the whole runtime)."""
    packages, _ = parse_lock(text)
    kept = [p for p in packages if p.name in names]
    assert {p.name for p in kept} == names
    return "".join(
        f"{p.line} " + " ".join(f"--hash=sha256:{h}" for h in sorted(p.hashes)) + "\n" for p in kept
    )


def _pins(text: str) -> dict[str, str]:
    return {p.name: p.version for p in parse_lock(text)[0]}


def test_serve_requirements_match_pyproject_serving_block() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("# serving runtime", 1)[1].split("# build side", 1)[0]
    declared = re.findall(r'"([^"]+)"', block)
    assert sorted(declared) == sorted(SERVE_REQUIREMENTS + IMAGE_REQUIREMENTS)
    assert not {"onnx", "jsonschema", "jinja2", "rich", "uv", "pip-tools"} & {
        re.split(r"[<>=\[]", r)[0] for r in SERVE_REQUIREMENTS
    }


def test_quickstart_locks_for_arm64_with_aarch64_wheels(tmp_path: Path) -> None:
    reqs = collect_requirements(
        ["numpy", "onnxruntime", "pillow", 'six ; platform_machine == "aarch64"'], None, tmp_path
    )
    arm = lock(reqs, LockOptions(python_version="3.11", platform="linux/arm64"), wheels_dir=tmp_path / "w")
    amd = lock(reqs, LockOptions(python_version="3.11", platform="linux/amd64"), wheels_dir=tmp_path / "w")
    assert arm.hashed and not arm.reused
    assert "# target: linux/arm64 (aarch64-manylinux_2_28), CPython 3.11" in arm.text
    assert arm.digest == hashlib.sha256(arm.text.encode()).hexdigest()
    names = set(locked_names(arm.text))
    assert {"numpy", "onnxruntime", "pillow", "starlette", "uvicorn", "uvloop", "httptools"} <= names
    # The marker is evaluated for the target, not for this amd64 host.
    assert "six" in names and "six" not in locked_names(amd.text)
    assert all(p.hashes for p in parse_lock(arm.text)[0])
    # pip, told it installs on aarch64, accepts the lock's hashes for the real aarch64 wheels.
    got = download_wheels(
        _subset(arm.text, {"numpy", "pillow", "markupsafe"}),
        tmp_path / "dl",
        LockOptions(python_version="3.11", platform="linux/arm64"),
    )
    assert len(got) == 3 and all("aarch64" in p.name and "cp311" in p.name for p in got), got
    allowed = {h for p in parse_lock(arm.text)[0] for h in p.hashes}
    assert all(sha256_file(p) in allowed for p in got)


def test_lock_text_is_deterministic_across_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = collect_requirements(["six"], None, tmp_path)
    first = lock(reqs, LockOptions(python_version=PY), wheels_dir=tmp_path / "a")
    monkeypatch.setenv("BUNDLER_HOME", str(tmp_path / "other-home"))
    second = lock(reqs, LockOptions(python_version=PY), wheels_dir=tmp_path / "b")
    assert not second.reused and first.text == second.text
    assert str(tmp_path) not in first.text and "requirements.in" in first.text


def test_user_pin_conflicting_with_bundler_names_both(tmp_path: Path) -> None:
    reqs = collect_requirements(["numpy==1.21.0"], None, tmp_path)
    with pytest.raises(LockError) as err:
        lock(reqs, LockOptions(python_version="3.11"), wheels_dir=tmp_path / "w")
    message = str(err.value)
    assert "numpy==1.21.0 (from bentofile python.packages)" in message
    assert "numpy>=1.24 (required by bundler)" in message
    assert "linux/amd64" in message and "Traceback" not in message
    assert err.value.exit_code == 1


def test_conflict_from_requirements_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("# pins\nsix\n\nstarlette<0.20\n")
    reqs = collect_requirements([], Path("requirements.txt"), tmp_path)
    with pytest.raises(LockError) as err:
        lock(reqs, LockOptions(python_version="3.11"), wheels_dir=tmp_path / "w")
    assert "starlette<0.20 (from requirements.txt:4)" in str(err.value)
    assert "starlette>=0.37 (required by bundler)" in str(err.value)


def test_unknown_package_is_named(tmp_path: Path) -> None:
    reqs = collect_requirements(["no-such-package-bundler-test-xq"], None, tmp_path)
    with pytest.raises(LockError, match=r"'no-such-package-bundler-test-xq' was not found"):
        lock(reqs, LockOptions(python_version="3.11"), wheels_dir=tmp_path / "w")


def test_unreachable_index_is_a_network_error_not_a_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    options = LockOptions(python_version="3.11", index_url="http://127.0.0.1:9/simple")
    with pytest.raises(LockError) as err:
        lock(["six"], options, wheels_dir=tmp_path / "w")
    assert "the package index could not be reached" in str(err.value) and "conflict" not in str(err.value)
    assert "127.0.0.1:9" in str(err.value)


def test_nested_requirements_constraints_and_find_links(tmp_path: Path) -> None:
    _make_wheel(tmp_path / "sub" / "local", "localpkg", "2.0.0", requires=("six",))
    (tmp_path / "requirements.txt").write_text("-r sub/base.txt\nlocalpkg==2.0.0  # from a local dir\n")
    (tmp_path / "sub").mkdir(exist_ok=True)
    (tmp_path / "sub/base.txt").write_text(
        "--find-links ./local\n-c pins.txt\nsix \\\n  >=1.10\nidna  # inline comment\n"
    )
    (tmp_path / "sub/pins.txt").write_text("six<1.17\n")
    reqs = collect_requirements(["certifi"], Path("requirements.txt"), tmp_path)
    assert "six >=1.10  # from sub/base.txt:3" in reqs
    assert "-c six<1.17  # from sub/pins.txt:1" in reqs
    assert f"--find-links {tmp_path / 'sub/local'}" in reqs
    result = lock(reqs, LockOptions(python_version="3.11"), wheels_dir=tmp_path / "w")
    pins = _pins(result.text)
    assert pins["six"] == "1.16.0"  # the constraint from the nested -c file applied
    assert pins["localpkg"] == "2.0.0" and "idna" in pins and "certifi" in pins
    assert str(tmp_path) not in result.text  # a host path would not exist in the image
    assert "six >=1.10  # from sub/base.txt:3" in result.requirements_txt
    assert "# constraint: six<1.17" in result.requirements_txt


@pytest.mark.parametrize(
    "content, message",
    [
        ("-r missing.txt\n", r"requirements file missing\.txt not found \(included from"),
        ("--pre\nsix\n", r"requirements\.txt:1: the option '--pre' is not supported"),
        ("-r requirements.txt\n", r"loop"),
    ],
)
def test_bad_requirements_files(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "requirements.txt").write_text(content)
    with pytest.raises(LockError, match=message):
        collect_requirements([], Path("requirements.txt"), tmp_path)


def test_bad_requirement_lines_are_bad_input_before_any_resolver(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six\nfoo bar baz\n")
    with pytest.raises(ConfigError) as err:
        collect_requirements(["numpy==", "six"], Path("requirements.txt"), tmp_path)
    assert err.value.exit_code == 2
    first, second = err.value.problems
    assert first.startswith("bentofile python.packages[0]: 'numpy==' is not a valid requirement (")
    assert second.startswith("requirements.txt:2: 'foo bar baz' is not a valid requirement (")
    assert "conflict" not in str(err.value)


def test_missing_local_paths_are_bad_input_before_any_build(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "reqs").mkdir()
    (tmp_path / "reqs" / "requirements.txt").write_text(
        "-e ../pkg\n../pkg[extra] ; python_version > '3'\n-e ../nosub\n./dist/a-1.0.tar.gz\n"
    )
    with pytest.raises(ConfigError) as err:
        collect_requirements(["./pkg", "./gone[x]"], Path("reqs/requirements.txt"), tmp_path)
    assert err.value.exit_code == 2
    assert err.value.problems == [
        f"bentofile python.packages[1]: './gone[x]': no such file or directory {tmp_path}/gone; fix the"
        " path (relative to the build file)",
        f"reqs/requirements.txt:3: '../nosub': no such directory {tmp_path}/nosub; fix the path (relative"
        " to the requirements file)",
        f"reqs/requirements.txt:4: './dist/a-1.0.tar.gz': no such file or directory"
        f" {tmp_path}/reqs/dist/a-1.0.tar.gz; fix the path (relative to the requirements file)",
    ]


def test_an_editable_path_in_python_packages_is_read_as_in_a_requirements_file(tmp_path: Path) -> None:
    # `-e ./pkg` was kept whole: the resolver, in its own temporary directory, found no ./pkg there.
    (tmp_path / "pkg").mkdir()
    got = collect_requirements(["-e ./pkg", "--editable=./pkg"], None, tmp_path)
    assert got == [f"{tmp_path / 'pkg'}  # from bentofile python.packages"] * 2
    with pytest.raises(ConfigError) as err:
        collect_requirements(["-e ./gone"], None, tmp_path)
    assert err.value.problems == [
        f"bentofile python.packages[0]: './gone': no such file or directory {tmp_path}/gone; fix the path"
        " (relative to the build file)"
    ]


def test_listed_conda_pip_requirements_get_their_origin_and_the_same_checks(tmp_path: Path) -> None:
    env_dir = tmp_path / "conda"
    (env_dir / "pkg").mkdir(parents=True)
    listed = (
        Listed("bentofile conda.pip", "from bentofile conda.pip", ("six",), tmp_path),
        Listed("env.yml dependencies[1].pip", "from env.yml pip", ("./pkg", "toolz"), env_dir, "env.yml"),
    )
    assert collect_requirements(["numpy"], None, tmp_path, listed=listed) == [
        "numpy  # from bentofile python.packages",
        "six  # from bentofile conda.pip",
        f"{env_dir.resolve()}/pkg  # from env.yml pip",  # relative to its own file, not the build file
        "toolz  # from env.yml pip",
    ]
    bad = (
        Listed("bentofile conda.pip", "from bentofile conda.pip", ("six", "foo bar baz"), tmp_path),
        Listed("env.yml dependencies[1].pip", "from env.yml pip", ("./gone",), env_dir, "env.yml"),
    )
    with pytest.raises(ConfigError) as err:
        collect_requirements([], None, tmp_path, listed=bad)
    first, second = err.value.problems
    assert first.startswith("bentofile conda.pip[1]: 'foo bar baz' is not a valid requirement (")
    assert second == (
        f"env.yml dependencies[1].pip[0]: './gone': no such file or directory {env_dir}/gone; fix the path"
        " (relative to env.yml)"
    )


@pytest.mark.parametrize(
    "line",
    ["dist/a-1.0-py3-none-any.whl", "a-1.0.tar.gz", "dist/a-1.0-py3-none-any.whl ; python_version > '3'"],
)
def test_relative_paths_without_dot_slash_are_relative_to_their_file(tmp_path: Path, line: str) -> None:
    # pip reads them as paths; left relative they name nothing where the resolver runs.
    (tmp_path / "reqs" / "dist").mkdir(parents=True)
    (tmp_path / "reqs" / "dist" / "a-1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "reqs" / "a-1.0.tar.gz").write_bytes(b"")
    (tmp_path / "reqs" / "requirements.txt").write_text(f"{line}\nnumpy\nname @ https://x.org/a/b.whl\n")
    first, *rest = collect_requirements([], Path("reqs/requirements.txt"), tmp_path)
    assert first == f"{tmp_path.resolve()}/reqs/{line}  # from reqs/requirements.txt:1"
    assert rest == [
        "numpy  # from reqs/requirements.txt:2",
        "name @ https://x.org/a/b.whl  # from reqs/requirements.txt:3",
    ]


def test_unreadable_requirements_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_bytes(b"six\n\xff\n")
    with pytest.raises(LockError, match=r"cannot read the requirements file requirements\.txt \(not UTF-8"):
        collect_requirements([], Path("requirements.txt"), tmp_path)


def test_lock_packages_false_keeps_pins_without_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_resolver(*args: object, **kwargs: object) -> None:
        raise AssertionError("lock_packages: false must not run a resolver")

    monkeypatch.setattr(lock_mod, "run_tool", no_resolver)
    reqs = collect_requirements(["six==1.16.0", "requests"], None, tmp_path)
    result = lock(reqs, LockOptions(python_version="3.11", lock_packages=False), wheels_dir=tmp_path / "w")
    assert not result.hashed and "--hash" not in result.text
    lines = result.text.splitlines()
    assert "six==1.16.0" in lines and "requests" in lines and "numpy>=1.24" in lines
    assert "lock_packages is false" in result.text


def test_unchanged_inputs_reuse_the_cached_lock_without_a_resolver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundler_home: Path
) -> None:
    reqs = collect_requirements(["six"], None, tmp_path)
    options = LockOptions(python_version="3.11", platform="linux/arm64")
    first = lock(reqs, options, wheels_dir=tmp_path / "w1")
    assert not first.reused and len(list((bundler_home / "cache/locks").glob("*.json"))) == 1

    # No resolver and no network from here on: uv is off PATH and every subprocess call fails.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(lock_mod, "uv_command", lambda: ["/nonexistent/uv"])

    def offline(*args: object, **kwargs: object) -> None:
        raise LockError("resolver called")

    monkeypatch.setattr(lock_mod, "run_tool", offline)
    again = lock(list(reversed(reqs)), options, wheels_dir=tmp_path / "w2")
    assert again.reused and again.text == first.text and again.digest == first.digest
    # The same patch does stop a lock that is not cached, so the reuse above is real.
    with pytest.raises(LockError, match="resolver called"):
        lock(reqs, LockOptions(python_version="3.12", platform="linux/arm64"), wheels_dir=tmp_path / "w3")


@pytest.mark.parametrize("damage", ["truncated", "edited", "empty"])
def test_a_damaged_cached_lock_is_not_trusted(tmp_path: Path, bundler_home: Path, damage: str) -> None:
    reqs = collect_requirements(["six"], None, tmp_path)
    options = LockOptions(python_version="3.11")
    first = lock(reqs, options, wheels_dir=tmp_path / "w1")
    (entry,) = (bundler_home / "cache/locks").iterdir()
    raw = entry.read_bytes()
    # A disk that filled up, a copy cut short, a hand edit: the bytes no longer match what was resolved.
    damaged = {
        "truncated": raw[: len(raw) // 2],
        "edited": raw.replace(b"six==", b"six>="),
        "empty": b"",
    }[damage]
    entry.write_bytes(damaged)
    again = lock(reqs, options, wheels_dir=tmp_path / "w2")
    assert not again.reused and again.text == first.text
    # The entry is whole again for the next build.
    assert lock(reqs, options, wheels_dir=tmp_path / "w3").reused


@pytest.mark.parametrize("where", ["python.find_links", "requirements file", "python.packages"])
def test_packages_from_local_find_links_travel_with_the_bundle(tmp_path: Path, where: str) -> None:
    def lock_from(project: Path, wheels_dir: Path) -> lock_mod.LockResult:
        if where == "python.find_links":
            reqs = collect_requirements(["linkedpkg"], None, project)
            options = LockOptions(python_version="3.11", find_links=(str(project / "links"),))
        elif where == "python.packages":  # read as in a requirements file, relative to the build file
            reqs = collect_requirements(["--find-links ./links", "linkedpkg"], None, project)
            options = LockOptions(python_version="3.11")
        else:
            (project / "requirements.txt").write_text("--find-links ./links\nlinkedpkg\n")
            reqs = collect_requirements([], Path("requirements.txt"), project)
            options = LockOptions(python_version="3.11")
        return lock(reqs, options, wheels_dir=wheels_dir)

    wheel = _make_wheel(tmp_path / "a/links", "linkedpkg", "1.0.0")
    first = lock_from(tmp_path / "a", tmp_path / "w1")
    # The image has no host directory: the wheel the lock pins must be in the bundle, found by the lock.
    assert [p.name for p in (tmp_path / "w1").iterdir()] == [wheel.name]
    assert "--find-links wheels" in first.text.splitlines()
    assert _pins(first.text)["linkedpkg"] == "1.0.0" and str(tmp_path) not in first.text

    # The same project checked out elsewhere locks to the same bytes, from the cache, with the wheel.
    (tmp_path / "b").mkdir()
    _make_wheel(tmp_path / "b/links", "linkedpkg", "1.0.0")
    again = lock_from(tmp_path / "b", tmp_path / "w2")
    assert again.reused and again.text == first.text
    assert again.requirements_txt == first.requirements_txt and str(tmp_path) not in first.requirements_txt
    assert [p.name for p in (tmp_path / "w2").iterdir()] == [wheel.name]

    # A new wheel in the directory is a new input: resolved again, not the cached pin.
    _make_wheel(tmp_path / "b/links", "linkedpkg", "1.1.0")
    newer = lock_from(tmp_path / "b", tmp_path / "w3")
    assert not newer.reused and _pins(newer.text)["linkedpkg"] == "1.1.0"
    assert [p.name for p in (tmp_path / "w3").iterdir()] == ["linkedpkg-1.1.0-py3-none-any.whl"]


def test_local_wheels_are_locked_by_hash(tmp_path: Path) -> None:
    wheels_dir = tmp_path / "env/python/wheels"
    wheel = _make_wheel(wheels_dir, "mylocal", "0.3.0", requires=("six>=1.15",))
    result = lock([], LockOptions(python_version="3.11"), wheels_dir=wheels_dir, local_wheels=[wheel])
    entry = next(p for p in parse_lock(result.text)[0] if p.name == "mylocal")
    assert entry.version == "0.3.0" and entry.hashes == {sha256_file(wheel)}
    assert "--find-links wheels" in result.text.splitlines() and "six" in locked_names(result.text)


def test_vcs_requirement_is_built_into_a_hashed_wheel(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "vcspkg").mkdir(parents=True)
    (repo / "vcspkg/__init__.py").write_text("")
    (repo / "setup.py").write_text(
        "from setuptools import setup\nsetup(name='vcspkg', version='1.2.3', packages=['vcspkg'])\n"
    )

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    commit = git("rev-parse", "HEAD").strip()
    wheels_dir = tmp_path / "wheels"
    reqs = collect_requirements([f"vcspkg @ git+file://{repo}@{commit}"], None, tmp_path)
    result = lock(reqs, LockOptions(python_version="3.11"), wheels_dir=wheels_dir)
    built = sorted(wheels_dir.glob("vcspkg-1.2.3-*.whl"))
    assert len(built) == 1
    entry = next(p for p in parse_lock(result.text)[0] if p.name == "vcspkg")
    assert entry.version == "1.2.3" and sha256_file(built[0]) in entry.hashes
    assert "--find-links wheels" in result.text
    assert (
        f"vcspkg==1.2.3  # built from vcspkg @ git+file://{repo}@{commit} (from bentofile python.packages)"
    ) in result.requirements_txt


def test_local_project_path_is_built_relative_to_the_context(tmp_path: Path) -> None:
    (tmp_path / "proj/pathpkg").mkdir(parents=True)
    (tmp_path / "proj/pathpkg/__init__.py").write_text("")
    (tmp_path / "proj/setup.py").write_text(
        "from setuptools import setup\nsetup(name='pathpkg', version='0.0.7', packages=['pathpkg'])\n"
    )
    reqs = collect_requirements(["./proj"], None, tmp_path)
    assert reqs == [f"{tmp_path / 'proj'}  # from bentofile python.packages"]
    result = lock(reqs, LockOptions(python_version="3.11"), wheels_dir=tmp_path / "w")
    built = sorted((tmp_path / "w").glob("pathpkg-0.0.7-*.whl"))
    assert len(built) == 1 and _pins(result.text)["pathpkg"] == "0.0.7"
    assert sha256_file(built[0]) in next(p for p in parse_lock(result.text)[0] if p.name == "pathpkg").hashes


def test_a_local_project_is_built_from_a_copy_and_left_as_it_was(tmp_path: Path) -> None:
    # pip builds a directory in place: setuptools' build/ and *.egg-info would land in the user's project,
    # and build/lib would carry a module deleted since into the next wheel.
    proj = tmp_path / "proj"
    (proj / "pathpkg").mkdir(parents=True)
    (proj / "pathpkg/__init__.py").write_text("")
    (proj / "pathpkg/old.py").write_text("")
    (proj / "setup.py").write_text(
        "from setuptools import setup\nsetup(name='pathpkg', version='0.0.7', packages=['pathpkg'])\n"
    )
    before = sorted(p.relative_to(proj).as_posix() for p in proj.rglob("*"))
    reqs = collect_requirements(["./proj"], None, tmp_path)
    lock(reqs, LockOptions(python_version="3.11"), wheels_dir=tmp_path / "w1")
    assert sorted(p.relative_to(proj).as_posix() for p in proj.rglob("*")) == before
    (proj / "pathpkg/old.py").unlink()
    lock(reqs, LockOptions(python_version="3.11"), wheels_dir=tmp_path / "w2")
    (wheel,) = (tmp_path / "w2").glob("pathpkg-0.0.7-*.whl")
    assert "pathpkg/old.py" not in zipfile.ZipFile(wheel).namelist()


def test_a_local_project_locks_the_same_wherever_it_is_checked_out(tmp_path: Path) -> None:
    results = []
    for checkout in ("a", "b/deeper"):
        context = tmp_path / checkout
        (context / "proj/pathpkg").mkdir(parents=True)
        (context / "proj/pathpkg/__init__.py").write_text("")
        (context / "proj/setup.py").write_text(
            "from setuptools import setup\nsetup(name='pathpkg', version='0.0.7', packages=['pathpkg'])\n"
        )
        (context / "requirements.txt").write_text("./proj\n")
        reqs = collect_requirements(["./proj"], Path("requirements.txt"), context)
        results.append(lock(reqs, LockOptions(python_version="3.11"), wheels_dir=context / "w"))
    # requirements.txt is a bundle file: a host path in it gives each checkout its own bundle tag.
    assert results[0].requirements_txt == results[1].requirements_txt
    assert results[0].text == results[1].text and str(tmp_path) not in results[0].requirements_txt
    line = "pathpkg==0.0.7  # built from local path proj (from requirements.txt:1)"
    assert line in results[0].requirements_txt.splitlines()


def test_pip_args_reach_the_resolver_only_when_they_change_resolution(tmp_path: Path) -> None:
    spell = lock_mod._pip_args_for_resolver
    args = "--no-cache-dir --pre -i https://idx.example/simple --trusted-host=idx.example --upgrade"
    args += " --only-binary :all:"
    assert spell(args, "uv") == [
        "--prerelease", "allow", "-i", "https://idx.example/simple", "--allow-insecure-host", "idx.example",
        "--only-binary", ":all:",
    ]  # fmt: skip
    assert spell(args, "pip-tools")[:2] == ["--pre", "-i"]
    with pytest.raises(LockError, match="--extra-index-url needs a value"):
        spell("--extra-index-url", "uv")
    plain = lock(["six"], LockOptions(python_version="3.11"), wheels_dir=tmp_path / "a")
    flagged = lock(
        ["six"],
        LockOptions(python_version="3.11", pip_args="--no-cache-dir --upgrade"),
        wheels_dir=tmp_path / "b",
    )
    assert not flagged.reused and flagged.text.split("\n", 3)[3] == plain.text.split("\n", 3)[3]


def test_bad_vcs_requirement_is_a_clean_error(tmp_path: Path) -> None:
    reqs = collect_requirements([f"git+file://{tmp_path}/no-repo#egg=nothing"], None, tmp_path)
    with pytest.raises(LockError, match="cannot build a wheel for the requirement"):
        lock(reqs, LockOptions(python_version="3.11"), wheels_dir=tmp_path / "w")


def test_offline_download_verifies_hashes_and_uses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundler_home: Path
) -> None:
    base = lock(
        collect_requirements(["six"], None, tmp_path),
        LockOptions(python_version="3.11"),
        wheels_dir=tmp_path / "w",
    )
    text = _subset(base.text, {"six", "idna"})
    options = LockOptions(python_version="3.11", offline=True)
    got = download_wheels(text, tmp_path / "dest", options)
    assert sorted(p.name.split("-")[0] for p in got) == ["idna", "six"]
    assert len(list((bundler_home / "cache/wheels").iterdir())) == 2

    # A second bundle gets them from the cache: pip is not run.
    monkeypatch.setattr(wheels_mod, "run_tool", lambda *a, **k: pytest.fail("pip ran despite the cache"))
    again = download_wheels(text, tmp_path / "dest2", options)
    assert [p.name for p in again] == [p.name for p in got]
    monkeypatch.undo()
    monkeypatch.setenv("BUNDLER_HOME", str(bundler_home))

    # A hash that no wheel has: pip refuses it and so do we.
    bad = re.sub(r"(six==\S+) .*", r"\1 --hash=sha256:" + "0" * 64, text)
    with pytest.raises(LockError, match="hash"):
        download_wheels(bad, tmp_path / "dest3", options)


def test_offline_package_without_a_target_wheel_is_named(tmp_path: Path) -> None:
    # docopt 0.6.2 exists only as an sdist, so an offline bundle cannot carry a wheel of it.
    base = lock(
        collect_requirements(["docopt==0.6.2"], None, tmp_path),
        LockOptions(python_version="3.11"),
        wheels_dir=tmp_path / "w",
    )
    with pytest.raises(LockError) as err:
        download_wheels(
            _subset(base.text, {"docopt"}),
            tmp_path / "dest",
            LockOptions(python_version="3.11", offline=True),
        )
    assert "no wheel of docopt" in str(err.value) and "linux/amd64" in str(err.value)
    assert "python.wheels" in str(err.value)


def test_offline_download_with_the_index_unreachable_is_a_network_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One retry, not pip's five: its "Retrying ... after connection broken by" warning is what tells a
    # network failure from a package with no wheel (with no retry at all pip says neither).
    monkeypatch.setenv("PIP_RETRIES", "1")
    text = "bundler-test-unreachable==1.0 --hash=sha256:" + "0" * 64 + "\n"
    options = LockOptions(python_version="3.11", offline=True, index_url="http://127.0.0.1:9/simple")
    with pytest.raises(LockError) as err:
        download_wheels(text, tmp_path / "dest", options)
    message = str(err.value)
    # Not "no wheel of ... for linux/amd64": the package may well have one; the index was never asked.
    assert "could not be reached" in message and "no wheel of" not in message
    assert "127.0.0.1" in message and "python.index_url" in message


def test_pip_tools_resolver_on_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip-tools hashes every file of every pinned release one by one (tens of seconds for the whole serving
    # runtime here), so this checks the pip-tools path with a small stand-in; uv tests use the real set.
    monkeypatch.setattr(lock_mod, "SERVE_REQUIREMENTS", ("idna>=3",))
    reqs = collect_requirements(["six==1.16.0"], None, tmp_path)
    result = lock(reqs, LockOptions(python_version=PY, resolver="pip-tools"), wheels_dir=tmp_path / "w")
    assert "with pip-tools" in result.text and result.hashed
    assert _pins(result.text).keys() == {"six", "idna"} and _pins(result.text)["six"] == "1.16.0"
    assert all(p.hashes for p in parse_lock(result.text)[0])
    assert "--extra-index-url" not in result.text and str(tmp_path) not in result.text
    monkeypatch.setattr(lock_mod, "SERVE_REQUIREMENTS", ("six>=1.17",))
    with pytest.raises(LockError) as err:
        lock(reqs, LockOptions(python_version=PY, resolver="pip-tools"), wheels_dir=tmp_path / "w")
    assert "six==1.16.0 (from bentofile python.packages)" in str(err.value)
    assert "six>=1.17 (required by bundler)" in str(err.value)


def test_pip_tools_refuses_another_platform(tmp_path: Path) -> None:
    with pytest.raises(LockError, match=r"pip-tools resolver can only lock for this machine .* linux/arm64"):
        lock(
            ["six"],
            LockOptions(python_version=PY, platform="linux/arm64", resolver="pip-tools"),
            wheels_dir=tmp_path,
        )


@pytest.mark.parametrize(
    "options, message",
    [
        (
            LockOptions(python_version="3.11", platform="windows/amd64"),
            "unsupported target platform 'windows/amd64'",
        ),
        (LockOptions(python_version="3.11", resolver="poetry"), "unknown resolver 'poetry'"),
        (LockOptions(python_version="3"), "is not X.Y"),
    ],
)
def test_bad_options(tmp_path: Path, options: LockOptions, message: str) -> None:
    with pytest.raises(LockError, match=message):
        lock(["six"], options, wheels_dir=tmp_path)


def test_bundler_wheel_is_reproducible_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = wheels_mod._source_root()
    assert root == ROOT
    # Other work may edit the checkout meanwhile (a real source change must rebuild): retry on a changed key.
    for attempt in range(5):
        key = wheels_mod._source_key(ROOT)
        first = build_bundler_wheel(tmp_path / f"a{attempt}")
        with monkeypatch.context() as patch:
            patch.setattr(wheels_mod, "run_tool", lambda *a, **k: pytest.fail("rebuilt an unchanged wheel"))
            try:
                again = build_bundler_wheel(tmp_path / f"b{attempt}")
            except pytest.fail.Exception:
                if wheels_mod._source_key(ROOT) != key:
                    continue
                raise
        patch_home = tmp_path / f"home{attempt}"
        with monkeypatch.context() as patch:
            patch.setenv("BUNDLER_HOME", str(patch_home))
            rebuilt = build_bundler_wheel(tmp_path / f"c{attempt}")
        if wheels_mod._source_key(ROOT) == key:
            break
    assert re.fullmatch(r"bundler-[^-]+-py3-none-any\.whl", first.name)
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
    assert "bundler/lock.py" in names and not [n for n in names if "__pycache__" in n]
    # Unchanged sources: the cached wheel was copied; a fresh home built it again, byte for byte the same.
    assert again.read_bytes() == first.read_bytes()
    assert sha256_file(rebuilt) == sha256_file(first)


def _stamps(wheel: Path) -> set[tuple[int, ...]]:
    with zipfile.ZipFile(wheel) as zf:
        return {info.date_time for info in zf.infolist()}


def test_bundler_wheel_ignores_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SOURCE_DATE_EPOCH is for the bundle's creation time; the wheel (part of the version) keeps fixed stamps.
    for attempt in range(5):
        key = wheels_mod._source_key(ROOT)
        monkeypatch.setenv("BUNDLER_HOME", str(tmp_path / f"sde{attempt}"))
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
        pinned = build_bundler_wheel(tmp_path / f"a{attempt}")
        monkeypatch.setenv("BUNDLER_HOME", str(tmp_path / f"plain{attempt}"))
        monkeypatch.delenv("SOURCE_DATE_EPOCH")
        plain = build_bundler_wheel(tmp_path / f"b{attempt}")
        if wheels_mod._source_key(ROOT) == key:
            break
    assert _stamps(pinned) == {(1980, 1, 2, 0, 0, 0)}
    assert pinned.read_bytes() == plain.read_bytes()


def test_a_stale_cached_bundler_wheel_is_rebuilt(tmp_path: Path, bundler_home: Path) -> None:
    # A wheel cached with other stamps (an older bundler let SOURCE_DATE_EPOCH through) must not be reused:
    # its bytes would keep this home's bundle tags apart from a fresh home's.
    first = build_bundler_wheel(tmp_path / "first")
    (cached,) = (bundler_home / "cache" / "bundler-wheel").glob("*/bundler-*.whl")
    stale = tmp_path / "stale.whl"
    with zipfile.ZipFile(cached) as src, zipfile.ZipFile(stale, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            info.date_time = (2023, 11, 14, 22, 13, 20)
            dst.writestr(info, src.read(info.filename))
    cached.write_bytes(stale.read_bytes())
    again = build_bundler_wheel(tmp_path / "again")
    assert _stamps(again) == {(1980, 1, 2, 0, 0, 0)}
    assert again.read_bytes() == first.read_bytes()


def test_a_stopped_bundler_wheel_build_leaves_no_directory(
    tmp_path: Path, bundler_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C or SIGTERM while uv built the wheel left a .tmp-bundler-wheel-* directory per stopped build.
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(wheels_mod, "_source_key", lambda root: "not-built-yet")
    monkeypatch.setattr(wheels_mod, "run_tool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_bundler_wheel(tmp_path / "out")
    assert [p.name for p in (bundler_home / "cache").iterdir()] == []


def test_bundler_wheel_key_follows_sources(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    for rel in ("bundler/__init__.py", "templates/Dockerfile.j2", "pyproject.toml"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel)
    (tree / "bundler/__pycache__").mkdir()
    (tree / "bundler/__pycache__/x.pyc").write_bytes(b"junk")
    key = wheels_mod._source_key(tree)
    (tree / "bundler/__pycache__/x.pyc").write_bytes(b"other junk")
    assert wheels_mod._source_key(tree) == key
    (tree / "templates/Dockerfile.j2").write_text("changed")
    assert wheels_mod._source_key(tree) != key


def test_installed_bundler_is_repacked_into_a_stable_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installation from a wheel has no checkout to build from: the wheel is rebuilt from its RECORD.
    original = build_bundler_wheel(tmp_path / "orig")
    site = tmp_path / "site"
    with zipfile.ZipFile(original) as zf:
        zf.extractall(site)
        expected = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/RECORD")}
    monkeypatch.syspath_prepend(str(site))
    first = wheels_mod._repack_installed(tmp_path / "r1")
    second = wheels_mod._repack_installed(tmp_path / "r2")
    assert first.name == original.name and first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        got = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/RECORD")}
        assert zf.testzip() is None
    assert got.keys() == expected.keys()
    assert all(got[n] == expected[n] for n in got if not n.endswith("/WHEEL"))


def test_errors_are_bundler_errors() -> None:
    assert issubclass(LockError, BundlerError) and LockError("x").exit_code == 1
