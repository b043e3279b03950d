"""Persist and publish one job's live progress, at most once per ``throttle_s``.

Progress snapshots are coalesced: the first one of a window is written at once, later ones wait
for the window to close and only the newest is written, so the last value before a pause is
never lost. Phase changes (``on_started``) go through at once and open a window. The runner's
status changes, errors and completion do not pass through here at all (``close`` first writes
what is pending).
Previews are kept (latest only, with a TTL) and published at most once per ``throttle_s`` too.
Both are best effort: a write the store refuses (it is unreachable for a moment) is logged and
does not end the attempt; unwritten progress stays pending for the next write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..domain import transitions as t
from ..domain.job import Progress
from ..errors import InvalidTransition, StoreError
from ..ports import JobStore

log = logging.getLogger(__name__)


class ProgressSink:
    def __init__(self, store: JobStore, events, job_id: str, *, throttle_s: float,
                 clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 apply: Callable[[t.Event], Awaitable[Any]] | None = None,
                 executing: bool = False) -> None:
        """``apply``: how a change reaches the record (the runner passes its own, which
        starts from the newest record it holds); by default ``store.apply``. ``executing``:
        the record already says so (a reattached job), so a replayed start writes nothing."""
        self._executing = executing
        self._store = store
        self._apply_change = apply
        self._events = events
        self._job_id = job_id
        self._throttle_s = throttle_s
        self._clock = clock
        self._sleep = sleep
        self._pending: Progress | None = None
        self._last_write = float("-inf")
        self._last_preview = float("-inf")
        self._flush_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.writes = 0  # progress records written (for diagnostics and tests)
        self.latest: Progress | None = None  # the newest snapshot, written or not

    async def on_started(self) -> None:
        if not self._executing:
            self._executing = True
            # The start is a write too: it opens the first window, so a prompt that ends within
            # it costs no progress write at all (its success sets the progress to 1).
            self._last_write = self._clock()
            await self._apply(t.Executing())  # refused (and skipped) unless the job is running

    async def on_progress(self, progress: Progress) -> None:
        self._pending = self.latest = progress
        wait_s = self._last_write + self._throttle_s - self._clock()
        if wait_s <= 0:
            await self.flush()
        elif self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later(wait_s))

    async def on_preview(self, content_type: str, data: bytes, node_id: str | None = None) -> None:
        now = self._clock()
        if now - self._last_preview < self._throttle_s:
            return
        self._last_preview = now
        try:
            await self._events.set_preview(self._job_id, content_type, data, node_id=node_id)
        except StoreError as exc:
            log.warning("job %s: preview not kept: %s", self._job_id, exc)

    async def flush(self) -> None:
        async with self._lock:
            progress, self._pending = self._pending, None
            if progress is None:
                return
            self._last_write = self._clock()
            self.writes += 1
            if not await self._apply(t.ProgressMade(progress)) and self._pending is None:
                self._pending = progress  # not written: the next write carries it

    async def close(self, *, superseded: bool = False) -> None:
        """Write what is pending now (the attempt is over). ``superseded``: drop it instead,
        the next write (a success, which sets the progress to 1 and carries ``latest``)
        makes it moot."""
        if superseded:
            self._pending = None
        if self._flush_task is not None:
            self._flush_task.cancel()
            try:
                await self._flush_task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        await self.flush()

    async def _flush_later(self, wait_s: float) -> None:
        """Flush once the window closes, and again while a snapshot came during that write (no
        new task was started for it: this one was still running), or while writes fail."""
        while True:
            await self._sleep(wait_s)
            await self.flush()
            if self._pending is None:
                return
            wait_s = max(0.0, self._last_write + self._throttle_s - self._clock())

    async def _apply(self, event: t.Event) -> bool:
        """Whether ``event`` was written (or is moot); False when the store refused it."""
        try:
            if self._apply_change is not None:
                await self._apply_change(event)
            else:
                await self._store.apply(self._job_id, event, self._clock())
        except InvalidTransition:
            pass  # the job ended or was canceled meanwhile: its progress no longer matters
        except StoreError as exc:
            log.warning("job %s: progress not written (written with the next): %s", self._job_id, exc)
            return False
        return True
