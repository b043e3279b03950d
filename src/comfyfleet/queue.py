"""The work queue: bullmq queues holding job ids, one per lane (interactive, long).

The job record in the store is the truth; the queue only says "this job wants a worker".
bullmq job id = our job id, so enqueueing an id twice is a no-op. Lock and stall settings
(``QueueSettings``): lockDuration 10 s (``COMFYFLEET_QUEUE_LOCK_S``) and stalledInterval 5 s, so
the entries a killed worker had taken go back to the queue 10-15 s later; maxStalledCount
1,000,000, in effect no limit: bullmq fails a job that stalls more than maxStalledCount times,
and a stall is a dead worker, not a failure of the job. A dead worker's running jobs do not wait
for the stall check: their claims lapse and the orphan sweep (``runtime/recovery.py``) hands
them over in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from bullmq import Job as BullJob
from bullmq import Queue
from bullmq import Worker as BullWorker
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import RedisError

from .domain.job import Job
from .errors import StoreError
from .store.connection import READ_TIMEOUT_S, bounded_sends, translated, where
from .store.keys import Keys

log = logging.getLogger(__name__)

INTERACTIVE, LONG = "interactive", "long"
LANES = (INTERACTIVE, LONG)
LONG_JOB_TYPES = frozenset({"lora_training", "video"})
BULL_PRIORITY_MAX = 2_097_152

# bullmq blocks on a lane's marker for up to 10 s (its maximum block timeout), and redis-py 8
# gives up reading any reply after 5 s unless told otherwise. A blocking read cut at 5 s was
# retried by bullmq's client with 2, 4, 8, 16, 20 s pauses, during which the lane fetched
# nothing: an entry delayed past 5 s on an idle lane waited minutes past its time, and a new job
# on such a lane could wait out a pause. Reads on bullmq's connections may take longer than its
# longest block; connecting stays quick.
BULL_READ_TIMEOUT_S = 15.0
BULL_CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = READ_TIMEOUT_S  # a producer's call, as long as one read of the store

# bullmq's clients retry a lost connection 20 times with pauses of 2, 4, 8, 16, then 20 s (some
# 6 minutes in all), and its run loop waits 15 s more once they give up: after a Redis restart
# a lane fetched again seconds after the server was back. Ours retry as long, with pauses of a
# quarter to half a second, and the run loop waits one second.
RECONNECT_PAUSE_S = 0.5  # longest; each pause is between half of it and all of it
RECONNECT_FOR_S = 360.0
RUN_RETRY_DELAY_MS = 1_000


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSettings:
    lock_duration_ms: int = 10_000
    stalled_interval_ms: int = 5_000
    max_stalled_count: int = 1_000_000  # a stall is a dead worker, not a failure of the job
    drain_delay_s: int = 1


def bull_connection_url(redis_url: str) -> str:
    """The Redis URL for bullmq's clients: ours, with read and connect timeouts that fit its
    blocking reads (replacing any the URL names)."""
    base, _, query = redis_url.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
            if k not in ("socket_timeout", "socket_connect_timeout")]
    kept += [("socket_timeout", str(BULL_READ_TIMEOUT_S)),
             ("socket_connect_timeout", str(BULL_CONNECT_TIMEOUT_S))]
    return f"{base}?{urlencode(kept)}"


def fit_bull_clients(*clients) -> None:  # type: ignore[no-untyped-def]
    """Give bullmq's clients our pauses between reconnects (see ``RECONNECT_PAUSE_S``) and
    sends that never drop a cancel (``store.connection.bounded_sends``)."""
    tries = int(RECONNECT_FOR_S / (0.75 * RECONNECT_PAUSE_S))
    for client in clients:
        if client is not None:
            bounded_sends(client.connection_pool)
            client.set_retry(Retry(EqualJitterBackoff(cap=RECONNECT_PAUSE_S, base=RECONNECT_PAUSE_S), tries,
                                   supported_errors=(rex.ConnectionError, rex.TimeoutError)))


def lane_of(job: Job) -> str:
    return LONG if job.type in LONG_JOB_TYPES else INTERACTIVE


def bull_priority(priority: int) -> int:
    """Our priority: higher first, ±1e6. bullmq: 1 is the most urgent."""
    return max(1, min(BULL_PRIORITY_MAX, 1_000_001 - int(priority)))


class JobQueue:
    """Producer side of the lanes.

    Every call is bounded by ``call_timeout_s`` and its failures are ``StoreError``s. bullmq's
    client retries a failed command 20 times with pauses of up to 20 s: unbounded, one add to a
    Redis that had gone away took minutes before it failed (over 100 s seen)."""

    def __init__(self, redis_url: str, keys: Keys, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._queues = {lane: Queue(lane, {"connection": bull_connection_url(redis_url), "prefix": keys.bull_prefix})
                        for lane in LANES}
        fit_bull_clients(*(queue.client for queue in self._queues.values()))
        self._call_timeout_s = call_timeout_s
        self._client = next(iter(self._queues.values())).client  # for naming the server in errors

    @contextlib.asynccontextmanager
    async def _bounded(self, doing: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._call_timeout_s):
                with translated(self._client, doing):  # redis errors, as the store's
                    yield
        except TimeoutError as exc:
            raise StoreError(f"the work queue at {where(self._client)} did not finish {doing} "
                             f"within {self._call_timeout_s:g} s") from exc

    async def enqueue(self, job: Job, *, not_before: float | None = None) -> None:
        async with self._bounded("adding a job"):
            await self._add(job, not_before)

    async def _add(self, job: Job, not_before: float | None = None) -> None:
        opts: dict = {"jobId": job.id, "removeOnComplete": True, "removeOnFail": True,
                      "priority": bull_priority(job.priority)}
        at = not_before if not_before is not None else job.not_before
        if at is not None:
            opts["delay"] = max(0, int((at - time.time()) * 1000))
        await self._queues[lane_of(job)].add("run", {"job_id": job.id}, opts)

    async def wake(self, job: Job) -> None:
        """Make the job's entry due now: promote a delayed one, add one when it is missing."""
        queue = self._queues[lane_of(job)]
        async with self._bounded("waking a job"):
            state = await queue.getJobState(job.id)
            if state == "unknown":
                await self._add(job)
            elif state == "delayed":
                entry = await BullJob.fromId(queue, job.id)
                if entry is not None:
                    await entry.promote()

    async def promote_overdue(self, now: float, *, late_s: float = 1.0, limit: int = 200) -> int:
        """Make due every delayed entry more than ``late_s`` past its time; return how many.

        bullmq promotes delayed entries only from a worker's fetch. When a lane's fetch loop is
        stalled (its client pausing between reconnects while Redis restarts, or a read cut short
        as before ``bull_connection_url``: entries then waited minutes past their time), every
        worker's sweep runs this as the safety net, so a retry's backoff, a ``Retry-After`` or a
        re-check starts within a sweep of its time."""
        async with self._bounded("promoting overdue entries"):
            return await self._promote_overdue(now, late_s, limit)

    async def _promote_overdue(self, now: float, late_s: float, limit: int) -> int:
        bound = int((now - late_s) * 1000) << 12  # bullmq scores a delayed entry (due ms) << 12
        promoted = 0
        for queue in self._queues.values():
            for entry_id in await queue.client.zrangebyscore(queue.keys["delayed"], 0, bound, start=0, num=limit):
                entry = await BullJob.fromId(queue, entry_id)
                if entry is None:
                    continue
                try:
                    await entry.promote()
                except Exception:  # noqa: BLE001 - bullmq's plain error: it left the delayed set meanwhile
                    continue
                promoted += 1
        return promoted

    async def taken_ids(self) -> list[str]:
        """Ids of the entries workers have taken from every lane (bullmq's active lists)."""
        async with self._bounded("reading taken entries"):
            taken: list[str] = []
            for queue in self._queues.values():
                taken += await queue.client.lrange(queue.keys["active"], 0, -1)
            return taken

    async def state_of(self, job: Job) -> str:
        """bullmq's state of the job's entry ("unknown" when there is none)."""
        async with self._bounded("reading a job's entry"):
            return await self._queues[lane_of(job)].getJobState(job.id)

    async def close(self) -> None:
        for queue in self._queues.values():
            await queue.close()


