"""Restarting ``comfyfleet serve`` on the same data dir keeps finished jobs listed and
downloadable (embedded Valkey with append-only persistence, blobs on disk)."""

from __future__ import annotations

import asyncio

import httpx

from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import TERMINAL, free_port, image_workflow
from helpers.processes import Child


async def wait_done(client: httpx.AsyncClient, job_id: str) -> dict:
    async with asyncio.timeout(60):
        while True:
            job = (await client.get(f"/api/v2/jobs/{job_id}")).json()
            if job["status"] in TERMINAL:
                return job
            await asyncio.sleep(0.1)


async def test_finished_jobs_survive_a_restart_of_serve(tmp_path):
    data_dir = tmp_path / "data"
    async with Simulator(SimConfig(step_s=0.01, name="gpu"), port=0) as sim:
        port = free_port()
        argv = ["comfyfleet", "serve", "--backend", f"gpu={sim.url}", "--port", str(port),
                "--data-dir", str(data_dir), "--workers", "1"]
        first = Child(argv, tmp_path / "serve1.log")
        try:
            await first.wait_for("comfyfleet serving on", timeout_s=60)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                created = (await client.post("/api/v2/jobs", json={"workflow": image_workflow(3)})).json()
                job = await wait_done(client, created["id"])
                assert job["status"] == "succeeded", job
                before = (await client.get(f"/api/v2/assets/{job['outputs'][0]['id']}/content")).content
            assert await first.stop() == 0, first.output()
        finally:
            first.kill()

        second = Child(argv, tmp_path / "serve2.log")
        try:
            await second.wait_for("comfyfleet serving on", timeout_s=60)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                listed = (await client.get("/api/v2/jobs")).json()["jobs"]
                assert [j["id"] for j in listed] == [job["id"]]
                assert listed[0]["status"] == "succeeded"
                after = await client.get(f"/api/v2/assets/{job['outputs'][0]['id']}/content")
                assert after.status_code == 200 and after.content == before
        finally:
            await second.stop()
            second.kill()
