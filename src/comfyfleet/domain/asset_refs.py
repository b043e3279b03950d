"""Asset references inside a workflow: ``{"__type": "core/ASSET", "info": {"id": ...}}``.

The API completes each reference at submission with ``info[BLOB_KEY]`` (the ``sha256:`` digest
of its bytes) and ``info[NAME_KEY]`` (its file name); the worker stages those bytes on the backend
and puts the staged file name where the reference was.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ASSET_TYPE = "core/ASSET"
BLOB_KEY, NAME_KEY = "comfyfleet_blob", "comfyfleet_name"


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__type") == ASSET_TYPE


def references_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every reference object in ``value`` (an input's value, at any depth)."""
    if is_reference(value):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from references_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from references_in(item)


def node_references(workflow: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(node id, input name, reference)`` for every reference in the nodes' inputs."""
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for name, value in (inputs or {}).items() if isinstance(inputs, dict) else ():
            for ref in references_in(value):
                yield node_id, name, ref
