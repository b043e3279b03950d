"""The walking skeleton: one job from HTTP to a ComfyUI server and back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from helpers.fleet import image_workflow, running_fleet


@pytest.fixture
async def fleet(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path) as fleet:
        yield fleet


async def test_job_succeeds_with_monotonic_progress_and_exact_output_bytes(fleet):
    job = await fleet.submit(image_workflow(steps=8, seed=7), metadata={"user_id": "alice"})
    assert job["status"] == "queued"
    events = await fleet.events(job["id"])
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert statuses[-1] == "succeeded"
    assert "running" in statuses
    values = [data["value"] for kind, data in events if kind == "progress"]
    assert values == sorted(values), "progress went backwards"
    assert values[-1] == 1.0
    assert len(set(values)) >= 3

    final = await fleet.job(job["id"])
    assert final["status"] == "succeeded" and final["started_at"] and final["completed_at"]
    [output] = final["outputs"]
    assert output["url"].startswith("http://127.0.0.1:")
    body = (await fleet.http.get(f"/api/v2/assets/{output['id']}/content")).content
    produced = [p for sim in fleet.sims for p in Path(sim.output_dir).rglob(output["name"])]
    assert produced, "the simulator wrote the output file"
    assert body == produced[0].read_bytes()


async def test_node_error_fails_with_node_details_and_is_not_retried(fleet):
    workflow = image_workflow(steps=2, extra_node={
        "2": {"class_type": "SimFailingNode", "inputs": {"image": ["1", 0], "message": "boom"}}})
    job = await fleet.wait((await fleet.submit(workflow))["id"])
    assert job["status"] == "failed"
    error = job["error"]
    assert error["code"] == "node_execution_error"
    assert error["node_id"] == "2" and error["class_type"] == "SimFailingNode"
    assert error["details"]["exception_type"] == "ValueError"
    assert job["attempt"] == 1
    assert sum(len(sim.records) for sim in fleet.sims) == 1


async def test_rejected_prompt_fails_with_node_errors_and_is_not_retried(fleet):
    workflow = image_workflow(steps=0)  # steps < 1: ComfyUI rejects it in validation
    job = await fleet.wait((await fleet.submit(workflow))["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_workflow"
    assert "2" in job["error"]["details"]["node_errors"]
    assert job["attempt"] == 1
    assert sum(sim.requests["POST /prompt"] for sim in fleet.sims) == 1
    assert sum(len(sim.records) for sim in fleet.sims) == 0


async def test_cancel_of_a_running_job_interrupts_its_prompt(fleet):
    job = await fleet.submit(image_workflow(steps=2000, seed=3))  # 20 s at 10 ms a step

    async def progressing() -> dict:
        async with asyncio.timeout(30):
            while True:
                seen = await fleet.job(job["id"])
                if seen["status"] == "running" and (seen["progress"] or {}).get("value", 0) > 0:
                    return seen
                await asyncio.sleep(0.05)

    running = await progressing()
    response = await fleet.http.post(f"/api/v2/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] in ("canceling", "canceled")
    final = await fleet.wait(job["id"], timeout_s=15)
    assert final["status"] == "canceled"
    prompt_id = running["attempts"][-1]["prompt_id"]
    [record] = [r for sim in fleet.sims for r in sim.records if r.prompt_id == prompt_id]
    assert record.outcome == "interrupted"  # the runner stopped the prompt, not just the record


async def phases(fleet, job_id: str) -> list[str]:
    """The phases a job's events showed, in order (from the event stream)."""
    rows = await fleet.services.redis.xrange(fleet.services.keys.events_stream)
    events = [json.loads(fields["event"]) for _, fields in rows]
    return [e["job"]["phase"] for e in events if e["job_id"] == job_id and e["job"]["phase"]]


async def test_the_collecting_phase_is_written_only_when_outputs_take_time(fleet):
    quick = await fleet.wait((await fleet.submit(image_workflow(steps=2, seed=5)))["id"])
    assert quick["status"] == "succeeded"
    assert "collecting" not in await phases(fleet, quick["id"])  # outputs in hand at once: one write less

    for sim in fleet.sims:
        sim.faults.slow_response_s = 0.5  # /history and /view answer slowly
    slow = await fleet.wait((await fleet.submit(image_workflow(steps=2, seed=6)))["id"], timeout_s=60)
    assert slow["status"] == "succeeded"
    assert (await phases(fleet, slow["id"]))[-1] == "collecting"


async def test_the_submitted_phase_is_written_only_when_the_prompt_waits_in_comfyui(fleet):
    quick = await fleet.wait((await fleet.submit(image_workflow(steps=2, seed=8)))["id"])
    assert quick["status"] == "succeeded"
    assert "submitted" not in await phases(fleet, quick["id"])  # it started at once: one write less
    attempt = quick["attempts"][-1]
    assert attempt["started_at"] <= attempt["submitted_at"] <= quick["completed_at"]

    # Two prompts at once on one backend: ComfyUI runs one, the other waits in its queue.
    await fleet.services.fleet.update("sim-1", state="disabled")
    await fleet.services.fleet.update("sim-0", capacity=2)
    first = await fleet.submit(image_workflow(steps=60, seed=9))
    await asyncio.sleep(0.1)
    waiting = await fleet.wait((await fleet.submit(image_workflow(steps=2, seed=10)))["id"], timeout_s=60)
    assert waiting["status"] == "succeeded"
    assert list(dict.fromkeys(await phases(fleet, waiting["id"]))) == ["dispatching", "submitted", "executing"]
    assert (await fleet.wait(first["id"], timeout_s=60))["status"] == "succeeded"


async def test_a_partner_key_reaches_comfyui_with_the_prompt(fleet):
    """extra_data.api_key_comfy_org goes to ComfyUI in the prompt's extra_data (API nodes read it
    there); comfyfleet keeps it only in the API process's memory."""
    job = await fleet.submit(image_workflow(2), extra_data={"api_key_comfy_org": "partner-secret"})
    plain = await fleet.submit(image_workflow(2, seed=7))
    for submitted in (job, plain):
        assert (await fleet.wait(submitted["id"]))["status"] == "succeeded"
    sent = {record.with_partner_key for sim in fleet.sims for record in sim.records}
    assert sent == {True, False}


async def test_a_refused_prompt_names_its_first_bad_node_in_the_error(fleet):
    done = await fleet.wait((await fleet.submit(image_workflow(-1, seed=3)))["id"])
    error = done["error"]
    node_errors = error["details"]["node_errors"]
    assert error["code"] == "invalid_workflow" and node_errors, error
    first = next(iter(node_errors))
    assert (error["node_id"], error["class_type"]) == (first, node_errors[first]["class_type"])
