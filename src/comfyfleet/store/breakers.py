"""Circuit breaker states in Redis (``{p}:fleet:breakers``: scope -> state), shared by every
process: one per backend and one per (job type, workflow shape, owner). A change is an optimistic
transaction retried on a race; a change of status is published on the fleet channel."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from redis import exceptions as rex

from ..domain.breaker_scopes import WORKFLOW_SCOPE, WorkflowScope, workflow_scope_of
from ..domain.policy import BreakerState
from .connection import translated
from .keys import Keys
from .lua import script


class BreakerStore:
    def __init__(self, redis: Any, keys: Keys, *, on_change: Callable[[], Awaitable[None]]) -> None:
        self._redis = redis
        self._keys = keys
        self._on_change = on_change  # a breaker's status changed: tell every process
        self._hdel_if_unchanged = redis.register_script(script("hdel_if_unchanged.lua"))

    async def update(self, scope: str, change: Callable[[BreakerState], BreakerState], *,
                     registered: str | None = None) -> tuple[BreakerState, BreakerState] | None:
        """Apply ``change`` to the stored state atomically (optimistic, retried on a race):
        (old, new). With ``registered``, only while a backend of that name is registered: None,
        and nothing written, once it is not (checked in the same transaction, so a removal
        landing meanwhile is seen)."""
        key = self._keys.fleet_breakers
        with translated(self._redis, "updating a circuit breaker"):
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        if registered is None:
                            await pipe.watch(key)
                        else:
                            await pipe.watch(key, self._keys.fleet_backends)
                            if not await pipe.hexists(self._keys.fleet_backends, registered):
                                await pipe.reset()
                                return None
                        raw = await pipe.hget(key, scope)
                        old = BreakerState.from_dict(json.loads(raw) if raw else None)
                        new = change(old)
                        if new == old:
                            await pipe.reset()
                            return old, new
                        pipe.multi()
                        if new.pristine and scope.startswith(WORKFLOW_SCOPE):
                            pipe.hdel(key, scope)  # one per owner and workflow: none kept idle
                        else:
                            pipe.hset(key, scope, json.dumps(new.to_dict(), separators=(",", ":")))
                        await pipe.execute()
                        break
                    except rex.WatchError:
                        continue
        if new.status != old.status:
            await self._on_change()
        return old, new

    async def forget_workflow_breakers(self, forgettable: Callable[[BreakerState], bool], *,
                                       dry_run: bool = False) -> list[WorkflowScope]:
        """Delete the workflow breakers ``forgettable`` says nothing depends on any more (one
        per owner and workflow that ever failed would otherwise pile up in a hash every process
        reads each second). Each goes only if unchanged since it was read."""
        key = self._keys.fleet_breakers
        forgotten: list[WorkflowScope] = []
        with translated(self._redis, "forgetting idle workflow breakers"):
            async for field_name, raw in self._redis.hscan_iter(key, match=WORKFLOW_SCOPE + "*", count=500):
                scope = workflow_scope_of(field_name)
                try:
                    state = BreakerState.from_dict(json.loads(raw))
                except (ValueError, TypeError, KeyError):
                    state = BreakerState()  # unreadable: nothing can depend on it
                if scope is None or not forgettable(state):
                    continue
                if dry_run or await self._hdel_if_unchanged(keys=[key], args=[field_name, raw]):
                    forgotten.append(scope)
        return forgotten
