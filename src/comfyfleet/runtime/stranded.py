"""Queued jobs stranded in a dead worker: taken from the queue, waiting there for a slot, and
now held by nobody.

A worker takes queue entries ahead of free capacity: a taken job waits in the worker (its claim
held) until a backend slot frees. When that worker dies, bullmq hands its taken entries back only
once their lock has run out and a stalled check has run: 10-15 s with our settings. Their claims
run out sooner, with the dead worker's liveness (one lease, 6 s), so the sweep can take them over
first.

``StrandedWatch.due()`` finds them without scanning all the time: only while a worker has
vanished from the live set recently (or this one has just started) does it read the queue's taken
entries (bullmq's active lists) and their claims, and it names a job only when two scans in a row
saw it taken, queued and unclaimed (a live worker claims an entry a moment after taking it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from ..domain.job import JobStatus

TakenIds = Callable[[], Awaitable[list[str]]]


class StrandedWatch:
    def __init__(self, *, claims, store, taken_ids: TakenIds, window_s: float,  # type: ignore[no-untyped-def]
                 clock: Callable[[], float] = time.time) -> None:
        """``window_s``: how long after a worker vanished the taken entries are scanned."""
        self._claims = claims
        self._store = store
        self._taken_ids = taken_ids
        self._window_s = window_s
        self._clock = clock
        self._known: set[str] = set()
        self._scan_until = clock() + window_s  # a fresh worker looks once: it may follow a crash
        self._suspects: set[str] = set()

    async def due(self, *, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Ids of queued jobs taken from the queue and held by no worker, seen so twice running
        (``skip``: jobs this worker runs already)."""
        live = set(await self._claims.live_worker_ids())
        now = self._clock()
        if self._known - live:
            self._scan_until = now + self._window_s
        self._known = live
        if now >= self._scan_until:
            self._suspects = set()
            return []
        taken = [job_id for job_id in await self._taken_ids() if job_id not in skip]
        unclaimed = [job_id for job_id, holder in zip(taken, await self._claims.holders(taken))
                     if holder is None]
        stranded = {job.id for job in await self._store.get_many(unclaimed)
                    if job.status is JobStatus.QUEUED}
        due, self._suspects = stranded & self._suspects, stranded
        return sorted(due)
