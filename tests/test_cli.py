"""The command line as a script sees it: what goes to stdout, stderr and the exit code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundler import cli
from bundler.store import Store, Tag


def _add(home: Path, kind: str, name: str, version: str, created: str = "2026-01-01T00:00:00Z") -> None:
    meta = "model.yaml" if kind == "models" else "bundle.yaml"
    store = Store(home / kind, kind.rstrip("s"), meta)
    with store.staging() as staged:
        (staged / meta).write_text(f"name: {name}\nversion: {version}\ncreation_time: '{created}'\n")
        store.commit(staged, Tag(name, version))


LONG = "a-model-name-as-long-as-a-tag-allows-" + "x" * 26  # 63 characters


@pytest.mark.parametrize("columns", [None, "40"])
@pytest.mark.parametrize("kind", ["bundles", "models"])
def test_list_piped_prints_whole_tags(
    bundler_home: Path, monkeypatch: pytest.MonkeyPatch, kind: str, columns: str | None
) -> None:
    _add(bundler_home, kind, LONG, "01m8f7qh8ws7dsd9")
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    args = ["list"] if kind == "bundles" else ["models", "list"]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    assert f"{LONG}:01m8f7qh8ws7dsd9" in r.stdout  # not cut to 'a-model-name-…' for grep, awk and cut
    assert "2026-01-01T00:00:00Z" in r.stdout
    assert "…" not in r.stdout and "\x1b[" not in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["models", "list", "-o", "json"],
        ["get", "svc"],
        ["models", "delete", "svc:v1"],
        ["build", str(Path(__file__).resolve().parent.parent / "examples/quickstart")],
    ],
)
@pytest.mark.parametrize("home", ["a-file", "a-file/below"])
def test_a_file_as_bundler_home_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], home: str
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("BUNDLER_HOME", str(tmp_path / home))
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 2, r.output  # was an empty list, "not found", or a traceback (build)
    assert f"error: BUNDLER_HOME {tmp_path / home}" in r.stderr
    assert f"{tmp_path / 'a-file'} is a file, not a directory; set BUNDLER_HOME to a directory" in r.stderr
    assert r.stdout == ""


def test_a_store_that_cannot_be_written_is_an_error_not_a_traceback(bundler_home: Path) -> None:
    (bundler_home / "bundles").write_text("")
    r = CliRunner().invoke(
        cli.main, ["build", str(Path(__file__).resolve().parent.parent / "examples/quickstart")]
    )
    assert r.exit_code == 1, r.output
    where = bundler_home / "bundles"
    assert f"error: cannot write to the bundle store at {where}: Not a directory" in r.stderr


def _tags(home: Path, kind: str) -> list[str]:
    meta = "model.yaml" if kind == "models" else "bundle.yaml"
    return sorted(str(e.tag) for e in Store(home / kind, kind.rstrip("s"), meta).list())


@pytest.mark.parametrize("kind", ["bundles", "models"])
@pytest.mark.parametrize(
    ("tags", "code", "message"),
    [
        (["svc:v1", "nope"], 1, "'nope' not found"),
        (["nope", "svc:v1"], 1, "'nope' not found"),
        (["svc:v1", "Bad"], 2, "invalid tag 'Bad'"),
    ],
)
def test_delete_checks_every_tag_before_deleting_any(
    bundler_home: Path, kind: str, tags: list[str], code: int, message: str
) -> None:
    _add(bundler_home, kind, "svc", "v1")
    _add(bundler_home, kind, "svc", "v2", created="2026-01-02T00:00:00Z")
    args = ["delete", *tags] if kind == "bundles" else ["models", "delete", *tags]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == code, r.output
    assert message in r.stderr and "nothing deleted" in r.stderr
    assert r.stdout == ""  # was: svc:v1 deleted when it came first, kept when it came second
    assert _tags(bundler_home, kind) == ["svc:v1", "svc:v2"]


@pytest.mark.parametrize("kind", ["bundles", "models"])
def test_delete_of_one_entry_named_twice_deletes_it_once(bundler_home: Path, kind: str) -> None:
    _add(bundler_home, kind, "svc", "v1")
    _add(bundler_home, kind, "svc", "v2", created="2026-01-02T00:00:00Z")
    args = ["svc:latest", "svc", "svc:v2"]
    r = CliRunner().invoke(cli.main, ["delete", *args] if kind == "bundles" else ["models", "delete", *args])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"deleted {kind.rstrip('s')} svc:v2\n"  # was: v2, then v1 as the new latest
    assert _tags(bundler_home, kind) == ["svc:v1"]


@pytest.mark.parametrize("kind", ["bundles", "models"])
def test_get_prints_yaml_json_or_the_path_with_the_full_tag(bundler_home: Path, kind: str) -> None:
    import json

    import yaml

    _add(bundler_home, kind, "svc", "v1")
    path = bundler_home / kind / "svc" / "v1"
    get = ["get", "svc"] if kind == "bundles" else ["models", "get", "svc"]
    shown = {}
    for output in ("yaml", "json", "path"):
        r = CliRunner().invoke(cli.main, [*get, "-o", output])
        assert r.exit_code == 0, r.output  # `-o path` as in BentoML: `cd $(bundler models get iris -o path)`
        shown[output] = r.stdout
    assert shown["path"] == f"{path}\n"
    data = json.loads(shown["json"])
    assert yaml.safe_load(shown["yaml"]) == data
    assert CliRunner().invoke(cli.main, get).stdout == shown["yaml"]  # yaml is the default
    assert data["path"] == str(path) and data["version"] == "v1"
    assert data["tag"] == "svc:v1"  # the same key for a model as for a bundle (and in `list -o json`)


@pytest.mark.parametrize("kind", ["bundles", "models"])
def test_list_json_and_yaml_have_the_keys_and_values_of_get(bundler_home: Path, kind: str) -> None:
    import json

    import yaml

    _add(bundler_home, kind, "svc", "v1")
    _add(bundler_home, kind, "svc", "v2", created="2026-01-02T00:00:00Z")
    prefix = [] if kind == "bundles" else ["models"]
    r = CliRunner().invoke(cli.main, [*prefix, "list", "-o", "json"])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)
    assert [e["tag"] for e in listed] == ["svc:v2", "svc:v1"]
    got = json.loads(CliRunner().invoke(cli.main, [*prefix, "get", "svc:v1", "-o", "json"]).stdout)
    for key in ("tag", "path", "creation_time"):  # was "created" in list, "creation_time" in get
        assert listed[1][key] == got[key]
    r = CliRunner().invoke(cli.main, [*prefix, "list", "-o", "yaml"])  # was refused: only table or json
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout) == listed


@pytest.mark.parametrize("kind", ["bundles", "models"])
def test_list_table_prints_stored_values_as_text_not_markup(bundler_home: Path, kind: str) -> None:
    _add(bundler_home, kind, "svc", "v1", created="[/x] [bold]")
    r = CliRunner().invoke(cli.main, ["list"] if kind == "bundles" else ["models", "list"])
    assert r.exit_code == 0, r.output  # was rich's MarkupError: one hand-edited or imported entry broke it
    assert "[/x] [bold]" in r.stdout


@pytest.mark.parametrize("kind", ["bundles", "models"])
def test_verify_of_the_other_kinds_tag_names_the_flag(bundler_home: Path, kind: str) -> None:
    _add(bundler_home, kind, "svc", "v1")
    args = ["verify", "svc"] if kind == "models" else ["verify", "--model", "svc"]
    fix = "bundler verify --model svc" if kind == "models" else "bundler verify svc"
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 1, r.output  # was "not found" alone
    assert f"not found in {bundler_home}" in r.stderr and f"svc is a {kind[:-1]}: `{fix}`" in r.stderr
    r = CliRunner().invoke(cli.main, ["verify", "nope"])
    assert r.exit_code == 1 and " is a " not in r.stderr


def test_get_json_is_strict_json_for_any_stored_metadata(bundler_home: Path) -> None:
    import json

    from bundler.onnx import save_model
    from tests.models import make_mlp

    # save_model takes int keys (as BentoML does) and NaN: `-o json` raised TypeError (sorting 1 among
    # str keys), and printed NaN, which jq and JSON.parse refuse.
    save_model("m", make_mlp(), metadata={"classes": {0: "cat", "other": "dog"}, "loss": float("nan")})
    r = CliRunner().invoke(cli.main, ["models", "get", "m", "-o", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert data["metadata"] == {"classes": {"0": "cat", "other": "dog"}, "loss": None}
    assert "loss: .nan" in CliRunner().invoke(cli.main, ["models", "get", "m"]).stdout  # YAML keeps NaN


@pytest.mark.parametrize("flag", ["-y", "--yes", "--assume-yes"])
@pytest.mark.parametrize("kind", ["bundles", "models"])
def test_delete_takes_bentomls_assume_yes(bundler_home: Path, kind: str, flag: str) -> None:
    _add(bundler_home, kind, "svc", "v1")
    delete = ["delete"] if kind == "bundles" else ["models", "delete"]
    r = CliRunner().invoke(cli.main, [*delete, "svc", flag])  # `bentoml models delete iris -y` in a script
    assert r.exit_code == 0, r.output
    assert _tags(bundler_home, kind) == []


def test_version_is_the_running_codes_even_without_installed_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    import bundler

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)  # a checkout on PYTHONPATH
    r = CliRunner().invoke(cli.main, ["--version"])
    assert r.exit_code == 0, r.output  # was RuntimeError: 'bundler' is not installed
    assert r.stdout == f"bundler, version {bundler.__version__}\n"


@pytest.mark.parametrize(
    ("files", "target", "message"),
    [
        ({}, "no/such/dir", "no such directory"),
        ({"empty/.keep": ""}, "empty", "a directory without bundle.yaml or bentofile.yaml"),
        ({"clisvc.py": "import bundler\nsvc = bundler.Service('x')\n"}, "clisvc:svcx", "no attribute 'svcx'"),
    ],
)
def test_serve_a_wrong_path_or_attribute_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], target: str, message: str
) -> None:
    # Exit 2 as for `bundler build no/such/dir`; serve said 1, the exit of a tag not in the store.
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # serve puts the working directory on it
    r = CliRunner().invoke(cli.main, ["serve", target, "--port", "0"])
    assert r.exit_code == 2, r.output
    assert message in r.stderr


def test_serve_help_names_what_the_command_also_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # --port is also read from $PORT and TARGET defaults to the project directory; the help said neither.
    import bundler.server.serve as serve_module

    got: list[tuple[str, int]] = []
    monkeypatch.setattr(serve_module, "serve", lambda target, **kw: got.append((target, kw["port"])))
    monkeypatch.setenv("PORT", "3917")
    assert CliRunner().invoke(cli.main, ["serve"]).exit_code == 0
    assert got == [(".", 3917)]
    text = " ".join(CliRunner().invoke(cli.main, ["serve", "--help"]).stdout.split())
    assert "Also from $PORT" in text
    assert "a project directory (its bentofile.yaml names the service); the default is the current" in text
    assert "$BUNDLER_MAX_BODY_SIZE" in text


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        ({"PORT": "abc"}, [], "'abc' is not a valid integer range (from $PORT; fix or unset it)"),
        ({"BUNDLER_LOG_LEVEL": "loud"}, [], "(from $BUNDLER_LOG_LEVEL; fix or unset it)"),
        ({}, ["--port", "abc"], "'abc' is not a valid integer range."),  # the command line's own: no $PORT
        ({"PORT": "abc"}, ["--port", "99999"], "99999 is not in the range 0<=x<=65535."),
    ],
)
def test_a_bad_serve_setting_from_the_environment_is_said_to_come_from_there(
    env: dict[str, str], args: list[str], says: str
) -> None:
    # click said "Invalid value for '--port'" for PORT=abc, an option nobody typed.
    r = CliRunner().invoke(cli.main, ["serve", *args], env=env)
    assert r.exit_code == 2
    assert r.stderr.rstrip().endswith(says), r.stderr


def test_output_to_a_full_disk_is_an_error_message_not_a_traceback(tmp_path: Path) -> None:
    import subprocess

    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [sys.executable, "-m", "bundler.cli", "list", "-o", "json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1
    assert r.stderr.strip() == "error: No space left on device", r.stderr
