"""Refuse a workflow at submission when no backend of the fleet has one of its node classes.

Without this, a misspelt class or a custom node the fleet lacks is found only when a backend
refuses the prompt: seconds later on an idle fleet, behind the whole queue on a busy one. The
classes each backend has come from its ``/object_info`` (read by the health checks,
``store/node_catalogs.py``). Only the backends the job's tags allow count: a class held only by
a backend the job may not use would fail it at dispatch. The check is lenient by design, so a
good workflow is never refused: it judges only when the catalog of every such backend is known
(one unknown backend might have the class), and a class any of them has passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ValidationFailed
from ..store.node_catalogs import NodeCatalogs


async def check_node_classes(workflow: dict[str, Any], catalogs: NodeCatalogs, backends: Iterable[str],
                             *, where: str = "no backend of this fleet") -> None:
    """Raise ``invalid_workflow`` (422, one entry per node in ``details.node_errors``) when some
    node's class is listed by none of ``backends`` (``where`` says which, in the message)."""
    known = await catalogs.classes_of(backends)
    if not known or any(classes is None for classes in known.values()):
        return  # no backend, or one whose classes are not known: it might have any
    lists = set(known.values())  # one per distinct catalog: alike backends share theirs
    missing = {node_id: str(node["class_type"]) for node_id, node in workflow.items()
               if not any(str(node["class_type"]) in classes for classes in lists)}
    if not missing:
        return
    node_errors = {node_id: [{"field": "class_type", "reason": "unknown_node_class",
                              "message": f"{where} has the node class {class_type!r}"}]
                   for node_id, class_type in missing.items()}
    first = next(iter(missing))
    more = f" (and {len(missing) - 1} more node(s))" if len(missing) > 1 else ""
    raise ValidationFailed(f"node {first}: {where} has the node class {missing[first]!r}{more}",
                           code="invalid_workflow", details={"node_errors": node_errors})
