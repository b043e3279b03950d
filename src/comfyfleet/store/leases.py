"""Capacity slots: a backend takes at most its capacity of prompts across every worker.

A slot is a member of the backend's lease sorted set (``{p}:lease:<backend>``), scored by its
expiry; the worker that holds it renews it while the prompt runs, so the slots of a worker that
dies come back by themselves. Taking and giving back a slot are Lua scripts (atomic over all
workers); a release is published on the slots channel so a waiting job starts at once."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from .connection import translated
from .keys import Keys
from .lua import script


class CapacityLeases:
    def __init__(self, redis: Any, keys: Keys, *, ttl_s: float = 30.0) -> None:
        self._redis = redis
        self._keys = keys
        self.ttl_s = ttl_s  # a slot not renewed for this long is free again
        self._acquire = redis.register_script(script("lease_acquire.lua"))
        self._release = redis.register_script(script("lease_release.lua"))

    async def acquire(self, candidates: Sequence[tuple[str, int, int]], holder: str,
                      now: float | None = None) -> str | None:
        """Take a slot on one of ``candidates`` ((name, slot limit, tier), preference order)."""
        if not candidates:
            return None
        now_ms = int((time.time() if now is None else now) * 1000)
        keys = [self._keys.fleet_backends, *(self._keys.lease(name) for name, _, _ in candidates)]
        args: list[Any] = [now_ms, now_ms + int(self.ttl_s * 1000), holder]
        for name, limit, tier in candidates:
            args += [name, limit, tier]
        with translated(self._redis, "taking a capacity slot"):
            chosen = await self._acquire(keys=keys, args=args)
        return chosen or None

    async def release(self, name: str, holder: str) -> bool:
        with translated(self._redis, "releasing a capacity slot"):
            return bool(await self._release(keys=[self._keys.lease(name), self._keys.slots_channel],
                                            args=[holder, name]))

    async def renew(self, leases: Iterable[tuple[str, str]], now: float | None = None) -> None:
        """Push the expiry of every (backend, holder) lease out by the TTL (re-adding it if it
        had expired: the prompt it stands for is still running there)."""
        leases = list(leases)
        if not leases:
            return
        expiry = int(((time.time() if now is None else now) + self.ttl_s) * 1000)
        with translated(self._redis, "renewing capacity slots"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, holder in leases:
                    pipe.zadd(self._keys.lease(name), {holder: expiry})
                await pipe.execute()

    async def loads(self, names: Iterable[str], now: float | None = None) -> dict[str, int]:
        names = list(names)
        now_ms = int((time.time() if now is None else now) * 1000)
        with translated(self._redis, "reading backend loads"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcount(self._keys.lease(name), now_ms, "+inf")
                counts = await pipe.execute()
        return dict(zip(names, (int(c) for c in counts)))

    async def holders(self, name: str, now: float | None = None) -> list[str]:
        now_ms = int((time.time() if now is None else now) * 1000)
        with translated(self._redis, "reading slot holders"):
            return list(await self._redis.zrangebyscore(self._keys.lease(name), now_ms, "+inf"))
