"""A worker: bullmq consumers on every lane, each job in its own task, driving the runner.

A job's exception never touches another: the processor catches everything a job raises, logs it
and puts the job back in the queue after a short delay, so nothing is dropped on a bug or a
Redis blip.

Ownership: a runner works on a job only while it holds the job's claim (store/claims.py), a
Redis key with a lease that this worker renews every ``renew_s`` together with its liveness key.
Two paths lead to a job:

* bullmq delivers its queue entry: claim it and run it; if another runner holds the claim, the
  entry goes back to the queue, delayed by ``busy_recheck_s`` (just past a claim's lease); the
  holder wakes it when it hands the job back to the queue (a retry), and a holder that dies is
  replaced by the sweep (a running job) or by this entry's next look (a queued one);
* the orphan sweep (at start, then every ``sweep_s``): running jobs whose claim is gone (their
  worker stopped or died) are claimed and reconciled at once, without waiting for bullmq's
  stalled check. Their queue entries, wherever they are, find the claim taken and wait. The
  sweep also makes due any delayed queue entry left past its time (``promote_overdue``), and
  takes over queued jobs a dead worker had taken from the queue (``stranded.StrandedWatch``)
  before bullmq would hand them back.

Shutdown is two-phase: stop taking jobs, then hand running jobs back at once: their tasks are
cancelled, their claims released and their queue entries put back, while the job records keep
the attempt, so the next worker reattaches to the same prompt. Hour-long jobs are never waited out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bullmq.custom_errors import DelayedError

from ..errors import ComfyFleetError, JobNotFound, StoreError
from ..queue import LANES, LaneConsumer, QueueSettings, bull_connection_url
from ..store.claims import ClaimLost, Claims
from ..store.keys import Keys
from .recovery import Recovery
from .runner import Runner, Verdict
from .stranded import StrandedWatch, TakenIds

log = logging.getLogger(__name__)

CLAIM_RELEASE_PAUSE_S = 0.25  # between tries of a claim release the store missed

STOP_WAIT_S = 5.0  # how long stop() waits for cancelled job tasks to end

Requeue = Callable[[str, float], Awaitable[None]]
PromoteOverdue = Callable[[float], Awaitable[int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    concurrency: int = 64
    queue: QueueSettings = field(default_factory=QueueSettings)
    error_retry_s: float = 2.0
    # A job whose run raised an error nobody foresaw this many times in a row fails
    # (internal_error) instead of being requeued until its record expires.
    unforeseen_errors_max: int = 5
    worker_id: str = field(default_factory=lambda: f"w-{uuid.uuid4().hex[:10]}")
    renew_s: float = 1.5  # claims and liveness renewed this often (the lease is Claims.lease_s)
    sweep_s: float = 2.0  # orphaned running jobs looked for this often (and at start)
    # A queue entry whose job another runner holds is looked at again this soon: just past one
    # claim lease (Claims.lease_s, 6 s), so when that holder dies holding a queued job (whose
    # only way back is this entry) the job waits seconds, not the minute it once did.
    busy_recheck_s: float = 7.0


class Worker:
    def __init__(self, *, redis_url: str, keys: Keys, runner: Runner, claims: Claims,
                 recovery: Recovery, requeue: Requeue, promote_overdue: PromoteOverdue | None = None,
                 taken_ids: TakenIds | None = None, store=None,  # type: ignore[no-untyped-def]
                 settings: WorkerSettings = WorkerSettings()) -> None:
        """``promote_overdue(now)``: make due the queue entries whose delay is past
        (``JobQueue.promote_overdue``), run with every sweep. ``taken_ids()`` (the queue's taken
        entries, ``JobQueue.taken_ids``) and ``store``: to take over queued jobs stranded in a
        dead worker."""
        self._redis_url = redis_url
        self._keys = keys
        self._runner = runner
        self._claims = claims
        self._recovery = recovery
        self._requeue = requeue
        self._promote_overdue = promote_overdue
        self._settings = settings
        self._stranded = None if taken_ids is None or store is None else StrandedWatch(
            claims=claims, store=store, taken_ids=taken_ids, window_s=4 * settings.sweep_s)
        self._consumers: list[LaneConsumer] = []
        self._held: dict[str, str] = {}  # job id -> claim token
        self._unforeseen_errors: dict[str, int] = {}  # job id -> unexpected errors in a row
        # job id -> a claim token of ours whose release the store missed (it was away): released
        # when it is back, or before this worker claims the job again. Left to its lease, the
        # claim made the job's next turn here look owned by another runner, and wait 7 s.
        self._unreleased: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task] = {}  # job id -> the task running it here
        self._loops: list[asyncio.Task] = []
        self._runs: list[asyncio.Task] = []  # the bullmq consumers' run loops
        self._stopping = False
        self._started_at = time.time()
        self.jobs_started = 0
        self.reattached = 0

    @property
    def worker_id(self) -> str:
        return self._settings.worker_id

    async def start(self) -> None:
        await self._beat()
        self._loops = [asyncio.create_task(self._keep_claims(), name="claims")]
        # The first sweep holds the slots of the prompts still running before any queued job
        # may take one: after every worker was down longer than a slot's lease, a queued job
        # would otherwise be sent where an orphan's prompt still runs.
        try:  # bounded: every call it makes has a timeout
            await self.sweep()
        except StoreError as exc:
            log.warning("first orphan sweep failed (the next is in %.0f s): %s", self._settings.sweep_s, exc)
        self._loops.append(asyncio.create_task(self._sweep_forever(), name="orphan-sweep"))
        q = self._settings.queue
        opts = {"connection": bull_connection_url(self._redis_url), "prefix": self._keys.bull_prefix,
                "concurrency": self._settings.concurrency, "lockDuration": q.lock_duration_ms,
                "stalledInterval": q.stalled_interval_ms, "maxStalledCount": q.max_stalled_count,
                "drainDelay": q.drain_delay_s, "removeOnComplete": True, "removeOnFail": True,
                "name": self.worker_id, "autorun": False}
        self._consumers = [LaneConsumer(lane, self._process, opts) for lane in LANES]
        # run by us, not by bullmq's untracked autorun: stop() waits for them to end, since a run
        # stopped while it still connects would open its connection after close() and leak it
        self._runs = [asyncio.create_task(c.run(), name=f"bullmq-{c.name}") for c in self._consumers]

    # -- the bullmq path ---------------------------------------------------------------------
    async def _process(self, bull_job, token: str) -> None:
        job_id = (bull_job.data or {}).get("job_id") or bull_job.id
        self.jobs_started += 1
        busy_at = time.time() + self._settings.busy_recheck_s
        claim = self._new_token()
        task: asyncio.Task | None = None
        try:
            if job_id in self._unreleased and job_id not in self._tasks:
                await self._release(job_id, self._unreleased[job_id])
            if job_id in self._tasks or not await self._claims.acquire(job_id, claim):
                verdict_at = busy_at  # another runner owns it: look again later
            else:
                self._held[job_id] = claim  # released by _drive, or by stop() if it never ran
                task = asyncio.create_task(self._drive(job_id, claim))
                self._tasks[job_id] = task
                verdict_at = await task
                if verdict_at is None:
                    return None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                if task is not None:
                    task.cancel()
                raise
            # the job's task was cancelled: a hand-back (stop) or a lost claim
            verdict_at = time.time() if self._stopping else busy_at
        except StoreError as exc:
            log.warning("job %s: store unavailable, retrying: %s", job_id, exc)
            verdict_at = time.time() + self._settings.error_retry_s
        if job_id in self._unreleased:
            await self._settle_claim(job_id)
        await bull_job.moveToDelayed(int(verdict_at * 1000), token)
        raise DelayedError()

    # -- the orphan sweep --------------------------------------------------------------------
    async def sweep(self) -> int:
        """Claim every orphaned running job and reconcile it in its own task; return how many."""
        orphans = [job for job in await self._recovery.orphans() if job.id not in self._tasks]
        if not orphans or self._stopping:
            return 0
        tokens = {job.id: self._new_token() for job in orphans}
        won = await self._claims.acquire_many(tokens)
        if not won:
            return 0
        for job_id in won:
            self._held[job_id] = tokens[job_id]
        taken = [job for job in orphans if job.id in won]
        view = self._recovery.view()
        await view.load({job.current.backend for job in taken})
        try:
            ready = await self._recovery.mark_reattached(taken, view, self.worker_id)
        except StoreError as exc:
            log.warning("could not mark reattached jobs at once: %s", exc)
            ready = {}
        for job in taken:
            if self._stopping:
                self._held.pop(job.id, None)
                await self._claims.release(job.id, tokens[job.id])
                continue
            task = asyncio.create_task(self._drive_orphan(job.id, tokens[job.id], view,
                                                          ready.get(job.id)))
            self._tasks[job.id] = task
        self.reattached += len(won)
        log.info("took over %d orphaned job(s)", len(won))
        return len(won)

    async def adopt_stranded(self) -> int:
        """Claim every queued job stranded in a dead worker and run it here; return how many."""
        if self._stranded is None:
            return 0
        due = await self._stranded.due(skip=set(self._tasks))
        if not due or self._stopping:
            return 0
        tokens = {job_id: self._new_token() for job_id in due}
        won = await self._claims.acquire_many(tokens)
        for job_id in won:
            self._held[job_id] = tokens[job_id]
            self._tasks[job_id] = asyncio.create_task(self._drive_orphan(job_id, tokens[job_id], None, None))
        if won:
            log.info("took over %d queued job(s) a dead worker had taken", len(won))
        return len(won)

    async def _sweep_forever(self) -> None:
        while not self._stopping:
            try:
                await self.sweep()
                await self.adopt_stranded()
                if self._promote_overdue is not None:
                    late = await self._promote_overdue(time.time())
                    if late:
                        log.warning("made %d queue entries due that were left past their time", late)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.warning("orphan sweep failed: %s", exc)
            if self._stopping:  # stop() cancelled us mid-call and the Redis client swallowed it
                return
            await asyncio.sleep(self._settings.sweep_s)

    async def _drive_orphan(self, job_id: str, claim: str, view, reattached) -> None:  # type: ignore[no-untyped-def]
        try:
            run_at = await self._drive(job_id, claim, view=view, reattached=reattached)
        except asyncio.CancelledError:
            return  # handed back or claim lost: the record keeps the attempt
        except StoreError as exc:
            log.warning("job %s: store unavailable: %s", job_id, exc)
            run_at = time.time() + self._settings.error_retry_s
        if run_at is not None:
            try:  # a no-op when the job's queue entry still exists somewhere
                await self._requeue(job_id, run_at)
            except ComfyFleetError as exc:
                log.warning("job %s: could not requeue: %s", job_id, exc)

    # -- running one job under its claim -----------------------------------------------------
    async def _unforeseen(self, job_id: str, exc: Exception) -> float | None:
        """The job's run raised ``exc``, which nothing expected: run it again a little later,
        or, after ``unforeseen_errors_max`` in a row, fail it (None: nothing left to run)."""
        count = self._unforeseen_errors[job_id] = self._unforeseen_errors.get(job_id, 0) + 1
        if count < self._settings.unforeseen_errors_max:
            log.exception("job %s: unexpected error (%d in a row), requeued: %s", job_id, count, exc)
            return time.time() + self._settings.error_retry_s
        log.exception("job %s: unexpected error (%d in a row), failing the job: %s", job_id, count, exc)
        self._unforeseen_errors.pop(job_id, None)
        try:
            await self._runner.give_up(job_id, f"comfyfleet could not run this job: {type(exc).__name__}: "
                                               f"{exc} ({count} times in a row; see the worker's log)")
        except Exception as failed:  # noqa: BLE001 - looked at again later, as before
            log.warning("job %s: could not fail the job: %s", job_id, failed)
            return time.time() + self._settings.error_retry_s
        return None

    async def _drive(self, job_id: str, claim: str, *, view=None,  # type: ignore[no-untyped-def]
                     reattached=None) -> float | None:
        """Run the job once under ``claim`` (already acquired); None when it is done, else when
        to look at it again. The claim is released however this ends."""
        task = asyncio.current_task()
        self._held[job_id] = claim
        self._tasks.setdefault(job_id, task)
        try:
            verdict: Verdict = await self._runner.run(
                job_id, view=view, reattached=reattached,
                fence=lambda: self._claims.holds(job_id, claim))
            self._unforeseen_errors.pop(job_id, None)
            return verdict.run_at
        except JobNotFound:
            return None  # removed by retention: nothing left to run
        except ClaimLost as exc:
            log.warning("%s", exc)
            return time.time() + self._settings.busy_recheck_s
        except (asyncio.CancelledError, StoreError):
            raise
        except Exception as exc:  # noqa: BLE001 - one job never takes down others
            return await self._unforeseen(job_id, exc)
        finally:
            if self._tasks.get(job_id) is task:
                del self._tasks[job_id]
            if self._held.get(job_id) == claim:
                del self._held[job_id]
            try:
                await self._release(job_id, claim)
            except StoreError:
                self._unreleased[job_id] = claim  # released when the store is back

    # -- claims and liveness -----------------------------------------------------------------
    async def _keep_claims(self) -> None:
        while not self._stopping:  # checked too: a cancel the Redis client swallowed ends it here
            await asyncio.sleep(self._settings.renew_s)
            try:
                lost = await self._claims.renew(dict(self._held))
                await self._beat()
                for job_id, claim in list(self._unreleased.items()):
                    await self._release(job_id, claim)
            except StoreError as exc:
                log.warning("claims not renewed: %s", exc)
                continue
            for job_id in lost:
                if job_id in self._held:
                    log.warning("job %s: claim lost (lease ran out); letting it go", job_id)
                    self._held.pop(job_id, None)
                    task = self._tasks.get(job_id)
                    if task is not None:
                        task.cancel()

    async def _release(self, job_id: str, claim: str) -> None:
        """Release our claim ``claim`` on the job (a no-op if another token holds it now)."""
        await self._claims.release(job_id, claim)
        if self._unreleased.get(job_id) == claim:
            del self._unreleased[job_id]

    async def _settle_claim(self, job_id: str) -> None:
        """Release our missed claim on the job before its entry goes back to the queue, where
        another worker would find it held and look again only 7 s later. Waits for the store
        for at most one lease: by then the claim has run out anyway."""
        give_up_at = time.time() + self._claims.lease_s
        while (claim := self._unreleased.get(job_id)) is not None and time.time() < give_up_at:
            try:
                await self._release(job_id, claim)
            except StoreError:
                await asyncio.sleep(CLAIM_RELEASE_PAUSE_S)

    async def _beat(self) -> None:
        await self._claims.beat(self.worker_id, {
            "host": socket.gethostname(), "pid": os.getpid(), "started_at": self._started_at,
            "jobs": len(self._held), "at": time.time()})

    def _new_token(self) -> str:
        return f"{self.worker_id}:{uuid.uuid4().hex[:12]}"

    # -- shutdown ----------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop taking jobs and hand running ones back now: cancel their tasks (records keep the
        attempt), release their claims, put their queue entries back, leave."""
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        closing = [asyncio.create_task(c.close()) for c in self._consumers]
        await asyncio.sleep(0)  # the consumers mark themselves closing: no new job is taken
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        try:  # bounded: a task stuck in a library call that swallows its cancel must not hold us
            async with asyncio.timeout(STOP_WAIT_S):
                await asyncio.gather(*tasks, *self._loops, return_exceptions=True)
        except TimeoutError:
            stuck = [t.get_name() for t in (*tasks, *self._loops) if not t.done()]
            log.warning("%d task(s) did not stop within %.0f s: %s", len(stuck), STOP_WAIT_S, stuck)
        try:
            async with asyncio.timeout(5.0):
                await asyncio.gather(*closing, return_exceptions=True)
        except TimeoutError:
            for consumer in self._consumers:
                await consumer.close(force=True)
        if self._runs:
            await asyncio.wait(self._runs, timeout=5.0)
        for run in self._runs:
            if not run.done():
                run.cancel()
            elif not run.cancelled() and run.exception() is not None:  # racing its own close
                log.debug("bullmq consumer %s ended with %r", run.get_name(), run.exception())
        for consumer in self._consumers:  # again: what a run connected while closing is closed now
            with contextlib.suppress(Exception):
                await consumer.backend.close(force=True)
        self._consumers, self._runs = [], []
        # Claims whose task never started (cancelled before its first step) or whose sweep was
        # cut short are still held: give them back now, not one lease from now.
        for job_id, claim in list(self._held.items()):
            try:
                await self._release(job_id, claim)
            except StoreError:
                self._unreleased[job_id] = claim  # released when the store is back
        self._held.clear()
        await self._runner.close()
        try:
            await self._claims.leave(self.worker_id)
        except StoreError:
            pass
        await self._claims.close()
