"""Job counters since the deployment began, kept exact by the scripts that write the records.

``create.lua`` and ``save.lua`` add 1 to fields of ``{p}:stats:jobs`` in the same atomic step as
the write they count, and a repeat of a write that already landed counts nothing, so the totals
are exact however many processes write. A field is a JSON array (backend names may hold any
character):

    ["submitted", type]                            a job was accepted
    ["finished", type, status]                     a job reached a terminal status
    ["attempt", backend, outcome, failure_class]   an attempt ended ("" when it has no class)
"""

from __future__ import annotations

import json
from typing import Any

from ..domain.job import Job
from .connection import translated
from .keys import Keys


def _field(*parts: str) -> str:
    return json.dumps(parts, separators=(",", ":"))


def submitted_fields(job: Job) -> list[str]:
    return [_field("submitted", job.type)]


def change_fields(before: Job, after: Job) -> list[str]:
    """What the save of ``before`` -> ``after`` counts."""
    fields = [_field("attempt", attempt.backend, attempt.outcome or "", attempt.failure_class or "")
              for attempt in after.history[len(before.history):]]
    if after.is_terminal and not before.is_terminal:
        fields.append(_field("finished", after.type, after.status.value))
    return fields


class JobCounters:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def totals(self) -> dict[tuple[str, ...], int]:
        """``{("finished", "image", "succeeded"): 12, ...}``; unreadable fields are skipped."""
        with translated(self._redis, "read of job counters"):
            raw = await self._redis.hgetall(self._keys.job_stats)
        totals: dict[tuple[str, ...], int] = {}
        for field, value in raw.items():
            try:
                parts = json.loads(field)
            except ValueError:
                continue
            if isinstance(parts, list) and parts and all(isinstance(p, str) for p in parts):
                totals[tuple(parts)] = int(value)
        return totals
