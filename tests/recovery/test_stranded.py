"""``StrandedWatch``: which queued jobs were taken from the queue by a worker that is gone. Real
Valkey (store, claims, liveness); the queue's taken entries are given as a list."""

from __future__ import annotations

import time
import uuid

from comfyfleet.domain.job import Job, JobStatus
from comfyfleet.runtime.stranded import StrandedWatch
from comfyfleet.store.claims import Claims

WINDOW_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def queued(store) -> str:  # type: ignore[no-untyped-def]
    now = time.time()
    job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now)
    return (await store.create(job, {"1": {"class_type": "SaveImage", "inputs": {}}})).id


async def test_a_taken_queued_job_nobody_holds_is_named_on_its_second_sighting(store, redis, keys):
    claims = Claims(redis, keys, lease_s=60.0)
    held, stranded, running_here = await queued(store), await queued(store), await queued(store)
    await claims.acquire(held, "token-of-a-live-runner")
    taken = [held, stranded, running_here, "an-entry-whose-job-is-gone"]

    async def taken_ids() -> list[str]:
        return list(taken)

    clock = Clock()
    watch = StrandedWatch(claims=claims, store=store, taken_ids=taken_ids, window_s=WINDOW_S, clock=clock)
    assert await watch.due(skip={running_here}) == [], "first sighting: it may be claimed a moment later"
    clock.now += 2
    assert await watch.due(skip={running_here}) == [stranded]

    clock.now += WINDOW_S  # no worker vanished since this one started: it stops looking
    assert await watch.due(skip={running_here}) == []
    clock.now += 2
    assert await watch.due(skip={running_here}) == []


async def test_a_vanished_worker_opens_the_window_again(store, redis, keys):
    claims = Claims(redis, keys, lease_s=60.0)
    stranded = await queued(store)

    async def taken_ids() -> list[str]:
        return [stranded]

    clock = Clock()
    watch = StrandedWatch(claims=claims, store=store, taken_ids=taken_ids, window_s=WINDOW_S, clock=clock)
    await claims.beat("w-doomed", {})
    await watch.due()
    clock.now += WINDOW_S + 1  # past the start-up look
    assert await watch.due() == [] and await watch.due() == []

    await claims.leave("w-doomed")
    assert await watch.due() == [], "the window opens: a first sighting"
    clock.now += 2
    assert await watch.due() == [stranded]
