"""The fleet in Redis: the backend registry, what was learnt of each backend (health, warm
models, rests), and read in one round trip, with breaker states (``store/breakers.py``), as a
``FleetSnapshot``; capacity slots are ``store/leases.py``.

Shared by every API and worker process. Registry, health and breaker changes are published on
the fleet channel so every process sees them within milliseconds (and re-reads at least once a
second anyway).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from redis import exceptions as rex

from ..domain.backends import BackendRecord, same_server_as, server_of
from ..domain.breaker_scopes import backend_breaker
from ..domain.policy import BreakerState
from ..errors import ComfyFleetError
from .connection import translated
from .breakers import BreakerStore
from .keys import Keys
from .leases import CapacityLeases
from .lua import script

HEALTH_STATES = ("unknown", "healthy", "degraded", "down")


class BackendNotFound(ComfyFleetError):
    pass


log = logging.getLogger(__name__)


def twice(name: str, url: str, registered: str) -> BackendExists:
    return BackendExists(f"backend {name!r}: {url} is already registered as backend {registered!r}; "
                         f"one server under two names would be sent twice its capacity")


class BackendExists(ComfyFleetError):
    pass


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """The last health check of a backend (``state``: unknown | healthy | degraded | down)."""

    state: str = "unknown"
    checked_at: float | None = None
    latency_ms: float | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    ram_total: int | None = None
    ram_free: int | None = None
    queue_running: int | None = None
    queue_pending: int | None = None
    consecutive_failures: int = 0
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None) -> "BackendHealth":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__slots__ if k in data})


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Everything a dispatcher needs, read in one round trip."""

    backends: dict[str, BackendRecord]
    health: dict[str, BackendHealth]
    breakers: dict[str, BreakerState]
    read_at: float
    warm: dict[str, frozenset[str]] = field(default_factory=dict)  # name -> models of its last success
    resting: dict[str, float] = field(default_factory=dict)  # name -> left alone until (Retry-After)


