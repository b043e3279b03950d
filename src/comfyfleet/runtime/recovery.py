"""Find the jobs nobody runs any more, and say what reconciling them would do.

A running or canceling job is *orphaned* when no runner holds its claim: its worker stopped (a
graceful stop releases claims at once) or died (the claim expires one lease after the last
heartbeat). A starting worker takes orphans over right away and keeps looking every few seconds,
so it never waits for bullmq's stalled check. ``plan`` is the dry run of that reconcile
(``comfyfleet recover --dry-run``): what the backend says about each job's prompt and the action
``reconcile.decide`` would take, without touching anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..domain import transitions
from ..domain.job import Job, JobStatus
from ..store.claims import Claims
from .dispatcher import Dispatcher
from .reconcile import Action, BackendView, Where, decide

RECONCILED = (JobStatus.RUNNING, JobStatus.CANCELING)


@dataclass(frozen=True, slots=True)
class PlannedStep:
    job_id: str
    status: str
    phase: str | None
    attempt: int
    backend: str | None
    prompt_id: str | None
    worker: str | None
    heartbeat_age_s: float | None
    claimed_by: str | None
    backend_says: str
    action: str

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


class Recovery:
    def __init__(self, *, store, claims: Claims, dispatcher: Dispatcher,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._claims = claims
        self._dispatcher = dispatcher
        self._clock = clock

    def view(self) -> BackendView:
        return BackendView({b.name: b.client for b in self._dispatcher.backends})

    async def active(self) -> list[tuple[Job, str | None]]:
        """Every active job with the token holding its claim (None: unclaimed)."""
        ids = await self._store.active_ids()
        holders = dict(zip(ids, await self._claims.holders(ids)))
        jobs: list[Job] = []
        for start in range(0, len(ids), 1000):
            jobs.extend(await self._store.get_many(ids[start:start + 1000]))
        return [(job, holders.get(job.id)) for job in jobs]

    async def orphans(self) -> list[Job]:
        """Running or canceling jobs whose claim is gone (expired or released). Cheap when
        every runner is alive: only the ids and claims of running jobs are read, and only the
        unclaimed ones are loaded (a worker looks every few seconds, with thousands queued)."""
        ids = await self._store.ids_with_status(*RECONCILED)
        unclaimed = [job_id for job_id, holder in zip(ids, await self._claims.holders(ids))
                     if holder is None]
        jobs: list[Job] = []
        for start in range(0, len(unclaimed), 1000):
            jobs.extend(await self._store.get_many(unclaimed[start:start + 1000]))
        return [job for job in jobs if job.status in RECONCILED and job.current is not None]

    async def mark_reattached(self, jobs: list[Job], view: BackendView, worker_id: str) -> dict[str, Job]:
        """Record ``worker_id`` on every job whose prompt the snapshot shows running or pending
        (a heartbeat, all in pipelined writes); return those records by id. The rest need a
        closer look by the runner (history, loss, deadline, cancel)."""
        now = self._clock()
        changes = []
        for job in jobs:
            state = view.seen(job.current.backend, job.current.prompt_id) if job.current else None
            if state is not None and decide(job, state, now) is Action.REATTACH:
                changes.append((job, transitions.apply(job, transitions.Heartbeat(worker_id), now)))
        landed = await self._store.save_many(changes)
        ready = {after.id: after for (_, after), ok in zip(changes, landed) if ok}
        # Their prompts run there now, whatever the load: their slots are held at once, in one
        # round, not as each runner gets to it (meanwhile a queued job could take a slot whose
        # lease ran out while no worker was alive, and join a prompt that still runs there).
        await self._dispatcher.hold_many([(job.current.backend, job.id) for job in ready.values()
                                          if job.current is not None])
        return ready

    async def plan(self) -> list[PlannedStep]:
        """What a reconcile would do to every active job now (read-only)."""
        now = self._clock()
        active = await self.active()
        view = self.view()
        await view.load({job.current.backend for job, _ in active if job.current is not None})
        steps = []
        for job, holder in active:
            current = job.current
            if job.status not in RECONCILED or current is None:
                says, action = "-", "wait_in_queue" if job.status is JobStatus.QUEUED else "-"
                if job.deadline_at is not None and now >= job.deadline_at:
                    action = "expire"
            elif holder is not None:
                says, action = "-", "leave: running under a live claim"
            else:
                state = await view.state(current.backend, current.prompt_id)
                says = state.where.value + (f" ({state.entry.outcome})" if state.where is Where.HISTORY
                                            and state.entry is not None else "")
                action = decide(job, state, now).value
            beat = current.heartbeat_at or current.started_at if current else None
            steps.append(PlannedStep(
                job_id=job.id, status=job.status.value, phase=job.phase.value if job.phase else None,
                attempt=job.attempt, backend=current.backend if current else None,
                prompt_id=current.prompt_id if current else None,
                worker=current.worker if current else None,
                heartbeat_age_s=None if beat is None else round(now - beat, 1),
                claimed_by=holder, backend_says=says, action=action))
        return steps

    async def missing_from_queue(self, queue) -> list[str]:  # type: ignore[no-untyped-def]
        """Queued jobs without a queue entry (lost with an unsynced Redis write)."""
        return [job.id for job, _holder in await self.active()
                if job.status is JobStatus.QUEUED and await queue.state_of(job) == "unknown"]

    async def requeue_missing(self, queue) -> list[str]:  # type: ignore[no-untyped-def]
        """Enqueue again every queued job that has no queue entry; return their ids."""
        requeued = []
        for job, _holder in await self.active():
            if job.status is JobStatus.QUEUED and await queue.state_of(job) == "unknown":
                await queue.enqueue(job)
                requeued.append(job.id)
        return requeued
