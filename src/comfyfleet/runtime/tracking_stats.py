"""Flush a worker's in-memory tracker counters to the shared totals in Redis.

Trackers count synchronously into ``TrackerCounters`` (one per backend, shared by the worker's
runners); ``CounterFlusher.flush`` sends what changed since the previous flush. The delta is
taken before the await, so concurrent flushes never count anything twice; a failed write puts
its delta back for the next flush.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..comfy.tracker import TrackerCounters
from ..errors import StoreError
from ..store.stats import TrackingStats


class CounterFlusher:
    def __init__(self, stats: TrackingStats, counters: Mapping[str, TrackerCounters]) -> None:
        self._stats = stats
        self._counters = counters
        self._sent: dict[str, dict[str, int]] = {}

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
