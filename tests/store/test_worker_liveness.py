"""Worker liveness: who is alive is read from the set of workers, never by scanning the keyspace
(which holds every job's keys: a scan per metrics scrape would grow with retention)."""

from __future__ import annotations

import asyncio

from comfyfleet.store.claims import Claims


async def test_live_workers_are_those_whose_lease_runs_and_reading_them_never_scans(redis, keys):
    long = Claims(redis, keys, lease_s=60.0)
    short = Claims(redis, keys, lease_s=0.2)
    await long.beat("w-alive", {"host": "a"})
    await long.beat("w-leaving", {"host": "b"})
    await short.beat("w-dies", {"host": "c"})
    for i in range(2000):  # a keyspace full of other things
        await redis.set(f"{keys.prefix}:job:{i}", "x")
    await long.leave("w-leaving")
    await asyncio.sleep(0.3)  # "w-dies" stops beating: its lease runs out
    await redis.config_resetstat()

    assert await long.live_workers() == {"w-alive": {"host": "a"}}
    stats = await redis.info("commandstats")
    assert "cmdstat_scan" not in stats
    assert await redis.zrange(keys.workers, 0, -1) == ["w-alive"]  # the dead one's entry is gone
