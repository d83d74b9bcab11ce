"""Batching parameters for a runner: explicit arguments > environment > config file > defaults.

Explicit arguments come from ``model.to_runner(max_batch_size=..., max_latency_ms=..., **batching)``.

Environment variables, the runner-scoped ones first (``<NAME>`` is the runner name upper-cased with every
character outside ``A-Z0-9`` turned into ``_``)::

    BUNDLER_RUNNER_<NAME>_MAX_BATCH_SIZE    BUNDLER_MAX_BATCH_SIZE
    BUNDLER_RUNNER_<NAME>_MAX_LATENCY_MS    BUNDLER_MAX_LATENCY_MS
    BUNDLER_RUNNER_<NAME>_MAX_QUEUE         BUNDLER_MAX_QUEUE
    BUNDLER_RUNNER_<NAME>_MAX_CONCURRENCY   BUNDLER_MAX_CONCURRENCY
    BUNDLER_RUNNER_<NAME>_BATCHING          BUNDLER_BATCHING        (true/false: batching enabled)

The config file is the YAML file named by ``$BUNDLER_CONFIG``, in BentoML 1.x's shape: ``runners.batching``
applies to every runner and ``runners.<name>.batching`` to one runner (it wins); ``batch_dim`` is the model's
signature's, never a setting there::

    runners:
      batching: {enabled: true, max_batch_size: 32, max_latency_ms: 10000}
      sr:
        batching: {max_batch_size: 16}

The defaults were chosen with ``benchmarks/serve.py``; docs/batching.md has the figures.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..exceptions import BadInput

__all__ = ["DEFAULTS", "BatchingConfig", "env_names", "resolve_batching"]


@dataclass(frozen=True)
class BatchingConfig:
    """How one runner coalesces requests; see docs/batching.md for what each knob does."""

    # Rows per ONNX Runtime call. The compute-bound benchmark model peaks at 16-32 rows on CPU and served
    # best at 32; more rows only add latency (docs/batching.md has the sweep).
    max_batch_size: int = 32
    # A request's whole budget, queueing plus inference: requests that cannot make it are refused (503)
    # up front instead of timing out later. 10 s is BentoML 1.x's default; waiting for more arrivals is
    # bounded by the learned per-call cost, not by this number, so a large budget adds no latency.
    max_latency_ms: float = 10_000.0
    # Rows waiting at most; past it new requests get 503 + Retry-After rather than an unbounded queue.
    max_queue: int = 1024
    batch_dim: int = 0
    enabled: bool = True
    # Model calls in ONNX Runtime at once. 0 (auto): on the CPU with bundler's session options, a batched
    # runner runs a lone call on every core and, under load, one single-thread call per core (see
    # docs/batching.md); any other runner, one call at a time. A GPU session may gain from 2.
    max_concurrency: int = 0


DEFAULTS = BatchingConfig()

# field -> environment suffix
_ENV_KEYS = {
    "max_batch_size": "MAX_BATCH_SIZE",
    "max_latency_ms": "MAX_LATENCY_MS",
    "max_queue": "MAX_QUEUE",
    "max_concurrency": "MAX_CONCURRENCY",
    "enabled": "BATCHING",
}
_FIELDS = tuple(f.name for f in fields(BatchingConfig))
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_names(runner_name: str, field: str) -> tuple[str, str]:
    """Return the (runner-scoped, unscoped) environment variable names for one field."""
    suffix = _ENV_KEYS[field]
    scope = re.sub(r"[^A-Z0-9]", "_", runner_name.upper())
    return f"BUNDLER_RUNNER_{scope}_{suffix}", f"BUNDLER_{suffix}"


def resolve_batching(
    runner_name: str,
    *,
    max_batch_size: int | None = None,
    max_latency_ms: float | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    **more: Any,
) -> BatchingConfig:
    """Resolve a runner's BatchingConfig: explicit args > env vars > ``$BUNDLER_CONFIG`` > defaults.

    ``environ`` defaults to ``os.environ`` and ``config_file`` to ``$BUNDLER_CONFIG`` (tests pass both).
    ``more`` takes the other BatchingConfig fields (max_queue, batch_dim, enabled, max_concurrency);
    a value of None means "not given".
    """
    env = os.environ if environ is None else environ
    unknown = sorted(set(more) - set(_FIELDS))
    if unknown:
        raise BadInput(_unknown_message(unknown[0], f"runner {runner_name!r}: batching option"))

    chosen: dict[str, Any] = {}
    # Lowest precedence first; each layer overwrites what it sets.
    path = config_file if config_file is not None else env.get("BUNDLER_CONFIG")
    if path:
        for where, section in _file_sections(Path(path), runner_name):
            for key, value in section.items():
                chosen[key] = _coerce(key, value, where=f"{where}.{key}")
    for field in _ENV_KEYS:
        scoped, unscoped = env_names(runner_name, field)
        for var in (unscoped, scoped):
            if env.get(var, "").strip():
                chosen[field] = _coerce(field, env[var].strip(), where=f"environment variable {var}")
    explicit = {"max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms, **more}
    for key, value in explicit.items():
        if value is not None:
            chosen[key] = _coerce(key, value, where=f"runner {runner_name!r}: argument {key}")
    return BatchingConfig(**chosen)


def _file_sections(path: Path, runner_name: str) -> list[tuple[str, dict[str, Any]]]:
    """Return the config file's (where, batching mapping) pairs, general first then the runner's own."""
    import yaml  # only when a config file is in use

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(
            f"BUNDLER_CONFIG: cannot read {path}: {exc.strerror}; fix the path or unset BUNDLER_CONFIG"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r});"
            " save it as UTF-8 or unset BUNDLER_CONFIG"
        ) from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML: {exc}; fix the file or unset BUNDLER_CONFIG") from exc
    if data is None:
        return []
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top with a 'runners' key")
    _refuse_misplaced(path, data, "the top level", "runners.batching")
    if "batching" in data:
        raise BadInput(f"{path}: batching: it would be ignored at the top level; move it under runners:")
    runners = data.get("runners")
    if runners is None:
        return []
    if not isinstance(runners, dict):
        raise BadInput(f"{path}: runners: expected a mapping of runner names and 'batching'")
    _refuse_misplaced(path, runners, "runners", "runners.batching")
    sections = []
    for key, where in (("batching", "runners.batching"), (runner_name, f"runners.{runner_name}")):
        section = runners.get(key)
        if section is None:
            continue
        if key == runner_name:
            if not isinstance(section, dict):
                raise BadInput(f"{path}: {where}: expected a mapping with a 'batching' key")
            _refuse_misplaced(path, section, where, f"{where}.batching")
            section, where = section.get("batching"), f"{where}.batching"
            if section is None:
                continue
        if not isinstance(section, dict):
            raise BadInput(f"{path}: {where}: expected a mapping of batching options")
        for name in section:
            if name not in _FIELDS:
                raise BadInput(_unknown_message(str(name), f"{path}: {where}"))
            if name == "batch_dim":
                # The batcher splits on the model's own axis; a value here would be silently ignored.
                raise BadInput(
                    f"{path}: {where}.batch_dim: the batch axis is the model's, not a setting; save the model"
                    f" with signatures={{'run': {{'batchable': True, 'batch_dim': {section[name]!r}}}}}"
                    " and remove this key"
                )
        sections.append((f"{path}: {where}", section))
    return sections


def _refuse_misplaced(path: Path, mapping: dict, where: str, into: str) -> None:
    """Raise BadInput for a batching option one level too high, where it would be silently ignored."""
    for name in mapping:
        if name in _FIELDS:
            raise BadInput(
                f"{path}: {where}: {name!r} is a batching option, which would be ignored here;"
                f" move it under {into}"
            )


def _unknown_message(name: str, where: str) -> str:
    close = difflib.get_close_matches(name, _FIELDS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(_FIELDS)}"
    return f"{where}: unknown key {name!r} ({hint})"


def _coerce(field: str, value: Any, *, where: str) -> Any:
    """Convert and check one value; raise BadInput naming ``where`` and the accepted range."""
    if field == "enabled":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise BadInput(f"{where}: {value!r} is not a boolean (use true or false)")
    if field == "max_latency_ms":
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
            raise BadInput(f"{where}: {value!r} is not a positive number of milliseconds (e.g. 10000)")
        return number
    # The rest are integers: max_batch_size, max_queue >= 1; batch_dim, max_concurrency >= 0 (0: auto).
    lowest = 0 if field in ("batch_dim", "max_concurrency") else 1
    number_int: int | None = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number_int = int(value)  # numpy's integers too (a value from a sweep)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        number_int = int(value)
    if number_int is None or number_int < lowest:
        raise BadInput(f"{where}: {value!r} is not an integer >= {lowest}")
    return number_int
