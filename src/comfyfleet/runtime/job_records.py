"""The records of the jobs one runner is running, and how it writes them.

Each change is computed on the newest record the runner holds (it wrote it or read it), so a
write is one round trip unless someone else moved the record meanwhile (a cancel request, another
runner). One job's changes are written one at a time: the progress sink's writes and the runner's
own would otherwise race on the same version, and the loser pay a reload and a second save.

The time ComfyUI accepted a prompt waits here: the executing write carries it, and only a prompt
still not started ``show_after_s`` later (waiting in ComfyUI's queue) gets a write of its own,
the ``submitted`` phase.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..domain import transitions as t
from ..domain.job import Job
from ..errors import InvalidTransition, StoreError
from ..ports import JobStore

log = logging.getLogger(__name__)


class JobRecords:
    def __init__(self, store: JobStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._newest: dict[str, Job] = {}
        self._writing: dict[str, asyncio.Lock] = {}
        self._accepted: dict[str, float] = {}
        self._showing: dict[str, asyncio.Task] = {}

    def hold(self, job: Job) -> None:
        """``job`` is the newest record of a job this runner runs now."""
        self._newest[job.id] = job

    def newest(self, job_id: str) -> Job | None:
        return self._newest.get(job_id)

    def forget(self, job_id: str) -> None:
        """The job's run here is over."""
        self._newest.pop(job_id, None)
        self._writing.pop(job_id, None)
        self._accepted.pop(job_id, None)
        showing = self._showing.pop(job_id, None)
        if showing is not None:
            showing.cancel()

    def note_accepted(self, job_id: str, at: float, *, show_after_s: float) -> None:
        """ComfyUI accepted the job's prompt ``at``: written with the executing phase, or as the
        submitted phase if the prompt has not started ``show_after_s`` from now."""
        self._accepted[job_id] = at
        self._showing[job_id] = asyncio.create_task(self._show_submitted(job_id, show_after_s))

    async def settle_accepted(self, job_id: str) -> None:
        """The prompt is over: write its acceptance time now if nothing carried it."""
        showing = self._showing.pop(job_id, None)
        if showing is not None:
            showing.cancel()
        await self._write_accepted(job_id)

    async def _show_submitted(self, job_id: str, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await asyncio.shield(self._write_accepted(job_id))  # once begun, the write completes

    async def _write_accepted(self, job_id: str) -> None:
        at = self._accepted.pop(job_id, None)
        if at is None:
            return
        try:
            await self.apply(job_id, t.Submitted(at))
        except StoreError as exc:  # only a timestamp and a phase are lost
            log.warning("job %s: could not write the submitted phase: %s", job_id, exc)

    async def apply(self, job_id: str, event: t.Event) -> Job | None:
        """Apply ``event`` to the job's record; None when the transition is refused."""
        if isinstance(event, t.Executing) and job_id in self._accepted:
            event = t.Executing(submitted_at=self._accepted.pop(job_id))
        async with self._writing.setdefault(job_id, asyncio.Lock()):
            try:
                job = await self._store.apply(job_id, event, self._clock(), known=self._newest.get(job_id))
            except InvalidTransition:
                return None
            if job_id in self._newest:
                self._newest[job_id] = job
            return job
