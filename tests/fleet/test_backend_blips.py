"""Brief faults at the moments where a blind reaction costs most: an answer lost after ComfyUI
queued the prompt, a download failing after the prompt succeeded, a cancel while the backend
stutters, a prompt ComfyUI accepted only in part, and a cancel on a ComfyUI whose /interrupt
stops whatever runs. No prompt runs twice, none runs on unseen, none stops another's."""

from __future__ import annotations

import asyncio

from comfyfleet.sim import SimConfig
from helpers.fleet import image_workflow, running_fleet


async def running_with_progress(fleet, job_id: str) -> dict:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(30):
        while True:
            seen = await fleet.job(job_id)
            if seen["status"] == "running" and (seen["progress"] or {}).get("value", 0) > 0:
                return seen
            await asyncio.sleep(0.05)


async def test_a_prompt_queued_behind_a_gateway_error_is_followed_not_sent_again(valkey_url, tmp_path):
    """The gateway in front of ComfyUI forwarded POST /prompt, ComfyUI queued it, and the
    gateway answered 504: the prompt is looked up and followed, not posted again."""
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        sim = fleet.sims[0]
        for status in (504, 502, 500):
            sim.faults.clear()
            sim.faults.injected = 0
            sim.faults.update({"http_error_status": status, "http_error_paths": ["POST /prompt"],
                               "http_error_limit": 1, "http_error_after_handling": True})
            posted = sim.requests["POST /prompt"]
            job = await fleet.wait((await fleet.submit(image_workflow(3, seed=status)))["id"])
            assert sim.faults.injected == 1
            assert (job["status"], len(job["attempts"])) == ("succeeded", 1), (status, job["attempts"])
            assert sim.requests["POST /prompt"] - posted == 1, status
        assert len(sim.records) == 3 and {r.outcome for r in sim.records} == {"success"}


async def test_a_download_that_fails_after_the_prompt_succeeded_is_fetched_again_not_run_again(
        valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        sim = fleet.sims[0]
        sim.faults.update({"http_error_status": 502, "http_error_paths": ["GET /view"],
                           "http_error_limit": 2})
        job = await fleet.wait((await fleet.submit(image_workflow(3, seed=11)))["id"])
        assert (job["status"], len(job["attempts"]), len(job["outputs"])) == ("succeeded", 1, 1), job
        assert len(sim.records) == 1 and sim.requests["GET /view"] == 3


async def test_a_cancel_while_the_backend_stutters_still_stops_the_prompt(valkey_url, tmp_path):
    """The first two calls that would stop the prompt fail (502): it is looked up again until
    seen stopped, not left to run to its end behind a job marked canceled. (The health checks'
    GET /queue would take faults meant for the cancel: those are left alone.)"""
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        sim = fleet.sims[0]
        job = await fleet.submit(image_workflow(steps=3000, seed=13))  # 30 s at 10 ms a step
        running = await running_with_progress(fleet, job["id"])
        sim.faults.update({"http_error_status": 502, "http_error_limit": 2,
                           "http_error_paths": ["POST /queue", "POST /interrupt"]})
        assert (await fleet.http.post(f"/api/v2/jobs/{job['id']}/cancel")).status_code == 200
        final = await fleet.wait(job["id"], timeout_s=25)
        assert final["status"] == "canceled" and sim.faults.injected == 2
        [record] = [r for r in sim.records if r.prompt_id == running["attempts"][-1]["prompt_id"]]
        assert record.outcome == "interrupted"


async def test_a_prompt_accepted_only_in_part_fails_the_job_and_is_stopped(valkey_url, tmp_path):
    """ComfyUI answers 200 with node_errors and queues only the valid output: the job fails
    with those errors instead of succeeding short of an output, and the queued part is stopped."""
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 1}},
        "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "steps": 2000, "seed": 1}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "a"}},
        "4": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "steps": -5, "seed": 2}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "b"}},
    }
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        job = await fleet.wait((await fleet.submit(workflow))["id"])
        assert job["status"] == "failed" and job["error"]["code"] == "invalid_workflow", job["error"]
        assert "accepted only part of the prompt" in job["error"]["message"]
        assert set(job["error"]["details"]["node_errors"]) == {"4"}
        assert len(job["attempts"]) == 1 and job["outputs"] == []
        [record] = fleet.sims[0].records
        assert record.outcome == "interrupted"  # 20 s of steps otherwise


async def test_cancelling_a_waiting_prompt_leaves_the_running_one_alone(valkey_url, tmp_path):
    """On a ComfyUI before 0.3.56, /interrupt stops whatever runs, whatever id it is given:
    cancelling a job whose prompt waits in that backend's queue must not send it."""
    async with running_fleet(valkey_url, tmp_path, sims=1,
                             sim_config=SimConfig(step_s=0.01, interrupt_ignores_id=True)) as fleet:
        widened = await fleet.http.patch("/api/v2/backends/sim-0", json={"capacity": 2})
        assert widened.status_code == 200, widened.text
        async with asyncio.timeout(5):
            while fleet.services.dispatcher.snapshot.backends["sim-0"].capacity != 2:
                await asyncio.sleep(0.05)
        first = await fleet.submit(image_workflow(steps=300, seed=17))  # 3 s
        await running_with_progress(fleet, first["id"])
        waiting = await fleet.submit(image_workflow(steps=3, seed=19))
        async with asyncio.timeout(10):  # posted: in ComfyUI's queue behind the first
            while not fleet.sims[0].queue.pending_items():
                await asyncio.sleep(0.02)
        assert (await fleet.http.post(f"/api/v2/jobs/{waiting['id']}/cancel")).status_code == 200
        assert (await fleet.wait(waiting["id"]))["status"] == "canceled"
        done = await fleet.wait(first["id"])
        assert (done["status"], len(done["attempts"])) == ("succeeded", 1), done["attempts"]
        assert [r.outcome for r in fleet.sims[0].records] == ["success"]
