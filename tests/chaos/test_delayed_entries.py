"""A queue entry delayed past bullmq's longest blocking wait, on a lane with nothing else to wake
it, is started at its time. Before bullmq's clients had read timeouts fitting its blocking reads,
such an entry waited minutes past it (see ``queue.bull_connection_url``). Real worker processes,
real Valkey."""

from __future__ import annotations

import asyncio
import time
import uuid

from chaos_helpers import api_only, start_worker
from comfyfleet.domain.job import Job, JobStatus
from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import image_workflow

DELAY_S = 12.0  # a retry after a long Retry-After: more than one of bullmq's blocking reads


async def test_a_long_delayed_entry_on_an_idle_lane_starts_at_its_time(valkey_url, tmp_path):
    async with Simulator(SimConfig(step_s=0.01, name="sim-0")) as sim:
        async with api_only(valkey_url, tmp_path / "data", [f"sim-0={sim.url}"]) as api:
            workers = [await start_worker(api.settings, tmp_path / f"w{i}.log") for i in range(2)]
            try:
                now = time.time()
                job = await api.services.store.create(
                    Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now,
                        max_attempts=3, deadline_at=now + 600), image_workflow(2, seed=1))
                due = now + DELAY_S
                await api.services.queue.enqueue(job, not_before=due)
                async with asyncio.timeout(DELAY_S + 20):
                    while not (done := await api.services.store.get(job.id)).is_terminal:
                        await asyncio.sleep(0.2)
            finally:
                for worker in workers:
                    worker.kill()
    assert done.status is JobStatus.SUCCEEDED
    started = done.history[0].started_at
    assert started >= due - 0.5, "not before its time"
    print(f"started {started - due:.1f} s after its time")
