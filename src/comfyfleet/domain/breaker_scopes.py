"""Which circuit breaker an outcome feeds: a backend's, or a workflow's for one owner.

Each breaker is a field of one Redis hash (``{p}:fleet:breakers``); these are its names. A
workflow breaker's field is ``workflow:`` + JSON ``[job type, fingerprint, owner]``, as job types
and owners may hold any character.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


def backend_breaker(name: str) -> str:
    return f"backend:{name}"


WORKFLOW_SCOPE = "workflow:"


@dataclass(frozen=True, slots=True)
class WorkflowScope:
    """Whose runs of which workflow shape one workflow breaker counts: each owner has its own,
    so one user's jobs failing on their own values never close a workflow to anyone else."""

    job_type: str
    fingerprint: str
    owner: str | None = None


def workflow_breaker(scope: WorkflowScope) -> str:
    """The breaker's field in Redis; JSON, as job types and owners may hold any character."""
    return WORKFLOW_SCOPE + json.dumps([scope.job_type, scope.fingerprint, scope.owner],
                                       separators=(",", ":"))


def workflow_scope_of(field_name: str) -> WorkflowScope | None:
    """The scope a breaker field stands for; None for a backend's breaker. A field written
    before breakers were kept per owner (``workflow:<type>:<fingerprint>``) has no owner."""
    if not field_name.startswith(WORKFLOW_SCOPE):
        return None
    rest = field_name[len(WORKFLOW_SCOPE):]
    try:
        job_type, fingerprint, owner = json.loads(rest)
        return WorkflowScope(str(job_type), str(fingerprint), None if owner is None else str(owner))
    except (ValueError, TypeError):
        job_type, _, fingerprint = rest.rpartition(":")
        return WorkflowScope(job_type, fingerprint)
