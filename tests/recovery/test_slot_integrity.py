"""A backend's slot is freed when its prompt is over, never because something else went wrong:
a process that loses its Redis for a moment keeps following its prompt (progress is best
effort) and holds its slot meanwhile; an attempt written ahead whose prompt was never sent
takes a slot like any new prompt, never one over capacity."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from comfyfleet.comfy.tracker import TrackerSettings
from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Job, JobStatus, Phase
from comfyfleet.errors import StoreError
from comfyfleet.runtime.runner import Runner, RunnerSettings
from comfyfleet.services import ServiceConfig, Services, open_services
from comfyfleet.sim import SimConfig, Simulator
from comfyfleet.store.fleet import BackendRecord
from helpers.fleet import image_workflow
from helpers.tcp_cut import TcpCut


@asynccontextmanager
async def process(redis_url: str, data_dir: Path, sim: Simulator, prefix: str,
                  name: str) -> AsyncIterator[tuple[Services, Runner]]:
    """One comfyfleet process's services and runner, on a capacity-1 backend."""
    config = ServiceConfig(redis_url=redis_url, data_dir=data_dir, key_prefix=prefix,
                           backends=(BackendRecord(name="sim-0", url=sim.url, capacity=1),))
    async with open_services(config) as services:
        yield services, Runner(store=services.store, events=services.events, blobs=services.blobs,
                               dispatcher=services.dispatcher, worker_id=name,
                               settings=RunnerSettings(progress_throttle_s=0.05, cancel_grace_s=2.0,
                                                       tracker=TrackerSettings(history_wait_s=2.0)))


async def new_job(services: Services, steps: int, seed: int) -> Job:
    now = time.time()
    job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now,
              max_attempts=3, deadline_at=now + 600)
    return await services.store.create(job, image_workflow(steps, seed=seed))


async def test_a_process_that_loses_redis_for_a_moment_keeps_its_prompt_and_its_slot(valkey_url, tmp_path):
    prefix = f"slot{uuid.uuid4().hex[:6]}"
    target = urlsplit(valkey_url)
    async with Simulator(SimConfig(step_s=0.02, name="sim-0")) as sim, \
            TcpCut(target.hostname, target.port) as cut:
        cut_url = valkey_url.replace(f":{target.port}", f":{cut.port}")
        async with process(cut_url, tmp_path / "a", sim, prefix, "w-a") as (a, runner), \
                process(valkey_url, tmp_path / "b", sim, prefix, "w-b") as (b, _):
            job = await new_job(a, steps=400, seed=1)  # 8 s of steps
            run = asyncio.create_task(runner.run(job.id))
            async with asyncio.timeout(20):
                while (await b.store.get(job.id)).phase is not Phase.EXECUTING:
                    await asyncio.sleep(0.05)
            cut.cut()  # progress writes, heartbeats and renewals of process a fail for 2 s
            await asyncio.sleep(2.0)
            cut.restore()
            await asyncio.sleep(1.5)  # a missed release would have landed by now
            assert not run.done(), run  # still following its prompt
            other = await new_job(b, steps=2, seed=2)
            assert (await b.dispatcher.acquire(other, wait_s=0.3)).backend is None, \
                "another job took the slot of a prompt still running"
            assert (await run).done
            done = await b.store.get(job.id)
            assert (done.status, done.attempt) == (JobStatus.SUCCEEDED, 1)
            assert await b.fleet.leases.holders("sim-0") == []
        assert len(sim.records) == 1


async def test_an_attempt_whose_prompt_was_never_sent_waits_for_a_free_slot(valkey_url, tmp_path):
    """The write-ahead landed but its answer was lost, so the runner gave the slot back; a queued
    job took it. Taken over later, the unsent attempt must wait for the slot, not post beside."""
    prefix = f"slot{uuid.uuid4().hex[:6]}"
    async with Simulator(SimConfig(step_s=0.02, name="sim-0")) as sim:
        async with process(valkey_url, tmp_path / "a", sim, prefix, "w-a") as (a, runner):
            store_apply = a.store.apply
            lose_answer = True

            async def apply(job_id, event, now, **kw):  # type: ignore[no-untyped-def]
                nonlocal lose_answer
                written = await store_apply(job_id, event, now, **kw)
                if lose_answer and isinstance(event, t.Dispatch):
                    lose_answer = False
                    raise StoreError("the write landed; its answer did not")
                return written
            a.store.apply = apply  # type: ignore[method-assign]

            unsent = await new_job(a, steps=5, seed=3)
            with pytest.raises(StoreError):
                await runner.run(unsent.id)
            assert (await a.store.get(unsent.id)).phase is Phase.DISPATCHING
            running = await new_job(a, steps=150, seed=4)  # 3 s
            first = asyncio.create_task(runner.run(running.id))
            async with asyncio.timeout(10):
                while sim.requests["POST /prompt"] < 1:
                    await asyncio.sleep(0.02)
            verdict = await runner.run(unsent.id)  # the sweep's takeover: the slot is busy
            assert verdict.run_at is not None
            assert sim.requests["POST /prompt"] == 1
            assert await a.fleet.leases.holders("sim-0") == [running.id]
            await first
            async with asyncio.timeout(30):
                while (verdict := await runner.run(unsent.id)).run_at is not None:
                    await asyncio.sleep(max(0.0, verdict.run_at - time.time()))
            ended = await a.store.get(unsent.id)
            assert (ended.status, ended.attempt) == (JobStatus.SUCCEEDED, 1)
    assert [r.outcome for r in sim.records] == ["success", "success"]
    assert sim.records[0].ended_at <= sim.records[1].started_at  # one at a time
