"""A workflow's fingerprint: its shape (node ids, node types and links), not its values.

Two jobs that run the same graph with other prompts, seeds or sizes share a fingerprint, so a
circuit breaker keyed by (job type, fingerprint) trips for a broken workflow, not for one input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def workflow_fingerprint(workflow: Mapping[str, Any]) -> str:
    shape = []
    for node_id in sorted(workflow, key=str):
        node = workflow[node_id] if isinstance(workflow[node_id], Mapping) else {}
        inputs = node.get("inputs") if isinstance(node.get("inputs"), Mapping) else {}
        links = sorted((str(name), str(value[0]), int(value[1]) if isinstance(value[1], int) else 0)
                       for name, value in inputs.items() if _is_link(value))
        shape.append([str(node_id), str(node.get("class_type")), links])
    digest = hashlib.sha256(json.dumps(shape, separators=(",", ":")).encode()).hexdigest()
    return digest[:16]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def node_classes_of(workflow: Mapping[str, Any]) -> frozenset[str]:
    """The node classes a workflow uses (what a backend must have to run it)."""
    return frozenset(str(node.get("class_type")) for node in workflow.values()
                     if isinstance(node, Mapping) and node.get("class_type") is not None)
