"""Flush a worker's in-memory tracker counters to the shared totals in Redis.

Trackers count synchronously into ``TrackerCounters`` (one per backend, shared by the worker's
runners); ``CounterFlusher.flush`` sends what changed since the previous flush. The delta is
taken before the await, so concurrent flushes never count anything twice; a failed write puts
its delta back for the next flush. ``flush_soon`` flushes ``delay_s`` later, so the jobs that
end meanwhile share one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ..comfy.tracker import TrackerCounters
from ..errors import StoreError
from ..store.stats import TrackingStats


class CounterFlusher:
    def __init__(self, stats: TrackingStats, counters: Mapping[str, TrackerCounters], *,
                 delay_s: float = 1.0) -> None:
        self._stats = stats
        self._counters = counters
        self._delay_s = delay_s
        self._sent: dict[str, dict[str, int]] = {}
        self._due: asyncio.Task | None = None

    def flush_soon(self) -> None:
        """Flush within ``delay_s`` (once, however often this is called meanwhile)."""
        if self._due is None:
            self._due = asyncio.create_task(self._flush_later(), name="stats-flush")

    async def close(self) -> None:
        """Flush now what is still counted, and nothing later."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        await self._flush_quietly()

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self._delay_s)
        finally:
            self._due = None
        await self._flush_quietly()

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except StoreError:
            pass  # kept for the next flush

    async def flush(self) -> None:
        deltas: dict[str, dict[str, int]] = {}
        for backend, counters in list(self._counters.items()):
            now = counters.as_dict()
            sent = self._sent.setdefault(backend, {})
            delta = {name: value - sent.get(name, 0) for name, value in now.items()
                     if value != sent.get(name, 0)}
            if delta:
                deltas[backend] = delta
                sent.update(now)
        if not deltas:
            return
        try:
            await self._stats.add(deltas)
        except StoreError:
            for backend, delta in deltas.items():  # try again at the next flush
                sent = self._sent[backend]
                for name, value in delta.items():
                    sent[name] -= value
            raise
