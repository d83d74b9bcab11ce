"""bentofile.yaml validation: the real-world and broken corpora, context checks, defaults."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundler.config import (
    MAX_FILE_BYTES,
    BentoConfig,
    CondaOptions,
    DockerOptions,
    ModelSpec,
    Problem,
    PythonOptions,
    load_bentofile,
    validate_file,
)
from bundler.exceptions import ConfigError
from bundler.resources import data_dir

CORPUS = Path(__file__).parent / "bentofiles"
VALID = sorted((CORPUS / "valid").glob("*.yaml"))
BROKEN = sorted((CORPUS / "broken").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+): (.+)$", re.MULTILINE)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def messages(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


# -- corpora ----------------------------------------------------------------------------------------


def test_corpora_are_big_enough() -> None:
    assert len(VALID) >= 15
    assert len(BROKEN) >= 15


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_real_world_bentofile_is_valid_unchanged(path: Path) -> None:
    assert path.read_text(encoding="utf-8").startswith("# source: "), "say where the file comes from"
    assert messages(validate_file(path, schema_only=True)) == []
    config = load_bentofile(path, schema_only=True)
    assert config.service == config.service.strip() and ":" in config.service
    json.dumps(config.to_dict())  # JSON-able, for bundle.yaml


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_bentofile_reports_every_flaw_with_its_line(path: Path) -> None:
    expected = [(int(line), text) for line, text in EXPECT.findall(path.read_text(encoding="utf-8"))]
    assert expected, f"{path.name} needs '# expect: <line>: <substring>' header lines"
    problems = validate_file(path, schema_only=True)
    assert len(problems) == len(expected), messages(problems)
    for problem, (line, text) in zip(problems, expected, strict=True):
        assert problem.line == line, str(problem)
        assert text in str(problem)
        assert str(problem).startswith(f"{path}:{line}:{problem.column}: ")
    with pytest.raises(ConfigError) as info:
        load_bentofile(path, schema_only=True)
    assert info.value.problems == messages(problems)
    assert info.value.exit_code == 2
    assert str(info.value).splitlines()[-1].startswith(f"{len(problems)} problem")


def test_problem_str_names_file_line_column_key_and_fix(tmp_path: Path) -> None:
    f = write(
        tmp_path / "bentofile.yaml",
        'service: "service:svc"\ninclude:\n  - "*.py"\npython:\n  packages: [numpy]\ndocker:\n'
        '    pyhton_version: "3.11"\n',
    )
    [problem] = validate_file(f, schema_only=True)
    assert problem == Problem(
        str(f), 7, 5, "docker.pyhton_version", "unknown key 'pyhton_version' (did you mean 'python_version'?)"
    )
    assert str(problem) == (
        f"{f}:7:5: docker.pyhton_version: unknown key 'pyhton_version' (did you mean 'python_version'?)"
    )


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("service: s:svc\ndokcer: {}\n", "dokcer: unknown key 'dokcer' (did you mean 'docker'?)"),
        ("service: s:svc\npython:\n  requirement_txt: r.txt\n", "(did you mean 'requirements_txt'?)"),
        ("service: s:svc\nsystem_packages: [git]\n", "(did you mean 'docker.system_packages'?)"),
        ("service: s:svc\ndocker:\n  packages: [x]\n", "(did you mean 'python.packages'?)"),
        ("service: s:svc\nmodel:\n  tag: sd\n", "(did you mean 'models'?)"),
        ("service: s:svc\nxyzzy: 1\n", "allowed keys: args, conda, description"),
    ],
)
def test_unknown_keys_get_a_suggestion(tmp_path: Path, yaml_text: str, expected: str) -> None:
    [problem] = validate_file(write(tmp_path / "bentofile.yaml", yaml_text), schema_only=True)
    assert expected in str(problem)


def test_all_problems_at_once_sorted_by_line(tmp_path: Path) -> None:
    f = write(
        tmp_path / "bentofile.yaml",
        "service: bad\n"
        "docker:\n  distro: ubuntu\n  python_version: '2'\n"
        "python:\n  lock_packages: maybe\n  wheels: a.whl\n"
        "models:\n  - BAD\n",
    )
    problems = validate_file(f, schema_only=True)
    assert [(p.line, p.key_path) for p in problems] == [
        (1, "service"),
        (3, "docker.distro"),
        (4, "docker.python_version"),
        (6, "python.lock_packages"),
        (7, "python.wheels"),
        (9, "models[0]"),
    ]


def test_duplicate_nested_key_and_non_text_key(tmp_path: Path) -> None:
    f = write(
        tmp_path / "bentofile.yaml", "service: s:svc\ndocker:\n  distro: debian\n  distro: alpine\n3: x\n"
    )
    got = messages(validate_file(f, schema_only=True))
    assert any(":4:3: docker.distro: duplicate key 'distro' (first at line 3)" in m for m in got), got
    assert any(":5:1: the key '3' is not text" in m for m in got), got


def test_unquoted_versions_keep_their_digits(tmp_path: Path) -> None:
    # YAML reads 3.10 as the float 3.1; the build file means Python 3.10.
    f = write(
        tmp_path / "bentofile.yaml", "service: s:svc\ndocker:\n  python_version: 3.10\n  cuda_version: 12.1\n"
    )
    config = load_bentofile(f, schema_only=True)
    assert (config.docker.python_version, config.docker.cuda_version) == ("3.10", "12.1")


@pytest.mark.parametrize(
    ("pip_args", "expect"),
    [
        ("--pre 'x", "cannot be split into words (No closing quotation); balance its quotes"),
        ("'--a\\nRUN id'", "has a line break inside a quoted word"),
    ],
)
def test_pip_args_the_image_cannot_take_are_reported(tmp_path: Path, pip_args: str, expect: str) -> None:
    f = write(tmp_path / "bentofile.yaml", f'service: s:svc\npython:\n  pip_args: "{pip_args}"\n')
    [problem] = validate_file(f, schema_only=True)
    assert problem.key_path == "python.pip_args" and problem.line == 3 and expect in problem.message


@pytest.mark.parametrize("cuda", ["11.6", "12", "default"])
def test_bentoml_short_cuda_versions_validate_with_the_context(tmp_path: Path, cuda: str) -> None:
    # Real-world files (pneumonia-detection-gpu, BentoML's realworld_bentofile) write these; the Dockerfile
    # check refused every version but a full X.Y.Z.
    write(tmp_path / "service.py", "svc = object()\n")
    f = write(tmp_path / "bentofile.yaml", f"service: service:svc\ndocker:\n  cuda_version: {cuda}\n")
    assert messages(validate_file(f)) == []


# -- hostile and odd files --------------------------------------------------------------------------


def test_very_large_file_is_refused_without_parsing(tmp_path: Path) -> None:
    f = tmp_path / "bentofile.yaml"
    f.write_text("service: s:svc\nlabels:\n" + "".join(f"  k{i}: v\n" for i in range(120_000)))
    assert f.stat().st_size > MAX_FILE_BYTES
    start = time.monotonic()
    [problem] = validate_file(f, schema_only=True)
    assert time.monotonic() - start < 1
    assert (problem.line, problem.column) == (1, 1)
    assert "refused above 1048576 bytes" in problem.message


def test_billion_laughs_is_refused_quickly() -> None:
    start = time.monotonic()
    [problem] = validate_file(CORPUS / "broken" / "billion-laughs.yaml", schema_only=True)
    assert time.monotonic() - start < 2
    assert "refused" in problem.message


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "bentofile.yaml", "service: s:svc\nargs: " + "[" * 200 + "]" * 200 + "\n")
    [problem] = validate_file(f, schema_only=True)
    assert "deeper than" in problem.message


def test_not_utf8_is_a_problem(tmp_path: Path) -> None:
    f = tmp_path / "bentofile.yaml"
    f.write_bytes(b"service: s:svc\ndescription: caf\xe9\n")
    [problem] = validate_file(f)
    assert "not UTF-8" in problem.message


def test_top_level_scalar_is_a_problem(tmp_path: Path) -> None:
    [problem] = validate_file(write(tmp_path / "bentofile.yaml", "# hi\nservice:svc\n"))
    assert (problem.line, problem.column) == (2, 1)
    assert "the top level must be a mapping" in problem.message and "got a string" in problem.message


# -- the build context ------------------------------------------------------------------------------


def project(tmp_path: Path, bentofile: str, files: dict[str, str] | None = None) -> Path:
    write(tmp_path / "service.py", "svc = None\n")
    for name, text in (files or {}).items():
        write(tmp_path / name, text)
    return write(tmp_path / "bentofile.yaml", bentofile)


def test_context_checks_pass_for_a_complete_project(tmp_path: Path) -> None:
    f = project(
        tmp_path,
        'service: "service:svc"\ndescription: "file: ./README.md"\n'
        "python:\n  requirements_txt: ./requirements.txt\n  wheels: [wheels/a-1.0-py3-none-any.whl]\n"
        "docker:\n  setup_script: ./setup.sh\n  dockerfile_template: Dockerfile.j2\n  env: .env\n"
        "conda:\n  environment_yml: env/environment.yml\n",
        {
            "README.md": "# My bento\n",
            "requirements.txt": "numpy\n",
            "wheels/a-1.0-py3-none-any.whl": "",
            "setup.sh": "#!/bin/sh\n",
            "Dockerfile.j2": "{% extends bento_base_template %}\n",
            ".env": "# comment\nexport A=1\nB='two words'\n",
            "env/environment.yml": "dependencies: []\n",
        },
    )
    (tmp_path / "setup.sh").chmod(0o755)
    assert messages(validate_file(f)) == []
    config = load_bentofile(f)
    assert config.description == "# My bento\n"
    assert config.docker.env == {"A": "1", "B": "two words"}
    assert config.conda == CondaOptions(environment_yml="env/environment.yml")


@pytest.mark.parametrize(
    ("yaml_text", "key_path", "expected"),
    [
        ("python:\n  requirements_txt: ./requirements.txt\n", "python.requirements_txt", "not found"),
        ("python:\n  wheels: [a.whl, b.whl]\n", "python.wheels[0]", "wheel 'a.whl' not found"),
        ("docker:\n  dockerfile_template: t.j2\n", "docker.dockerfile_template", "not found"),
        ("docker:\n  setup_script: setup.sh\n", "docker.setup_script", "not found"),
        ("docker:\n  env: ./.env\n", "docker.env", ".env file './.env' not found"),
        ("conda:\n  environment_yml: environment.yml\n", "conda.environment_yml", "not found"),
        ('description: "file: ./README.md"\n', "description", "description file './README.md' not found"),
        (
            "python:\n  requirements_txt: ../outside.txt\n",
            "python.requirements_txt",
            "outside the build context",
        ),
        (
            "python:\n  requirements_txt: /etc/hostname\n",
            "python.requirements_txt",
            "outside the build context",
        ),
        ("python:\n  requirements_txt: ~/reqs.txt\n", "python.requirements_txt", "outside the build context"),
    ],
)
def test_missing_or_escaping_files_are_problems(
    tmp_path: Path, yaml_text: str, key_path: str, expected: str
) -> None:
    write(tmp_path / "outside.txt", "numpy\n")
    f = project(tmp_path / "proj", 'service: "service:svc"\n' + yaml_text)
    problems = validate_file(f)
    assert problems, "expected a problem"
    assert problems[0].key_path == key_path and expected in problems[0].message, messages(problems)
    assert validate_file(f, schema_only=True) == []  # the schema alone is satisfied


@pytest.mark.parametrize(
    ("yaml_text", "name", "key_path"),
    [
        ('description: "file: ./README.md"\n', "README.md", "description"),
        ("docker:\n  env: .env\n", ".env", "docker.env"),
        ("docker:\n  dockerfile_template: t.j2\n", "t.j2", "docker.dockerfile_template"),
    ],
)
def test_text_files_that_are_not_utf8_are_problems(
    tmp_path: Path, yaml_text: str, name: str, key_path: str
) -> None:
    f = project(tmp_path, 'service: "service:svc"\n' + yaml_text)
    (tmp_path / name).write_bytes(b"# caf\xe9\n")
    [problem] = validate_file(f)
    assert problem.key_path == key_path
    assert f"{name}' is not UTF-8 text" in problem.message and "save it as UTF-8" in problem.message
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_bentofile(f)


def test_docker_settings_the_build_refuses_are_problems_with_their_lines(tmp_path: Path) -> None:
    # The schema takes them (real-world files use them), the Dockerfile cannot: validate says so, all at once.
    f = project(
        tmp_path,
        'service: "service:svc"\n'
        "docker:\n"
        '  python_version: "3.8"\n'
        "  distro: alpine\n"
        '  system_packages: [curl, "curl; rm -rf /"]\n'
        "  env:\n"
        "    PORT: http\n"
        "labels:\n"
        '  ok: "two\\nlines"\n',
    )
    problems = validate_file(f)
    assert [(p.line, p.key_path) for p in problems] == [
        (3, "docker.python_version"),
        (4, "docker.distro"),
        (5, "docker.system_packages[1]"),
        (7, "docker.env.PORT"),
        (9, "labels.ok"),
    ], messages(problems)
    assert "'3.8' is not supported (choose 3.10" in problems[0].message
    assert "onnxruntime publishes no musl" in problems[1].message
    assert validate_file(f, schema_only=True) == []


def test_docker_settings_are_checked_beside_schema_problems_elsewhere(tmp_path: Path) -> None:
    # "Every problem at once": a schema problem in one key does not hide the settings the build refuses.
    f = project(
        tmp_path,
        'service: "service:svc"\n'
        "docker:\n"
        '  python_version: "3.7"\n'
        "  distroo: debian\n"
        "  system_packages: 3\n"
        "python:\n"
        "  packages: 3\n"
        "labels:\n"
        '  ok: "two\\nlines"\n',
    )
    problems = validate_file(f)
    assert [(p.line, p.key_path) for p in problems] == [
        (3, "docker.python_version"),
        (4, "docker.distroo"),
        (5, "docker.system_packages"),
        (7, "python.packages"),
        (9, "labels.ok"),
    ], messages(problems)
    assert "'3.7' is not supported (choose 3.10" in problems[0].message
    f.write_text('service: "service:svc"\nenvs:\n  - name: 3\n  - name: A\n    value: "x\\ny"\n')
    problems = validate_file(f)
    assert [(p.line, p.key_path) for p in problems] == [(3, "envs[0].name"), (5, "envs.A")], messages(
        problems
    )


GOOD_REQUIREMENTS = [
    "numpy",
    "numpy>=1.24,<2",
    "torch==1.10.2+cpu",
    "dask[complete]==2024.1.0",
    "uvloop; sys_platform != 'win32'",
    "six==1.16.0 --hash=sha256:" + "0" * 64,
    "numpy  # a comment",
    "-f https://download.pytorch.org/whl/cpu/torch_stable.html",
    "git+https://github.com/huggingface/transformers",
    "name @ https://example.com/name-1.0-py3-none-any.whl",
    "https://example.com/name-1.0.tar.gz",
    "./local/project",
    "wheels/name-1.0-py3-none-any.whl",
]


@pytest.mark.parametrize("entry", ["foo bar baz", "numpy==", "numpy>=1,<", "foo[bar", "==1.0", "a;"])
def test_a_bad_requirement_in_packages_is_a_problem(tmp_path: Path, entry: str) -> None:
    packages = "".join(f"    - {json.dumps(p)}\n" for p in [*GOOD_REQUIREMENTS, entry])
    f = project(tmp_path, f"service: service:svc\npython:\n  packages:\n{packages}")
    (tmp_path / "local/project").mkdir(parents=True)  # local paths must exist
    write(tmp_path / "wheels/name-1.0-py3-none-any.whl", "")
    for schema_only in (True, False):
        [problem] = validate_file(f, schema_only=schema_only)
        assert problem.key_path == f"python.packages[{len(GOOD_REQUIREMENTS)}]"
        assert problem.line == 4 + len(GOOD_REQUIREMENTS)
        assert f"{entry!r} is not a valid requirement" in problem.message
    with pytest.raises(ConfigError) as info:
        load_bentofile(f)
    assert info.value.exit_code == 2


def test_bad_lines_of_requirements_files_are_problems(tmp_path: Path) -> None:
    good = "".join(f"{p}\n" for p in GOOD_REQUIREMENTS)
    f = project(
        tmp_path,
        "service: service:svc\npython:\n  requirements_txt: requirements.txt\n",
        {"requirements.txt": f"{good}foo bar baz\n-r sub/more.txt\n", "sub/more.txt": "six\nnumpy==\n"},
    )
    (tmp_path / "local/project").mkdir(parents=True)  # local paths must exist
    write(tmp_path / "wheels/name-1.0-py3-none-any.whl", "")
    problems = validate_file(f)
    assert [(p.key_path, p.line) for p in problems] == [("python.requirements_txt", 3)] * 2
    assert (
        f"requirements.txt:{len(GOOD_REQUIREMENTS) + 1}: 'foo bar baz' is not a valid" in problems[0].message
    )
    assert "sub/more.txt:2: 'numpy==' is not a valid requirement" in problems[1].message
    assert validate_file(f, schema_only=True) == []  # the file it names is not read then


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("-r missing.txt\n", "requirements file missing.txt not found"),
        ("-r requirements.txt\n", "in a loop"),
        ("six\n\xff\n", "not UTF-8 text"),
    ],
)
def test_unreadable_requirements_files_are_problems(tmp_path: Path, content: str, expected: str) -> None:
    f = project(tmp_path, "service: service:svc\npython:\n  requirements_txt: requirements.txt\n")
    (tmp_path / "requirements.txt").write_bytes(content.encode("latin-1"))
    [problem] = validate_file(f)
    assert problem.key_path == "python.requirements_txt" and expected in problem.message


def test_missing_local_requirement_paths_are_problems(tmp_path: Path) -> None:
    f = project(
        tmp_path,
        "service: service:svc\npython:\n  packages: [numpy, ./nopkg]\n  requirements_txt: requirements.txt\n",
        {"requirements.txt": "six\n-e ./gone\n"},
    )
    first, second = validate_file(f)
    assert (first.line, first.key_path) == (3, "python.packages[1]")
    assert f"'./nopkg': no such file or directory {tmp_path.resolve()}/nopkg" in first.message
    assert (second.line, second.key_path) == (4, "python.requirements_txt")
    assert "requirements.txt:2: './gone': no such directory" in second.message
    (tmp_path / "nopkg").mkdir()
    (tmp_path / "gone").mkdir()
    assert validate_file(f) == []


@pytest.mark.parametrize("content", ["#!/bin/sh\necho set up\n", "apt-get update\n", ""])
def test_setup_script_need_not_be_executable_here(tmp_path: Path, content: str) -> None:
    # BentoML accepts it: the bundle stores it executable and the image runs `chmod +x` on it; without a
    # shebang the image's /bin/sh runs it.
    f = project(tmp_path, "service: service:svc\ndocker:\n  setup_script: setup.sh\n", {"setup.sh": content})
    (tmp_path / "setup.sh").chmod(0o644)
    assert validate_file(f) == []


def test_setup_script_with_crlf_line_endings_is_a_problem(tmp_path: Path) -> None:
    f = project(tmp_path, "service: service:svc\ndocker:\n  setup_script: setup.sh\n")
    (tmp_path / "setup.sh").write_bytes(b"#!/bin/sh\r\necho set up\r\n")
    [problem] = validate_file(f)
    assert problem.key_path == "docker.setup_script" and problem.line == 3
    assert "CRLF" in problem.message and "dos2unix setup.sh" in problem.message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: x\ndependencies:\n  - numpy\n   - pip: [six\n", "environment.yml:4:"),
        ("name: x\ndependencies:\n- numpy\n- pip: [six]\n\tchannels: []\n", "YAML syntax error"),
        ("", "environment.yml:1:1: the file is empty; list the conda packages under 'dependencies:'"),
        ("- numpy\n- scipy\n", "environment.yml:1:1: the top level must be a mapping"),
        ("dependencies: numpy\n", "environment.yml:1:15: dependencies: must be a list, got a string"),
        ("channels: conda-forge\n", "channels: must be a list"),
        ("dependencies:\n  - numpy\n  - {pip: six}\n", "dependencies[1].pip: must be a list of pip"),
        ("dependencies:\n  - numpy\n  - [scipy]\n", "environment.yml:3:5: dependencies[1]: got a list"),
        ("dependencies: [numpy]\ndependencies: [scipy]\n", "duplicate key 'dependencies'"),
    ],
)
def test_broken_conda_environment_files_are_problems(tmp_path: Path, content: str, expected: str) -> None:
    f = project(
        tmp_path,
        "service: service:svc\nconda:\n  environment_yml: environment.yml\n",
        {"environment.yml": content},
    )
    [problem] = validate_file(f)
    assert (problem.file, problem.line, problem.key_path) == (str(f), 3, "conda.environment_yml")
    assert problem.message.startswith("conda environment file environment.yml:")
    assert expected in problem.message


def test_a_conda_environment_file_with_pip_and_channels_is_valid(tmp_path: Path) -> None:
    env = (
        "name: svc\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - numpy\n  - pip:\n    - six\n"
    )
    f = project(
        tmp_path,
        "service: service:svc\nconda:\n  environment_yml: environment.yml\n",
        {"environment.yml": env},
    )
    assert validate_file(f) == []


def test_conda_pip_entries_are_checked_like_python_packages(tmp_path: Path) -> None:
    # The build locks them with python.packages: a bad one is a problem here, not a resolver "conflict".
    f = project(
        tmp_path,
        "service: service:svc\nconda:\n  dependencies:\n    - numpy\n    - pip: [six, ./gone]\n"
        "  pip: ['foo bar baz']\n  environment_yml: conda/environment.yml\n",
        {"conda/environment.yml": "dependencies:\n  - pip:\n    - 'numpy=='\n    - ./pkg\n    - ./nopkg\n"},
    )
    (tmp_path / "conda/pkg").mkdir()  # relative to the environment file, where conda runs pip
    problems = validate_file(f)
    assert [(p.line, p.key_path) for p in problems] == [
        (5, "conda.dependencies[1].pip[1]"),
        (6, "conda.pip[0]"),
        (7, "conda.environment_yml"),
        (7, "conda.environment_yml"),
    ], messages(problems)
    assert f"'./gone': no such file or directory {tmp_path.resolve()}/gone" in problems[0].message
    assert "'foo bar baz' is not a valid requirement" in problems[1].message
    env_messages = sorted(p.message for p in problems[2:])
    assert env_messages[0].startswith(
        "conda environment file conda/environment.yml:3:7: dependencies[0].pip[0]: 'numpy==' is not a valid"
    )
    assert env_messages[1].startswith(
        "conda environment file conda/environment.yml:5:7: dependencies[0].pip[2]: './nopkg': no such file"
        f" or directory {tmp_path.resolve()}/conda/nopkg"
    )
    [schema] = validate_file(f, schema_only=True)  # the syntax of the build file's own entries
    assert schema.key_path == "conda.pip[0]"


def test_cli_validate_notes_conda_packages_the_image_does_not_install(tmp_path: Path) -> None:
    f = project(
        tmp_path / "a",
        "service: service:svc\nconda:\n  channels: [conda-forge]\n"
        "  dependencies: [python, pip, 'conda-forge::scipy>=1.10', libgomp, {pip: [six]}]\n",
    )
    done = run_cli(f)
    assert done.returncode == 0 and done.stdout == f"{f}: valid\n", done.stderr
    [note] = done.stderr.splitlines()
    listed = note.removeprefix("note: conda packages not installed in the image: ").split(". ")[0]
    assert listed == "conda-forge::scipy>=1.10, libgomp (bentofile conda.dependencies)", note
    assert "channels conda-forge unused" in note and "under python.packages" in note
    plain = project(tmp_path / "b", "service: service:svc\npython:\n  packages: [six]\n")
    done = run_cli(plain)
    assert (done.returncode, done.stderr) == (0, "")


def test_python_and_pip_conda_entries_are_satisfied_unless_python_is_pinned_to_another_version() -> None:
    from bundler.conda import CondaEnv, not_installed

    where = "bentofile conda.dependencies"
    satisfied = ["python", "python=3.11", "python 3.11.*", "python>=3.8", "pip", "conda-forge::pip>=23"]
    assert not_installed(CondaEnv(tuple((s, where) for s in satisfied)), "3.11") == []
    specs = ["python=3.4", "numpy=1.26", "pytorch::pytorch", "python==3.110"]
    missing, *pinned = not_installed(CondaEnv(tuple((s, where) for s in specs)), "3.11")
    assert missing.startswith(
        f"conda packages not installed in the image: numpy=1.26, pytorch::pytorch ({where})."
    )
    assert [line.split(" but ")[0] for line in pinned] == [
        f"{where} asks for 'python=3.4'",
        f"{where} asks for 'python==3.110'",
    ]
    assert pinned[0].endswith(
        "the image runs Python 3.11; set docker.python_version to the version the code needs"
    )


def test_symlink_out_of_the_context_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "secret.txt", "x\n")
    f = project(tmp_path / "proj", "service: service:svc\npython:\n  requirements_txt: reqs.txt\n")
    (tmp_path / "proj" / "reqs.txt").symlink_to(tmp_path / "secret.txt")
    [problem] = validate_file(f)
    assert "outside the build context" in problem.message


@pytest.mark.parametrize(
    ("service", "files", "ok"),
    [
        ("service:svc", {}, True),
        ("service.py:svc", {}, True),
        ("missing:svc", {}, False),
        ("missing.py:svc", {}, False),
        ("pkg.api:svc", {"pkg/api.py": "svc = None\n"}, True),
        ("pkg:svc", {"pkg/__init__.py": "svc = None\n"}, True),
        ("pkg.other:svc", {"pkg/__init__.py": "svc = None\n"}, False),
    ],
)
def test_service_module_must_exist(tmp_path: Path, service: str, files: dict[str, str], ok: bool) -> None:
    f = project(tmp_path, f"service: {service}\n", files)
    problems = validate_file(f)
    if ok:
        assert problems == []
    else:
        [problem] = problems
        assert (problem.key_path, problem.line) == ("service", 1)
        assert "not found in the build context" in problem.message


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import bundler\nsvc = bundler.Service('x')\n", None),
        ("from impl import svc\n", None),
        ("if True:\n    svc: object = None\n", None),
        ("from impl import *\n", None),  # cannot tell: no problem
        ("def __getattr__(name):\n    return None\n", None),
        ("globals()['svc'] = None\n", None),
        (
            "import bundler\nservice = bundler.Service('x')\n",
            "module 'service.py' defines no 'svc' (it assigns a Service to 'service');"
            " fix the attribute after ':'",
        ),
        (
            "servce = None\n",
            "module 'service.py' defines no 'svc' (did you mean 'servce'?); fix the attribute after ':'",
        ),
        ("x = 1\n", "module 'service.py' defines no 'svc'; fix the attribute after ':'"),
        (  # validate said "valid", and build then failed (exit 1)
            "import bundler\nsvc = bundler.Service('x'\n",
            "module 'service.py' has a syntax error at line 2: '(' was never closed; fix the module",
        ),
    ],
)
def test_the_service_attribute_must_be_defined(tmp_path: Path, code: str, expected: str | None) -> None:
    f = project(tmp_path, "service: service:svc\n", {"service.py": code})
    problems = validate_file(f)
    if expected is None:
        assert problems == [], messages(problems)
    else:
        [problem] = problems
        assert (problem.key_path, problem.line, problem.column) == ("service", 1, 10)
        assert problem.message == expected


@pytest.mark.parametrize(
    ("selection", "key_path", "ok"),
    [
        ("include:\n  - '*.py'\n", "include", True),
        ("include:\n  - 'helpers/*.py'\n", "include", False),
        ("exclude:\n  - service.py\n", "exclude", False),
        ("include:\n  - '*.py'\nexclude:\n  - 'serv*'\n", "include", False),
        ("include:\n  - 'pkg/**'\n", "include", False),
    ],
)
def test_include_and_exclude_must_keep_the_service_module(
    tmp_path: Path, selection: str, key_path: str, ok: bool
) -> None:
    # validate said "valid" and build then failed (exit 1) on a bundle the image could not import from.
    f = project(tmp_path, f"service: service:svc\n{selection}", {"helpers/util.py": "x = 1\n"})
    problems = validate_file(f)
    if ok:
        assert problems == [], messages(problems)
    else:
        [problem] = problems
        assert (problem.key_path, problem.line) == (key_path, 3)
        assert "the service module service.py is not among the bundle's sources" in problem.message


def test_a_missing_find_links_directory_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "wheelhouse").mkdir()
    links = "    - wheelhouse\n    - https://x.test/w/\n    - nowhere\n"
    text = f"service: service:svc\npython:\n  find_links:\n{links}"
    [problem] = validate_file(project(tmp_path, text))
    assert (problem.key_path, problem.line) == ("python.find_links[2]", 6)
    assert "find-links directory 'nowhere' not found" in problem.message


# -- loading and defaults ---------------------------------------------------------------------------


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    f = project(tmp_path, "service: service:svc\n")
    config = load_bentofile(f)
    assert config == BentoConfig(path=f, context=tmp_path, service="service:svc")
    assert config.include == ["*"] and config.exclude == [] and config.labels == {}
    assert config.docker == DockerOptions()
    assert (
        config.docker.distro == "debian" and config.docker.python_version is None and config.docker.env == {}
    )
    assert config.python == PythonOptions()
    assert config.python.lock_packages is True and config.python.no_index is False
    assert config.python.offline is False and config.python.extra_index_url == []
    assert config.conda is None and config.models == [] and config.envs == {} and config.args == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.service = "other:svc"  # type: ignore[misc]


def test_nulls_mean_defaults_and_values_are_normalised(tmp_path: Path) -> None:
    f = project(
        tmp_path,
        "service: service:svc\nname: my-bento\ninclude: null\nlabels:\n  gpu: true\n  replicas: 2\n"
        "docker:\n  distro: null\n  env: [A=1, B=x=y]\n"
        "python:\n  lock_packages: null\n  trusted_host: my.mirror\n  extra_index_url: [https://a, https://b]\n"
        "  offline: true\n"
        "conda:\n  channels: [conda-forge]\n  dependencies: [numpy, {pip: [scipy]}]\n"
        "models:\n  - iris:latest\n  - tag: sd:v1\n    filter: 'label:staging'\n    alias: sd\n"
        "envs:\n  - name: HF_TOKEN\n  - name: PORT\n    value: 8080\n"
        "args:\n  tp: 1\n  autotune: [1, 2]\n",
    )
    c = load_bentofile(f)
    assert c.name == "my-bento" and c.include == ["*"]
    assert c.labels == {"gpu": "true", "replicas": "2"}
    assert c.docker.distro == "debian" and c.docker.env == {"A": "1", "B": "x=y"}
    assert c.python.lock_packages is True and c.python.offline is True
    assert c.python.trusted_host == ["my.mirror"] and c.python.extra_index_url == ["https://a", "https://b"]
    assert c.conda == CondaOptions(channels=["conda-forge"], dependencies=["numpy", {"pip": ["scipy"]}])
    assert c.models == [ModelSpec("iris:latest"), ModelSpec("sd:v1", "label:staging", "sd")]
    assert c.envs == {"HF_TOKEN": "", "PORT": "8080"}
    assert c.args == {"tp": 1, "autotune": [1, 2]}
    data = c.to_dict()
    assert "path" not in data and "context" not in data
    assert json.loads(json.dumps(data))["models"][1] == {
        "tag": "sd:v1",
        "filter": "label:staging",
        "alias": "sd",
    }


def test_load_accepts_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "service.py", "svc = other = None\n")
    write(tmp_path / "bentofile.yml", "service: service:svc\n")
    assert load_bentofile(tmp_path).path == tmp_path / "bentofile.yml"
    write(tmp_path / "bentofile.yaml", "service: service:other\n")
    assert load_bentofile(tmp_path).service == "service:other"
    assert validate_file(tmp_path) == []


def test_missing_file_or_directory_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such build file"):
        load_bentofile(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"no bentofile\.yaml or bentofile\.yml in this directory"):
        load_bentofile(tmp_path)
    [problem] = validate_file(tmp_path / "nope.yaml")
    assert "no such build file" in problem.message
    [problem] = validate_file(tmp_path)
    assert str(problem).startswith(f"{tmp_path}:1:1: no bentofile.yaml or bentofile.yml in this directory")
    # The service module given for the build file: it said "YAML syntax error ... check the indentation".
    module = write(tmp_path / "service.py", "import bundler\nsvc = bundler.Service('x')\n")
    with pytest.raises(
        ConfigError, match=r"service\.py: a Python module, not a build file; pass the bentofile"
    ):
        load_bentofile(module)
    [problem] = validate_file(module)
    assert problem.message.startswith("a Python module, not a build file")


def test_config_error_lists_all_problems_and_a_count(tmp_path: Path) -> None:
    f = write(tmp_path / "bentofile.yaml", "service: nope\ndocker:\n  distro: x\n")
    with pytest.raises(ConfigError) as info:
        load_bentofile(f)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{f}:1:10: service: ")
    assert lines[1].startswith(f"{f}:3:11: docker.distro: ")
    assert lines[2] == f"2 problems in {f}; fix them and run again"
    assert info.value.problems == lines[:2]


# -- the schema -------------------------------------------------------------------------------------


def test_schema_is_valid_2020_12_and_shipped() -> None:
    import jsonschema

    schema = json.loads((data_dir("schemas") / "bentofile.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("section", "options"), [("docker", DockerOptions), ("python", PythonOptions), ("conda", CondaOptions)]
)
def test_schema_sections_match_the_dataclasses(section: str, options: type) -> None:
    schema = json.loads((data_dir("schemas") / "bentofile.schema.json").read_text(encoding="utf-8"))
    assert set(schema["properties"][section]["properties"]) == {f.name for f in dataclasses.fields(options)}
    top = {f.name for f in dataclasses.fields(BentoConfig)} - {"path", "context"}
    assert set(schema["properties"]) == top


def test_import_is_light() -> None:
    code = "import sys, bundler.config; print('jsonschema' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dates_stay_text(tmp_path: Path) -> None:
    f = project(
        tmp_path, "service: service:svc\nlabels:\n  released: 2024-05-01\nargs:\n  when: 2024-05-01\n"
    )
    config = load_bentofile(f)
    assert config.labels == {"released": "2024-05-01"} and config.args == {"when": "2024-05-01"}
    json.dumps(config.to_dict())


# -- the command line -----------------------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "bundler", "validate", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=60)


def test_cli_validate_reports_all_problems_and_exits_2() -> None:
    done = run_cli(CORPUS / "broken" / "two-problems.yaml")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "two-problems.yaml:5:18: python.lock_packages: expected true or false" in done.stderr
    assert "two-problems.yaml:7:11: docker.distro: 'ubuntu' is not one of" in done.stderr


def test_cli_validate_accepts_a_real_world_file_with_schema_only() -> None:
    done = run_cli(CORPUS / "valid" / "bentoml-tests-realworld.yaml", "--schema-only")
    assert done.returncode == 0, done.stderr
    # Its conda packages are not installed by the pip-only image: a note, not a problem.
    assert "note: conda packages not installed in the image: numpy, toolz," in done.stderr
    done = run_cli(CORPUS / "valid" / "bentoml-tests-realworld.yaml")  # names files that are not here
    assert done.returncode == 2 and "docker.dockerfile_template" in done.stderr


# -- robustness ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="abc: -[]{}&*!<>|'\"#\n\t0123.,=%@`?", max_size=120))
def test_any_text_gives_problems_never_a_crash(tmp_path: Path, text: str) -> None:
    f = tmp_path / "bentofile.yaml"
    f.write_text("service: service:svc\n" + text, encoding="utf-8")
    for problem in validate_file(f):
        assert isinstance(problem, Problem) and problem.line >= 1 and problem.column >= 1
