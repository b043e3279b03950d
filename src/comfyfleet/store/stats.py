"""Tracking counters per backend, summed over every worker in one Redis hash.

Workers add what their trackers counted since the last flush (``HINCRBY``, so concurrent
workers never overwrite each other); the API reads the totals. Field names are
``{backend}:{counter}``; a backend name may itself contain ``:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .connection import translated
from .keys import Keys


class TrackingStats:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def add(self, deltas: Mapping[str, Mapping[str, int]]) -> None:
        """Add ``{backend: {counter: delta}}`` to the totals (zero deltas are skipped)."""
        items = [(f"{backend}:{name}", delta) for backend, counters in deltas.items()
                 for name, delta in counters.items() if delta]
        if not items:
            return
        with translated(self._redis, "update of tracking counters"):
            async with self._redis.pipeline(transaction=True) as pipe:
                for field_name, delta in items:
                    pipe.hincrby(self._keys.tracking_stats, field_name, delta)
                await pipe.execute()

    async def totals(self) -> dict[str, dict[str, int]]:
        """``{backend: {counter: total}}``, backends sorted by name."""
        with translated(self._redis, "read of tracking counters"):
            raw = await self._redis.hgetall(self._keys.tracking_stats)
        result: dict[str, dict[str, int]] = {}
        for field_name, value in raw.items():
            name = field_name.decode() if isinstance(field_name, bytes) else field_name
            backend, _, counter = name.rpartition(":")
            result.setdefault(backend, {})[counter] = int(value)
        return {backend: dict(sorted(counters.items())) for backend, counters in sorted(result.items())}
