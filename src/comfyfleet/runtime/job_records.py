"""The records of the jobs one runner is running, and how it writes them.

Each change is computed on the newest record the runner holds (it wrote it or read it), so a
write is one round trip unless someone else moved the record meanwhile (a cancel request, another
runner). One job's changes are written one at a time: the progress sink's writes and the runner's
own would otherwise race on the same version, and the loser pay a reload and a second save. The
time ComfyUI accepted a prompt waits here until the executing phase is written, which carries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..domain import transitions as t
from ..domain.job import Job
from ..errors import InvalidTransition
from ..ports import JobStore


class JobRecords:
    def __init__(self, store: JobStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._newest: dict[str, Job] = {}
        self._writing: dict[str, asyncio.Lock] = {}
        self._accepted: dict[str, float] = {}

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

    def note_accepted(self, job_id: str, at: float) -> None:
        """ComfyUI accepted the job's prompt ``at``; written with the executing phase."""
        self._accepted[job_id] = at

    def take_accepted(self, job_id: str) -> float | None:
        """The acceptance time not yet written (then it is the caller's to write)."""
        return self._accepted.pop(job_id, None)

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
