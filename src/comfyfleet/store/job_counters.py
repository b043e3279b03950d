"""Job counters since the deployment began, kept exact by the scripts that write the records.

``create.lua`` and ``save.lua`` add to fields of ``{p}:stats:jobs`` in the same atomic step as
the write they count, and a repeat of a write that already landed counts nothing, so the totals
are exact however many processes write. A field is a JSON array (backend names may hold any
character):

    ["submitted", type]                            a job was accepted
    ["finished", type, status]                     a job reached a terminal status
    ["attempt", backend, outcome, failure_class]   an attempt ended ("" when it has no class)
    ["queue_wait", type, le] / ["queue_wait_ms", type]
                                                   submitted to its first attempt: a count in the
                                                   first bucket of ``BUCKETS_S`` it fits (le "+Inf"
                                                   past the last), and the sum in milliseconds
    ["duration", type, status, le] / ["duration_ms", type, status]
                                                   submitted to terminal, the same way
    ["refused", reason]                            a submission refused by the store (queue_full)
    ["uploaded"] / ["uploaded_bytes"]              input assets received, and their bytes
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ..domain.job import Job
from .connection import translated
from .keys import Keys


# Upper bounds (seconds) of the time buckets: a second-long image to an hour-long training.
BUCKETS_S = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def _field(*parts: str) -> str:
    return json.dumps(parts, separators=(",", ":"))


def bucket_of(seconds: float) -> str:
    """The ``le`` label of the first bucket ``seconds`` fits in."""
    return next((f"{bound:g}" for bound in BUCKETS_S if seconds <= bound), "+Inf")


def submitted_field(job: Job) -> str:
    return _field("submitted", job.type)


def refused_field(reason: str) -> str:
    return _field("refused", reason)


UPLOADED_FIELD, UPLOADED_BYTES_FIELD = _field("uploaded"), _field("uploaded_bytes")


def change_counts(before: Job, after: Job) -> dict[str, int]:
    """What the save of ``before`` -> ``after`` adds to which counter."""
    counts: Counter[str] = Counter()
    for attempt in after.history[len(before.history):]:
        counts[_field("attempt", attempt.backend, attempt.outcome or "", attempt.failure_class or "")] += 1
    first = after.current
    if before.current is None and first is not None and first.number == 1:
        wait_s = max(0.0, first.started_at - after.created_at)
        counts[_field("queue_wait", after.type, bucket_of(wait_s))] += 1
        counts[_field("queue_wait_ms", after.type)] += round(wait_s * 1000)
    if after.is_terminal and not before.is_terminal:
        status = after.status.value
        took_s = max(0.0, (after.completed_at or after.created_at) - after.created_at)
        counts[_field("finished", after.type, status)] += 1
        counts[_field("duration", after.type, status, bucket_of(took_s))] += 1
        counts[_field("duration_ms", after.type, status)] += round(took_s * 1000)
    return dict(counts)


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
