"""The one exception tree of comfyfleet.

    ComfyFleetError
    ├── ConfigError                 settings that cannot work (bad URL, port in use, …)
    ├── StoreError                  Redis/Valkey unreachable or answered with an error
    │   └── ConcurrentUpdate        a job record changed under us (version or status mismatch)
    ├── BackendError                anything a ComfyUI server did wrong or could not do
    │   ├── BackendUnavailable      connection refused/reset, DNS, HTTP 502/503/504/429
    │   │   └── BackendRefused      no connection made at all: nothing of the request was sent
    │   ├── BackendTimeout          no answer in time
    │   ├── BackendProtocolError    an answer we cannot understand
    │   └── PromptRejected          POST /prompt refused the workflow (node_errors)
    ├── InvalidTransition           a job move the transition table forbids
    ├── JobNotFound                 no job with that id (or not visible to the caller)
    └── ValidationFailed            client input that fails our validation

Foreign errors (redis, aiohttp, websockets) are translated into these at the edge: nothing above
``store/`` sees a redis error, nothing above ``comfy/`` sees an aiohttp or websocket error.
"""

from __future__ import annotations

from typing import Any


class ComfyFleetError(Exception):
    """Base of every error comfyfleet raises on purpose."""


class ConfigError(ComfyFleetError):
    """The configuration cannot work; the message says what to change."""


class StoreError(ComfyFleetError):
    """The job store (Redis/Valkey) failed."""


class ConcurrentUpdate(StoreError):
    """A compare-and-set on a job record lost: its status or version moved."""


class BackendError(ComfyFleetError):
    """A ComfyUI backend failed; ``backend`` names it when known."""

    def __init__(self, message: str, *, backend: str | None = None, status_code: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class BackendUnavailable(BackendError):
    """The backend could not be reached or said it cannot serve now."""


class BackendRefused(BackendUnavailable):
    """No connection could be made (refused, no route, name unknown, TLS handshake failed):
    nothing of the request reached the server."""


class BackendTimeout(BackendError):
    """The backend did not answer within the timeout."""


class BackendProtocolError(BackendError):
    """The backend answered something that does not follow the protocol."""


class PromptRejected(BackendError):
    """``POST /prompt`` refused the workflow; ``node_errors`` holds ComfyUI's reasons."""

    def __init__(self, message: str, *, error_type: str, node_errors: dict[str, Any],
                 backend: str | None = None) -> None:
        super().__init__(message, backend=backend, status_code=400)
        self.error_type = error_type
        self.node_errors = node_errors


class InvalidTransition(ComfyFleetError):
    """The transition table forbids this move."""


class JobNotFound(ComfyFleetError):
    """No such job."""


class ValidationFailed(ComfyFleetError):
    """Client input failed validation; ``code`` is the contract's error code."""

    def __init__(self, message: str, *, code: str = "invalid_request", status_code: int = 422,
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status_code
        self.details = details
        self.headers = headers  # e.g. Retry-After on a 429
