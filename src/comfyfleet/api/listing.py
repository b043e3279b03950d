"""``GET /jobs``: query parsing, Python-side metadata filters and opaque cursors.

A cursor is base64url of ``[created_at, id]`` of the last job on the page; the next page holds
the jobs strictly after it in the store's order (newest first, ties by id descending), so jobs
created in the same instant are neither skipped nor repeated. Metadata filters are matched here
rather than in Redis, so a page may need several store reads; the scan is bounded and a page cut
short by the bound still carries a cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..domain.job import Job, JobStatus
from ..errors import ValidationFailed
from ..ports import JobStore
from .validation import METADATA_KEY

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_METADATA_FILTERS = 3
FILTERED_BATCH = 100
MAX_SCANNED = 2000
METADATA_PARAM = re.compile(r"^metadata\[(.*)\]$")

Position = tuple[float, str]


@dataclass(frozen=True, slots=True)
class JobQuery:
    limit: int = DEFAULT_LIMIT
    statuses: list[JobStatus] | None = None
    job_type: str | None = None
    owner: str | None = None
    cursor: Position | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def matches(self, job: Job) -> bool:
        return all(job.metadata.get(k) == v for k, v in self.metadata.items())


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def encode_cursor(position: Position) -> str:
    raw = json.dumps([position[0], position[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        if isinstance(created_at, (int, float)) and not isinstance(created_at, bool) \
                and math.isfinite(created_at) and isinstance(job_id, str):
            return float(created_at), job_id
    except (ValueError, TypeError, binascii.Error, OverflowError, RecursionError):
        pass  # OverflowError: an integer too large for a float; RecursionError: deep nesting
    raise ValidationFailed("cursor is not one this server issued", code="invalid_cursor",
                           status_code=400)


def parse_query(params: Mapping[str, str]) -> JobQuery:
    limit = _limit(params.get("limit"))
    getlist = getattr(params, "getlist", None)  # a repeated status= adds to the list
    statuses = _statuses(",".join(getlist("status")) if getlist else params.get("status"))
    metadata = {m.group(1): value for name, value in params.items()
                if (m := METADATA_PARAM.match(name))}
    bad = sorted(key for key in metadata if not METADATA_KEY.match(key))
    if bad:
        raise ValidationFailed(f"metadata filter key {bad[0]!r} is not a metadata key "
                               f"(1-40 of A-Z a-z 0-9 _ . -)", code="invalid_metadata_filter",
                               status_code=400)
    if len(metadata) > MAX_METADATA_FILTERS:
        raise ValidationFailed(f"at most {MAX_METADATA_FILTERS} metadata filters",
                               code="invalid_metadata_filter", status_code=400)
    cursor = decode_cursor(params["cursor"]) if params.get("cursor") else None
    return JobQuery(limit=limit, statuses=statuses, job_type=params.get("type") or None,
                    owner=params.get("owner") or None, cursor=cursor, metadata=metadata)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(f"limit must be an integer from 1 to {MAX_LIMIT}",
                               code="invalid_request", status_code=422)
    return limit


def _statuses(raw: str | None) -> list[JobStatus] | None:
    if not raw:
        return None
    try:
        return [JobStatus(s.strip()) for s in raw.split(",") if s.strip()] or None
    except ValueError:
        allowed = ", ".join(s.value for s in JobStatus)
        raise ValidationFailed(f"status must be a comma list of: {allowed}",
                               code="invalid_request", status_code=400) from None


async def list_page(store: JobStore, params: Mapping[str, str], *, only_owner: str | None = None) -> Page:
    """``only_owner``: the caller may list no one else's jobs (asking for another owner's is a 403)."""
    query = parse_query(params)
    if only_owner is not None:
        if query.owner not in (None, only_owner):
            raise ValidationFailed("a user API key lists only its own jobs", code="forbidden",
                                   status_code=403)
        query = replace(query, owner=only_owner)
    size = FILTERED_BATCH if query.metadata else query.limit + 1
    matched: list[Job] = []
    position, scanned = query.cursor, 0
    while True:
        batch, exhausted = await _read_after(store, query, position, size)
        for job in batch:
            scanned += 1
            position = (job.created_at, job.id)
            if query.matches(job):
                matched.append(job)
                if len(matched) > query.limit:
                    page = matched[:query.limit]
                    last = page[-1]
                    return Page(page, encode_cursor((last.created_at, last.id)))
        if exhausted:
            return Page(matched, None)
        if scanned >= MAX_SCANNED and position is not None:
            return Page(matched, encode_cursor(position))


async def _read_after(store: JobStore, query: JobQuery, position: Position | None,
                      size: int) -> tuple[list[Job], bool]:
    """Jobs strictly after ``position`` (from one read of ``size``) and whether the store ran
    out; the store's ``before`` is an exclusive ``created_at``."""
    if position is None:
        raw = await store.list(statuses=query.statuses, job_type=query.job_type, owner=query.owner, limit=size)
        return raw, len(raw) < size
    while True:
        raw = await store.list(statuses=query.statuses, job_type=query.job_type, owner=query.owner,
                               limit=size, before=math.nextafter(position[0], math.inf))
        fresh = [j for j in raw if (j.created_at, j.id) < position]
        if fresh or len(raw) < size:
            return fresh, len(raw) < size
        # the whole read is the cursor's instant at or above its id: jobs of that instant below
        # it may follow, so read further (stepping past the instant would skip them)
        size *= 2
