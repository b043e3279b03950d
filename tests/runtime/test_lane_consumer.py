"""The lane consumer fetches one job at a time, so a wake-up of an idle lane costs a handful of
Redis scripts, not one per unit of concurrency (bullmq's own run loop starts a fetch for every
free unit at once: some 60 move-to-active scripts per job at a concurrency of 64)."""

from __future__ import annotations

import asyncio

from bullmq import Queue

from comfyfleet.queue import LaneConsumer

CONCURRENCY = 64


async def _scripts_run(redis) -> int:  # type: ignore[no-untyped-def]
    stats = await redis.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_an_idle_lane_wakes_with_a_few_scripts_per_job(valkey_url, redis, keys) -> None:  # type: ignore[no-untyped-def]
    done: list[str] = []
    finished = asyncio.Event()

    async def process(job, token):  # type: ignore[no-untyped-def]
        done.append(job.id)
        if len(done) == 5:
            finished.set()

    opts = {"connection": valkey_url, "prefix": keys.bull_prefix, "concurrency": CONCURRENCY,
            "drainDelay": 5, "removeOnComplete": True}
    consumer = LaneConsumer("lane", process, opts)
    queue = Queue("lane", {"connection": valkey_url, "prefix": keys.bull_prefix})
    try:
        await asyncio.sleep(0.5)  # the consumer settles into its blocking wait
        await redis.config_resetstat()
        for n in range(5):  # one at a time: each finds the lane idle
            await queue.add("run", {"n": n}, {"jobId": f"job-{n}"})
            async with asyncio.timeout(30):
                while len(done) <= n:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
        await asyncio.wait_for(finished.wait(), 30)
        scripts = await _scripts_run(redis)
    finally:
        await consumer.close()
        await queue.close()
    assert sorted(done) == [f"job-{n}" for n in range(5)]
    # Per job: the add, a move to active, a move to finished, one move to active that finds
    # the lane empty, and the odd lock renewal: about 5. bullmq's own loop runs over 100 here.
    assert scripts <= 8 * 5, f"{scripts} scripts for 5 jobs"


async def test_a_lane_learns_that_its_server_blocks_for_fractions_of_a_second(valkey_url, keys) -> None:  # type: ignore[no-untyped-def]
    """bullmq assumes whole-second blocking reads unless it has read the server's version; a
    wait for an entry delayed 50 ms then lasted a full second."""
    async def process(job, token):  # type: ignore[no-untyped-def]
        return None

    consumer = LaneConsumer("lane", process, {"connection": valkey_url, "prefix": keys.bull_prefix,
                                              "concurrency": 4, "autorun": False})
    run = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(10):
            while not consumer.running:
                await asyncio.sleep(0.01)
        assert consumer.backend.capabilities["canDoubleTimeout"] is True
    finally:
        await consumer.close()
        await asyncio.gather(run, return_exceptions=True)
