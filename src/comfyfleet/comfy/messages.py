"""Typed ComfyUI WebSocket messages and the parser for text and binary frames.

Lenient where the protocol grows: unknown keys are ignored, missing optional keys become ``None``
and unknown message types become ``UnknownMessage``. A frame that cannot be understood at all
(not JSON, no ``type``, a truncated binary header, a required number missing) raises
``BackendProtocolError``; no other exception leaves ``parse``. Layouts: protocol doc section 2.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

from ..errors import BackendProtocolError

PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}
UNKNOWN_CONTENT_TYPE = "application/octet-stream"
EXECUTION_BLOCKED = "ExecutionBlocked"


@dataclass(frozen=True, slots=True)
class StatusMessage:
    queue_remaining: int | None
    sid: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionStart:
    prompt_id: str | None
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionCached:
    prompt_id: str | None
    nodes: tuple[str, ...]
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class Executing:
    """A node started; ``node=None`` means the prompt is finished and recorded in history.
    ``prompt_id=None`` is the replay ComfyUI sends on reconnect."""

    prompt_id: str | None
    node: str | None
    display_node: str | None = None


@dataclass(frozen=True, slots=True)
class ProgressMessage:
    prompt_id: str | None
    node: str | None
    value: float
    max: float


@dataclass(frozen=True, slots=True)
class NodeProgress:
    node_id: str
    value: float
    max: float
    state: str  # "running" | "finished" (ComfyUI 0.3.64 never sends the others)
    display_node_id: str | None = None
    parent_node_id: str | None = None
    real_node_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProgressState:
    """Snapshot of every node started in the prompt; ``nodes`` is a read-only mapping."""

    prompt_id: str | None
    nodes: Mapping[str, NodeProgress]

    def __hash__(self) -> int:
        return hash((self.prompt_id, tuple(self.nodes.items())))


@dataclass(frozen=True, slots=True)
class Executed:
    prompt_id: str | None
    node: str | None
    display_node: str | None
    output: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExecutionSuccess:
    prompt_id: str | None
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionError:
    """A node raised. ``blocked`` (ExecutionBlocked) does not end the prompt."""

    prompt_id: str | None
    node_id: str | None
    node_type: str | None
    exception_type: str | None
    exception_message: str | None
    traceback: tuple[str, ...]
    executed: tuple[str, ...]
    timestamp: int | None
    blocked: bool


@dataclass(frozen=True, slots=True)
class ExecutionInterrupted:
    prompt_id: str | None
    node_id: str | None
    node_type: str | None
    executed: tuple[str, ...]
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class PreviewImage:
    """Binary type 1 (no ids) or type 4 (ids from its JSON metadata)."""

    content_type: str
    image: bytes
    prompt_id: str | None = None
    node_id: str | None = None
    display_node_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProgressText:
    """Binary type 3; broadcast to every socket, carries no prompt id."""

    node_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Logs:
    entries: tuple[Any, ...]
    size: Any = None


@dataclass(frozen=True, slots=True)
class FeatureFlags:
    flags: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A text type or binary event type this module does not know (``"binary:N"``)."""

    type: str
    data: object


Message = (StatusMessage | ExecutionStart | ExecutionCached | Executing | ProgressMessage
           | ProgressState | Executed | ExecutionSuccess | ExecutionError | ExecutionInterrupted
           | PreviewImage | ProgressText | Logs | FeatureFlags | UnknownMessage)

_TERMINAL = (ExecutionSuccess, ExecutionInterrupted)


def parse(frame: str | bytes) -> Message:
    """Parse one frame: ``str`` is a text frame, ``bytes`` a binary frame."""
    if isinstance(frame, str):
        return parse_text(frame)
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return parse_binary(bytes(frame))
    _fail(f"unsupported frame type {type(frame).__name__}")


