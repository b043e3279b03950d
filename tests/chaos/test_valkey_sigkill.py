"""The embedded Valkey SIGKILLed while jobs are being submitted and run, then the service is
restarted on the same data dir: every job the API accepted (201) is there and finishes."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx

from comfyfleet.sim import SimConfig, Simulator
from comfyfleet.store import connect
from helpers.fleet import TERMINAL, free_port, image_workflow
from helpers.processes import Child, embedded_redis_url


async def submit_until(http: httpx.AsyncClient, accepted: list[str], stop: asyncio.Event) -> int:
    refused = 0
    seed = 0
    while not stop.is_set():
        seed += 1
        try:
            response = await http.post("/api/v2/jobs", json={"workflow": image_workflow(4, seed=seed)})
        except httpx.HTTPError:
            refused += 1
            await asyncio.sleep(0.05)
            continue
        if response.status_code == 201:
            accepted.append(response.json()["id"])
        else:
            refused += 1
        await asyncio.sleep(0.02)
    return refused


async def test_accepted_jobs_survive_a_sigkilled_embedded_valkey(tmp_path):
    data_dir = tmp_path / "data"
    sims = [Simulator(SimConfig(step_s=0.05, name=f"gpu-{i}")) for i in range(2)]
    for sim in sims:
        await sim.start()
    port = free_port()
    argv = ["comfyfleet", "serve", "--port", str(port), "--data-dir", str(data_dir), "--workers", "1",
            *(a for i, s in enumerate(sims) for a in ("--backend", f"gpu-{i}={s.url}"))]
    first = Child(argv, tmp_path / "serve1.log")
    second: Child | None = None
    accepted: list[str] = []
    try:
        await first.wait_for("comfyfleet serving on", timeout_s=60)
        record = json.loads((data_dir / "valkey" / "comfyfleet-valkey.json").read_text())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            stop = asyncio.Event()
            submitter = asyncio.create_task(submit_until(http, accepted, stop))
            async with asyncio.timeout(30):
                while len(accepted) < 20:
                    await asyncio.sleep(0.02)
            os.kill(record["pid"], signal.SIGKILL)
            await asyncio.sleep(1.0)
            stop.set()
            refused = await submitter
        assert refused > 0, "submissions went on being accepted with Redis gone"
        stopping = asyncio.get_running_loop().time()
        await first.stop(timeout_s=60)
        print(f"serve stopped {asyncio.get_running_loop().time() - stopping:.1f} s after SIGTERM "
              f"with its Redis gone")

        second = Child(argv, tmp_path / "serve2.log")
        await second.wait_for("comfyfleet serving on", timeout_s=60)
        url = embedded_redis_url(data_dir)
        redis = connect(url)
        try:  # the decision that makes a 201 durable: every write is fsynced before its reply
            assert (await redis.config_get("appendfsync"))["appendfsync"] == "always"
            assert (await redis.config_get("appendonly"))["appendonly"] == "yes"
        finally:
            await redis.aclose()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async with asyncio.timeout(90):
                pending = set(accepted)
                while pending:
                    for job_id in list(pending):
                        response = await http.get(f"/api/v2/jobs/{job_id}")
                        assert response.status_code == 200, f"accepted job {job_id} is missing"
                        job = response.json()
                        if job["status"] in TERMINAL:
                            assert job["status"] == "succeeded", job
                            pending.discard(job_id)
                    await asyncio.sleep(0.2)
        print(f"{len(accepted)} job(s) accepted before/around the kill, all found and succeeded")
    finally:
        for child in (first, second):
            if child is not None:
                await child.stop(timeout_s=60)
                child.kill()
        for sim in sims:
            await sim.stop()
