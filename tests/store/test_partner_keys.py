"""Partner keys live in the memory of the API process that took the job and reach a worker over
pub/sub on request: real Valkey, real subscriptions."""

from __future__ import annotations

import asyncio
import time

from comfyfleet.store.partner_keys import PartnerKeyHolder, PartnerKeys


async def test_a_worker_gets_the_key_only_while_its_holder_keeps_it(redis, keys):
    holder, asker = PartnerKeyHolder(redis, keys), PartnerKeys(redis, keys, wait_s=0.5, patience_s=0.6)
    try:
        assert await asker.ask("job-1") is None  # nobody listens
        await holder.hold("job-1", "secret-1", until=time.time() + 60)
        await holder.hold("job-2", "secret-2", until=time.time() - 1)  # past its deadline
        assert await asker.ask("job-1") == "secret-1"
        assert await asker.ask("job-2") is None
        assert await asker.ask("job-3") is None
        holder.drop("job-1")
        assert await asker.ask("job-1") is None
        await holder.hold("job-4", "secret-4", until=time.time() + 60)
        await holder.close()  # its process is gone: so is every key it held
        assert await asker.ask("job-4") is None
    finally:
        await holder.close()
        await asker.close()


async def test_two_api_processes_each_answer_for_their_own_jobs(redis, keys):
    first, second = PartnerKeyHolder(redis, keys), PartnerKeyHolder(redis, keys)
    asker = PartnerKeys(redis, keys, wait_s=1.0, patience_s=1.0)
    try:
        await first.hold("a", "key-a", until=time.time() + 60)
        await second.hold("b", "key-b", until=time.time() + 60)
        assert [await asker.ask("a"), await asker.ask("b")] == ["key-a", "key-b"]
    finally:
        for closing in (first, second, asker):
            await closing.close()


async def test_a_holder_not_listening_for_a_moment_still_hands_the_key_over(redis, keys):
    """The holder's subscription between two connections (here: not yet listening) when the
    worker asks: the worker asks again, and the job gets its key instead of failing
    ``partner_key_lost``."""
    holder, asker = PartnerKeyHolder(redis, keys), PartnerKeys(redis, keys, wait_s=1.0, patience_s=10.0)
    try:
        asking = asyncio.create_task(asker.ask("job-1"))
        await asyncio.sleep(1.0)  # the worker has asked (and found no one) by now
        assert not asking.done()
        await holder.hold("job-1", "secret-1", until=time.time() + 60)
        async with asyncio.timeout(10):
            assert await asking == "secret-1"
    finally:
        await holder.close()
        await asker.close()
