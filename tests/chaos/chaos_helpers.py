"""Pieces the chaos tests share: an API in the test's loop (no worker), worker processes,
the simulators' record files, and a watch over job records straight from Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from comfyfleet.config import Settings
from comfyfleet.domain.job import Job
from comfyfleet.launch import build_app, service_config, start_api
from comfyfleet.services import Services, open_services
from helpers.fleet import TERMINAL, free_port
from helpers.processes import Child


@dataclass
class ApiOnly:
    settings: Settings
    services: Services
    http: httpx.AsyncClient

    async def submit(self, workflow: dict, **extra) -> str:  # type: ignore[no-untyped-def]
        response = await self.http.post("/api/v2/jobs", json={"workflow": workflow, **extra})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    async def jobs(self, ids: Iterable[str]) -> list[Job]:
        return await self.services.store.get_many(list(ids))

    async def wait_all(self, ids: list[str], timeout_s: float) -> list[Job]:
        async with asyncio.timeout(timeout_s):
            while True:
                jobs = await self.jobs(ids)
                if len(jobs) == len(ids) and all(j.status.value in TERMINAL for j in jobs):
                    return jobs
                await asyncio.sleep(0.2)


@asynccontextmanager
async def api_only(valkey_url: str, data_dir: Path, backends: list[str]) -> AsyncIterator[ApiOnly]:
    async with AsyncExitStack() as stack:
        port = free_port()
        settings = Settings(redis_url=valkey_url, data_dir=data_dir, port=port, backends=backends,
                            key_prefix=f"chaos{uuid.uuid4().hex[:8]}", progress_throttle_s=0.2)
        services = await stack.enter_async_context(open_services(service_config(settings, valkey_url)))
        api = await start_api(build_app(services, settings), "127.0.0.1", port)
        stack.push_async_callback(api.stop)
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=settings.base_url, timeout=30))
        yield ApiOnly(settings, services, http)


def worker_argv(settings: Settings) -> list[str]:
    argv = ["comfyfleet", "worker", "--redis-url", settings.redis_url or "", "--data-dir",
            str(settings.data_dir), "--key-prefix", settings.key_prefix]
    for backend in settings.backends:
        argv += ["--backend", backend]
    return argv


async def start_worker(settings: Settings, log_path: Path, env: dict[str, str] | None = None) -> Child:
    child = Child(worker_argv(settings), log_path, env=env)
    await child.wait_for("comfyfleet worker", timeout_s=60)
    return child


def worker_id_of(child: Child) -> str:
    """The id a worker printed in its ready line."""
    for line in child.output().splitlines():
        if line.startswith("comfyfleet worker ") and line.endswith(" running"):
            return line.split()[2]
    raise AssertionError(f"no ready line:\n{child.output()}")


def prompt_starts(record_files: Iterable[Path]) -> Counter[str]:
    """How many times each prompt id started executing, over all simulators' record files."""
    starts: Counter[str] = Counter()
    for path in record_files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["event"] == "start":
                starts[row["prompt_id"]] += 1
    return starts


async def time_to_reattach(api: ApiOnly, in_flight: list[str], dead_workers: set[str],
                           since: float, timeout_s: float = 60.0) -> float:
    """Seconds from ``since`` until every job in ``in_flight`` is owned by a live worker again
    (a heartbeat by another worker) or has ended."""
    async with asyncio.timeout(timeout_s):
        while True:
            jobs = await api.jobs(in_flight)
            if all(j.is_terminal or (j.current is not None and j.current.worker not in dead_workers
                                     and (j.current.heartbeat_at or 0) >= since)
                   or (j.current is None) for j in jobs):
                return time.time() - since
            await asyncio.sleep(0.05)
