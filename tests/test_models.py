"""bundler.models: list, get, delete, export, import; bundle-first tags; concurrent and killed saves."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import bundler.models
import bundler.onnx
from bundler.exceptions import InvalidTag, NotFound, StoreError, UnsafeArchive
from bundler.store import verify_manifest
from tests.models import make_mlp, reference_run

ROOT = Path(__file__).resolve().parent.parent


def test_repr_is_exact(bundler_home: Path) -> None:
    model = bundler.onnx.save_model("mlp", make_mlp())
    path = (bundler_home / "models" / "mlp" / str(model.tag.version)).resolve()
    assert repr(model) == f'Model(tag="mlp:{model.tag.version}", path="{path}/")'
    assert repr(bundler.models.get("mlp")) == repr(model)


def test_info_reads_as_attributes_like_bentomls_model_info() -> None:
    # BentoML: bentoml.models.get("iris_clf:latest").info.metadata / .info.labels
    bundler.onnx.save_model("mlp", make_mlp(), labels={"team": "cv"}, metadata={"acc": 0.9})
    info = bundler.models.get("mlp").info
    assert info.labels == {"team": "cv"} and info.metadata == {"acc": 0.9}
    assert info.module == "bundler.onnx" and info.signatures == {"run": {"batchable": False, "batch_dim": 0}}
    assert info["labels"] is info.labels and dict(info) == info
    with pytest.raises(AttributeError, match=r"model mlp:\w+: info has no 'lables'; did you mean 'labels'\?"):
        info.lables  # noqa: B018


def test_list_get_delete() -> None:
    assert bundler.models.list() == []
    a1 = bundler.onnx.save_model("a", make_mlp(seed=1))
    a2 = bundler.onnx.save_model("a", make_mlp(seed=2))
    b = bundler.onnx.save_model("b", make_mlp(seed=3))
    assert [m.tag for m in bundler.models.list()] == [a2.tag, a1.tag, b.tag]
    assert [m.tag for m in bundler.models.list("a")] == [a2.tag, a1.tag]
    got = bundler.models.get("a")
    assert got == a2 and got.info["version"] == a2.tag.version and got.module == "bundler.onnx"
    assert bundler.models.delete("a") == a2.tag
    assert bundler.models.get("a").tag == a1.tag
    assert bundler.models.delete(str(a1.tag)) == a1.tag
    with pytest.raises(NotFound, match="model 'a' not found"):
        bundler.models.get("a")
    assert [m.tag for m in bundler.models.list()] == [b.tag]
    with pytest.raises(NotFound):
        bundler.models.delete("a")
    with pytest.raises(InvalidTag):
        bundler.models.get("Not A Tag")
    with pytest.raises(InvalidTag):
        bundler.models.list("UPPER")


def test_export_import_round_trip(tmp_path: Path) -> None:
    model = bundler.onnx.save_model("mlp", make_mlp(), labels={"k": "v"})
    archive = bundler.models.export_model("mlp", tmp_path)
    assert archive == tmp_path / f"mlp-{model.tag.version}.tar.gz"
    again = bundler.models.export_model("mlp:latest", tmp_path / "copy.tar.gz")
    assert again.read_bytes() == archive.read_bytes()  # deterministic archives
    bundler.models.delete("mlp")
    imported = bundler.models.import_model(archive)
    assert imported.tag == model.tag and imported.info == model.info
    assert verify_manifest(imported.path) == []
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(
        bundler.onnx.load_model("mlp").run(None, {"x": x})[0], reference_run(make_mlp(), {"x": x})[0]
    )
    # Importing what is already there keeps it and returns it.
    assert bundler.models.import_model(archive).tag == model.tag
    assert len(bundler.models.list()) == 1


def test_importing_an_older_model_keeps_latest_on_the_newest(tmp_path: Path) -> None:
    old = bundler.onnx.save_model("mlp", make_mlp(seed=1))
    archive = bundler.models.export_model(str(old.tag), tmp_path)
    new = bundler.onnx.save_model("mlp", make_mlp(seed=2))
    bundler.models.delete(str(old.tag))
    assert bundler.models.import_model(archive).tag == old.tag
    assert bundler.models.get("mlp").tag == bundler.onnx.get("mlp:latest").tag == new.tag
    assert [m.tag for m in bundler.models.list("mlp")] == [new.tag, old.tag]


def test_cli_lists_the_rest_and_warns_about_a_damaged_entry(bundler_home: Path) -> None:
    from click.testing import CliRunner

    from bundler import cli

    good = bundler.onnx.save_model("mlp", make_mlp(seed=1))
    bad = bundler.onnx.save_model("mlp", make_mlp(seed=2))
    (bad.path / "model.yaml").write_text("name: [unclosed\n")
    for args in (["models", "list"], ["models", "list", "-o", "json"]):
        r = CliRunner().invoke(cli.main, args)
        assert r.exit_code == 0, r.output
        assert str(good.tag) in r.stdout and str(bad.tag) not in r.stdout
        assert f"warning: model {bad.tag} is damaged: its model.yaml cannot be read" in r.stderr
        assert f"`bundler verify --model {bad.tag}`" in r.stderr
    r = CliRunner().invoke(cli.main, ["models", "get", "mlp:latest"])
    assert r.exit_code == 0 and f"version: {good.tag.version}" in r.stdout
    r = CliRunner().invoke(cli.main, ["models", "get", str(bad.tag)])
    assert r.exit_code == 1 and f"error: model {bad.tag} is damaged" in r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)
    r = CliRunner().invoke(cli.main, ["models", "delete", str(bad.tag)])
    assert r.exit_code == 0 and not bad.path.exists()


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("../evil.txt", b"x"), "points outside the archive"),
        (_file("/tmp/evil.txt", b"x"), "absolute path"),
        (_link("saved_model.onnx", "/etc/passwd"), "is a link"),
        (_link("hard", "model.yaml", tarfile.LNKTYPE), "is a link"),
    ],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path, bundler_home: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    archive = _archive(tmp_path / "bad.tar.gz", [_file("model.yaml", b"name: x\nversion: y\n"), member])
    with pytest.raises(UnsafeArchive, match=message):
        bundler.models.import_model(archive)
    assert bundler.models.list() == []
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_import_refuses_tampered_archives(tmp_path: Path) -> None:
    model = bundler.onnx.save_model("mlp", make_mlp())
    good = bundler.models.export_model("mlp", tmp_path)
    bundler.models.delete("mlp")
    with tarfile.open(good) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]

    # A changed model file fails the manifest.
    changed = dict(files, **{"saved_model.onnx": files["saved_model.onnx"] + b"\0"})
    bad = _archive(tmp_path / "changed.tar.gz", [_file(k, v) for k, v in changed.items()])
    with pytest.raises(StoreError, match=r"saved_model.onnx: sha256 differs from the manifest"):
        bundler.models.import_model(bad)

    # A consistent manifest over a model.yaml whose sha256 lies still fails, and leaves nothing behind.
    info = yaml.safe_load(files["model.yaml"])
    info["sha256"] = "0" * 64
    lying = dict(files, **{"model.yaml": yaml.safe_dump(info, sort_keys=False).encode()})
    stage = tmp_path / "lying"
    stage.mkdir()
    for k, v in lying.items():
        (stage / k).write_bytes(v)
    from bundler.store import write_manifest

    write_manifest(stage)
    bad2 = _archive(
        tmp_path / "lying.tar.gz", [_file(p.name, p.read_bytes()) for p in sorted(stage.iterdir())]
    )
    with pytest.raises(
        StoreError, match=f"model {model.tag}: saved_model.onnx has sha256 .* model.yaml says 0+"
    ):
        bundler.models.import_model(bad2)
    assert bundler.models.list() == []


def _consistent_archive(path: Path, files: dict[str, bytes]) -> Path:
    """An archive whose manifest matches its files, whatever they say."""
    manifest = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    )
    return _archive(path, [_file(k, v) for k, v in {**files, "manifest.sha256": manifest.encode()}.items()])


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"model.yaml": b"name: broken\nversion: v1\nmodel_file: saved_model.onnx\nsha256: abc\n"},
            "model.yaml names the model file 'saved_model.onnx', which is not in the archive",
        ),
        (
            {"model.yaml": b"name: broken\nversion: v1\nmodel_file: ../../etc/passwd\n"},
            "model_file '../../etc/passwd' is not the name of a file in the archive",
        ),
        (
            {"model.yaml": b"name: broken\nversion: latest\n", "saved_model.onnx": b"junk"},
            "version 'latest' is reserved",
        ),
        ({"model.yaml": b"name: [unclosed\n"}, "model.yaml cannot be read"),
    ],
)
def test_cli_import_refuses_an_inconsistent_archive_with_exit_2_and_stores_nothing(
    tmp_path: Path, bundler_home: Path, files: dict[str, bytes], message: str
) -> None:
    kept = bundler.onnx.save_model("broken", make_mlp())
    before = sorted(p for p in (bundler_home / "models").rglob("*") if ".tmp" not in p.parts)
    archive = _consistent_archive(tmp_path / "a.tar.gz", files)
    proc = subprocess.run(
        [sys.executable, "-m", "bundler", "models", "import", str(archive)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p for p in (bundler_home / "models").rglob("*") if ".tmp" not in p.parts) == before
    assert [m.tag for m in bundler.models.list()] == [kept.tag]
    assert list((bundler_home / "models" / ".tmp").iterdir()) == []


def test_bundle_models_resolve_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_model = bundler.onnx.save_model("mlp", make_mlp(seed=1))
    bundled = bundler.onnx.save_model("mlp", make_mlp(seed=2))
    bundle = tmp_path / "bundle"
    shutil.copytree(bundled.path, bundle / "models" / "mlp" / str(bundled.tag.version))
    bundler.models.delete(str(bundled.tag))
    newer_home = bundler.onnx.save_model("mlp", make_mlp(seed=3))
    only_home = bundler.onnx.save_model("other", make_mlp(seed=4))
    monkeypatch.setenv("BUNDLER_BUNDLE_DIR", str(bundle))
    got = bundler.models.get("mlp")
    assert got.tag == bundled.tag and got.path == bundle / "models" / "mlp" / str(bundled.tag.version)
    assert bundler.onnx.get("mlp:latest").tag == bundled.tag
    assert bundler.models.get(str(home_model.tag)).tag == home_model.tag  # falls back to the home store
    assert bundler.models.get("other").tag == only_home.tag
    tags = [m.tag for m in bundler.models.list()]
    assert tags[0] == bundled.tag and set(tags) == {
        bundled.tag,
        newer_home.tag,
        home_model.tag,
        only_home.tag,
    }
    with pytest.raises(NotFound, match=f"not found in {bundle / 'models'} or .*models; see"):
        bundler.models.get("nope")
    with pytest.raises(NotFound, match=r"models; did you mean 'other'\? See `bundler models list`"):
        bundler.models.get("othr")  # stored in the home store only
    archive = bundler.models.export_model("mlp", tmp_path)
    assert archive.name == f"mlp-{bundled.tag.version}.tar.gz"


def _python(code: str, home: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, BUNDLER_HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_saving_the_same_name(bundler_home: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    code = f"""
import time, pathlib
import bundler.onnx
from tests.models import make_mlp
proto = make_mlp()
while not pathlib.Path({str(go)!r}).exists():
    time.sleep(0.005)
