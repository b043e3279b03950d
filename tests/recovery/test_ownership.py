"""Who runs a job: claims with a lease, the orphan sweep of starting workers, liveness, hand-back.
Two workers never run the same job; a stopping worker gives its jobs back at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from comfyfleet.domain import transitions as t
from comfyfleet.domain.asset_refs import ASSET_TYPE, BLOB_KEY, NAME_KEY
from comfyfleet.domain.job import JobStatus
from comfyfleet.runtime.recovery import Recovery
from comfyfleet.runtime.runner import Runner, RunnerSettings
from comfyfleet.runtime.worker import Worker, WorkerSettings
from comfyfleet.store.claims import ClaimLost, Claims
from helpers.fleet import image_workflow

LEASE_S = 3.0


def make_worker(r, name: str, sweep_s: float = 0.2) -> Worker:  # type: ignore[no-untyped-def]
    s = r.services
    claims = Claims(s.redis, s.keys, lease_s=LEASE_S)
    runner = Runner(store=s.store, events=s.events, blobs=s.blobs, dispatcher=s.dispatcher,
                    worker_id=name, settings=RunnerSettings(progress_throttle_s=0.05))

    async def requeue(job_id: str, run_at: float) -> None:
        await s.queue.wake(await s.store.get(job_id))

    return Worker(redis_url=s.config.redis_url, keys=s.keys, runner=runner, claims=claims,
                  recovery=Recovery(store=s.store, claims=claims, dispatcher=s.dispatcher),
                  requeue=requeue,
                  settings=WorkerSettings(worker_id=name, renew_s=0.2, sweep_s=sweep_s))


async def wait_for(predicate, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_a_claim_has_one_holder_and_only_it_renews_or_releases(r):
    """Acquire is exclusive; renew and release compare the token; the lease runs out."""
    claims = Claims(r.services.redis, r.services.keys, lease_s=0.3)
    assert await claims.acquire("j1", "a") and not await claims.acquire("j1", "b")
    assert await claims.renew({"j1": "b"}) == {"j1"} and await claims.holds("j1", "a")
    await claims.release("j1", "b")
    assert await claims.holders(["j1", "j2"]) == ["a", None]
    assert await claims.acquire_many({"j1": "c", "j2": "c"}) == {"j2"}
    await asyncio.sleep(0.4)
    assert await claims.holders(["j1", "j2"]) == [None, None]


async def test_two_starting_workers_split_orphans_and_run_each_once(r, sims):
    """Both workers sweep the same orphans at once: every job is taken by exactly one of them,
    every prompt is tracked to success and none is posted again."""
    orphans = [await r.orphan(image_workflow(5, seed=n), backend=n % 2) for n in range(12)]
    a, b = make_worker(r, "w-a"), make_worker(r, "w-b")
    await asyncio.gather(a.start(), b.start())
    try:
        async def all_done() -> bool:
            jobs = await r.store.get_many([j.id for j in orphans])
            return all(j.is_terminal for j in jobs)
        await wait_for(all_done)
    finally:
        await asyncio.gather(a.stop(), b.stop())
    jobs = await r.store.get_many([j.id for j in orphans])
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 12
    assert a.reattached + b.reattached == 12, (a.reattached, b.reattached)
    # a prompt that finished while nobody watched is collected without a reattach heartbeat
    assert {j.history[-1].worker for j in jobs} <= {"w-a", "w-b", "dead-worker"}
    assert sum(s.requests["POST /prompt"] for s in sims) == 12
    assert sorted(len(s.records) for s in sims) == [6, 6]


async def test_stop_hands_running_jobs_back_at_once(r, sims):
    """A stopping worker does not wait for a long job: its claim is released, the record keeps
    the attempt, and the next worker reattaches to the same prompt."""
    job = await r.orphan(image_workflow(400, seed=1))  # 8 s of work
    first = make_worker(r, "w-first")
    await first.start()
    claims = Claims(r.services.redis, r.services.keys, lease_s=LEASE_S)

    async def taken() -> bool:
        return (await claims.holders([job.id]))[0] is not None
    await wait_for(taken)
    assert await r.services.redis.exists(r.services.keys.worker("w-first"))
    await first.stop()
    assert sims[0].records[0].ended_at is None, "stop waited for the job to finish"
    assert await claims.holders([job.id]) == [None]
    assert not await r.services.redis.exists(r.services.keys.worker("w-first"))
    handed_back = await r.store.get(job.id)
    assert handed_back.status is JobStatus.RUNNING
    assert handed_back.current.prompt_id == job.current.prompt_id

    second = make_worker(r, "w-second")
    await second.start()
    try:
        async def done() -> bool:
            return (await r.store.get(job.id)).is_terminal
        await wait_for(done)
    finally:
        await second.stop()
    final = await r.store.get(job.id)
    assert final.status is JobStatus.SUCCEEDED and final.attempt == 1
    assert final.history[0].worker == "w-second"
    assert sims[0].requests["POST /prompt"] == 1 and len(sims[0].records) == 1


async def test_a_worker_stopped_while_it_sweeps_ends_at_once(r, sims, caplog):
    """Stopped during its first sweep (a Redis call, which may swallow the cancel), the sweep
    loop ends there: it neither sleeps out its period nor holds up stop()."""
    for pause_s in (0.0, 0.001, 0.002, 0.004, 0.008, 0.016):
        worker = make_worker(r, "w-brief", sweep_s=600.0)
        await worker.start()
        await asyncio.sleep(pause_s)
        sweeping = next(t for t in asyncio.all_tasks() if t.get_name() == "orphan-sweep")
        await worker.stop()
        assert sweeping.done(), "the sweep loop outlived stop()"
        assert "did not stop" not in caplog.text


async def test_a_worker_that_loses_its_claim_stops_touching_the_job(r, sims):
    """If the lease ran out and another runner took the job, the old runner lets go at its next
    renewal: no more heartbeats or progress writes from it."""
    job = await r.orphan(image_workflow(400, seed=2))
    worker = make_worker(r, "w-slow")
    await worker.start()
    try:
        claims = Claims(r.services.redis, r.services.keys, lease_s=60)

        async def taken() -> bool:
            return (await claims.holders([job.id]))[0] is not None
        await wait_for(taken)
        await r.services.redis.set(r.services.keys.claim(job.id), "someone-else", px=60_000)

        async def let_go() -> bool:
            return job.id not in worker._held and job.id not in worker._tasks
        await wait_for(let_go, timeout_s=10)
        version = (await r.store.get(job.id)).version
        await asyncio.sleep(1.0)
        assert (await r.store.get(job.id)).version == version
        assert (await claims.holders([job.id])) == ["someone-else"]
    finally:
        await worker.stop()


async def test_heartbeat_slides_the_active_ttl(r):
    """Each heartbeat pushes a running record's expiry to active_ttl past it."""
    job = await r.orphan(image_workflow(1, seed=3), post=False)
    key = r.services.keys.job(job.id)
    await r.services.redis.pexpire(key, 5_000)
    await r.store.apply(job.id, t.Heartbeat("w-x"), time.time())
    ttl_ms = await r.services.redis.pttl(key)
    assert ttl_ms > 7000 * 1000 - 60_000  # 2 h default
    assert (await r.store.get(job.id)).current.heartbeat_at is not None


