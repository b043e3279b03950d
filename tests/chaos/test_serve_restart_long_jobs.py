"""``comfyfleet serve`` stopped (SIGTERM) and started again while long jobs run: the jobs are
handed back at once, reattached right after the new workers start, their progress goes on from
where it was, and no prompt is submitted again."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from comfyfleet.domain.job import Job, JobStatus
from comfyfleet.sim import SimConfig, Simulator
from comfyfleet.store import Keys, RedisJobStore, connect
from helpers.fleet import free_port, image_workflow
from helpers.processes import Child, embedded_redis_url

STEPS, STEP_S = 40, 0.2  # about 8 s per job


def redis_url_of(child: Child) -> str:
    """The embedded Valkey's URL (the banner shows it without its password)."""
    banner = next((line for line in child.output().splitlines() if line.startswith("comfyfleet serving on")), None)
    assert banner is not None and ":***@" in banner, child.output()
    return embedded_redis_url(Path(child.process.args[child.process.args.index("--data-dir") + 1]))


async def read_jobs(url: str, ids: list[str]) -> list[Job]:
    redis = connect(url)
    try:
        return await RedisJobStore(redis, Keys("cf")).get_many(ids)
    finally:
        await redis.aclose()


async def test_serve_restart_reattaches_running_jobs_without_resubmitting(tmp_path):
    sims = [Simulator(SimConfig(step_s=STEP_S, name=f"gpu-{i}")) for i in range(3)]
    for sim in sims:
        await sim.start()
    port = free_port()
    argv = ["comfyfleet", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
            "--workers", "1", *(a for i, s in enumerate(sims) for a in ("--backend", f"gpu-{i}={s.url}"))]
    first = Child(argv, tmp_path / "serve1.log")
    second: Child | None = None
    try:
        await first.wait_for("comfyfleet serving on", timeout_s=60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            ids = []
            for n in range(3):
                response = await http.post("/api/v2/jobs", json={"workflow": image_workflow(STEPS, seed=n)})
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
        url = redis_url_of(first)
        async with asyncio.timeout(30):
            while not all(j.progress.value >= 0.2 for j in await read_jobs(url, ids)):
                await asyncio.sleep(0.1)
        before = {j.id: j for j in await read_jobs(url, ids)}
        old_workers = {j.current.worker for j in before.values()}

        stop_started = time.time()
        assert await first.stop() == 0, first.output()
        stop_s = time.time() - stop_started
        assert all(r.ended_at is None for s in sims for r in s.records), \
            "serve waited for the running jobs instead of handing them back"
        launched = time.time()
        second = Child(argv, tmp_path / "serve2.log")
        await second.wait_for("comfyfleet serving on", timeout_s=60)
        url = redis_url_of(second)
        reattached: dict[str, float] = {}
        async with asyncio.timeout(30):
            while len(reattached) < len(ids):
                for job in await read_jobs(url, ids):
                    if job.id not in reattached and job.current is not None \
                            and job.current.worker not in old_workers and job.current.heartbeat_at:
                        reattached[job.id] = job.current.heartbeat_at
                        assert job.progress.value >= before[job.id].progress.value
                        assert job.current.prompt_id == before[job.id].current.prompt_id
                await asyncio.sleep(0.02)
        redis = connect(url)
        try:
            workers = [json.loads(v) for v in await redis.mget(
                [k async for k in redis.scan_iter(match="cf:worker:*")])]
        finally:
            await redis.aclose()
        worker_started = min(w["started_at"] for w in workers)
        after_start = max(reattached.values()) - worker_started
        print(f"SIGTERM -> serve exited in {stop_s:.2f} s; every running job reattached "
              f"{after_start:.2f} s after the new worker started "
              f"({max(reattached.values()) - launched:.2f} s after launching serve)")
        assert after_start < 10.0, "generous bound; the target is 2 s (see benchmarks/recovery.py)"

        async with asyncio.timeout(60):
            while True:
                jobs = await read_jobs(url, ids)
                if all(j.is_terminal for j in jobs):
                    break
                await asyncio.sleep(0.2)
        assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 3, [j.error for j in jobs]
        for job in jobs:
            assert job.attempt == 1 and len(job.history) == 1
            assert job.history[0].prompt_id == before[job.id].current.prompt_id
        assert sum(s.requests["POST /prompt"] for s in sims) == 3, "a prompt was submitted again"
        assert sorted(len(s.records) for s in sims) == [1, 1, 1]
    finally:
        for child in (first, second):
            if child is not None:
                await child.stop()
                child.kill()
        for sim in sims:
            await sim.stop()
