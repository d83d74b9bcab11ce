"""`bundler build`: the quickstart into the store, reproducible tags and bytes, atomicity, the CLI."""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bundler import bundles
from bundler.builder import build
from bundler.exceptions import BadInput, ConfigError
from bundler.scan import scan_service, uses_images
from bundler.store import bundle_store, verify_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """A copy of examples/quickstart with its model saved in this test's BUNDLER_HOME."""
    work = tmp_path / "quickstart"
    shutil.copytree(ROOT / "examples/quickstart", work, ignore=shutil.ignore_patterns("__pycache__"))
    runpy.run_path(str(work / "make_model.py"), run_name="__main__")
    return work


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_quickstart_bundle_layout(quickstart: Path) -> None:
    result = build(quickstart / "bentofile.yaml")
    assert result.created
    path = result.path
    info = yaml.safe_load((path / "bundle.yaml").read_text())
    assert info["tag"] == str(result.tag) and info["name"] == "quickstart"
    assert info["service"] == "service:svc"
    assert [a["route"] for a in info["apis"]] == ["predict"]
    assert info["models"][0]["tag"].startswith("quickstart:")
    assert info["labels"] == {"owner": "bundler-team", "stage": "demo"}
    assert info["python"]["platform"] == "linux/amd64" and info["python"]["lock_digest"]
    assert sorted(p.name for p in (path / "src").iterdir()) == ["service.py"]  # make_model.py stays out
    model_dir = path / "models" / "quickstart"
    assert len(list(model_dir.iterdir())) == 1
    lock = (path / "env/python/requirements.lock.txt").read_text()
    assert "--hash=sha256:" in lock and "onnxruntime==" in lock
    assert "pillow==" not in lock  # the quickstart uses no images, so its image carries no Pillow
    assert list((path / "env/python/wheels").glob("bundler-*.whl"))
    assert "FROM " in (path / "env/docker/Dockerfile").read_text()
    assert os.access(path / "env/docker/entrypoint.sh", os.X_OK)
    assert (path / "README.md").read_text() == (quickstart / "README.md").read_text()
    openapi = yaml.safe_load((path / "apis/openapi.yaml").read_text())
    assert "/predict" in openapi["paths"]
    assert verify_manifest(path) == []
    assert repr(result) == f'Bundle(tag="{result.tag}", path="{path}/")'


