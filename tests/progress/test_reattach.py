"""A worker that picks up a job whose prompt is already running reattaches under the recorded
client_id: no second POST /prompt, and live progress resumes in the job's events."""

from __future__ import annotations

import asyncio
import time
import uuid

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.transport import open_session
from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Attempt, Job, JobStatus
from comfyfleet.sim import SimConfig
from helpers.fleet import running_fleet

from progress_helpers import workflow


async def test_reattached_job_gets_live_progress_under_the_recorded_client_id(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1,
                             sim_config=SimConfig(step_s=0.05, name="sim-0")) as fleet:
        store, sim = fleet.services.store, fleet.sims[0]
        graph = workflow(80)
        now = time.time()
        job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now,
                  deadline_at=now + 600)
        await store.create(job, graph)
        attempt = Attempt(number=1, backend="sim-0", prompt_id=str(uuid.uuid4()),
                          client_id=str(uuid.uuid4()), worker="dead-worker", started_at=now)
        job = await store.apply(job.id, t.Dispatch(attempt), now)
        job = await store.apply(job.id, t.Submitted(), now)
        async with open_session() as http:  # what the worker that died had sent
            await ComfyClient(sim.url, http=http).submit(graph, prompt_id=attempt.prompt_id,
                                                         client_id=attempt.client_id)
        async with asyncio.timeout(20):
            while not sim.executor.current or sim.executor.last_node_id != "2":
                await asyncio.sleep(0.02)

        async with fleet.services.events.subscription(job.id) as events:
            await fleet.services.queue.enqueue(job)  # the next worker picks it up
            progress = []
            async with asyncio.timeout(30):
                async for event in events:
                    record = event.get("job") or {}
                    if event.get("kind") == "progress" or record.get("status") == "succeeded":
                        progress.append(record["progress"])  # success carries the final 1.0
                    if record.get("status") in ("succeeded", "failed", "canceled", "expired"):
                        break
        final = await fleet.job(job.id)
        assert final["status"] == "succeeded" and final["attempt"] == 1
        assert sim.requests["POST /prompt"] == 1  # reattached, never resubmitted
        live_steps = {p["step"] for p in progress if p.get("current_node") == "2" and p.get("step")}
        assert len(live_steps) >= 10  # delivered to the socket of the recorded client_id only
        values = [p["value"] for p in progress]
        assert values == sorted(values) and values[-1] == 1.0
        assert [c.client_id for c in sim.records] == [attempt.client_id]
