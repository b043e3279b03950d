"""What went wrong with an attempt, and what that means for the job.

``classify(failure)`` maps a plain description of a failure (built at the edge from ComfyUI's
answers or from a translated exception) to a ``FailureClass``:

    transient    connection refused/reset, timeouts, HTTP 429/502/503/504, socket drop,
                 a prompt lost by a restarted backend          -> retry with backoff, prefer another backend
    recoverable  GPU out of memory, backend busy, a node class
                 the backend lacks (ComfyUI's "Cannot execute
                 because node X does not exist")               -> retry on a different backend
    permanent    POST /prompt validation errors (node_errors), node exceptions,
                 input that fails our validation, a workflow
                 whose circuit breaker is open                 -> fail at once, never retried
    fatal        misconfiguration: no backend can ever match, auth refused
                                                               -> fail and alert
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any


class FailureClass(str, enum.Enum):
    TRANSIENT = "transient"
    RECOVERABLE = "recoverable"
    PERMANENT = "permanent"
    FATAL = "fatal"

    @property
    def retryable(self) -> bool:
        return self in (FailureClass.TRANSIENT, FailureClass.RECOVERABLE)


class FailureKind(str, enum.Enum):
    """Where the failure was observed."""

    UNREACHABLE = "unreachable"  # connection refused/reset, DNS
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"  # a non-2xx answer other than a prompt rejection
    SOCKET_DROP = "socket_drop"
    PROMPT_LOST = "prompt_lost"  # neither /queue nor /history knows our prompt
    PROMPT_REJECTED = "prompt_rejected"  # POST /prompt 400 with node_errors
    NODE_ERROR = "node_error"  # execution_error from a node
    INTERRUPTED = "interrupted"  # interrupted by someone other than us
    PROTOCOL = "protocol"  # an answer we could not understand
    NO_BACKEND = "no_backend"  # no configured backend can ever take this job
    INVALID_INPUT = "invalid_input"
    CIRCUIT_OPEN = "circuit_open"  # this workflow keeps failing: its breaker stopped further tries
    PARTNER_KEY_LOST = "partner_key_lost"  # the API process holding the job's partner key restarted
    INTERNAL = "internal"  # running the job kept raising an error comfyfleet did not foresee


OOM_EXCEPTION_TYPES = frozenset({"torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError",
                                 "OutOfMemoryError"})
OOM_MESSAGE_MARKERS = ("Allocation on device", "CUDA out of memory",
                       "This error means you ran out of memory on your GPU")
# ComfyUI's refusal of a prompt naming a class it has not loaded (execution.py, invalid_prompt)
MISSING_NODE_CLASS = re.compile(r"Cannot execute because node (.+) does not exist\.")
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
FATAL_HTTP = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    message: str
    status_code: int | None = None
    exception_type: str | None = None
    node_id: str | None = None
    node_type: str | None = None
    retry_after_s: float | None = None
    traceback: tuple[str, ...] = ()
    node_errors: dict[str, Any] = field(default_factory=dict)


def is_out_of_memory(exception_type: str | None, message: str | None) -> bool:
    if exception_type in OOM_EXCEPTION_TYPES:
        return True
    return any(marker in (message or "") for marker in OOM_MESSAGE_MARKERS)


def lacks_node_class(failure: Failure) -> bool:
    """The backend refused the prompt for a node class it does not have: another may have it
    (a fleet's backends need not have the same custom nodes)."""
    return (failure.kind is FailureKind.PROMPT_REJECTED and failure.exception_type == "invalid_prompt"
            and MISSING_NODE_CLASS.search(failure.message) is not None)


def classify(failure: Failure) -> FailureClass:
    match failure.kind:
        case FailureKind.UNREACHABLE | FailureKind.TIMEOUT | FailureKind.SOCKET_DROP | \
                FailureKind.PROMPT_LOST | FailureKind.PROTOCOL:
            return FailureClass.TRANSIENT
        case FailureKind.HTTP_STATUS:
            if failure.status_code in FATAL_HTTP:
                return FailureClass.FATAL
            if failure.status_code in TRANSIENT_HTTP:
                return FailureClass.TRANSIENT
            return FailureClass.PERMANENT
        case FailureKind.NODE_ERROR:
            if is_out_of_memory(failure.exception_type, failure.message):
                return FailureClass.RECOVERABLE
            return FailureClass.PERMANENT
        case FailureKind.INTERRUPTED:
            return FailureClass.TRANSIENT
        case FailureKind.NO_BACKEND | FailureKind.INTERNAL:
            return FailureClass.FATAL
        case FailureKind.PROMPT_REJECTED if lacks_node_class(failure):
            return FailureClass.RECOVERABLE
        case (FailureKind.PROMPT_REJECTED | FailureKind.INVALID_INPUT | FailureKind.CIRCUIT_OPEN
              | FailureKind.PARTNER_KEY_LOST):
            return FailureClass.PERMANENT
    return FailureClass.PERMANENT  # pragma: no cover - every kind is matched above


ERROR_CODES = {
    FailureKind.PROMPT_REJECTED: "invalid_workflow",
    FailureKind.NODE_ERROR: "node_execution_error",
    FailureKind.PROMPT_LOST: "prompt_lost",
    FailureKind.UNREACHABLE: "backend_unreachable",
    FailureKind.TIMEOUT: "backend_timeout",
    FailureKind.HTTP_STATUS: "upstream_error",
    FailureKind.SOCKET_DROP: "backend_unreachable",
    FailureKind.INTERRUPTED: "interrupted",
    FailureKind.PROTOCOL: "upstream_error",
    FailureKind.NO_BACKEND: "no_backend",
    FailureKind.INVALID_INPUT: "invalid_request",
    FailureKind.CIRCUIT_OPEN: "circuit_open",
    FailureKind.PARTNER_KEY_LOST: "partner_key_lost",
    FailureKind.INTERNAL: "internal_error",
}


def error_code(failure: Failure) -> str:
    if failure.kind is FailureKind.NODE_ERROR and is_out_of_memory(failure.exception_type, failure.message):
        return "out_of_memory"
    return ERROR_CODES[failure.kind]
