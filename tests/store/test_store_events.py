"""EventBus against a real Valkey: ordering, fan-out, previews, overflow, reconnect."""

from __future__ import annotations

import asyncio

import pytest

from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Attempt, Progress
from comfyfleet.errors import StoreError
from comfyfleet.store import EventBus, connect
from comfyfleet.store.events import _Mailbox

WF = {"1": {"class_type": "X", "inputs": {}}}


def attempt() -> Attempt:
    return Attempt(number=1, backend="b1", prompt_id="p", client_id="c", worker="w",
                   started_at=1.0)


async def next_events(events, n: int) -> list[dict]:
    async with asyncio.timeout(5):
        return [await anext(events) for _ in range(n)]


async def test_every_save_is_published_in_order(store, event_bus, make_job, redis, keys):
    job = make_job()
    async with event_bus.subscription(job.id) as events:
        await store.create(job, WF)
        await store.apply(job.id, t.Dispatch(attempt()), 1.0)
        await store.apply(job.id, t.ProgressMade(Progress(value=0.5)), 2.0)
        await store.apply(job.id, t.Heartbeat(worker="w2"), 3.0)
        await store.apply(job.id, t.Succeed(()), 4.0)
        got = await next_events(events, 5)
    assert [e["kind"] for e in got] == ["status", "status", "progress", "update", "status"]
    assert [e["job"]["version"] for e in got] == [0, 1, 2, 3, 4]
    assert got[-1]["job"]["status"] == "succeeded" and all(e["job_id"] == job.id for e in got)
    stream = await redis.xrange(keys.events_stream)
    assert [entry[1]["event"] for entry in stream] == [
        __import__("json").dumps(e) for e in got]


async def test_subscribers_see_only_their_job_and_dashboards_see_all(event_bus):
    async with event_bus.subscription("a") as a, event_bus.subscription(None) as everything:
        await event_bus.publish("b", "update", {"n": 1})
        await event_bus.publish("a", "update", {"n": 2})
        assert await next_events(a, 1) == [{"n": 2, "job_id": "a", "kind": "update"}]
        assert [e["job_id"] for e in await next_events(everything, 2)] == ["b", "a"]


async def test_lazy_subscribe_and_subscribe_all_iterate(event_bus):
    one, every = event_bus.subscribe("j"), event_bus.subscribe_all()
    first = asyncio.ensure_future(anext(one))
    first_all = asyncio.ensure_future(anext(every))
    async with event_bus.subscription("ready-probe"):
        pass  # the one subscription is confirmed now
    await asyncio.sleep(0.05)  # let both generators register their mailboxes
    await event_bus.publish("j", "status", {})
    async with asyncio.timeout(5):
        assert (await first)["job_id"] == "j" and (await first_all)["job_id"] == "j"
    await one.aclose()
    await every.aclose()


async def test_close_ends_every_iteration(redis, keys):
    bus = EventBus(redis, keys)
    async with bus.subscription("j") as events:
        waiter = asyncio.ensure_future(anext(events, None))
        await asyncio.sleep(0)
        await bus.close()
        async with asyncio.timeout(5):
            assert await waiter is None
    with pytest.raises(StoreError, match="closed"):
        async with bus.subscription("j"):
            pass


async def test_preview_is_kept_and_published(event_bus):
    assert await event_bus.get_preview("j") is None
    async with event_bus.subscription("j") as events:
        await event_bus.set_preview("j", "image/jpeg", b"\xff\xd8jpeg")
        (event,) = await next_events(events, 1)
    assert event["kind"] == "preview" and event["size_bytes"] == 6
    assert await event_bus.get_preview("j") == ("image/jpeg", b"\xff\xd8jpeg", None)


async def test_preview_expires_after_an_hour(event_bus, redis, keys):
    await event_bus.set_preview("j", "image/png", b"x")
    assert 3590 < await redis.ttl(keys.preview("j")) <= 3600


def test_overflow_drops_oldest_progress_never_status():
    box = _Mailbox("j", maxsize=3)
    box.put({"kind": "status", "n": 0})
    for n in range(1, 4):
        box.put({"kind": "progress", "n": n})
    box.put({"kind": "status", "n": 4})
    box.put({"kind": "status", "n": 5})
    box.put({"kind": "status", "n": 6})
    assert [e["n"] for e in box._items] == [0, 4, 5, 6] and box.dropped == 3


async def test_reconnects_after_the_connection_is_killed(event_bus, redis):
    """A dropped pub/sub connection is re-established; subscribers get a resync, then events."""
    kinds: list[str] = []
    async with event_bus.subscription("j") as events:
        assert await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        async with asyncio.timeout(10):
            while "update" not in kinds:  # publish until the new subscription hears it
                await event_bus.publish("j", "update", {})
                try:
                    async with asyncio.timeout(0.3):
                        kinds.append((await anext(events))["kind"])
                except TimeoutError:
                    continue
    assert kinds[0] == "resync" and kinds[-1] == "update"


async def test_subscription_to_unreachable_server_raises_store_error(keys, unused_tcp_port):
    client = connect(f"redis://127.0.0.1:{unused_tcp_port}", connect_timeout_s=0.5)
    bus = EventBus(client, keys, ready_timeout_s=1.0)
    try:
        with pytest.raises(StoreError, match="cannot subscribe"):
            async with bus.subscription("j"):
                pass
        with pytest.raises(StoreError, match="cannot reach Redis"):
            await bus.publish("j", "update", {})
    finally:
        await bus.close()
        await client.aclose()


async def test_the_cancel_channel_carries_only_cancel_requests_of_running_jobs(store, make_job, redis, keys):
    """A worker listens to cancel requests, not to every event of every job."""
    cancels = EventBus(redis, keys, channel=keys.cancel_channel)
    running, queued = make_job(), make_job()
    try:
        async with cancels.subscription(None) as heard:
            for job in (running, queued):
                await store.create(job, WF)
            await store.apply(running.id, t.Dispatch(attempt()), 2.0)
            await store.apply(running.id, t.Executing(), 3.0)
            await store.apply(queued.id, t.RequestCancel(), 4.0)  # queued: canceled at once
            await store.apply(running.id, t.RequestCancel(), 5.0)  # running: the runner is told
            await store.apply(running.id, t.Canceled(), 6.0)
            assert await next_events(heard, 1) == [{"job_id": running.id, "kind": "cancel"}]
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await anext(heard)
    finally:
        await cancels.close()
