"""One read of something slow to gather, shared: callers within ``max_age_s`` of the last read get
its answer, and callers that arrive while a read is under way wait for that one. Ten dashboards
watching the fleet cost one set of reads a second, not ten."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRead(Generic[T]):
    def __init__(self, read: Callable[[], Awaitable[T]], *, max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._value: T | None = None
        self._read_at: float | None = None

    async def get(self) -> T:
        """The last answer if young enough, else a new read (a failed read is raised to every
        caller waiting for it, and the next caller reads again)."""
        async with self._lock:
            if self._read_at is None or self._clock() - self._read_at >= self._max_age_s:
                self._value = await self._read()
                self._read_at = self._clock()
            return self._value  # type: ignore[return-value]
