"""Redis URLs: every scheme the settings accept reaches the server, from the store's client and
from the work queue's, and a URL the client refuses is named without its password. A real
Valkey."""

from __future__ import annotations

import time
import uuid

import pytest

from comfyfleet.config import Settings
from comfyfleet.domain.job import Job, JobStatus
from comfyfleet.errors import StoreError
from comfyfleet.launch import redis_for
from comfyfleet.queue import JobQueue
from comfyfleet.store.connection import connect


async def test_a_valkey_url_the_settings_accept_reaches_the_server(valkey_url, keys, tmp_path):
    """``--redis-url valkey://...`` passed the settings' check, then every process failed on it:
    redis-py and bullmq know only redis://, rediss:// and unix://."""
    settings = Settings(redis_url=valkey_url.replace("redis://", "valkey://", 1), data_dir=tmp_path)
    async with redis_for(settings) as url:
        client = connect(url)
        queue = JobQueue(url, keys)
        try:
            assert await client.ping()
            now = time.time()
            job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now)
            await queue.enqueue(job)
            assert await queue.state_of(job) in ("waiting", "prioritized")
        finally:
            await queue.close()
            await client.aclose()


def test_a_valkeys_url_is_tls():
    client = connect("valkeys://:pw@cache.example:6380/1")
    assert "SSL" in client.connection_pool.connection_class.__name__
    assert client.connection_pool.connection_kwargs["db"] == 1


def test_a_url_the_client_refuses_is_named_without_its_password():
    """The error message (printed, logged) carried the password of the URL."""
    with pytest.raises(StoreError) as refused:
        connect("redis://:s3cret-pw@cache.example:6379/0?socket_timeout=soon")
    assert "s3cret-pw" not in str(refused.value)
    assert "redis://:***@cache.example:6379/0" in str(refused.value)
