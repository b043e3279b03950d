"""RedisJobStore: job records in Redis hashes, changed only through two Lua scripts.

``create.lua`` writes a new record (reserving its idempotency key) and ``save.lua`` is the
compare-and-set every later change goes through; both keep the indexes, the TTL, the event
stream and the job counters (``job_counters.py``) in step with the record in the same atomic
step. Key layout: ``store/keys.py``.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import math
from typing import Any

import redis.asyncio as aioredis

from ..domain import transitions
from ..domain.job import TERMINAL_STATUSES, Job, JobStatus
from ..errors import ConcurrentUpdate, InvalidTransition, JobNotFound, StoreError, ValidationFailed
from .connection import translated
from .job_counters import change_counts, refused_field, submitted_field
from .keys import Keys
from .lua import script

STREAM_MAXLEN = 10_000
QUEUE_FULL_RETRY_AFTER_S = 5
_LATEST_EXPIRY_MS = 2**62  # an absurd deadline keeps the record for good, not a failed write


def event_kind(before: Job | None, after: Job) -> str:
    """``status`` when status or phase moved, ``progress`` when only progress did, else ``update``."""
    if before is None or before.status != after.status or before.phase != after.phase:
        return "status"
    if before.progress != after.progress:
        return "progress"
    return "update"


class RedisJobStore:
    """Implements ``ports.JobStore`` on Redis/Valkey; every redis error leaves as ``StoreError``."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, active_ttl_s: float = 7200.0,
                 retention_s: float = 604800.0, idempotency_ttl_s: float = 86400.0) -> None:
        self._redis = redis
        self._keys = keys
        self._active_ttl_ms = int(active_ttl_s * 1000)
        self._retention_ms = int(retention_s * 1000)
        self._idem_ttl_ms = int(idempotency_ttl_s * 1000)
        self._create = redis.register_script(script("create.lua"))
        self._save = redis.register_script(script("save.lua"))
        self._read_each = redis.register_script(script("read_each.lua"))

    # -- writes --------------------------------------------------------------------------------
    async def create(self, job: Job, workflow: dict[str, Any], *, max_active: int = 0,
                     key_scope: str | None = None) -> Job:
        """Store a new job; a reused idempotency key raises ``ValidationFailed`` (422), and so
        (429 ``queue_full``) does an owner with ``max_active`` jobs queued or running already.
        The key is unique per ``key_scope`` (who presents it; default: the job's owner)."""
        k = self._keys
        scope = job.owner if key_scope is None else key_scope
        keys = [k.job(job.id), k.workflow(job.id), k.all_index, k.status_index(job.status.value),
                k.owner_index(job.owner or ""), k.type_index(job.type), k.active_index,
                k.idempotency(scope, job.idempotency_key or ""), k.events_stream, k.job_stats]
        args = [job.id, job.status.value, job.version, job.owner or "", job.type,
                repr(job.created_at), job.priority, json.dumps(job.to_dict()),
                json.dumps(workflow), self._active_ttl_ms, job.idempotency_key or "",
                self._idem_ttl_ms, self._event(None, job), k.events_channel, STREAM_MAXLEN,
                submitted_field(job), max(0, int(max_active)), refused_field("queue_full"),
                self._kept_until_ms(job)]
        with translated(self._redis, f"create of job {job.id}"):
            reply = await self._create(keys=keys, args=args)
        if reply[0] == "idempotency_key_reuse":
            raise ValidationFailed(
                f"idempotency key {job.idempotency_key!r} was already used (job {reply[1]})",
                code="idempotency_key_reuse", status_code=422, details={"job_id": reply[1]})
        if reply[0] == "exists":
            raise StoreError(f"job {job.id} already exists")
        if reply[0] == "queue_full":
            raise ValidationFailed(
                f"{job.owner} has {reply[1]} jobs queued or running, the most it may have; "
                f"submit again when one has finished", code="queue_full", status_code=429,
                details={"active": int(reply[1]), "limit": max_active},
                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)})
        return job

    async def release_idempotency(self, scope: str | None, key: str) -> None:
        """Free an idempotency key of ``scope`` (used when a create is undone after its
        reservation)."""
        with translated(self._redis, "release of an idempotency key"):
            await self._redis.delete(self._keys.idempotency(scope, key))

    async def save(self, before: Job, after: Job) -> Job:
        """Compare-and-set ``before`` -> ``after``; raises ``ConcurrentUpdate`` if it moved."""
        keys, args = self._save_call(before, after)
        with translated(self._redis, f"save of job {after.id}"):
            reply = await self._save(keys=keys, args=args)
        match reply[0]:
            case "ok":
                return after
            case "missing":
                raise JobNotFound(f"job {after.id} not found")
            case "conflict":
                raise ConcurrentUpdate(
                    f"job {after.id} changed underneath: expected {before.status.value} "
                    f"v{before.version}, found {reply[1]} v{reply[2]}")
            case "bad_version":
                raise StoreError(f"job {after.id}: a save must raise the version by exactly one "
                                 f"(v{before.version} -> v{after.version})")
            case _:
                raise InvalidTransition(f"job {after.id}: {before.status.value} -> "
                                        f"{after.status.value} is not allowed")

    async def save_many(self, changes: builtins.list[tuple[Job, Job]], *,
                        chunk: int = 1000) -> builtins.list[bool]:
        """Many ``save`` calls pipelined (one round trip per ``chunk``); True where the
        compare-and-set landed, False where the record moved or is gone."""
        landed: builtins.list[bool] = []
        for start in range(0, len(changes), chunk):
            part = changes[start:start + chunk]
            with translated(self._redis, "save of jobs"):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for before, after in part:
                        keys, args = self._save_call(before, after)
                        await self._save(keys=keys, args=args, client=pipe)
                    replies = await pipe.execute(raise_on_error=False)
            landed.extend(isinstance(r, list) and r[:1] == ["ok"] for r in replies)
        return landed

    def _save_call(self, before: Job, after: Job) -> tuple[builtins.list[str], builtins.list[Any]]:
        k = self._keys
        terminal = after.status in TERMINAL_STATUSES
        keys = [k.job(after.id), k.workflow(after.id), k.status_index(before.status.value),
                k.status_index(after.status.value), k.active_index, k.events_stream, k.job_stats]
        data = json.dumps(after.to_dict())
        args = [after.id, before.status.value, before.version, after.status.value, after.version,
                after.owner or "", after.type, repr(after.created_at), after.priority,
                data, "1" if terminal else "0",
                self._retention_ms if terminal else self._active_ttl_ms,
                self._event(before, after, data), k.events_channel, STREAM_MAXLEN, k.cancel_channel,
                json.dumps(change_counts(before, after)), self._kept_until_ms(after)]
        return keys, args

    def _kept_until_ms(self, job: Job) -> str:
        """The epoch ms before which a record that is not finished may not expire: its deadline
        plus ``active_ttl`` (nothing saves a queued job while it waits for a backend, and its
        deadline may lie further off than ``active_ttl``: it must last until the runner expires
        it). The scripts set this as a floor under the TTL (``PEXPIREAT … GT``), so the TTL is
        max(active_ttl, deadline - now + active_ttl). '' (no floor): finished, or no deadline."""
        deadline = job.deadline_at
        if job.status in TERMINAL_STATUSES or deadline is None or not math.isfinite(deadline):
            return ""
        return str(min(max(0, int(deadline * 1000) + self._active_ttl_ms), _LATEST_EXPIRY_MS))

    async def apply(self, job_id: str, event: transitions.Event, now: float, *,
                    known: Job | None = None, max_retries: int = 5) -> Job:
        """Load, ``transitions.apply``, save; reload and retry when another writer won.

        ``known``: the newest record the caller has (it wrote it or read it). The change is
        tried on it first, saving the read; when the stored record has moved since (a cancel
        request, another runner), the save is refused and the record is read afresh."""
        if known is not None:
            try:
                return await self.save(known, transitions.apply(known, event, now))
            except (ConcurrentUpdate, InvalidTransition):
                pass  # stale: decide on the stored record below
        for attempt in range(max_retries + 1):
            job = await self.get(job_id)
            try:
                return await self.save(job, transitions.apply(job, event, now))
            except ConcurrentUpdate:
                if attempt == max_retries:
                    raise
                await asyncio.sleep(0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def delete(self, job_id: str) -> None:
        """Remove the record, its workflow, preview and every index entry."""
        k = self._keys
        with translated(self._redis, f"delete of job {job_id}"):
            owner, job_type = await self._redis.hmget(k.job(job_id), ["owner", "type"])
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(k.job(job_id), k.workflow(job_id), k.preview(job_id))
                for index in (k.all_index, k.active_index,
                              *(k.status_index(s.value) for s in JobStatus)):
                    pipe.zrem(index, job_id)
                if owner:
                    pipe.zrem(k.owner_index(owner), job_id)
                if job_type:
                    pipe.zrem(k.type_index(job_type), job_id)
                await pipe.execute()

    # -- reads ---------------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        with translated(self._redis, f"read of job {job_id}"):
            data = await self._redis.hget(self._keys.job(job_id), "data")
        if data is None:
            raise JobNotFound(f"job {job_id} not found")
        return Job.from_dict(json.loads(data))

    async def get_many(self, job_ids: builtins.list[str]) -> builtins.list[Job]:
        """The jobs that still exist, in the order asked; one round trip."""
        if not job_ids:
            return []
        with translated(self._redis, "read of jobs"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self._keys.job(job_id), "data")
                rows = await pipe.execute()
        return [Job.from_dict(json.loads(row)) for row in rows if row is not None]

    async def get_with_workflow(self, job_id: str) -> tuple[Job, dict[str, Any]]:
        """The record and its workflow in one round trip."""
        with translated(self._redis, f"read of job {job_id}"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hget(self._keys.job(job_id), "data")
                pipe.get(self._keys.workflow(job_id))
                data, text = await pipe.execute()
        if data is None or text is None:
            raise JobNotFound(f"job {job_id} not found")
        return Job.from_dict(json.loads(data)), json.loads(text)

    async def workflow(self, job_id: str) -> dict[str, Any]:
        with translated(self._redis, f"read of the workflow of job {job_id}"):
            text = await self._redis.get(self._keys.workflow(job_id))
        if text is None:
            raise JobNotFound(f"job {job_id} not found")
        return json.loads(text)

    async def list(self, *, owner: str | None = None,
                   statuses: builtins.list[JobStatus] | None = None,
                   job_type: str | None = None, limit: int = 50,
                   before: float | None = None) -> builtins.list[Job]:
        """Newest first; ``before`` is an exclusive ``created_at`` cursor."""
        if limit <= 0:
            return []
        wanted = {JobStatus(s) for s in statuses} if statuses else None
        k = self._keys

        def keep(job: Job) -> bool:
            return ((owner is None or job.owner == owner)
                    and (job_type is None or job.type == job_type)
                    and (wanted is None or job.status in wanted))

        candidates: builtins.list[builtins.list[str]] = []
        if owner is not None:
            candidates.append([k.owner_index(owner)])
        if job_type is not None:
            candidates.append([k.type_index(job_type)])
        if wanted:
            candidates.append([k.status_index(s.value) for s in sorted(wanted)])
        if not candidates:
            candidates.append([k.all_index])
        indexes = await self._narrowest(candidates)
        found: builtins.list[Job] = []
        for index in indexes:
            found.extend(await self._scan(index, before, limit, keep))
        found.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return found[:limit]

    async def active_ids(self) -> builtins.list[str]:
        with translated(self._redis, "read of the active index"):
            return await self._redis.zrange(self._keys.active_index, 0, -1)

    async def ids_with_status(self, *statuses: JobStatus) -> builtins.list[str]:
        """Every id in the status indexes of ``statuses`` (one round trip)."""
        with translated(self._redis, "read of the status indexes"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for status in statuses:
                    pipe.zrange(self._keys.status_index(status.value), 0, -1)
                found = await pipe.execute()
        return [job_id for ids in found for job_id in ids]

    async def count_by_status(self) -> dict[str, int]:
        """How many records each status index holds (finished ones: those still retained)."""
        with translated(self._redis, "read of the status indexes"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for status in JobStatus:
                    pipe.zcard(self._keys.status_index(status.value))
                counts = await pipe.execute()
        return {status.value: int(count) for status, count in zip(JobStatus, counts)}

    async def queue_position(self, job: Job) -> int | None:
        """0-based place among queued jobs by ``created_at`` (priority is not weighed yet)."""
        if job.status is not JobStatus.QUEUED:
            return None
        index = self._keys.status_index(JobStatus.QUEUED.value)
        with translated(self._redis, f"queue position of job {job.id}"):
            return await self._redis.zrank(index, job.id)

    async def output_hashes(self, job_ids: builtins.list[str]) -> set[str]:
        """The blob digests the records of ``job_ids`` refer to (missing records: none);
        one round trip, and no job is built (housekeeping asks this of every retained job)."""
        with translated(self._redis, "read of job outputs"):
            rows = await self._read_each(keys=[self._keys.job(job_id) for job_id in job_ids], args=["data"])
        return {digest for row in rows if row is not None for digest in Job.output_hashes_of(json.loads(row))}

    # -- index upkeep --------------------------------------------------------------------------
    async def expired_index_entries(self) -> builtins.list[str]:
        """Ids listed in some index whose record is gone (expired or deleted)."""
        return await self._sweep(remove=False)

    async def repair_indexes(self) -> builtins.list[str]:
        """Drop index entries whose record is gone; return their ids."""
        return await self._sweep(remove=True)

    # -- helpers -------------------------------------------------------------------------------
    def _event(self, before: Job | None, after: Job, data: str | None = None) -> str:
        """The event of a save; ``data`` is the record already encoded (spliced in, not
        encoded twice)."""
        head = json.dumps({"job_id": after.id, "kind": event_kind(before, after)})
        return f'{head[:-1]}, "job": {data or json.dumps(after.to_dict())}}}'

    async def _narrowest(self, candidates: builtins.list[builtins.list[str]]) -> builtins.list[str]:
        if len(candidates) == 1:
            return candidates[0]
        with translated(self._redis, "index sizes"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for group in candidates:
                    for index in group:
                        pipe.zcard(index)
                sizes = iter(await pipe.execute())
        totals = [sum(next(sizes) for _ in group) for group in candidates]
        return candidates[totals.index(min(totals))]

    async def _scan(self, index: str, before: float | None, limit: int,
                    keep: Any) -> builtins.list[Job]:
        """Walk ``index`` newest first from ``before`` until ``limit`` jobs pass ``keep``."""
        top = f"({before!r}" if before is not None else "+inf"
        page = min(max(2 * limit, 10), 500)  # a little over the limit: most ids pass ``keep``
        offset, found = 0, []
        while len(found) < limit:
            with translated(self._redis, "read of an index"):
                ids = await self._redis.zrevrangebyscore(index, top, "-inf", start=offset, num=page)
            found.extend(job for job in await self.get_many(ids) if keep(job))
            if len(ids) < page:
                break
            offset += page
        return found[:limit]

    async def _indexes(self) -> builtins.list[str]:
        k = self._keys
        names = [k.all_index, k.active_index, *(k.status_index(s.value) for s in JobStatus)]
        for pattern in (k.owner_index_pattern, k.type_index_pattern):
            async for name in self._redis.scan_iter(match=pattern, count=500, _type="zset"):
                names.append(name)
        return names

    async def _sweep(self, *, remove: bool) -> builtins.list[str]:
        gone: set[str] = set()
        with translated(self._redis, "index repair"):
            for index in await self._indexes():
                async for chunk in self._chunks(index):
                    alive = await self._read_each(keys=[self._keys.job(job_id) for job_id in chunk], args=[""])
                    dead = [job_id for job_id, ok in zip(chunk, alive) if not ok]
                    if dead and remove:
                        await self._redis.zrem(index, *dead)
                    gone.update(dead)
        return sorted(gone)

    async def _chunks(self, index: str, size: int = 500):  # type: ignore[no-untyped-def]
        chunk: builtins.list[str] = []
        async for job_id, _score in self._redis.zscan_iter(index, count=size):
            chunk.append(job_id)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