def _moment(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return 0.0


def _models(raw: str) -> frozenset[str]:
    try:
        models = json.loads(raw)
    except ValueError:
        return frozenset()
    return frozenset(m for m in models if isinstance(m, str)) if isinstance(models, list) else frozenset()


class FleetStore:
    def __init__(self, redis: Any, keys: Keys, *, lease_ttl_s: float = 30.0) -> None:
        self._redis = redis
        self._keys = keys
        self._hset_if_backend_at = redis.register_script(script("hset_if_backend_at.lua"))
        self.leases = CapacityLeases(redis, keys, ttl_s=lease_ttl_s)  # the backends' slots
        self.breakers = BreakerStore(redis, keys, on_change=self.notify_changed)
        self._last_parsed: dict[str, dict[str, Any]] = {}  # kind -> stored text -> parsed value

    @property
    def keys(self) -> Keys:
        return self._keys

    def pubsub(self) -> Any:
        """A subscription client for the fleet and slots channels."""
        return self._redis.pubsub()

    # -- registry ------------------------------------------------------------------------------
    async def seed(self, records: Iterable[BackendRecord], now: float | None = None) -> None:
        """Add configured backends that are missing; refresh url/capacity/tags/headers of known
        ones, keeping their run-time state (a drained backend stays drained across restarts)."""
        now = time.time() if now is None else now
        records = list(records)
        if not records:
            return
        with translated(self._redis, "seeding backends"):
            registered = [BackendRecord.from_json(raw)
                          for raw in (await self._redis.hgetall(self._keys.fleet_backends)).values()]
            existing = await self._redis.hmget(self._keys.fleet_backends, [r.name for r in records])
            updates = {}
            afresh = []  # new, or at another server now: nothing kept under their names is about them
            for record, raw in zip(records, existing):
                other = same_server_as(record.url, registered, other_than=record.name)
                if other is not None:  # the registered one stays: refusing would stop the process
                    log.warning("%s; not registering it (remove one of them: "
                                "comfyfleet backends --remove NAME)", twice(record.name, record.url, other))
                    continue
                if raw is None:
                    updates[record.name] = replace(record, added_at=now, changed_at=now).to_json()
                    afresh.append(record.name)
                    continue
                known = BackendRecord.from_json(raw)
                fresh = replace(known, url=record.url, capacity=record.capacity, tags=record.tags,
                                headers=record.headers)
                if fresh != known:
                    updates[record.name] = replace(fresh, changed_at=now).to_json()
                    if server_of(fresh.url) != server_of(known.url):
                        afresh.append(record.name)
            if updates:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(self._keys.fleet_backends, mapping=updates)
                    for name in afresh:
                        self._forget_side_entries(pipe, name)
                    await pipe.execute()
                await self.notify_changed()

    async def add(self, record: BackendRecord, now: float | None = None) -> BackendRecord:
        now = time.time() if now is None else now
        record = replace(record, added_at=now, changed_at=now)
        key = self._keys.fleet_backends
        with translated(self._redis, "adding a backend"):
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        registered = {name: BackendRecord.from_json(raw)
                                      for name, raw in (await pipe.hgetall(key)).items()}
                        if record.name in registered:
                            raise BackendExists(f"backend {record.name!r} already exists")
                        other = same_server_as(record.url, registered.values(), other_than=record.name)
                        if other is not None:
                            raise twice(record.name, record.url, other)
                        pipe.multi()
                        pipe.hset(key, record.name, record.to_json())
                        # whatever is left under the name (a health check or an outcome that
                        # landed after a removal) is about another server or another time
                        self._forget_side_entries(pipe, record.name)
                        await pipe.execute()
                        break
                    except rex.WatchError:
                        continue
        await self.notify_changed()
        return record

    async def update(self, name: str, now: float | None = None, **changes: Any) -> BackendRecord:
        now = time.time() if now is None else now
        key = self._keys.fleet_backends
        with translated(self._redis, "updating a backend"):
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.hget(key, name)
                        if raw is None:
                            raise BackendNotFound(f"no backend named {name!r}")
                        known = BackendRecord.from_json(raw)
                        record = replace(known, **changes, changed_at=now)
                        moved = server_of(record.url) != server_of(known.url)
                        if "url" in changes:
                            registered = [BackendRecord.from_json(r) for r in (await pipe.hgetall(key)).values()]
                            other = same_server_as(record.url, registered, other_than=name)
                            if other is not None:
                                raise twice(name, record.url, other)
                        pipe.multi()
                        pipe.hset(key, name, record.to_json())
                        if moved:
                            # another server now: what was learnt of the old one (health,
                            # breaker, models, rest, node classes) is not about it; its health
                            # is unknown until checked, its classes read at its first answer
                            self._forget_side_entries(pipe, name)
                        await pipe.execute()
                        break
                    except rex.WatchError:
                        continue
        await self.notify_changed()
        return record

    async def remove(self, name: str) -> BackendRecord:
        with translated(self._redis, "removing a backend"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(self._keys.fleet_backends, name)
                pipe.hdel(self._keys.fleet_backends, name)
                self._forget_side_entries(pipe, name)
                raw, *_ = await pipe.execute()
        if raw is None:
            raise BackendNotFound(f"no backend named {name!r}")
        await self.notify_changed()
        return BackendRecord.from_json(raw)

    def _forget_side_entries(self, pipe: Any, name: str) -> None:
        """Queue on ``pipe`` the deletion of what the fleet learnt of the server ``name`` stood
        for: its health, breaker, warm models, rest and node catalog (its catalog's class set,
        when no other backend names it, goes with housekeeping)."""
        pipe.hdel(self._keys.fleet_health, name)
        pipe.hdel(self._keys.fleet_breakers, backend_breaker(name))
        pipe.hdel(self._keys.fleet_warm, name)
        pipe.hdel(self._keys.fleet_resting, name)
        pipe.hdel(self._keys.fleet_nodes, name)

    async def get(self, name: str) -> BackendRecord:
        with translated(self._redis, "reading a backend"):
            raw = await self._redis.hget(self._keys.fleet_backends, name)
        if raw is None:
            raise BackendNotFound(f"no backend named {name!r}")
        return BackendRecord.from_json(raw)

    async def snapshot(self) -> FleetSnapshot:
        with translated(self._redis, "reading the fleet"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._keys.fleet_backends)
                pipe.hgetall(self._keys.fleet_health)
                pipe.hgetall(self._keys.fleet_breakers)
                pipe.hgetall(self._keys.fleet_warm)
                pipe.hgetall(self._keys.fleet_resting)
                backends, health, breakers, warm, resting = await pipe.execute()
        return FleetSnapshot(
            backends=self._parsed("backends", dict(sorted(backends.items())), BackendRecord.from_json),
            health=self._parsed("health", health, BackendHealth.from_json),
            breakers=self._parsed("breakers", breakers, lambda r: BreakerState.from_dict(json.loads(r))),
            read_at=time.time(),
            warm=self._parsed("warm", warm, _models),
            resting=self._parsed("resting", resting, _moment))

    def _parsed(self, kind: str, raw_by_name: dict[str, str], parse: Callable[[str], Any]) -> dict[str, Any]:
        """Parse each stored value, reusing what the last snapshot parsed from the same text
        (a fleet of hundreds is re-read every second; few entries change in between)."""
        known = self._last_parsed.get(kind, {})
        fresh: dict[str, Any] = {}
        parsed: dict[str, Any] = {}
        for name, raw in raw_by_name.items():
            value = known.get(raw)
            parsed[name] = fresh[raw] = parse(raw) if value is None else value
        self._last_parsed[kind] = fresh
        return parsed

    async def notify_changed(self) -> None:
        with translated(self._redis, "publishing a fleet change"):
            await self._redis.publish(self._keys.fleet_channel, "changed")

    # -- health --------------------------------------------------------------------------------
    async def set_health(self, name: str, health: BackendHealth, *, publish: bool,
                         url: str | None = None) -> bool:
        """Store ``name``'s health; with ``url`` (the server checked), only while ``name`` is
        still registered there. True when stored."""
        with translated(self._redis, "writing backend health"):
            if url is None:
                await self._redis.hset(self._keys.fleet_health, name, health.to_json())
            elif not await self.write_if_backend_at(name, url, {self._keys.fleet_health: health.to_json()}):
                return False
        if publish:
            await self.notify_changed()
        return True

    async def write_if_backend_at(self, name: str, url: str, values: dict[str, str]) -> bool:
        """Set field ``name`` of each hash in ``values`` (hash key -> value) in one step, only
        while ``name`` is registered at ``url``: what was learnt of a server is never written
        under a name that meanwhile moved to another (or was removed). True when written."""
        hashes = list(values)
        args: list[str] = [name, url]
        for value in values.values():
            args += [name, value]
        with translated(self._redis, "writing what was learnt of a backend"):
            return bool(await self._hset_if_backend_at(keys=[self._keys.fleet_backends, *hashes], args=args))

    async def get_health(self, name: str) -> BackendHealth:
        with translated(self._redis, "reading backend health"):
            return BackendHealth.from_json(await self._redis.hget(self._keys.fleet_health, name))

    async def claim_check(self, name: str, owner: str, interval_s: float) -> bool:
        """True for the one process that should check ``name`` in this interval."""
        with translated(self._redis, "claiming a health check"):
            return bool(await self._redis.set(self._keys.health_claim(name), owner, nx=True,
                                              px=max(1, int(interval_s * 1000))))

    # -- warm models ---------------------------------------------------------------------------
    async def set_warm(self, name: str, models: frozenset[str]) -> None:
        """``name`` has just run a prompt loading ``models``: they are what it holds now (none:
        it holds nothing known). Not published: a hint for selection, read with the next
        snapshot (within a second)."""
        with translated(self._redis, "recording a backend's models"):
            if models:
                await self._redis.hset(self._keys.fleet_warm, name, json.dumps(sorted(models)))
            else:
                await self._redis.hdel(self._keys.fleet_warm, name)

    async def rest(self, name: str, until: float) -> None:
        """``name`` asked to be sent nothing until ``until`` (a 429/503 with Retry-After): every
        dispatcher skips it till then."""
        with translated(self._redis, "recording a backend's Retry-After"):
            await self._redis.hset(self._keys.fleet_resting, name, repr(until))
        await self.notify_changed()
