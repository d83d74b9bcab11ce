"""The store: tags, atomic commits, latest, manifests, deterministic and safe archives."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from bundler.exceptions import BadInput, InvalidTag, NotFound, StoreError, UnsafeArchive
from bundler.store import Store, Tag, new_version, verify_manifest


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bundles", "bundle", "bundle.yaml")


def _add(
    store: Store, name: str, version: str, body: str = "x", created: str = "2026-01-01T00:00:00Z"
) -> Path:
    with store.staging() as staged:
        (staged / "bundle.yaml").write_text(f"name: {name}\nversion: {version}\ncreation_time: '{created}'\n")
        (staged / "src").mkdir()
        (staged / "src/a.py").write_text(body)
        path, created_new = store.commit(staged, Tag(name, version))
    assert created_new
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("iris", Tag("iris", None)),
        ("iris:latest", Tag("iris", None)),
        ("a.b-c_d:v1.2", Tag("a.b-c_d", "v1.2")),
    ],
)
def test_tag_parse(text: str, expected: Tag) -> None:
    assert Tag.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "Iris", "iris:", "-iris", "iris-", "a" * 64, "iris:v/1", "../x", "a:b:c", "iris\n", "iris:v1\n"],
)
def test_tag_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidTag, match="invalid tag"):
        Tag.parse(text)  # "iris\n" was accepted ('$' matches before a final newline) and stored as such


def test_tag_parse_checks_a_tag_object_as_it_checks_its_text() -> None:
    assert Tag.parse(Tag("iris", "latest")) == Tag("iris", None)  # was "iris:latest not found"
    assert Tag.parse(Tag("iris", "v1")) == Tag("iris", "v1")
    for bad in (Tag("..", "bundles"), Tag("Iris", None), Tag("iris", "v/1")):
        with pytest.raises(InvalidTag, match="invalid tag"):
            Tag.parse(bad)  # was used as given: Tag("..", "bundles") named a path outside the store


def test_new_versions_are_valid_distinct_and_time_ordered() -> None:
    versions = [new_version() for _ in range(200)]
    assert len(set(versions)) == 200
    assert all(Tag.parse(f"m:{v}").version == v for v in versions)
    assert [v[:10] for v in versions] == sorted(v[:10] for v in versions)


def test_commit_latest_list_delete(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _add(store, "svc", "v1", created="2026-01-01T00:00:00Z")
    _add(store, "svc", "v2", created="2026-01-02T00:00:00Z")
    assert store.resolve("svc") == Tag("svc", "v2")
    assert [str(e.tag) for e in store.list()] == ["svc:v2", "svc:v1"]
    store.delete("svc:latest")
    assert store.resolve("svc:latest") == Tag("svc", "v1")
    store.delete("svc:v1")
    assert store.list() == []
    with pytest.raises(NotFound, match="svc"):
        store.resolve("svc")


def test_latest_is_the_newest_creation_time_not_the_last_commit(tmp_path: Path) -> None:
    # An older entry stored last (an import of an old archive) does not become latest; list agrees.
    store = _store(tmp_path)
    _add(store, "svc", "v2", created="2026-01-02T00:00:00Z")
    _add(store, "svc", "v1", created="2026-01-01T00:00:00Z")
    assert store.resolve("svc") == store.resolve("svc:latest") == Tag("svc", "v2")
    assert [str(e.tag) for e in store.list()] == ["svc:v2", "svc:v1"]
    # A pointer file left by an older bundler (or a crash, or a concurrent delete) is not believed.
    (store.root / "svc" / "latest").write_text("v1\n")
    assert store.resolve("svc") == Tag("svc", "v2")
    assert store.get("svc").tag == store.list()[0].tag
    store.delete("svc:v1")
    assert not (store.root / "svc" / "latest").exists()
    assert store.resolve("svc") == Tag("svc", "v2")


def test_equal_creation_times_the_one_stored_last_is_latest_and_listed_first(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a = _add(store, "svc", "zzz", created="2026-01-01T00:00:00Z")
    b = _add(store, "svc", "aaa", created="2026-01-01T00:00:00Z")
    os.utime(a, ns=(1, 1_000_000_000))
    os.utime(b, ns=(1, 2_000_000_000))
    assert store.resolve("svc") == Tag("svc", "aaa")
    assert [str(e.tag) for e in store.list()] == ["svc:aaa", "svc:zzz"]
    # Creation times compare as times, whatever their spelling.
    _add(store, "svc", "mid", created="2026-01-01T01:00:00.5+01:00")  # 00:00:00.5Z: newer by half a second
    assert store.resolve("svc") == Tag("svc", "mid")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (b"name: [unclosed\n", "not valid YAML"),
        (b"- just\n- a list\n", "expected a mapping, found list"),
        (b"\xff\xfe\x00bad", "not valid YAML"),
    ],
)
def test_a_damaged_entry_is_reported_and_skipped_not_fatal(
    tmp_path: Path, damage: bytes, reason: str
) -> None:
    store = _store(tmp_path)
    _add(store, "svc", "v1", created="2026-01-01T00:00:00Z")
    bad = _add(store, "svc", "v2", created="2026-01-02T00:00:00Z")
    _add(store, "other", "v1")
    (bad / "bundle.yaml").write_bytes(damage)
    reported: list[str] = []
    assert [str(e.tag) for e in store.list(on_damaged=reported.append)] == ["other:v1", "svc:v1"]
    assert len(reported) == 1
    assert reported[0].startswith(f"bundle svc:v2 is damaged: its bundle.yaml cannot be read ({reason}")
    assert "`bundler verify svc:v2`" in reported[0] and "`bundler delete svc:v2`" in reported[0]
    with pytest.warns(UserWarning, match="bundle svc:v2 is damaged"):
        assert len(store.list("svc")) == 1
    # Its creation time is unreadable, so latest is the newest readable entry.
    assert store.resolve("svc") == Tag("svc", "v1")
    assert store.get("svc").tag == Tag("svc", "v1")
    with pytest.raises(StoreError, match="bundle svc:v2 is damaged"):
        store.get("svc:v2")
    assert store.verify("svc:v2") == ["bundle.yaml: sha256 differs from the manifest"]
    store.delete("svc:v1")
    with pytest.raises(StoreError, match="bundle 'svc' has no readable entry: bundle svc:v2 is damaged"):
        store.resolve("svc")
    assert store.delete("svc:v2") == Tag("svc", "v2")
    assert [str(e.tag) for e in store.list()] == ["other:v1"]


def test_cli_list_shows_the_rest_of_the_bundles(bundler_home: Path) -> None:
    from click.testing import CliRunner

    from bundler import cli

    store = Store(bundler_home / "bundles", "bundle", "bundle.yaml")
    (_add(store, "svc", "v1") / "bundle.yaml").write_text("name: [unclosed\n")
    (_add(store, "odd", "v1") / "bundle.yaml").write_text("name: odd\napis: [{path: /x}, 3]\n")
    _add(store, "good", "v1")
    r = CliRunner().invoke(cli.main, ["list"])
    assert r.exit_code == 0, r.output
    assert "good:v1" in r.stdout and "odd:v1" in r.stdout and "svc:v1" not in r.stdout
    assert "warning: bundle svc:v1 is damaged" in r.stderr


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        ("Bad Name", 2, "invalid tag 'Bad Name'"),
        ("../bundles/good", 2, "invalid tag '../bundles/good'"),  # was listed as '../bundles/good:v1'
        ("good:v1", 2, "list takes a name, not a tag"),
        ("good", 0, "good:v1"),
        ("good:latest", 0, "good:v1"),
    ],
)
def test_cli_list_takes_a_name(bundler_home: Path, name: str, code: int, message: str) -> None:
    from click.testing import CliRunner

    from bundler import cli

    _add(Store(bundler_home / "bundles", "bundle", "bundle.yaml"), "good", "v1")
    r = CliRunner().invoke(cli.main, ["list", name])
    assert r.exit_code == code, r.output
    assert message in (r.stdout if code == 0 else r.stderr)
    if code:  # the model store says the same
        r = CliRunner().invoke(cli.main, ["models", "list", name])
        assert r.exit_code == code and message in r.stderr, r.output


def test_delete_racing_another_delete_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    _add(store, "svc", "v1")
    _add(store, "svc", "v2", created="2026-01-02T00:00:00Z")
    other = _store(tmp_path)  # another process: it deletes the entry between resolve and rename
    real_resolve = Store.resolve

    def resolve_then_lose_the_race(self: Store, tag: str | Tag) -> Tag:
        full = real_resolve(self, tag)
        if self is store:
            other.delete(full)
        return full

    monkeypatch.setattr(Store, "resolve", resolve_then_lose_the_race)
    for tag in ("svc:v1", "svc"):
        with pytest.raises(NotFound, match=r"bundle svc:v\d not found .*deleted meanwhile"):
            store.delete(tag)
    assert store.list() == []


def test_commit_racing_a_delete_of_the_names_last_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    real_rename = os.rename
    raced: list[Path] = []

    def rename(src: str | Path, dst: str | Path) -> None:
        dst = Path(dst)
        if dst.parent.name == "svc" and not raced:  # a delete removes the empty <name>/ just made
            raced.append(dst.parent)
            dst.parent.rmdir()
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    path = _add(store, "svc", "v1")
    assert raced and path.is_dir() and store.resolve("svc") == Tag("svc", "v1")


def test_staging_leaves_nothing_on_failure(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(RuntimeError), store.staging() as staged:
        (staged / "bundle.yaml").write_text("name: x\n")
        raise RuntimeError("interrupted")
    assert store.list() == []
    assert list((store.root / ".tmp").iterdir()) == []


def test_manifest_names_changed_missing_and_extra_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = _add(store, "svc", "v1")
    assert verify_manifest(path) == []
    (path / "src/a.py").write_text("tampered")
    (path / "extra.txt").write_text("new")
    (path / "bundle.yaml").unlink()
    problems = verify_manifest(path)
    assert problems == [
        "bundle.yaml: missing",
        "src/a.py: sha256 differs from the manifest",
        "extra.txt: not in the manifest",
    ]


def test_export_is_deterministic_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    _add(store, "svc", "v1", body="hello")
    a = store.export("svc:v1", tmp_path / "a.tar.gz")
    b = store.export("svc:v1", tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    other = Store(tmp_path / "other", "bundle", "bundle.yaml")
    tag, created = other.import_(a)
    assert (tag, created) == (Tag("svc", "v1"), True)
    assert (other.path("svc:v1") / "src/a.py").read_text() == "hello"
    assert other.import_(a) == (Tag("svc", "v1"), False)


def _archive(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    out = tmp_path / "evil.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        info = tarfile.TarInfo("bundle.yaml")
        payload = b"name: evil\nversion: v1\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return out


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = linkname
    return m


@pytest.mark.parametrize(
    "member, reason",
    [
        (_member("/etc/passwd"), "absolute path"),
        (_member("../../escape.txt"), "outside the archive"),
        (_member("src/../../x"), "outside the archive"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("hard", tarfile.LNKTYPE, "bundle.yaml"), "is a link"),
        (_member("dev", tarfile.CHRTYPE), "device"),
        (_member("fifo", tarfile.FIFOTYPE), "device, fifo"),
    ],
)
def test_import_refuses_unsafe_archives_and_leaves_store_unchanged(
    tmp_path: Path, member: tarfile.TarInfo, reason: str
) -> None:
    store = _store(tmp_path)
    _add(store, "keep", "v1")
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*") if ".tmp" not in p.parts)
    with pytest.raises(UnsafeArchive, match=reason):
        store.import_(_archive(tmp_path, member, b"data"))
    after = sorted(p.relative_to(store.root) for p in store.root.rglob("*") if ".tmp" not in p.parts)
    assert before == after
    assert not (tmp_path / "escape.txt").exists()


def test_import_refuses_version_latest_and_commit_needs_a_version(tmp_path: Path) -> None:
    from bundler.exceptions import BadInput

    store = _store(tmp_path)
    path = _add(store, "svc", "v1")
    (path / "bundle.yaml").write_text("name: svc\nversion: latest\n")
    from bundler.store import write_manifest

    write_manifest(path)
    archive = store.export("svc:v1", tmp_path / "svc.tar.gz")
    other = Store(tmp_path / "other", "bundle", "bundle.yaml")
    with pytest.raises(BadInput, match="version 'latest' is reserved"):
        other.import_(archive)
    assert other.list() == []
    for version in (None, "latest"):
        with pytest.raises(BadInput, match="without a version"), other.staging() as staged:
            other.commit(staged, Tag("svc", version))


def test_import_refuses_tampered_archive(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _add(store, "svc", "v1", body="original")
    archive = store.export("svc:v1", tmp_path / "svc.tar.gz")
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        for m, data in members:
            if m.name == "src/a.py":
                data = b"changed!"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    other = Store(tmp_path / "other", "bundle", "bundle.yaml")
    with pytest.raises(Exception, match=r"src/a.py: sha256 differs"):
        other.import_(tampered)
    assert other.list() == []


def test_export_to_an_unwritable_place_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    from bundler.exceptions import BadInput

    store = _store(tmp_path)
    _add(store, "svc", "v1")
    with pytest.raises(BadInput, match=r"cannot write the archive .*missing/x\.tar\.gz"):
        store.export("svc:v1", tmp_path / "missing" / "x.tar.gz")
    with pytest.raises(NotFound, match=r"\(see `bundler list`\)"):
        store.resolve("nothing")
    assert not list(tmp_path.glob("**/*.part"))


def test_export_to_a_directory_with_a_trailing_slash_makes_it(tmp_path: Path) -> None:
    from bundler.exceptions import BadInput

    store = _store(tmp_path)
    _add(store, "svc", "v1")
    existing = store.export("svc:v1", tmp_path)
    assert existing == tmp_path / "svc-v1.tar.gz"
    made = store.export("svc:v1", f"{tmp_path}/out/new dir/")
    assert made == tmp_path / "out" / "new dir" / "svc-v1.tar.gz"
    assert made.read_bytes() == existing.read_bytes()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(BadInput, match=r"cannot make the directory .*a-file for the archive"):
        store.export("svc:v1", f"{tmp_path}/a-file/")
    assert (tmp_path / "a-file").read_text() == "x"


def test_export_into_the_store_is_refused_and_damages_nothing(bundler_home: Path) -> None:
    from bundler.exceptions import BadInput

    store = Store(bundler_home / "bundles", "bundle", "bundle.yaml")
    entry = _add(store, "svc", "v1")
    models = bundler_home / "models"
    for dest in (entry, f"{entry}/", entry / "svc.tar.gz", f"{entry}/sub/", models / "m/v1/x.tar.gz"):
        with pytest.raises(BadInput, match=r"cannot write the archive into the store"):
            store.export("svc:v1", dest)
    assert store.verify("svc:v1") == []
    assert not (entry / "sub").exists()


def test_cli_export_to_a_new_directory(bundler_home: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bundler import cli

    _add(Store(bundler_home / "bundles", "bundle", "bundle.yaml"), "svc", "v1")
    r = CliRunner().invoke(cli.main, ["export", "svc", f"{tmp_path}/out/new dir/"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "new dir" / "svc-v1.tar.gz").is_file()
    assert r.stdout.strip() == str(tmp_path / "out" / "new dir" / "svc-v1.tar.gz")


def test_import_replaces_a_damaged_stored_copy_and_keeps_an_intact_one(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = _add(store, "svc", "v1", body="original")
    archive = store.export("svc:v1", tmp_path / "svc.tar.gz")
    assert store.import_(archive) == (Tag("svc", "v1"), False)  # intact: kept as it is
    (path / "src/a.py").write_text("damaged")
    assert verify_manifest(path) != []
    assert store.import_(archive) == (Tag("svc", "v1"), True)  # the checked archive replaces it
    assert verify_manifest(path) == [] and (path / "src/a.py").read_text() == "original"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["models", "import", "{dir}"],
            "{dir}: is a directory, not an archive; name the .tar.gz file that 'bundler models export' wrote",
        ),
        (
            ["import", "{dir}"],
            "{dir}: is a directory, not an archive; name the .tar.gz file that 'bundler export'",
        ),
        (
            ["models", "import", ""],
            "no archive given (an empty path); name the .tar.gz file that 'bundler models",
        ),
        (["import", ""], "no archive given (an empty path)"),
        (["import", "{dir}/missing.tar.gz"], "{dir}/missing.tar.gz: no such archive file; check the path"),
        (["models", "import", "/dev/null"], "/dev/null: not a regular file"),
        (["export", "good", ""], "no archive path given (an empty path)"),
    ],
)
def test_cli_import_names_what_is_wrong_with_the_path(
    bundler_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from bundler import cli

    _add(Store(bundler_home / "bundles", "bundle", "bundle.yaml"), "good", "v1")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli.main, [a.format(dir=tmp_path) for a in args])
    assert r.exit_code == 2, r.output
    assert message.format(dir=tmp_path) in r.stderr
    assert list(tmp_path.iterdir()) == []  # an empty export path wrote nothing into the working directory


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (
            "quickstrt",
            "bundle 'quickstrt' not found in {root}; did you mean 'quickstart'? (see `bundler list`)",
        ),
        ("quickstrt:v1", "bundle quickstrt:v1 not found in {root}; did you mean 'quickstart'?"),
        ("quickstart:v2", "bundle quickstart:v2 not found in {root} (see `bundler list`)"),  # a version typo
        ("zzz", "bundle 'zzz' not found in {root} (see `bundler list`)"),
    ],
)
def test_a_tag_not_found_suggests_a_stored_name_close_to_it(tmp_path: Path, tag: str, message: str) -> None:
    # A typo in a tag said only "not found"; unknown bentofile keys get a "did you mean" already.
    store = _store(tmp_path)
    _add(store, "quickstart", "v1")
    _add(store, "iris", "v1")
    with pytest.raises(NotFound) as info:
        store.resolve(tag)
    assert str(info.value).startswith(message.format(root=store.root))


def test_importing_an_archive_of_the_other_kind_names_the_right_command(tmp_path: Path) -> None:
    # It said only "not a bundler model archive (model.yaml is missing)".
    bundles = _store(tmp_path)
    models = Store(tmp_path / "models", "model", "model.yaml")
    _add(bundles, "svc", "v1")
    with models.staging() as staged:
        (staged / "model.yaml").write_text("name: clf\nversion: v1\ncreation_time: '2026-01-01T00:00:00Z'\n")
        models.commit(staged, Tag("clf", "v1"))
    bundle_archive = bundles.export("svc:v1", tmp_path / "svc.tar.gz")
    model_archive = models.export("clf:v1", tmp_path / "clf.tar.gz")
    with pytest.raises(BadInput, match=r"it is a bundle archive: import it with 'bundler import'"):
        models.import_(bundle_archive)
    with pytest.raises(BadInput, match=r"it is a model archive: import it with 'bundler models import'"):
        bundles.import_(model_archive)
    assert [e.tag for e in models.list()] == [Tag("clf", "v1")]
    assert [e.tag for e in bundles.list()] == [Tag("svc", "v1")]


def test_latest_is_found_while_another_process_stores_one_and_deletes_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    other = _store(tmp_path)  # another process: it stores v2, then deletes v1, while this one lists svc/
    _add(store, "svc", "v1")
    real_iterdir = Path.iterdir
    race = {"old": "", "new": ""}

    def iterdir(self: Path) -> object:
        children = list(real_iterdir(self))  # the listing is taken before the new entry is there ...
        if self == store.root / "svc" and race["new"]:
            _add(other, "svc", race["new"], created="2026-01-02T00:00:00Z")
            other.delete(f"svc:{race['old']}")  # ... and the old one is gone before it is read
            race["new"] = ""
        return iter(children)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    race.update(old="v1", new="v2")
    assert store.resolve("svc") == Tag("svc", "v2")
    race.update(old="v2", new="v3")
    assert [e.tag for e in store.list("svc")] == [Tag("svc", "v3")]


def test_import_of_an_archive_with_corrupted_compressed_data_is_refused_with_a_message(
    tmp_path: Path,
) -> None:
    from bundler.exceptions import BundlerError

    store = _store(tmp_path)
    _add(store, "svc", "v1", body="".join(f"line {i}: {i * i}\n" for i in range(20000)))
    data = store.export("svc:v1", tmp_path / "svc.tar.gz").read_bytes()
    other = Store(tmp_path / "other", "bundle", "bundle.yaml")
    for offset in range(200, len(data) - 100, 997):  # some land on deflate block headers: zlib.error
        corrupted = bytearray(data)
        corrupted[offset : offset + 16] = bytes(b ^ 0x5A for b in corrupted[offset : offset + 16])
        archive = tmp_path / "corrupted.tar.gz"
        archive.write_bytes(bytes(corrupted))
        with pytest.raises(BundlerError, match=r"corrupted\.tar\.gz: ") as caught:
            other.import_(archive)
        assert ".tmp/stage-" not in str(caught.value)  # the archive is named, not the scratch directory
    assert other.list() == [] and list((other.root / ".tmp").iterdir()) == []


def test_import_bigger_than_the_free_space_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    store = _store(tmp_path)
    _add(store, "svc", "v1", body="x" * 3_000_000)  # a gzip bomb in small: 3 MB from 3 kB
    archive = store.export("svc:v1", tmp_path / "svc.tar.gz")
    other = Store(tmp_path / "other", "bundle", "bundle.yaml")
    written: list[object] = []
    free = shutil.disk_usage(tmp_path)._replace(free=1_000_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    monkeypatch.setattr(shutil, "copyfileobj", lambda *args, **kwargs: written.append(args))
    with pytest.raises(StoreError, match=r"svc\.tar\.gz: unpacks to 3\.0 MB, more than the 1\.0 MB free in"):
        other.import_(archive)
    assert written == [] and other.list() == []


@pytest.mark.parametrize("errno_, reason", [(28, "No space left on device"), (30, "Read-only file system")])
def test_import_into_a_full_or_read_only_store_blames_the_store_not_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_: int, reason: str
) -> None:
    import shutil

    store = _store(tmp_path)
    _add(store, "svc", "v1")
    archive = store.export("svc:v1", tmp_path / "svc.tar.gz")
    other = Store(tmp_path / "other", "bundle", "bundle.yaml")

    def copyfileobj(*args: object, **kwargs: object) -> None:
        raise OSError(errno_, reason)

    monkeypatch.setattr(shutil, "copyfileobj", copyfileobj)
    with pytest.raises(StoreError, match=rf"cannot write to the bundle store at {other.root}: {reason}; "):
        other.import_(archive)
    assert other.list() == [] and list((other.root / ".tmp").iterdir()) == []


def test_a_store_whose_scratch_directory_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.root.mkdir(parents=True)
    (store.root / ".tmp").write_text("not a directory")
    with pytest.raises(StoreError, match=rf"cannot write to the bundle store at {store.root}: "):
        _add(store, "svc", "v1")


def test_export_removes_the_parts_that_killed_exports_left_beside_the_archive(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = _store(tmp_path)
    _add(store, "svc", "v1")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = tmp_path / f".svc-v1.tar.gz.{int(gone.stdout)}.part"  # an export killed mid-way (kill -9)
    alive = tmp_path / ".svc-v1.tar.gz.1.part"  # pid 1 is running: an export in progress
    other = tmp_path / f".other.tar.gz.{int(gone.stdout)}.part"  # another archive's: not this one's to remove
    for part in (dead, alive, other):
        part.write_bytes(b"half an archive")
    assert store.export("svc:v1", tmp_path) == tmp_path / "svc-v1.tar.gz"
    assert not dead.exists() and alive.exists() and other.exists()


def test_an_import_replacing_a_damaged_copy_that_another_one_removed_first_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    path = _add(store, "svc", "v1", body="original")
    archive = store.export("svc:v1", tmp_path / "svc.tar.gz")
    (path / "src/a.py").write_text("damaged")
    other = _store(tmp_path)  # another process importing the same archive: it removed the damaged copy
    real_discard = Store._discard

    def discard_after_the_other_one(self: Store, entry: Path) -> None:
        real_discard(other, entry)
        real_discard(self, entry)

    monkeypatch.setattr(Store, "_discard", discard_after_the_other_one)
    assert store.import_(archive) == (Tag("svc", "v1"), True)
    assert verify_manifest(path) == [] and (path / "src/a.py").read_text() == "original"


def test_bundle_info_reads_as_attributes_as_model_info_does(bundler_home: Path) -> None:
    import bundler

    _add(Store(bundler_home / "bundles", "bundle", "bundle.yaml"), "svc", "v1")
    for bundle in (bundler.bundles.get("svc"), bundler.bundles.list()[0]):
        # BentoML: bentoml.get("svc:latest").info.labels; was AttributeError: 'dict' object has no attribute
        assert bundle.info.version == "v1" and bundle.info["name"] == "svc"
        with pytest.raises(AttributeError, match=r"bundle svc:v1: info has no 'nmae'; did you mean 'name'\?"):
            bundle.info.nmae  # noqa: B018
