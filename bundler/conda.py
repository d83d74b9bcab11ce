"""What a build file's ``conda:`` section means for an image that has no conda and installs with pip.

BentoML's ``conda:`` section (channels, dependencies, pip, environment_yml) validates unchanged and the
bundle keeps it as ``env/conda/environment.yml``, but the image is ``python:<X.Y>-slim`` plus a locked pip
install. So the pip requirements listed there (``conda.pip``, a ``- pip: [...]`` entry of
``conda.dependencies``, the pip list of an environment_yml) are locked and installed with python.packages
(:func:`pip_lists`), and the conda packages proper, which nothing installs, are named in a warning
(:func:`not_installed`) instead of going missing silently until the container fails at import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import image_python
from .lock import Listed

__all__ = ["SATISFIED", "CondaEnv", "build_warnings", "not_installed", "pip_lists", "read_conda"]

# The image provides these itself: the base image's CPython and the pip that installs the lock.
SATISFIED = ("python", "pip")
# A conda match spec's name ends at its version, build or bracket part: 'conda-forge::numpy>=1.2[build=*]'.
_NAME = re.compile(r"^(?:[^:\s]+::)?([A-Za-z0-9_.-]+)")
_PYTHON_PIN = re.compile(r"^(?:[^:\s]+::)?python\s*(?:==?|\s)\s*(\d+)\.(\d+)(?![\d])")


@dataclass(frozen=True)
class CondaEnv:
    """The conda section read whole: conda specs with where each is listed, channels and pip lists."""

    packages: tuple[tuple[str, str], ...] = ()
    channels: tuple[str, ...] = ()
    pip: tuple[Listed, ...] = ()


def _dependencies(
    deps: Any, where: str, base: Path, base_name: str
) -> tuple[list[tuple[str, str]], list[Listed]]:
    specs: list[tuple[str, str]] = []
    lists: list[Listed] = []
    for i, dep in enumerate(deps if isinstance(deps, list) else []):
        if isinstance(dep, str):
            specs.append((dep.strip(), where))
        elif isinstance(dep, dict) and isinstance(dep.get("pip"), list):
            entries = tuple(str(r) for r in dep["pip"])
            lists.append(Listed(f"{where}[{i}].pip", f"from {where} pip", entries, base, base_name))
    return specs, lists


def read_conda(conda: Any, context: Path, *, environment_file: bool = True) -> CondaEnv:
    """Read a ``CondaOptions`` (and the environment_yml it names) into conda specs and pip lists.

    Read the environment file only after it was validated (``environment_file``), not for --schema-only.
    """
    if conda is None:
        return CondaEnv()
    specs, lists = _dependencies(
        conda.dependencies, "bentofile conda.dependencies", context, "the build file"
    )
    if conda.pip:
        lists.insert(0, Listed("bentofile conda.pip", "from bentofile conda.pip", tuple(conda.pip), context))
    channels = list(conda.channels or [])
    if conda.environment_yml and environment_file:
        path = context / conda.environment_yml
        try:
            data = yaml.safe_load(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = None  # validation reports it; a --schema-only check does not read it
        if isinstance(data, dict):
            # conda runs pip for an environment file in that file's directory: relative paths start there.
            env_specs, env_lists = _dependencies(
                data.get("dependencies"),
                f"bentofile conda.environment_yml ({conda.environment_yml}) dependencies",
                path.parent,
                f"the conda environment file {conda.environment_yml}",
            )
            specs += env_specs
            lists += env_lists
            channels += [c for c in data.get("channels") or [] if isinstance(c, str)]
    return CondaEnv(tuple(specs), tuple(dict.fromkeys(channels)), tuple(lists))


def pip_lists(conda: Any, context: Path) -> tuple[Listed, ...]:
    """Return the pip requirement lists of a conda section, for :func:`bundler.lock.collect_requirements`."""
    return read_conda(conda, context).pip


def not_installed(env: CondaEnv, python_version: str) -> list[str]:
    """Return what the image will not have of a conda section: one line per problem, empty when none."""
    out = []
    missing: dict[str, list[str]] = {}
    for spec, where in env.packages:
        match = _NAME.match(spec)
        name = match.group(1).lower() if match else spec
        pin = _PYTHON_PIN.match(spec)
        if pin and f"{pin.group(1)}.{pin.group(2)}" != python_version:
            out.append(
                f"{where} asks for {spec!r} but the image runs Python {python_version}; set"
                " docker.python_version to the version the code needs"
            )
        elif name not in SATISFIED:
            missing.setdefault(where, []).append(spec)
    if missing:
        listed = "; ".join(f"{', '.join(specs)} ({where})" for where, specs in missing.items())
        channels = f" (channels {', '.join(env.channels)} unused)" if env.channels else ""
        out.insert(
            0,
            f"conda packages not installed in the image: {listed}. The image has no conda{channels} and"
            " installs Python packages with pip, conda pip entries included: put the PyPI equivalent of"
            " each under python.packages (names can differ: conda's pytorch is torch on PyPI), or a system"
            " library under docker.system_packages",
        )
    return out


def build_warnings(cfg: Any, *, environment_file: bool = True) -> list[str]:
    """Return what a validated ``BentoConfig``'s image will lack of its conda section (see not_installed)."""
    if cfg.conda is None:
        return []
    return not_installed(
        read_conda(cfg.conda, cfg.context, environment_file=environment_file),
        image_python(cfg.docker.python_version),
    )