def parse_text(text: str) -> Message:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BackendProtocolError(f"text frame is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        _fail("text frame has no 'type'")
    kind, data = obj["type"], obj.get("data")
    parser = _TEXT_PARSERS.get(kind)
    if parser is None:
        return UnknownMessage(kind, data)
    if not isinstance(data, dict):
        _fail(f"{kind}: 'data' is not an object")
    try:
        return parser(data)
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise BackendProtocolError(f"{kind}: cannot read data ({exc})") from exc


def parse_binary(frame: bytes) -> Message:
    if len(frame) < 4:
        _fail(f"binary frame of {len(frame)} bytes has no event type")
    (event,) = struct.unpack_from(">I", frame, 0)
    if event == PREVIEW_IMAGE:
        (image_format,) = _u32_after_event(frame, "PREVIEW_IMAGE")
        return PreviewImage(IMAGE_FORMATS.get(image_format, UNKNOWN_CONTENT_TYPE), frame[8:])
    if event == PREVIEW_IMAGE_WITH_METADATA:
        return _preview_with_metadata(frame)
    if event == TEXT:
        (length,) = _u32_after_event(frame, "TEXT")
        if len(frame) < 8 + length:
            _fail("TEXT frame is shorter than its node id length")
        node_id = frame[8:8 + length].decode("utf-8", errors="replace")
        return ProgressText(node_id, frame[8 + length:].decode("utf-8", errors="replace"))
    return UnknownMessage(f"binary:{event}", frame[4:])


def prompt_id_of(msg: Message) -> str | None:
    """The prompt a message belongs to, when it says so (also a ``prompt_id`` in unknown data)."""
    if isinstance(msg, UnknownMessage):
        data = msg.data
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        return prompt_id if isinstance(prompt_id, str) else None
    return getattr(msg, "prompt_id", None)


def is_terminal(msg: Message) -> bool:
    """Success, a real (not blocked) error, an interrupt, or ``executing`` with no node."""
    if isinstance(msg, ExecutionError):
        return not msg.blocked
    if isinstance(msg, Executing):
        return msg.node is None
    return isinstance(msg, _TERMINAL)


# -- binary helpers ---------------------------------------------------------------------------
def _u32_after_event(frame: bytes, name: str) -> tuple[int]:
    if len(frame) < 8:
        _fail(f"{name} frame is truncated ({len(frame)} bytes)")
    return struct.unpack_from(">I", frame, 4)


def _preview_with_metadata(frame: bytes) -> PreviewImage:
    (length,) = _u32_after_event(frame, "PREVIEW_IMAGE_WITH_METADATA")
    if len(frame) < 8 + length:
        _fail("PREVIEW_IMAGE_WITH_METADATA frame is shorter than its metadata length")
    try:
        metadata = json.loads(frame[8:8 + length].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise BackendProtocolError(f"preview metadata is not JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        _fail("preview metadata is not an object")
    content_type = metadata.get("image_type")
    return PreviewImage(
        content_type=content_type if isinstance(content_type, str) else UNKNOWN_CONTENT_TYPE,
        image=frame[8 + length:],
        prompt_id=_opt_str(metadata, "prompt_id"),
        node_id=_opt_str(metadata, "node_id"),
        display_node_id=_opt_str(metadata, "display_node_id"),
    )


# -- text parsers -----------------------------------------------------------------------------
def _status(data: dict[str, Any]) -> StatusMessage:
    status = data.get("status")
    exec_info = status.get("exec_info") if isinstance(status, dict) else None
    remaining = _opt_int(exec_info, "queue_remaining") if isinstance(exec_info, dict) else None
    return StatusMessage(remaining, _opt_str(data, "sid"))


def _executing(data: dict[str, Any]) -> Executing:
    return Executing(_opt_str(data, "prompt_id"), _opt_str(data, "node"),
                     _opt_str(data, "display_node"))


def _progress(data: dict[str, Any]) -> ProgressMessage:
    return ProgressMessage(_opt_str(data, "prompt_id"), _opt_str(data, "node"),
                           _number(data, "value"), _number(data, "max"))


def _progress_state(data: dict[str, Any]) -> ProgressState:
    raw_nodes = data.get("nodes", {})
    if not isinstance(raw_nodes, dict):
        _fail("progress_state: 'nodes' is not an object")
    nodes: dict[str, NodeProgress] = {}
    for key, entry in raw_nodes.items():
        if not isinstance(entry, dict):
            _fail(f"progress_state: entry {key!r} is not an object")
        state = entry.get("state")
        if not isinstance(state, str):
            _fail(f"progress_state: entry {key!r} has no state")
        nodes[str(key)] = NodeProgress(
            node_id=_opt_str(entry, "node_id") or str(key),
            value=_number(entry, "value"),
            max=_number(entry, "max"),
            state=state,
            display_node_id=_opt_str(entry, "display_node_id"),
            parent_node_id=_opt_str(entry, "parent_node_id"),
            real_node_id=_opt_str(entry, "real_node_id"),
        )
    return ProgressState(_opt_str(data, "prompt_id"), MappingProxyType(nodes))


def _executed(data: dict[str, Any]) -> Executed:
    output = data.get("output")
    return Executed(_opt_str(data, "prompt_id"), _opt_str(data, "node"),
                    _opt_str(data, "display_node"), output if isinstance(output, dict) else {})


def _execution_error(data: dict[str, Any]) -> ExecutionError:
    exception_type = _opt_str(data, "exception_type")
    return ExecutionError(
        prompt_id=_opt_str(data, "prompt_id"),
        node_id=_opt_str(data, "node_id"),
        node_type=_opt_str(data, "node_type"),
        exception_type=exception_type,
        exception_message=_opt_str(data, "exception_message"),
        traceback=_str_tuple(data, "traceback"),
        executed=_str_tuple(data, "executed"),
        timestamp=_opt_int(data, "timestamp"),
        blocked=exception_type == EXECUTION_BLOCKED,
    )


def _execution_interrupted(data: dict[str, Any]) -> ExecutionInterrupted:
    return ExecutionInterrupted(_opt_str(data, "prompt_id"), _opt_str(data, "node_id"),
                                _opt_str(data, "node_type"), _str_tuple(data, "executed"),
                                _opt_int(data, "timestamp"))


def _logs(data: dict[str, Any]) -> Logs:
    entries = data.get("entries")
    return Logs(tuple(entries) if isinstance(entries, list) else (), data.get("size"))


_TEXT_PARSERS: dict[str, Callable[[dict[str, Any]], Message]] = {
    "status": _status,
    "execution_start": lambda d: ExecutionStart(_opt_str(d, "prompt_id"), _opt_int(d, "timestamp")),
    "execution_cached": lambda d: ExecutionCached(_opt_str(d, "prompt_id"), _str_tuple(d, "nodes"),
                                                  _opt_int(d, "timestamp")),
    "executing": _executing,
    "progress": _progress,
    "progress_state": _progress_state,
    "executed": _executed,
    "execution_success": lambda d: ExecutionSuccess(_opt_str(d, "prompt_id"),
                                                    _opt_int(d, "timestamp")),
    "execution_error": _execution_error,
    "execution_interrupted": _execution_interrupted,
    "logs": _logs,
    "feature_flags": lambda d: FeatureFlags(dict(d)),
}


# -- field readers ----------------------------------------------------------------------------
def _fail(message: str) -> NoReturn:
    raise BackendProtocolError(message)


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    _fail(f"{key!r} is not a string: {value!r}")


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    _fail(f"{key!r} is not an integer: {value!r}")


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    _fail(f"{key!r} is not a finite number: {value!r}")


def _str_tuple(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        _fail(f"{key!r} is not a list: {value!r}")
    return tuple(item if isinstance(item, str) else str(item) for item in value)
