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


async def test_comfy_sdk_with_an_api_key(valkey_url, tmp_path, monkeypatch):
    """COMFY_API_KEY is all an integrator sets: the SDK's bearer key is ours; no key is a 401."""
    from comfy_sdk.exceptions import Unauthorized

    from comfyfleet.apikeys import key_entry, new_key

    key = new_key()
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(key_entry(key, "studio-a", "user"))
    async with running_fleet(valkey_url, tmp_path / "data", api_keys_file=keys_file) as fleet:
        monkeypatch.setenv("COMFY_BASE_URL", fleet.base_url)
        monkeypatch.setenv("COMFY_API_KEY", key)
        status, kinds, data, ids = await asyncio.to_thread(drive_sdk, image_workflow(steps=2, seed=5))
        assert status == "succeeded" and kinds and data.startswith(b"\x89PNG")
        job = await fleet.services.store.get(ids[-1])
        assert job.owner == "studio-a"

        def without_key() -> None:
            with Comfy(api_key=None) as client:
                list(client.list_jobs(limit=1))

        monkeypatch.delenv("COMFY_API_KEY")
        with pytest.raises(Unauthorized):
            await asyncio.to_thread(without_key)
