"""Validate a ``POST /jobs`` submission before anything is stored.

Every problem raises ``ValidationFailed`` with the contract's code and status, so client input
never reaches a 500. ``parse_json`` also refuses what Python's ``json`` accepts but nothing after
it can hold: NaN and infinities (a response cannot carry them), strings with unpaired surrogates
(they are not UTF-8) and nesting deeper than ``MAX_JSON_DEPTH`` (recursive code after it would
run out of stack). The partner key in ``extra_data`` is checked here and handed on, never
stored: ``Submission.partner_key`` is excluded from ``repr`` so it does not leak into logs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect

from ..domain.asset_refs import node_references
from ..errors import ValidationFailed

MAX_METADATA_PAIRS = 16
MAX_METADATA_VALUE_BYTES = 256
MAX_PRIORITY = 1_000_000
MAX_IDEMPOTENCY_KEY = 255
MAX_JSON_DEPTH = 64
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
RESERVED_FIELDS = ("webhook_url", "inputs")
EXTRA_DATA_KEYS = frozenset({"api_key_comfy_org"})


@dataclass(frozen=True, slots=True)
class Submission:
    workflow: dict[str, Any]
    metadata: dict[str, str]
    priority: int
    partner_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AssetRef:
    node_id: str
    input_name: str
    asset_id: str | None  # None when the reference is malformed
    ref: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the object itself


def invalid(message: str, *, code: str = "invalid_request", status_code: int = 422,
            details: dict[str, Any] | None = None) -> ValidationFailed:
    return ValidationFailed(message, code=code, status_code=status_code, details=details)


def check_declared_size(content_length: str | None, max_bytes: int) -> None:
    """Refuse a body whose ``Content-Length`` already says it is too large."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        raise invalid("Content-Length is not a number", status_code=400) from None
    if declared > max_bytes:
        raise too_large(max_bytes)


def too_large(max_bytes: int) -> ValidationFailed:
    return invalid(f"request body is larger than {max_bytes} bytes", code="payload_too_large",
                   status_code=413, details={"max_bytes": max_bytes})


def parse_json(raw: bytes) -> Any:
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise invalid("request body is not valid JSON", status_code=400) from None
    _check_storable(body)
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400 parses as inf
        raise ValueError(f"{text} is out of range")
    return number