def test_bundle_yaml_is_plain_yaml_without_anchors_or_aliases(quickstart: Path) -> None:
    # The docker settings appear twice (docker: and build.docker:); they must be written out both times.
    path = build(quickstart).path
    text = (path / "bundle.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    info = yaml.safe_load(text)
    assert info["docker"] == info["build"]["docker"] and info["docker"]["env"]
    got = _cli("get", "quickstart:latest")
    assert got.returncode == 0 and "&id" not in got.stdout and "*id" not in got.stdout


def test_rebuild_is_the_same_tag_and_bytes(quickstart: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = build(quickstart)
    before = _files(first.path)
    second = build(quickstart)
    assert (second.tag, second.created) == (first.tag, False)
    assert second.lock_reused
    bundles.delete(first.tag)  # rebuilt from scratch: still the same tag and byte-identical files
    third = build(quickstart)
    assert third.tag == first.tag and third.created
    assert _files(third.path) == before
    (quickstart / "service.py").write_text((quickstart / "service.py").read_text() + "\n# changed\n")
    assert build(quickstart).tag != first.tag


def test_a_relative_bundler_home_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The resolver and the service probe run in other working directories: the home must be absolute there.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUNDLER_HOME", "relhome")
    work = tmp_path / "quickstart"
    shutil.copytree(ROOT / "examples/quickstart", work, ignore=shutil.ignore_patterns("__pycache__"))
    runpy.run_path(str(work / "make_model.py"), run_name="__main__")
    said: list[str] = []
    result = build(work, say=said.append)
    assert result.path.is_absolute() and result.path.is_relative_to(tmp_path / "relhome" / "bundles")
    assert not [line for line in said if line.startswith("note:")]  # the service imported in its probe
    assert verify_manifest(result.path) == []


def test_a_bundler_home_inside_the_project_is_not_bundled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BUNDLER_HOME=.bundler in CI: each build would carry the stores, every earlier bundle among them.
    work = tmp_path / "project"
    shutil.copytree(ROOT / "examples/quickstart", work, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("BUNDLER_HOME", str(work / ".bundler"))
    runpy.run_path(str(work / "make_model.py"), run_name="__main__")
    bentofile = (work / "bentofile.yaml").read_text()
    (work / "bentofile.yaml").write_text(bentofile.replace('  - "service.py"', '  - "*"'))
    first = build(work)
    second = build(work)
    assert (second.tag, second.created) == (first.tag, False)
    assert sorted(p.name for p in (first.path / "src").iterdir()) == [
        "README.md",
        "bentofile.yaml",
        "make_model.py",
        "service.py",
    ]


def test_tag_does_not_follow_source_date_epoch(
    quickstart: Path, bundler_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The epoch only dates the bundle; the cached bundler wheel, part of the version, must not follow it.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = build(quickstart)
    bundles.delete(first.tag)
    shutil.rmtree(bundler_home / "cache")  # as in a fresh home
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert build(quickstart).tag == first.tag


def test_rebuilding_an_older_unchanged_source_does_not_move_latest(
    quickstart: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = quickstart / "service.py"
    original = service.read_text()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    old = build(quickstart)
    service.write_text(original + "\n# changed\n")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000100")
    new = build(quickstart)
    service.write_text(original)
    again = build(quickstart)
    assert (again.tag, again.created) == (old.tag, False)
    assert bundles.get("quickstart").tag == new.tag
    assert [b.tag for b in bundles.list("quickstart")] == [new.tag, old.tag]


@pytest.mark.parametrize("damage", ["change a file", "remove bundle.yaml", "garble the manifest"])
def test_rebuild_replaces_a_damaged_stored_copy(
    quickstart: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the same bytes, even a second later
    first = build(quickstart)
    before = _files(first.path)
    if damage == "change a file":
        (first.path / "src" / "service.py").write_text("print('changed')\n")
    elif damage == "remove bundle.yaml":
        (first.path / "bundle.yaml").unlink()
    else:
        (first.path / "manifest.sha256").write_bytes(b"\xff\xfe garbage")
    said: list[str] = []
    again = build(quickstart, say=said.append)
    assert (again.tag, again.created) == (first.tag, True)
    assert any(f"the stored bundle {first.tag} fails its manifest check" in m for m in said), said
    assert verify_manifest(again.path) == []
    assert _files(again.path) == before
    assert [b.tag for b in bundles.list()] == [first.tag]
    assert build(quickstart).created is False  # intact now: unchanged, already stored


def test_build_does_not_import_the_service(quickstart: Path) -> None:
    (quickstart / "service.py").write_text(
        "import a_package_that_is_not_installed_here\n" + (quickstart / "service.py").read_text()
    )
    result = build(quickstart)
    info = yaml.safe_load((result.path / "bundle.yaml").read_text())
    assert [a["route"] for a in info["apis"]] == ["predict"]
    assert "/predict" in yaml.safe_load((result.path / "apis/openapi.yaml").read_text())["paths"]


def test_a_service_whose_apis_bundler_refuses_fails_the_build(quickstart: Path) -> None:
    # It was a note ("does not import here") and a stored bundle that failed at every start.
    service = quickstart / "service.py"
    source = service.read_text()
    service.write_text(
        source + '\n\n@svc.api(input=NumpyNdarray(), output=NumpyNdarray(), route="/predict/")\n'
        "def again(x):\n    return x\n"
    )
    with pytest.raises(BadInput) as info:
        build(quickstart)
    line = len(source.splitlines()) + 3
    assert str(info.value) == (
        f"{quickstart / 'service.py'}:{line}: Service 'quickstart', API 'again': route /predict is taken by"
        " API 'predict'; pass route=... to move one; the bundle could not serve: fix the service"
    )
    assert not list(bundle_store().root.glob("*/*/bundle.yaml"))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bundler", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_build_list_get_export_import(
    quickstart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = _cli("build", str(quickstart / "bentofile.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('Bundle(tag="quickstart:')
    listed = _cli("list", "--output", "json")
    assert '"tag": "quickstart:' in listed.stdout
    got = _cli("get", "quickstart:latest")
    assert "service: service:svc" in got.stdout
    archive = tmp_path / "q.tar.gz"
    assert _cli("export", "quickstart", str(archive)).returncode == 0
    monkeypatch.setenv("BUNDLER_HOME", str(tmp_path / "elsewhere"))
    imported = _cli("import", str(archive))
    assert imported.returncode == 0 and "quickstart:" in imported.stdout
    assert _cli("verify", "quickstart").returncode == 0


def test_cli_reports_a_bad_requirement_with_exit_2(quickstart: Path) -> None:
    bentofile = quickstart / "bentofile.yaml"
    text = bentofile.read_text()
    assert "    - onnxruntime\n" in text
    bentofile.write_text(text.replace("    - onnxruntime\n", '    - onnxruntime\n    - "foo bar baz"\n', 1))
    for command in ("validate", "build"):
        proc = _cli(command, str(bentofile))
        assert proc.returncode == 2, (command, proc.stderr)
        assert "python.packages[" in proc.stderr and "'foo bar baz' is not a valid requirement" in proc.stderr
        assert "conflict" not in proc.stderr and "Traceback" not in proc.stderr
    assert not list(bundle_store().root.glob("quickstart/*/bundle.yaml"))


def test_cli_reports_bad_build_file_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bentofile.yaml"
    bad.write_text("service: 'service:svc'\npyhton:\n  packages: [numpy]\n")
    (tmp_path / "service.py").write_text("svc = None\n")
    proc = _cli("build", str(bad))
    assert proc.returncode == 2
    assert "bentofile.yaml:2" in proc.stderr and "python" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_docker_settings_the_image_cannot_take_fail_the_build_before_locking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "service.py").write_text("svc = None\n")
    bad = tmp_path / "my-bentofile.yaml"
    bad.write_text('service: "service:svc"\ndocker:\n  python_version: "3.8"\n  distro: alpine\n')

    def no_lock(*args: object, **kwargs: object) -> None:
        raise AssertionError("locked before the settings were checked")

    monkeypatch.setattr("bundler.lock.lock", no_lock)
    with pytest.raises(ConfigError) as info:
        build(bad)
    assert info.value.problems == [
        f"{bad}:3:19: docker.python_version: '3.8' is not supported (choose 3.10–3.13)",
        f"{bad}:4:11: docker.distro: 'alpine' is not supported: onnxruntime publishes no musl (Alpine)"
        " wheels; use distro 'debian' (the default) or a glibc-based docker.base_image",
    ]


def test_a_service_attribute_the_module_does_not_define_fails_the_build(quickstart: Path) -> None:
    bentofile = quickstart / "bentofile.yaml"
    bentofile.write_text(bentofile.read_text().replace('service: "service:svc"', 'service: "service:scv"'))
    proc = _cli("build", str(bentofile))
    assert proc.returncode == 2, proc.stderr
    assert f"{bentofile}:1:10: service: module 'service.py' defines no 'scv'" in proc.stderr
    assert "Traceback" not in proc.stderr and "locking" not in proc.stderr
    assert not list(bundle_store().root.glob("*/*/bundle.yaml"))


def test_cli_unsupported_platform_is_exit_2(quickstart: Path) -> None:
    proc = _cli("build", str(quickstart), "--platform", "linux/386")
    assert proc.returncode == 2, proc.stderr
    assert "--platform 'linux/386' is not supported (choose linux/amd64 or linux/arm64)" in proc.stderr


def test_cli_unknown_tag_is_a_clear_error() -> None:
    proc = _cli("get", "nothing:here")
    assert proc.returncode == 1
    assert "bundle nothing:here not found" in proc.stderr and "Traceback" not in proc.stderr


def test_killed_build_leaves_no_partial_bundle(quickstart: Path) -> None:
    """kill -9 a real build at several moments: the store only ever lists complete, verified bundles."""
    for delay in (0.3, 0.8, 1.5):
        proc = subprocess.Popen([sys.executable, "-m", "bundler", "build", str(quickstart)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for entry in bundle_store().list():
            assert verify_manifest(entry.path) == []
    result = build(quickstart)
    assert [str(e.tag) for e in bundle_store().list()] == [str(result.tag)]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("from bundler.io import Image\n", True),
        ("import bundler\nx = bundler.io.Image(formats=['png'])\n", True),
        ("from bentoml import io\nx = io.Image()\n", True),
        ("import PIL.Image\n", True),
        ("from PIL import ImageOps\n", True),
        ("def broken(:\n", True),  # unreadable: assume images, the safe side
        ("from bundler.io import NumpyNdarray\nImage = 1\n", False),
        ("import numpy as np\nnp.Image = None\n", False),
        ("from mylib.images import Image\n", False),
    ],
)
def test_uses_images_reads_the_syntax_tree(tmp_path: Path, code: str, expected: bool) -> None:
    (tmp_path / "m.py").write_text(code)
    assert uses_images([tmp_path / "m.py"]) is expected


def test_a_bundle_whose_code_uses_images_gets_pillow_in_its_lock(quickstart: Path) -> None:
    (quickstart / "pictures.py").write_text("from bundler.io import Image\n\nPICTURE = Image()\n")
    bentofile = quickstart / "bentofile.yaml"
    bentofile.write_text(bentofile.read_text().replace('- "service.py"', '- "service.py"\n  - "pictures.py"'))
    path = build(quickstart).path
    lock = (path / "env/python/requirements.lock.txt").read_text()
    assert "pillow==" in lock
    assert "pillow>=10  # required by bundler.io.Image" in (path / "env/python/requirements.txt").read_text()


def test_conda_setup_script_envs_and_ignores_reach_the_bundle(quickstart: Path) -> None:
    (quickstart / "setup.sh").write_text("#!/bin/sh\necho set up\n")
    (quickstart / "setup.sh").chmod(0o644)  # the bundle stores it executable, as the image wants it
    (quickstart / "notes.txt").write_text("not shipped")
    (quickstart / ".bentoignore").write_text("notes.txt\n")
    (quickstart / "bentofile.yaml").write_text(
        "service: 'service:svc'\n"
        "include: ['*']\n"
        "exclude: ['make_model.py']\n"
        "envs:\n  - name: MODE\n    value: fast\n"
        "docker:\n  setup_script: ./setup.sh\n  system_packages: [curl]\n"
        "conda:\n  channels: [conda-forge]\n  dependencies: [onnx]\n  pip: [orjson]\n"
    )
    result = build(quickstart)
    path = result.path
    assert result.tag.name == "quickstart"  # from Service("quickstart", ...) when the file names none
    src = sorted(p.name for p in (path / "src").iterdir())
    assert src == [".bentoignore", "README.md", "bentofile.yaml", "service.py", "setup.sh"]
    env = yaml.safe_load((path / "env/conda/environment.yml").read_text())
    assert env["channels"] == ["conda-forge"] and env["dependencies"] == ["onnx", {"pip": ["orjson"]}]
    assert os.access(path / "env/docker/setup_script", os.X_OK)
    dockerfile = (path / "env/docker/Dockerfile").read_text()
    assert "curl" in dockerfile and "MODE=" in dockerfile and "setup_script" in dockerfile
    info = yaml.safe_load((path / "bundle.yaml").read_text())
    assert info["envs"] == {"MODE": "fast"}


def test_pip_args_reach_the_image_pip_install(quickstart: Path) -> None:
    # BentoML passes python.pip_args to pip install in the image; install-only flags were dropped silently.
    bentofile = quickstart / "bentofile.yaml"
    text = bentofile.read_text().replace("python:\n", "python:\n  pip_args: --pre --no-build-isolation\n")
    bentofile.write_text(text)
    path = build(bentofile).path
    dockerfile = (path / "env/docker/Dockerfile").read_text()
    assert "--pre --no-build-isolation -r env/python/requirements.lock.txt" in dockerfile
    from bundler import containerize as cz

    info = yaml.safe_load((path / "bundle.yaml").read_text())
    assert "--pre --no-build-isolation" in (cz._rerender(path, info, buildkit=True) or "")


def _conda_warnings(said: list[str]) -> list[str]:
    return [line for line in said if line.startswith("warning:") and "conda" in line]


def test_conda_pip_entries_are_locked_and_conda_packages_are_named_in_a_warning(quickstart: Path) -> None:
    said: list[str] = []
    build(quickstart, say=said.append)
    assert _conda_warnings(said) == []  # no conda section: nothing to say
    python = f"python={sys.version_info[0]}.{sys.version_info[1]}"  # the image's Python: satisfied
    with (quickstart / "bentofile.yaml").open("a") as f:
        f.write(
            "conda:\n  channels: [conda-forge]\n"
            f"  dependencies: [{python}, pip, onnx, 'conda-forge::libgomp', {{pip: [toolz]}}]\n"
            "  pip: [six]\n"
        )
    said.clear()
    path = build(quickstart, say=said.append).path
    lock = (path / "env/python/requirements.lock.txt").read_text()
    assert "six==" in lock and "toolz==" in lock  # installed in the image with the rest of the lock
    requirements = (path / "env/python/requirements.txt").read_text().splitlines()
    assert "six  # from bentofile conda.pip" in requirements
    assert "toolz  # from bentofile conda.dependencies pip" in requirements
    [warning] = _conda_warnings(said)
    listed = warning.removeprefix("warning: conda packages not installed in the image: ").split(". ")[0]
    assert listed == "onnx, conda-forge::libgomp (bentofile conda.dependencies)", warning
    assert "channels conda-forge unused" in warning and "under python.packages" in warning
    assert (path / "env/conda/environment.yml").is_file()


def test_an_environment_yml_pip_list_is_locked(quickstart: Path) -> None:
    (quickstart / "conda").mkdir()
    (quickstart / "conda/environment.yml").write_text(
        "name: svc\nchannels: [defaults]\ndependencies:\n  - python\n  - numpy>=1.24\n  - pip\n"
        "  - pip:\n    - six\n"
    )
    with (quickstart / "bentofile.yaml").open("a") as f:
        f.write("conda:\n  environment_yml: conda/environment.yml\n")
    said: list[str] = []
    path = build(quickstart, say=said.append).path
    assert "six==" in (path / "env/python/requirements.lock.txt").read_text()
    origin = "six  # from bentofile conda.environment_yml (conda/environment.yml) dependencies pip"
    assert origin in (path / "env/python/requirements.txt").read_text().splitlines()
    [warning] = _conda_warnings(said)
    listed = warning.removeprefix("warning: conda packages not installed in the image: ").split(". ")[0]
    assert listed == "numpy>=1.24 (bentofile conda.environment_yml (conda/environment.yml) dependencies)"
    assert "channels defaults unused" in warning
    assert (path / "env/conda/environment.yml").read_bytes() == (
        quickstart / "conda/environment.yml"
    ).read_bytes()


def test_a_damaged_model_or_blank_description_is_a_clear_error_or_handled(quickstart: Path) -> None:
    from bundler.exceptions import BuildError
    from bundler.store import model_store

    (quickstart / "README.md").write_text("\n\n")  # description: "file: ./README.md" that is blank
    assert build(quickstart).created
    model = model_store().list("quickstart")[0]
    (model.path / "saved_model.onnx").write_bytes(b"corrupted")
    (quickstart / "service.py").write_text((quickstart / "service.py").read_text() + "\n# new\n")
    with pytest.raises(BuildError, match=r"fails its manifest check \(saved_model.onnx: sha256 differs"):
        build(quickstart)


def test_the_bundle_carries_no_bytecode_and_keeps_the_dockerfile_template(
    quickstart: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    (quickstart / "docker.j2").write_text(
        "{% extends bento_base_template %}\n"
        "{% block SETUP_BENTO_ENVARS %}{{ super() }}\nENV EXTRA=1\n{% endblock %}\n"
    )
    bentofile = (quickstart / "bentofile.yaml").read_text()
    (quickstart / "bentofile.yaml").write_text(
        bentofile.replace("docker:\n", "docker:\n  dockerfile_template: ./docker.j2\n")
    )
    path = build(quickstart).path
    assert not [p for p in path.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]
    assert (path / "env/docker/Dockerfile.template").read_text() == (quickstart / "docker.j2").read_text()
    assert "ENV EXTRA=1" in (path / "env/docker/Dockerfile").read_text()


def test_an_edited_dockerfile_template_gives_a_new_version(quickstart: Path) -> None:
    # Only the template's path is a setting: its content must count too, or the edit is never built.
    template = (
        "{%% extends bento_base_template %%}\n"
        "{%% block SETUP_BENTO_ENVARS %%}{{ super() }}\nENV STEP=%d\n{%% endblock %%}\n"
    )
    (quickstart / "docker.j2").write_text(template % 1)
    bentofile = (quickstart / "bentofile.yaml").read_text()
    (quickstart / "bentofile.yaml").write_text(
        bentofile.replace("docker:\n", "docker:\n  dockerfile_template: ./docker.j2\n")
    )
    first = build(quickstart)
    (quickstart / "docker.j2").write_text(template % 2)
    second = build(quickstart)
    assert second.created and second.tag != first.tag
    assert "ENV STEP=2" in (second.path / "env/docker/Dockerfile").read_text()
    assert (second.path / "env/docker/Dockerfile.template").read_text() == template % 2


def test_a_model_named_in_the_build_file_and_loaded_by_the_service_goes_in_once(quickstart: Path) -> None:
    # The build file says "quickstart", the service "quickstart:latest": the same stored version.
    with (quickstart / "bentofile.yaml").open("a") as f:
        f.write("models:\n  - quickstart\n")
    from bundler.store import model_store

    result = build(quickstart)
    info = yaml.safe_load((result.path / "bundle.yaml").read_text())
    assert [m["tag"] for m in info["models"]] == [str(model_store().get("quickstart:latest").tag)]
    assert verify_manifest(result.path) == []


def test_a_model_filter_is_refused_not_ignored_and_an_alias_is_warned_about(quickstart: Path) -> None:
    from bundler.exceptions import BadInput

    text = (quickstart / "bentofile.yaml").read_text()
    # BentoML's form: the filter picks among versions; ignored, the newest one went in whatever it said.
    (quickstart / "bentofile.yaml").write_text(
        text + "models:\n  - tag: quickstart:latest\n    filter: 'label:staging'\n"
    )
    with pytest.raises(BadInput, match=r"models\[0\]: filter 'label:staging' is not supported"):
        build(quickstart)
    assert bundle_store().list() == []
    (quickstart / "bentofile.yaml").write_text(text + "models:\n  - tag: quickstart:latest\n    alias: qs\n")
    said: list[str] = []
    assert build(quickstart, say=said.append).created
    assert any("alias 'qs' is not used" in line for line in said)


def test_include_that_leaves_out_the_service_module_fails_the_build(quickstart: Path) -> None:
    # A mistake in the build file (exit 2, at its line), as `bundler validate` reports it.
    from bundler.exceptions import ConfigError

    text = (quickstart / "bentofile.yaml").read_text()
    (quickstart / "bentofile.yaml").write_text(text.replace('  - "service.py"', '  - "make_model.py"'))
    with pytest.raises(ConfigError, match=r"include: the service module service.py is not among"):
        build(quickstart)
    assert bundle_store().list() == []


def test_relative_find_links_are_relative_to_the_build_file(
    quickstart: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_lock import _make_wheel

    _make_wheel(quickstart / "wheelhouse", "localpkg", "2.0.0")
    text = (quickstart / "bentofile.yaml").read_text()
    extra = "    - localpkg==2.0.0\n  find_links:\n    - wheelhouse\n"
    text = text.replace("    - onnxruntime\n", "    - onnxruntime\n" + extra)
    (quickstart / "bentofile.yaml").write_text(text)
    monkeypatch.chdir(quickstart.parent)  # not the build file's directory
    result = build(quickstart)
    lock_text = (result.path / "env/python/requirements.lock.txt").read_text()
    assert "localpkg==2.0.0" in lock_text


def test_a_read_only_bundle_store_is_a_clear_error(quickstart: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from bundler.exceptions import StoreError

    store = bundle_store()
    store.tmp_root()  # it exists (an earlier build made it); then the disk turns read-only
    real_mkdir = os.mkdir

    def mkdir(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if Path(path).parent == store.root / ".tmp":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(StoreError, match=rf"cannot write to the bundle store at {store.root}: Read-only"):
        build(quickstart)


def test_scan_names_and_routes_apis_as_the_service_does(tmp_path: Path) -> None:
    # The scan listed another service's API, named one "None" (name=None), kept a trailing slash in a
    # route, and missed an API registered by calling the decorator: bundle.yaml's apis were not the served.
    module = tmp_path / "service.py"
    module.write_text(
        "import bundler\n"
        "from bundler.io import JSON, Text\n"
        "svc = bundler.Service('s')\n"
        "other = bundler.Service('o')\n"
        "@svc.api(input=JSON(), output=JSON(), route='/v1/predict/')\n"
        "def predict(x): return x\n"
        "@svc.api(input=JSON(), output=Text(), name=None, route=None)\n"
        "def label(x): return x\n"
        "@other.api(input=JSON(), output=JSON())\n"
        "def elsewhere(x): return x\n"
        "def echo(x): return x\n"
        "svc.api(input=Text(), output=Text(), name='echo2')(echo)\n"
        "class Handler:\n"
        "    def handle(self, x): return x\n"
        "svc.api(input=JSON(), output=JSON())(Handler().handle)\n",  # was left out
        encoding="utf-8",
    )
    scanned = [(a.name, a.route, a.input, a.output) for a in scan_service(module, "svc").apis]
    assert scanned == [
        ("echo2", "echo2", "Text", "Text"),
        ("handle", "handle", "JSON", "JSON"),
        ("label", "label", "JSON", "Text"),
        ("predict", "v1/predict", "JSON", "JSON"),
    ]
    served = runpy.run_path(str(module))["svc"]
    assert sorted((a.name, a.route) for a in served.apis.values()) == [(n, r) for n, r, _, _ in scanned]