async def test_the_orphan_sweep_loads_only_unclaimed_running_jobs(r):
    """A sweep runs every few seconds in every worker, with thousands of jobs queued: it reads
    the running jobs' claims and loads only the records of the orphaned ones."""
    s = r.services
    claims = Claims(s.redis, s.keys, lease_s=LEASE_S)
    recovery = Recovery(store=s.store, claims=claims, dispatcher=s.dispatcher)
    for n in range(30):
        await r.new_job(image_workflow(1, seed=n))  # queued: not the sweep's business
    owned = await r.orphan(image_workflow(1, seed=100), post=False)
    assert await claims.acquire(owned.id, "w-alive:1")  # running under a live claim
    orphan = await r.orphan(image_workflow(1, seed=101), post=False)
    await s.redis.config_resetstat()
    found = await recovery.orphans()
    assert [job.id for job in found] == [orphan.id]
    stats = await s.redis.info("commandstats")
    assert stats["cmdstat_hget"]["calls"] == 1  # the orphan's record, nothing else


async def test_a_queued_job_whose_holder_died_runs_a_lease_later_not_a_minute(r):
    """A queue entry delivered while another runner holds its queued job goes back for just over
    a lease. That holder dying with the job (its claim runs out, nobody renews it) left the job
    waiting a minute for its entry's next look; now it runs a lease later."""
    job = await r.new_job(image_workflow(2))
    holder = Claims(r.services.redis, r.services.keys, lease_s=LEASE_S)
    assert await holder.acquire(job.id, "a-runner-that-dies")  # never renewed: it runs out
    await r.services.queue.enqueue(job)
    w = make_worker(r, "w-next")
    await w.start()
    try:
        async def done() -> bool:
            return (await r.services.store.get(job.id)).status is JobStatus.SUCCEEDED
        await wait_for(done, timeout_s=30)  # the entry's next look: 7 s (it was 60 s)
    finally:
        await w.stop()
    assert (await r.services.store.get(job.id)).attempt == 1


async def test_the_claim_is_asked_after_the_inputs_are_staged_right_before_the_post(r, sims):
    """Staging may upload for minutes: a runner that lost its claim meanwhile must find out
    before POST /prompt, not before the uploads (the new owner would post the same prompt)."""
    digest = await r.services.blobs.put(b"input bytes", content_type="image/png")
    reference = {"__type": ASSET_TYPE, "info": {"id": "in", BLOB_KEY: digest, NAME_KEY: "in.png"}}
    job = await r.new_job(image_workflow(2, extra_node={"9": {"class_type": "LoadImage",
                                                              "inputs": {"image": reference}}}))
    uploads_when_asked: list[int] = []

    async def fence() -> bool:
        uploads_when_asked.append(sum(s.requests["POST /upload/image"] for s in sims))
        return False  # another runner took the job meanwhile

    with pytest.raises(ClaimLost):
        await r.runner.run(job.id, fence=fence)
    assert uploads_when_asked == [1]
    assert sum(s.requests["POST /prompt"] for s in sims) == 0


async def test_a_starting_worker_holds_the_slots_of_running_prompts_before_taking_queued_jobs(r, sims):
    """Every worker was down longer than a slot's lease while ComfyUI ran on: the prompt still
    running has no lease left. The starting worker holds its slot again before any queued job
    may take one, so no queued job is sent to join it."""
    orphan = await r.orphan(image_workflow(150, seed=31))  # 3 s of steps on sim-0
    await r.services.redis.delete(r.services.keys.lease("sim-0"))  # its lease ran out
    for n in range(4):
        queued = await r.new_job(image_workflow(3, seed=40 + n))
        await r.services.queue.enqueue(queued)
    worker = make_worker(r, "w-new")
    await worker.start()
    try:
        assert await r.services.dispatcher.fleet.leases.holders("sim-0") == [orphan.id]
        most = 0
        for _ in range(40):
            most = max(most, len(sims[0].queue.pending_items()) + (1 if sims[0].queue.running else 0))
            await asyncio.sleep(0.05)
        assert most == 1, "a queued job was sent where the orphan's prompt still ran"
    finally:
        await worker.stop()
