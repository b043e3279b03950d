"""A whole comfyfleet in the test's event loop: real simulators, real Valkey, real HTTP API
(uvicorn on a free port), a real worker. Only the process boundary is left out."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from comfyfleet.config import Settings
from comfyfleet.launch import build_app, build_worker, service_config, start_api
from comfyfleet.services import Services, open_services
from comfyfleet.sim import SimConfig, Simulator

TERMINAL = {"succeeded", "failed", "canceled", "expired"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Fleet:
    base_url: str
    sims: list[Simulator]
    services: Services
    http: httpx.AsyncClient
    worker: Any = None

    async def submit(self, workflow: dict[str, Any], **extra: Any) -> dict[str, Any]:
        response = await self.http.post("/api/v2/jobs", json={"workflow": workflow, **extra})
        assert response.status_code == 201, response.text
        return response.json()

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v2/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def wait(self, job_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                job = await self.job(job_id)
                if job["status"] in TERMINAL:
                    return job
                await asyncio.sleep(0.05)

    async def events(self, job_id: str, timeout_s: float = 30.0) -> list[tuple[str, dict]]:
        """Every SSE event of the job until the server closes the stream."""
        found: list[tuple[str, dict]] = []
        event = "message"
        async with asyncio.timeout(timeout_s):
            async with self.http.stream("GET", f"/api/v2/jobs/{job_id}/events") as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        found.append((event, json.loads(line[5:])))
        return found


async def run_one_job(base_url: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Submit a small image job to the server at ``base_url`` and return it once it has ended."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        created = await http.post("/api/v2/jobs", json={"workflow": image_workflow(2)})
        assert created.status_code == 201, created.text
        async with asyncio.timeout(timeout_s):
            while (job := (await http.get(f"/api/v2/jobs/{created.json()['id']}")).json())["status"] \
                    not in TERMINAL:
                await asyncio.sleep(0.1)
    return job


@asynccontextmanager
async def running_fleet(valkey_url: str, data_dir: Path, *, sims: int = 2,
                        sim_config: SimConfig | None = None,
                        **settings_overrides: Any) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        # each its own name, which seeds its faults: simulators fault independently of each other
        simulators = [await stack.enter_async_context(
            Simulator(replace(sim_config or SimConfig(step_s=0.01), name=f"sim-{i}"), port=0))
            for i in range(sims)]
        port = free_port()
        settings = Settings(redis_url=valkey_url, data_dir=data_dir, port=port,
                            key_prefix=f"e2e{uuid.uuid4().hex[:8]}",
                            backends=[f"sim-{i}={s.url}" for i, s in enumerate(simulators)],
                            progress_throttle_s=0.02, **settings_overrides)
        services = await stack.enter_async_context(open_services(service_config(settings, valkey_url)))
        api = await start_api(build_app(services, settings), "127.0.0.1", port)
        stack.push_async_callback(api.stop)
        worker = build_worker(services, settings)
        await worker.start()
        stack.push_async_callback(worker.stop)
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=settings.base_url, timeout=httpx.Timeout(30.0, connect=5.0)))
        yield Fleet(settings.base_url, simulators, services, http, worker)


def image_workflow(steps: int = 5, *, seed: int = 1, extra_node: dict | None = None) -> dict[str, Any]:
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed}},
        "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "steps": steps, "seed": seed}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}},
    }
    if extra_node:
        workflow.update(extra_node)
    return workflow