class LaneConsumer(BullWorker):
    """A bullmq worker that fetches one job at a time.

    bullmq's run loop starts a fetch for every free unit of concurrency at once; only the
    first blocks on the queue's marker, the others each run the move-to-active script. With
    a concurrency of 64 that is some 60 scripts per wake-up of an idle queue, most finding
    nothing, and their CPU delays the job that woke it. Here fetches queue behind each other:
    one blocks or moves a job at a time, the next starts when it is done, so an idle lane
    costs one blocking read and a busy one moves its jobs back to back.
    """

    def __init__(self, name: str, processor, opts: dict) -> None:  # type: ignore[no-untyped-def, type-arg]
        super().__init__(name, processor, {"runRetryDelay": RUN_RETRY_DELAY_MS, **opts})
        fit_bull_clients(self.client, self.bclient)
        self._fetching = asyncio.Lock()

    async def run(self):  # type: ignore[no-untyped-def]
        """Learn what the server can do first. bullmq asks the server's version only when told
        to, and without it assumes a Redis older than 6, whose blocking reads take whole seconds:
        a wait for an entry delayed 50 ms (a job handed back after its slot wait) was rounded up
        to a full second, and backends sat idle for it."""
        for connection in {id(c): c for c in (self.backend.connection, self.backend.blocking_connection)
                           if c is not None}.values():
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await connection.getRedisVersion()
            except (TimeoutError, RedisError, OSError) as exc:  # unreachable now: bullmq retries
                log.warning("lane %s: could not read the server's version (%s); blocking reads "
                            "wait whole seconds", self.name, exc)
        return await super().run()

    async def getNextJob(self, token: str):  # type: ignore[no-untyped-def]  # noqa: N802 - bullmq's name
        async with self._fetching:
            if self.closing or self.paused:
                return None
            return await super().getNextJob(token)
