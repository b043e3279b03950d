"""Housekeeping: retention of finished jobs, index repair, orphaned blobs, lost queue entries.

One pass (``Maintenance.run_once``, also ``comfyfleet cleanup``):

1. finished jobs completed more than ``retention_s`` ago are deleted with their workflow,
   preview and every index entry (Redis would expire the records by itself; deleting them here
   also honours a retention shortened since they finished, and frees their blobs below);
2. index entries whose record is gone (expired by TTL) are dropped;
3. blobs no remaining job's outputs refer to, and that no live upload or waiting job holds
   (``Keys.blobs_held``), are deleted once older than ``blob_grace_s`` (a blob written a moment
   ago may belong to a job that is being collected right now);
4. queued jobs whose queue entry is missing (an unsynced Redis write lost in a crash) are
   enqueued again;
5. workflow breakers nothing depends on any more (``CircuitBreaker.forgettable``: no failure
   inside their window, or opened and left alone since) are deleted: there is one per owner
   and workflow that ever failed, in a hash every process reads each second;
6. node class lists no backend's catalog names any more are deleted;
7. queued jobs past their deadline by ``overdue_grace_s`` are expired: a worker expires a job
   it picks up late, but none may pick it up (every worker busy with long prompts, or none
   running), and the record, kept until its deadline plus ``active_ttl_s``, would then vanish
   instead of ending ``expired``.

``loop`` runs a pass every ``interval_s``; a lock key with the same lease makes one pass per
interval per deployment however many processes run the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..blobs import LocalBlobStore
from ..domain.job import TERMINAL_STATUSES, JobStatus
from ..domain.transitions import Expire
from ..errors import InvalidTransition, JobNotFound
from ..domain.policy import CircuitBreaker
from ..store.connection import translated
from ..store.fleet import FleetStore
from ..store.jobs import RedisJobStore
from ..store.keys import Keys
from ..store.node_catalogs import NodeCatalogs
from ..store.uploads import UploadStore
from .recovery import Recovery

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceSettings:
    retention_s: float = 7 * 86400.0
    blob_grace_s: float = 3600.0
    interval_s: float = 600.0
    first_pass_after_s: float = 30.0  # start-up belongs to reattaching jobs; housekeeping waits
    overdue_grace_s: float = 60.0  # a queued job this far past its deadline was left by every worker


@dataclass(slots=True)
class MaintenanceReport:
    jobs_deleted: list[str] = field(default_factory=list)
    index_entries_repaired: list[str] = field(default_factory=list)
    blobs_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    requeued: list[str] = field(default_factory=list)
    workflow_breakers_forgotten: int = 0
    node_sets_deleted: int = 0
    expired: list[str] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{verb} {len(self.jobs_deleted)} finished job(s) past retention, "
                f"{len(self.index_entries_repaired)} orphaned index entr(y/ies), "
                f"{len(self.blobs_deleted)} orphaned blob(s) ({self.bytes_freed} bytes); "
                f"{'would requeue' if self.dry_run else 'requeued'} {len(self.requeued)} queued job(s) "
                f"missing from the queue; {verb} {self.workflow_breakers_forgotten} idle workflow "
                f"breaker(s) and {self.node_sets_deleted} unused node class list(s); "
                f"{'would expire' if self.dry_run else 'expired'} {len(self.expired)} queued job(s) "
                f"past their deadline")


class Maintenance:
    def __init__(self, *, redis, keys: Keys, store: RedisJobStore, blobs: LocalBlobStore,  # type: ignore[no-untyped-def]
                 queue=None, recovery: Recovery | None = None,  # type: ignore[no-untyped-def]
                 fleet: FleetStore | None = None, workflow_breaker: CircuitBreaker | None = None,
                 node_catalogs: NodeCatalogs | None = None,
                 settings: MaintenanceSettings = MaintenanceSettings(),
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._keys = keys
        self._store = store
        self._blobs = blobs
        self._queue = queue
        self._recovery = recovery
        self._fleet = fleet
        self._workflow_breaker = workflow_breaker
        self._node_catalogs = node_catalogs
        self._settings = settings
        self._clock = clock

    async def run_once(self, *, dry_run: bool = False) -> MaintenanceReport:
        report = MaintenanceReport(dry_run=dry_run)
        now = self._clock()
        report.jobs_deleted = await self._past_retention(now)
        if not dry_run:
            for job_id in report.jobs_deleted:
                await self._store.delete(job_id)
        report.index_entries_repaired = await (self._store.expired_index_entries() if dry_run
                                               else self._store.repair_indexes())
        referenced = await self._referenced_blobs(exclude=set(report.jobs_deleted))
        referenced |= await UploadStore(self._redis, self._keys).held(now, forget_expired=not dry_run)
        for digest, size in await asyncio.to_thread(self._unreferenced, referenced, now):
            # not stored again since it was looked at (an upload or output of the same bytes)
            if dry_run or await self._blobs.delete_if_stale(digest, now - self._settings.blob_grace_s):
                report.blobs_deleted.append(digest)
                report.bytes_freed += size
        if not dry_run:
            await asyncio.to_thread(self._blobs.drop_stale_incoming, now - self._settings.blob_grace_s)
        if self._queue is not None and self._recovery is not None:
            report.requeued = (await self._recovery.missing_from_queue(self._queue) if dry_run
                               else await self._recovery.requeue_missing(self._queue))
        if self._fleet is not None and self._workflow_breaker is not None:
            breaker = self._workflow_breaker
            forgotten = await self._fleet.breakers.forget_workflow_breakers(
                lambda state: breaker.forgettable(state, now), dry_run=dry_run)
            report.workflow_breakers_forgotten = len(forgotten)
        if self._node_catalogs is not None and not dry_run:
            report.node_sets_deleted = await self._node_catalogs.forget_unused_sets()
        report.expired = await self._expire_overdue(now, dry_run=dry_run)
        return report

    async def loop(self) -> None:
        """A pass every ``interval_s`` (one per deployment per interval); never raises."""
        await asyncio.sleep(self._settings.first_pass_after_s)
        while True:
            try:
                if await self._take_turn():
                    report = await self.run_once()
                    log.info("maintenance: %s", report.summary())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("maintenance pass failed: %s", exc)
            await asyncio.sleep(self._settings.interval_s)

    async def _take_turn(self) -> bool:
        with translated(self._redis, "maintenance lock"):
            return bool(await self._redis.set(self._keys.maintenance_lock, str(os.getpid()), nx=True,
                                              px=max(1, int(self._settings.interval_s * 1000))))

    async def _past_retention(self, now: float) -> list[str]:
        cutoff = now - self._settings.retention_s
        found: list[str] = []
        for status in TERMINAL_STATUSES:
            index = self._keys.status_index(status.value)
            offset = 0
            while True:  # scored by created_at: a job completed before the cutoff was created before it
                with translated(self._redis, "read of an index"):
                    ids = await self._redis.zrangebyscore(index, "-inf", cutoff, start=offset, num=1000)
                for job in await self._store.get_many(ids):
                    if job.is_terminal and (job.completed_at or job.created_at) <= cutoff:
                        found.append(job.id)
                if len(ids) < 1000:
                    break
                offset += len(ids)
        return found

    async def _expire_overdue(self, now: float, *, dry_run: bool) -> list[str]:
        cutoff = now - self._settings.overdue_grace_s
        overdue: list[str] = []
        index = self._keys.status_index(JobStatus.QUEUED.value)
        offset = 0
        while True:  # scored by created_at: a job past its deadline was created before it
            with translated(self._redis, "read of an index"):
                ids = await self._redis.zrangebyscore(index, "-inf", cutoff, start=offset, num=1000)
            overdue += [job.id for job in await self._store.get_many(ids)
                        if job.status is JobStatus.QUEUED and job.deadline_at is not None
                        and job.deadline_at <= cutoff]
            if len(ids) < 1000:
                break
            offset += len(ids)
        if dry_run:
            return overdue
        expired = []
        for job_id in overdue:
            try:  # a worker that picked it up meanwhile wins, or loses, on the record's version
                await self._store.apply(job_id, Expire("deadline exceeded while queued"), now)
            except (InvalidTransition, JobNotFound):
                continue
            expired.append(job_id)
        return expired

    async def _referenced_blobs(self, exclude: set[str]) -> set[str]:
        referenced: set[str] = set()
        chunk: list[str] = []

        async def flush() -> None:
            if chunk:
                referenced.update(await self._store.output_hashes(chunk))
            chunk.clear()

        with translated(self._redis, "read of the job index"):
            async for job_id, _score in self._redis.zscan_iter(self._keys.all_index, count=500):
                if job_id not in exclude:
                    chunk.append(job_id)
                if len(chunk) >= 500:
                    await flush()
        await flush()
        return referenced

    def _unreferenced(self, referenced: set[str], now: float) -> list[tuple[str, int]]:
        """(digest, size) of every blob nobody refers to, older than the grace (blocking)."""
        found = []
        for digest in self._blobs.iter_digests():
            if digest in referenced:
                continue
            try:
                stat = os.stat(self._blobs.path(digest))
            except FileNotFoundError:
                continue
            if now - stat.st_mtime >= self._settings.blob_grace_s:
                found.append((digest, stat.st_size))
        return found