def _check_storable(body: Any) -> None:
    """Refuse nesting deeper than ``MAX_JSON_DEPTH`` and strings that are not UTF-8 (walked
    without recursion: the body may be nested as deep as ``json`` allows)."""
    pending = [(body, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise invalid(f"request body nests deeper than {MAX_JSON_DEPTH} levels",
                              status_code=400, details={"max_depth": MAX_JSON_DEPTH})
            if isinstance(value, dict):
                for key in value:
                    _check_text(key)
                pending.extend((item, depth + 1) for item in value.values())
            else:
                pending.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    if not text.isascii() and LONE_SURROGATE.search(text):
        raise invalid("request body is not valid JSON: a string holds an unpaired surrogate "
                      "escape (\\ud800-\\udfff)", status_code=400)


def idempotency_key(header: str | None) -> str | None:
    """The ``Idempotency-Key`` header: 1–255 printable ASCII characters, or absent."""
    if header is None:
        return None
    if not 1 <= len(header) <= MAX_IDEMPOTENCY_KEY or not all(" " <= ch <= "~" for ch in header):
        raise invalid("Idempotency-Key must be 1-255 printable ASCII characters")
    return header


def submission(body: Any, *, max_nodes: int) -> Submission:
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    for name in RESERVED_FIELDS:
        if name in body:
            raise invalid(f"'{name}' is not supported", details={"field": name})
    if "workflow" not in body:
        raise invalid("'workflow' is required", details={"field": "workflow"})
    workflow = body["workflow"]
    if not isinstance(workflow, dict):
        raise invalid("'workflow' must be an object", details={"field": "workflow"})
    check_workflow(workflow, max_nodes=max_nodes)
    return Submission(workflow=workflow, metadata=metadata(body.get("metadata")),
                      priority=priority(body.get("priority")),
                      partner_key=partner_key(body.get("extra_data")))


def metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad_metadata("metadata must be an object of strings")
    if len(raw) > MAX_METADATA_PAIRS:
        raise _bad_metadata(f"metadata has {len(raw)} pairs; at most {MAX_METADATA_PAIRS}")
    for key, value in raw.items():
        if not METADATA_KEY.fullmatch(key):  # match() would let a trailing "\n" through
            raise _bad_metadata(f"metadata key {key!r} must be 1-40 of [A-Za-z0-9_.-]", key)
        if not isinstance(value, str):
            raise _bad_metadata(f"metadata value for {key!r} must be a string", key)
        if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            raise _bad_metadata(
                f"metadata value for {key!r} is longer than {MAX_METADATA_VALUE_BYTES} bytes", key)
    return dict(raw)


def _bad_metadata(message: str, key: str | None = None) -> ValidationFailed:
    return invalid(message, code="metadata_invalid", details={"field": "metadata", "key": key})


def priority(raw: Any) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or abs(raw) > MAX_PRIORITY:
        raise invalid(f"priority must be an integer within ±{MAX_PRIORITY}",
                      details={"field": "priority"})
    return raw


def partner_key(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid("extra_data must be an object", details={"field": "extra_data"})
    unknown = sorted(set(raw) - EXTRA_DATA_KEYS)
    if unknown:
        raise invalid(f"extra_data accepts only {sorted(EXTRA_DATA_KEYS)}",
                      details={"field": "extra_data", "unknown": unknown})
    key = raw.get("api_key_comfy_org")
    if key is not None and not isinstance(key, str):
        raise invalid("extra_data.api_key_comfy_org must be a string",
                      details={"field": "extra_data"})
    return key or None


def check_workflow(workflow: dict[str, Any], *, max_nodes: int) -> None:
    """API format: a map of node id -> ``{"class_type": str, "inputs": {...}}``."""
    if isinstance(workflow.get("nodes"), list) or isinstance(workflow.get("links"), list):
        raise invalid("workflow is a UI-format export (nodes/links); submit the API format",
                      code="workflow_format_ui")
    if not workflow:
        raise invalid("workflow has no nodes", code="invalid_workflow")
    if len(workflow) > max_nodes:
        raise invalid(f"workflow has {len(workflow)} nodes; at most {max_nodes}",
                      code="invalid_workflow", details={"max_nodes": max_nodes})
    node_errors: dict[str, list[dict[str, str]]] = {}
    for node_id, node in workflow.items():
        problems = list(_node_problems(workflow, node))
        if problems:
            node_errors[node_id] = problems
    if node_errors:
        first = next(iter(node_errors))
        reason = node_errors[first][0]
        raise invalid(f"node {first}: {reason['message']}", code="invalid_workflow",
                      details={"node_errors": node_errors})
    cycle = _cycle(workflow)
    if cycle:
        raise invalid(f"the workflow's links form a cycle: {' -> '.join(cycle)}", code="invalid_workflow",
                      details={"cycle": cycle})


def _cycle(workflow: dict[str, Any]) -> list[str] | None:
    """Node ids around a loop of links (its first node repeated at the end), or None. ComfyUI
    cannot order such a graph; found here, it is a 422 rather than a prompt that never ends."""
    inputs_of = {node_id: [value[0] for value in node["inputs"].values() if isinstance(value, list)]
                 for node_id, node in workflow.items()}
    done: set[str] = set()
    for start in workflow:
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(inputs_of[start])]
        while stack:
            upstream = next(stack[-1], None)
            if upstream is None:  # every input of this node explored: it is on no loop
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                stack.pop()
                continue
            if upstream in on_path:
                return [*path[path.index(upstream):], upstream]
            if upstream not in done:
                path.append(upstream)
                on_path.add(upstream)
                stack.append(iter(inputs_of[upstream]))
    return None


def _node_problems(workflow: dict[str, Any], node: Any) -> Iterator[dict[str, str]]:
    if not isinstance(node, dict):
        yield _problem("node", "not_an_object", "a node must be an object")
        return
    class_type = node.get("class_type")
    if not isinstance(class_type, str) or not class_type:
        yield _problem("class_type", "missing_class_type", "class_type must be a non-empty string")
    inputs = node.get("inputs")
    if not isinstance(inputs, dict):
        yield _problem("inputs", "missing_inputs", "inputs must be an object")
        return
    for name, value in inputs.items():
        if isinstance(value, list) and not _is_valid_link(workflow, value):
            yield _problem(name, "bad_link", f"input {name!r} links to no node in the workflow")


def _is_valid_link(workflow: dict[str, Any], value: list[Any]) -> bool:
    """ComfyUI reads any list input as a link ``[node_id, output_index]``."""
    return (len(value) == 2 and isinstance(value[0], str) and value[0] in workflow
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _problem(field_name: str, reason: str, message: str) -> dict[str, str]:
    return {"field": field_name, "reason": reason, "message": message}


def asset_refs(workflow: dict[str, Any]) -> list[AssetRef]:
    """Every ``core/ASSET`` reference in the nodes' inputs (a malformed one has no id)."""
    found: list[AssetRef] = []
    for node_id, name, ref in node_references(workflow):
        info = ref.get("info")
        asset_id = info.get("id") if isinstance(info, dict) else None
        found.append(AssetRef(node_id, name, asset_id if isinstance(asset_id, str) and asset_id else None, ref))
    return found


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it grows past ``max_bytes`` (whatever the header said)."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise invalid("the client went away mid-request", status_code=400) from None
    return b"".join(chunks)
