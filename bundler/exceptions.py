"""Every error bundler raises on purpose.

    BundlerError                 exit 1, the base; str() is the whole user-facing message
    ├── BadInput                 exit 2, the user gave something unusable (usage, values, files)
    │   ├── ConfigError          exit 2, bentofile.yaml problems (all of them, at once)
    │   ├── InvalidTag           exit 2, a tag that does not match name[:version]
    │   └── UnsafeArchive        exit 2, an archive with absolute paths, '..', links or devices
    ├── NotFound                 exit 1, a model or bundle tag that is not in the store
    ├── StoreError               exit 1, a store entry that fails its manifest check
    ├── ModelError               exit 1, a model that cannot be saved or loaded as asked
    │   └── ProviderError        exit 1, execution providers not available on this machine
    ├── InferenceInputError      exit 2, runner inputs of the wrong name, rank or shape (HTTP 400)
    ├── Overloaded               exit 1, a runner queue is full or a deadline cannot be met (HTTP 503)
    ├── LockError                exit 1, requirements that cannot be resolved or downloaded
    ├── BuildError               exit 1, a bundle cannot be assembled
    └── ContainerizeError        exit 1, the container engine failed
        └── EngineUnavailable    exit 1, no engine found, or it is not running

Third-party errors are translated where they happen, with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BadInput",
    "BuildError",
    "BundlerError",
    "ConfigError",
    "ContainerizeError",
    "EngineUnavailable",
    "InferenceInputError",
    "InvalidTag",
    "LockError",
    "ModelError",
    "NotFound",
    "Overloaded",
    "ProviderError",
    "StoreError",
    "UnsafeArchive",
]


class BundlerError(Exception):
    """Base of every error bundler raises on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInput(BundlerError):
    exit_code = 2
    http_status = 400


class ConfigError(BadInput):
    """One or more problems in a build file; ``problems`` holds them one message each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class InvalidTag(BadInput):
    pass


class UnsafeArchive(BadInput):
    pass


class NotFound(BundlerError):
    http_status = 404


class StoreError(BundlerError):
    pass


class ModelError(BundlerError):
    pass


class ProviderError(ModelError):
    pass


class InferenceInputError(BundlerError):
    exit_code = 2
    http_status = 400


class Overloaded(BundlerError):
    http_status = 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LockError(BundlerError):
    pass


class BuildError(BundlerError):
    pass


class ContainerizeError(BundlerError):
    pass


class EngineUnavailable(ContainerizeError):
    pass
