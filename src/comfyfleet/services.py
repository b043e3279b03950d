"""Build the adapters a process needs from plain values, and close them in reverse order."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .blobs import LocalBlobStore
from .comfy.transport import open_session
from .errors import StoreError
from .queue import JobQueue
from .runtime.dispatcher import Dispatcher, DispatchSettings
from .store.connection import connect, translated
from .store.events import EventBus
from .store.fleet import BackendRecord, FleetStore
from .store.jobs import RedisJobStore
from .store.keys import Keys
from .store.node_catalogs import NodeCatalogs
from .store.partner_keys import PartnerKeyHolder, PartnerKeys
from .store.uploads import UploadStore


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    redis_url: str
    data_dir: Path
    key_prefix: str = "cf"
    backends: tuple[BackendRecord, ...] = ()
    active_ttl_s: float = 7200.0
    retention_s: float = 7 * 86400.0
    lease_ttl_s: float = 30.0
    dispatch: DispatchSettings = DispatchSettings()


@dataclass(slots=True)
class Services:
    config: ServiceConfig
    redis: object
    keys: Keys
    store: RedisJobStore
    events: EventBus
    cancels: EventBus  # cancel requests only: what a runner watches
    blobs: LocalBlobStore
    queue: JobQueue
    dispatcher: Dispatcher
    http: aiohttp.ClientSession
    fleet: FleetStore
    node_catalogs: NodeCatalogs  # which node classes each backend has
    uploads: UploadStore
    partner_keys: PartnerKeyHolder  # the keys of jobs this process accepted (API)
    partner_asks: PartnerKeys  # asking for a job's key (workers)

    def clock(self) -> float:
        return time.time()


@asynccontextmanager
async def open_services(config: ServiceConfig) -> AsyncIterator[Services]:
    """Connect to Redis (checking it answers), and build store, bus, blobs, queue, backends."""
    async with AsyncExitStack() as stack:
        redis = connect(config.redis_url)
        stack.push_async_callback(redis.aclose)
        with translated(redis, "PING"):
            await redis.ping()
        keys = Keys(prefix=config.key_prefix)
        store = RedisJobStore(redis, keys, active_ttl_s=config.active_ttl_s,
                              retention_s=config.retention_s)
        events = EventBus(redis, keys)
        stack.push_async_callback(events.close)
        cancels = EventBus(redis, keys, channel=keys.cancel_channel)
        stack.push_async_callback(cancels.close)
        queue = JobQueue(config.redis_url, keys)
        stack.push_async_callback(queue.close)
        http = open_session(limit=200)
        stack.push_async_callback(http.close)
        fleet = FleetStore(redis, keys, lease_ttl_s=config.lease_ttl_s)
        await fleet.seed(config.backends)  # configured backends join the registry
        node_catalogs = NodeCatalogs(redis, keys)
        dispatcher = Dispatcher(fleet, settings=config.dispatch, catalogs=node_catalogs)  # an HTTP pool per backend
        await dispatcher.start()
        stack.push_async_callback(dispatcher.close)
        blobs = LocalBlobStore(config.data_dir / "blobs")
        partner_keys = PartnerKeyHolder(redis, keys)  # listens only once it holds a key
        stack.push_async_callback(partner_keys.close)
        partner_asks = PartnerKeys(redis, keys)
        stack.push_async_callback(partner_asks.close)
        yield Services(config=config, redis=redis, keys=keys, store=store, events=events,
                       cancels=cancels, blobs=blobs, queue=queue, dispatcher=dispatcher, http=http, fleet=fleet,
                       node_catalogs=node_catalogs,
                       uploads=UploadStore(redis, keys), partner_keys=partner_keys,
                       partner_asks=partner_asks)


__all__ = ["ServiceConfig", "Services", "open_services", "StoreError"]
