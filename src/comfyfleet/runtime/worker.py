"""A worker: bullmq consumers on every lane, each job in its own task, driving the runner.

A job's exception never touches another: the processor catches everything a job raises, logs it
and puts the job back in the queue after a short delay, so nothing is dropped on a bug or a
Redis blip. Shutdown is two-phase: stop taking jobs, then hand running jobs back at once (their
records keep the attempt, so the next worker reattaches to the same prompt).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from bullmq import Worker as BullWorker
from bullmq.custom_errors import DelayedError

from ..errors import ComfyFleetError, JobNotFound, StoreError
from ..queue import LANES, QueueSettings
from ..store.keys import Keys
from .runner import Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    concurrency: int = 64
    queue: QueueSettings = field(default_factory=QueueSettings)
    error_retry_s: float = 2.0
    worker_id: str = field(default_factory=lambda: f"w-{uuid.uuid4().hex[:10]}")


class Worker:
    def __init__(self, *, redis_url: str, keys: Keys, runner: Runner,
                 settings: WorkerSettings = WorkerSettings()) -> None:
        self._redis_url = redis_url
        self._keys = keys
        self._runner = runner
        self._settings = settings
        self._consumers: list[BullWorker] = []
        self.jobs_started = 0

    @property
    def worker_id(self) -> str:
        return self._settings.worker_id

    async def start(self) -> None:
        q = self._settings.queue
        opts = {"connection": self._redis_url, "prefix": self._keys.bull_prefix,
                "concurrency": self._settings.concurrency, "lockDuration": q.lock_duration_ms,
                "stalledInterval": q.stalled_interval_ms, "maxStalledCount": q.max_stalled_count,
                "drainDelay": q.drain_delay_s, "removeOnComplete": True, "removeOnFail": True,
                "name": self.worker_id}
        self._consumers = [BullWorker(lane, self._process, opts) for lane in LANES]

    async def _process(self, bull_job, token: str) -> None:
        job_id = (bull_job.data or {}).get("job_id") or bull_job.id
        self.jobs_started += 1
        try:
            verdict = await self._runner.run(job_id)
        except JobNotFound:
            return None  # removed by retention: nothing left to run
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            log.warning("job %s: store unavailable, retrying: %s", job_id, exc)
            verdict_at = time.time() + self._settings.error_retry_s
        except (ComfyFleetError, Exception) as exc:  # noqa: BLE001 - one job never takes down others
            log.exception("job %s: unexpected error, requeued: %s", job_id, exc)
            verdict_at = time.time() + self._settings.error_retry_s
        else:
            if verdict.done:
                return None
            verdict_at = verdict.run_at
        await bull_job.moveToDelayed(int(verdict_at * 1000), token)
        raise DelayedError()

    async def stop(self) -> None:
        """Stop taking jobs and hand running ones back now (their locks are released so the next
        worker picks them up without waiting for the stall check)."""
        for consumer in self._consumers:
            await consumer.close(force=True)
        self._consumers = []
