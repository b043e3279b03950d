"""The official comfy-sdk 0.5.0 works against comfyfleet unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from comfy_sdk import Comfy
from comfy_sdk.exceptions import IdempotencyKeyReuse

from helpers.fleet import image_workflow, running_fleet


@pytest.fixture
async def fleet(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path) as fleet:
        yield fleet


def drive_sdk(graph: dict) -> tuple[str, list[str], bytes, list[str]]:
    """What an integrator writes: run() a workflow, stream events(), download the output."""
    with Comfy() as client:
        workflow = client.workflows.from_json(graph)
        done = client.run(workflow)
        data = done.get_outputs("3")[0].to_bytes()
        streamed = client.submit(client.workflows.from_json(graph))
        kinds = [type(event).__name__ for event in streamed.events()]
        listed = [summary.id for summary in client.list_jobs(limit=10)]
        return done.status, kinds, data, listed + [streamed.id, done.id]


async def test_comfy_sdk_runs_streams_and_downloads(fleet, monkeypatch):
    monkeypatch.setenv("COMFY_BASE_URL", fleet.base_url)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    status, kinds, data, ids = await asyncio.to_thread(drive_sdk, image_workflow(steps=4, seed=3))
    assert status == "succeeded"
    assert kinds, "events() yielded nothing"
    assert data.startswith(b"\x89PNG")
    done_id = ids[-1]
    job = await fleet.job(done_id)
    produced = [p for sim in fleet.sims for p in Path(sim.output_dir).rglob(job["outputs"][0]["name"])]
    assert data == produced[0].read_bytes()
    assert done_id in ids[:-2] and ids[-2] in ids[:-2], "list_jobs shows both jobs"


async def test_comfy_sdk_sees_a_reused_idempotency_key(fleet, monkeypatch):
    monkeypatch.setenv("COMFY_BASE_URL", fleet.base_url)

    def submit_twice() -> None:
        with Comfy() as client:
            workflow = client.workflows.from_json(image_workflow(steps=1))
            client.submit(workflow, idempotency_key="same-key-1")
            client.submit(workflow, idempotency_key="same-key-1")

    with pytest.raises(IdempotencyKeyReuse):
        await asyncio.to_thread(submit_twice)
