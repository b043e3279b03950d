"""The Redis clients comfyfleet makes: a task cancelled while in a Redis call is cancelled, always.

redis-py bounds each send with ``asyncio.wait_for``, which on Python 3.11 drops a cancel that
arrives as the send completes: the cancelled task went on running. Cancels are aimed at random
moments of a stream of commands, a few hundred times; every one must end its task."""

from __future__ import annotations

import asyncio
import random

from comfyfleet.queue import JobQueue
from comfyfleet.store import Keys, connect

TRIES = 300


async def cancels_that_did_not_end_their_task(client) -> int:  # type: ignore[no-untyped-def]
    async def commands() -> None:
        while True:
            await client.hset("probe", "n", 1)
            await client.hgetall("probe")

    rng, dropped = random.Random(7), 0
    for _ in range(TRIES):
        task = asyncio.create_task(commands())
        await asyncio.sleep(rng.random() * 0.002)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        if not done:  # the cancel was dropped: the task is still running its commands
            dropped += 1
            task.cancel()
            await asyncio.wait([task], timeout=5.0)
    return dropped


async def test_a_store_client_call_never_drops_a_cancel(valkey_url):
    client = connect(valkey_url)
    try:
        assert await cancels_that_did_not_end_their_task(client) == 0
    finally:
        await client.aclose()


async def test_a_queue_client_call_never_drops_a_cancel(valkey_url):
    queue = JobQueue(valkey_url, Keys("cancelprobe"))
    try:
        client = next(iter(queue._queues.values())).client
        assert await cancels_that_did_not_end_their_task(client) == 0
    finally:
        await queue.close()
