"""Every error bundler raises on purpose.

    BundlerError                 exit 1, the base; str() is the whole user-facing message
    ├── BadInput                 exit 2, the user gave something unusable (usage, values, files)
    │   ├── ConfigError          exit 2, bentofile.yaml problems (all of them, at once)
    │   ├── InvalidTag           exit 2, a tag that does not match name[:version]
    │   ├── UnsafeArchive        exit 2, an archive with absolute paths, '..', links or devices
    │   ├── PayloadTooLarge      HTTP 413, a request body (or an image) over the server's limit
    │   ├── UnsupportedMediaType HTTP 415, a request Content-Type the API's input does not take
    │   └── ValidationFailed     HTTP 422, a well-formed body that breaks the API's schema (``detail``)
    ├── NotFound                 exit 1, a model or bundle tag that is not in the store
    │   └── UnknownAPI           exit 1, a client call to an API the service does not serve (also an
    │                            AttributeError, for ``client.<name>``)
    ├── StoreError               exit 1, a store entry that fails its manifest check
    ├── ModelError               exit 1, a model that cannot be saved or loaded as asked
    │   └── ProviderError        exit 1, execution providers not available on this machine
    ├── InferenceInputError      exit 2, runner inputs of the wrong name, rank or shape (HTTP 400)
    ├── Overloaded               exit 1, a runner queue is full or a deadline cannot be met (HTTP 503)
    ├── ServiceUnavailable       exit 1, a runner failed to load: retrying will not help (HTTP 503)
    ├── LockError                exit 1, requirements that cannot be resolved or downloaded
    ├── BuildError               exit 1, a bundle cannot be assembled
    ├── ContainerizeError        exit 1, the container engine failed
    │   └── EngineUnavailable    exit 1, no engine found, or it is not running
    └── HTTPError                exit 1, a served API answered the client with an error status

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
    "HTTPError",
    "InferenceInputError",
    "InvalidTag",
    "LockError",
    "ModelError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ProviderError",
    "ServiceUnavailable",
    "StoreError",
    "UnknownAPI",
    "UnsafeArchive",
    "UnsupportedMediaType",
    "ValidationFailed",
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


class PayloadTooLarge(BadInput):
    http_status = 413


class UnsupportedMediaType(BadInput):
    http_status = 415


class ValidationFailed(BadInput):
    """A body that parsed but breaks the API's schema; ``detail`` is a JSON-able list of the problems."""

    http_status = 422

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.detail = detail


class NotFound(BundlerError):
    http_status = 404


class UnknownAPI(NotFound, AttributeError):
    """A client asked for an API the service does not serve: ``client.call(name)`` or ``client.<name>``.

    An AttributeError too, so that ``client.<name>`` behaves as attribute access does (``hasattr``,
    ``getattr(client, name, default)``) with the same message from the sync and the async client.
    """


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


class ServiceUnavailable(BundlerError):
    http_status = 503


class LockError(BundlerError):
    pass


class BuildError(BundlerError):
    pass


class ContainerizeError(BundlerError):
    pass


class EngineUnavailable(ContainerizeError):
    pass


class HTTPError(BundlerError):
    """An error status from a served API; ``status_code``, ``body`` (parsed JSON or text), ``detail`` and
    ``retry_after`` (seconds from a 503's Retry-After header, else None)."""

    def __init__(
        self, message: str, status_code: int, body: object = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.http_status = status_code
        self.body = body
        self.detail = body.get("detail") if isinstance(body, dict) else None
        self.retry_after = retry_after
