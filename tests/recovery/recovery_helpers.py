"""A runner (and what it needs) against a real simulator and the real Valkey, plus jobs whose
worker 'died' at a chosen point: the record carries an attempt, nobody runs it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from comfyfleet.comfy.tracker import TrackerSettings
from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Attempt, Job, JobStatus
from comfyfleet.store.fleet import BackendRecord
from comfyfleet.runtime.runner import Runner, RunnerSettings
from comfyfleet.services import ServiceConfig, Services, open_services
from comfyfleet.sim import Simulator


@dataclass
class Rig:
    services: Services
    sims: list[Simulator]
    runner: Runner

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.services.store

    async def new_job(self, workflow: dict, *, deadline_s: float = 600.0, max_attempts: int = 3,
                      has_partner_key: bool = False) -> Job:
        now = time.time()
        job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now,
                  max_attempts=max_attempts, deadline_at=now + deadline_s, has_partner_key=has_partner_key)
        return await self.store.create(job, workflow)

    async def slot_held(self, job: Job, backend: int = 0) -> bool:
        return job.id in await self.services.dispatcher.fleet.leases.holders(f"sim-{backend}")

    async def orphan(self, workflow: dict, *, backend: int = 0, phase: str = "executing",
                     post: bool = True, deadline_s: float = 600.0) -> Job:
        """A running job whose worker died: attempt written ahead; the prompt posted to the
        simulator (as the dead worker did) when ``post``; phase as far as it got."""
        job = await self.new_job(workflow, deadline_s=deadline_s)
        sim = self.sims[backend]
        attempt = Attempt(number=1, backend=f"sim-{backend}", prompt_id=str(uuid.uuid4()),
                          client_id=str(uuid.uuid4()), worker="dead-worker", started_at=time.time())
        job = await self.store.apply(job.id, t.Dispatch(attempt), time.time())
        # the dead worker held a capacity slot there for it (the lease outlives it by its TTL)
        await self.services.redis.zadd(self.services.keys.lease(f"sim-{backend}"),
                                       {job.id: int((time.time() + 30) * 1000)})
        if post:
            async with httpx.AsyncClient(base_url=sim.url, timeout=10) as http:
                response = await http.post("/prompt", json={"prompt": workflow, "prompt_id": attempt.prompt_id,
                                                            "client_id": attempt.client_id})
                assert response.status_code == 200, response.text
        if phase in ("submitted", "executing"):
            job = await self.store.apply(job.id, t.Submitted(), time.time())
        if phase == "executing":
            job = await self.store.apply(job.id, t.Executing(), time.time())
        return job


@asynccontextmanager
async def rig(valkey_url: str, data_dir: Path, sims: list[Simulator], *,
              worker_id: str = "w-test") -> AsyncIterator[Rig]:
    config = ServiceConfig(redis_url=valkey_url, data_dir=data_dir, key_prefix=f"r{uuid.uuid4().hex[:8]}",
                           backends=tuple(BackendRecord(name=f"sim-{i}", url=s.url) for i, s in enumerate(sims)))
    async with open_services(config) as services:
        runner = Runner(store=services.store, events=services.events, blobs=services.blobs,
                        dispatcher=services.dispatcher, worker_id=worker_id,
                        partner_keys=services.partner_asks.ask,
                        settings=RunnerSettings(progress_throttle_s=0.05, cancel_grace_s=2.0,
                                                tracker=TrackerSettings(history_wait_s=2.0)))
        yield Rig(services, sims, runner)
