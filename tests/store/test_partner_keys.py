"""Partner keys live in the memory of the API process that took the job and reach a worker over
pub/sub on request: real Valkey, real subscriptions."""

from __future__ import annotations

import time

from comfyfleet.store.partner_keys import PartnerKeyHolder, PartnerKeys


async def test_a_worker_gets_the_key_only_while_its_holder_keeps_it(redis, keys):
    holder, asker = PartnerKeyHolder(redis, keys), PartnerKeys(redis, keys, wait_s=1.0)
    try:
        assert await asker.ask("job-1") is None  # nobody listens yet: no wait either
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
    asker = PartnerKeys(redis, keys, wait_s=1.0)
    try:
        await first.hold("a", "key-a", until=time.time() + 60)
        await second.hold("b", "key-b", until=time.time() + 60)
        assert [await asker.ask("a"), await asker.ask("b")] == ["key-a", "key-b"]
    finally:
        for closing in (first, second, asker):
            await closing.close()
