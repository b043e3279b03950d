"""What went wrong, in the domain's words: a backend error or a prompt's outcome as a ``Failure``
(``domain/failures.classify`` then says whether it is worth a retry)."""

from __future__ import annotations

from ..comfy.tracker import Outcome
from ..domain.failures import Failure, FailureKind
from ..errors import BackendError, BackendProtocolError, BackendRefused, BackendTimeout

REFUSING_STATUSES = frozenset({429, 503})  # "not now": nothing was queued


def answer_may_be_lost(exc: BackendError) -> bool:
    """Whether ComfyUI may have queued a prompt whose ``POST /prompt`` raised ``exc``: no answer
    came (a timeout, a connection cut mid-request), or one ComfyUI itself does not give after
    refusing (a proxy's 500, 502 or 504; a 2xx body that is not JSON). A refused connection, a
    4xx (ComfyUI's own 400 is a ``PromptRejected``), 429 or 503 mean nothing was queued."""
    if isinstance(exc, BackendRefused):
        return False
    code = exc.status_code
    return code is None or code < 400 or (code >= 500 and code not in REFUSING_STATUSES)


def failure_of_error(exc: BackendError) -> Failure:
    if isinstance(exc, BackendTimeout):
        kind = FailureKind.TIMEOUT
    elif isinstance(exc, BackendProtocolError):
        kind = FailureKind.PROTOCOL
    elif exc.status_code is not None:
        kind = FailureKind.HTTP_STATUS
    else:
        kind = FailureKind.UNREACHABLE
    return Failure(kind, str(exc), status_code=exc.status_code, retry_after_s=exc.retry_after_s)


def failure_of_outcome(outcome: Outcome) -> Failure:
    if outcome.kind == "error" and outcome.history is not None:
        error = outcome.history.error or {}
        return Failure(FailureKind.NODE_ERROR,
                       str(error.get("exception_message") or "node execution failed").strip(),
                       exception_type=error.get("exception_type"), node_id=_str(error.get("node_id")),
                       node_type=error.get("node_type"),
                       traceback=tuple(str(x) for x in error.get("traceback") or ()))
    if outcome.kind == "interrupted":
        return Failure(FailureKind.INTERRUPTED, "the prompt was interrupted on its backend")
    if outcome.kind == "unreachable":
        return Failure(FailureKind.UNREACHABLE, outcome.message)
    return Failure(FailureKind.PROMPT_LOST, outcome.message or "the backend lost the prompt")


def _str(value: object) -> str | None:
    return None if value is None else str(value)