for _ in range(5):
    print(bundler.onnx.save_model("shared", proto).tag.version, flush=True)
"""
    procs = [_python(code, bundler_home) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    versions = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        versions += out.split()
    assert len(versions) == 10 and len(set(versions)) == 10
    listed = bundler.models.list("shared")
    assert sorted(str(m.tag.version) for m in listed) == sorted(versions)
    assert all(verify_manifest(m.path) == [] for m in listed)
    assert bundler.models.get("shared").tag.version in versions


def test_killed_save_leaves_nothing(bundler_home: Path) -> None:
    # The child stops inside Store.commit, with every file staged, and is killed there.
    code = """
import time
import bundler.store as store
real = store.write_manifest
def paused(root):
    real(root)
    print(root, flush=True)
    time.sleep(60)
store.write_manifest = paused
import bundler.onnx
from tests.models import make_big
bundler.onnx.save_model("big", make_big(floats=1 << 20))
"""
    proc = _python(code, bundler_home)
    assert proc.stdout is not None
    staged = Path(proc.stdout.readline().strip())
    try:
        assert staged.parent == bundler_home / "models" / ".tmp"
        assert (staged / "saved_model.onnx").stat().st_size > 4 << 20
        assert (staged / "model.yaml").is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert bundler.models.list() == []
    with pytest.raises(NotFound):
        bundler.models.get("big")
    # The next save works and sweeps the dead process's staging directory away.
    saved = bundler.onnx.save_model("big", make_mlp())
    assert not staged.exists()
    assert [m.tag for m in bundler.models.list()] == [saved.tag]


# -- what an imported model can make the importer run or read -------------------------------------------
class Payload:
    """Stands for any object in custom_objects: unpickling it runs whatever its class names."""


def test_cli_import_says_when_a_model_holds_pickles_and_modules(tmp_path: Path) -> None:
    # custom_objects.pkl is a pickle: Model.custom_objects runs code from the archive. Whoever imports a
    # model from someone else must learn that at import time, not after it ran.
    import tests.models as module

    bundler.onnx.save_model("plain", make_mlp())
    bundler.onnx.save_model("rich", make_mlp(), custom_objects={"p": Payload()}, external_modules=[module])
    archives = {name: bundler.models.export_model(name, tmp_path) for name in ("plain", "rich")}
    for name in archives:
        bundler.models.delete(name)

    def cli_import(archive: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bundler", "models", "import", str(archive)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=120,
        )

    plain = cli_import(archives["plain"])
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    rich = cli_import(archives["rich"])
    assert rich.returncode == 0, rich.stderr
    assert "custom objects (a pickle: reading Model.custom_objects runs code" in rich.stderr
    assert "external modules (Python code: tests)" in rich.stderr
    assert "only if you trust whoever made" in rich.stderr
    # The note comes from the files, not from what model.yaml claims about them.
    notes = bundler.models.code_notes(bundler.models.get("rich"))
    assert notes == bundler.models.code_notes(bundler.models.get("rich"))
    assert len(notes) == 2


def _model_reading(location: str) -> bytes:
    """An ONNX model whose one initializer is external data at ``location`` (returned as its output)."""
    from onnx import TensorProto, helper

    t = TensorProto(name="w", data_type=TensorProto.UINT8, dims=[4], data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="length", value="4")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [4])],
        initializer=[t],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return model.SerializeToString()


@pytest.mark.parametrize("location", ["/etc/hostname", "../../../../../../etc/hostname", "a/../../x"])
def test_import_refuses_a_model_whose_external_data_lies_outside_it(tmp_path: Path, location: str) -> None:
    # onnxruntime before 1.24 reads such external data wherever it points: an imported model would serve
    # the host's files (keys, tokens) as its output.
    onnx_bytes = _model_reading(location)
    info = (
        "name: spy\nversion: v1\nmodule: bundler.onnx\nmodel_file: saved_model.onnx\n"
        f"sha256: {hashlib.sha256(onnx_bytes).hexdigest()}\n"
    )
    archive = _consistent_archive(
        tmp_path / "spy.tar.gz", {"model.yaml": info.encode(), "saved_model.onnx": onnx_bytes}
    )
    with pytest.raises(UnsafeArchive, match=rf"external data at {re.escape(repr(location))}.*outside"):
        bundler.models.import_model(archive)
    assert bundler.models.list() == []
