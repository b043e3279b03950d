"""Persist and publish one job's live progress, at most once per ``throttle_s``.

Phase changes go through at once; progress snapshots are coalesced: the newest one is written
when the throttle window closes, so the last value before a pause is never lost.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

from ..domain import transitions as t
from ..domain.job import JobStatus, Phase, Progress
from ..errors import InvalidTransition
from ..ports import JobStore


class ProgressSink:
    def __init__(self, store: JobStore, events, job_id: str, *, throttle_s: float,
                 clock: Callable[[], float]) -> None:
        self._store = store
        self._events = events
        self._job_id = job_id
        self._throttle_s = throttle_s
        self._clock = clock
        self._pending: Progress | None = None
        self._last_write = float("-inf")
        self._last_preview = float("-inf")
        self._flush_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def on_started(self) -> None:
        job = await self._store.get(self._job_id)
        if job.status is JobStatus.RUNNING and job.phase is not Phase.EXECUTING:
            await self._apply(t.Executing())

    async def on_progress(self, progress: Progress) -> None:
        self._pending = progress
        wait_s = self._last_write + self._throttle_s - self._clock()
        if wait_s <= 0:
            await self.flush()
        elif self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later(wait_s))

    async def on_preview(self, content_type: str, data: bytes) -> None:
        now = self._clock()
        if now - self._last_preview < self._throttle_s:
            return
        self._last_preview = now
        await self._events.set_preview(self._job_id, content_type, data)
        await self._events.publish(self._job_id, "preview", {
            "content_type": content_type, "data_base64": base64.b64encode(data).decode()})

    async def flush(self) -> None:
        async with self._lock:
            progress, self._pending = self._pending, None
            if progress is None:
                return
            self._last_write = self._clock()
            await self._apply(t.ProgressMade(progress))

    async def close(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            try:
                await self._flush_task
            except asyncio.CancelledError:
                pass
        await self.flush()

    async def _flush_later(self, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        await self.flush()

    async def _apply(self, event: t.Event) -> None:
        try:
            await self._store.apply(self._job_id, event, self._clock())
        except InvalidTransition:
            pass  # the job ended or was canceled meanwhile: its progress no longer matters
