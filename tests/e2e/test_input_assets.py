"""Input assets end to end: comfy-sdk uploads a file, a job's LoadImage refers to it, the worker
puts it on the backend that runs the job (once per content) and ComfyUI reads it from there."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from blake3 import blake3
from comfy_sdk import Comfy

from comfyfleet.blobs import LocalBlobStore
from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.transport import open_session
from comfyfleet.errors import PromptRejected
from comfyfleet.runtime.staging import InputMissing, stage_inputs, staged_name, submit_staged
from comfyfleet.sim import SimConfig, Simulator

from helpers.fleet import running_fleet

FACE = b"\x89PNG\r\n\x1a\n" + b"a face, pixel by pixel " * 500


def edit_workflow(image) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "steps": 2, "seed": 1}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "edit"}},
    }


@pytest.fixture
async def fleet(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        yield fleet


async def test_an_sdk_upload_reaches_the_backend_that_runs_the_job(fleet, monkeypatch):
    monkeypatch.setenv("COMFY_BASE_URL", fleet.base_url)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)

    def run_twice() -> list[str]:
        with Comfy() as client:
            statuses = []
            for _ in range(2):
                face = client.assets.from_bytes(FACE, filename="face.png")
                workflow = client.workflows.from_json(edit_workflow("placeholder.png"))
                workflow.set_input("1", "image", face)
                statuses.append(client.run(workflow).status)
            return statuses

    assert await asyncio.to_thread(run_twice) == ["succeeded", "succeeded"]
    sim = fleet.sims[0]
    staged = Path(sim.dirs["input"]) / staged_name("sha256:" + hashlib.sha256(FACE).hexdigest(), "face.png")
    assert staged.read_bytes() == FACE, "the backend holds the uploaded bytes"
    assert sim.requests["POST /upload/image"] == 1, "the second job found the file already there"


async def test_a_job_whose_input_is_not_on_the_backend_is_rejected_there(fleet):
    """Without staging ComfyUI refuses the prompt: the simulator checks LoadImage's file."""
    job = await fleet.submit(edit_workflow("never-uploaded.png"))
    done = await fleet.wait(job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_workflow"
    errors = done["error"]["details"]["node_errors"]["1"]["errors"]
    assert errors[0]["details"] == "image - Invalid image file: never-uploaded.png"
    assert len(done["attempts"]) == 1, "a rejected prompt is not retried"


async def test_staging_uploads_once_and_a_missing_blob_is_input_missing(tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    digest = await blobs.put(FACE, content_type="image/png")
    ref = {"__type": "core/ASSET", "info": {"id": "x", "comfyfleet_blob": digest, "comfyfleet_name": "in/face.PNG"}}
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": ref}}, "2": {"inputs": {"list": [ref, 3]}}}
    async with Simulator(SimConfig(name="stage"), port=0) as sim:
        http = open_session(limit=4)
        try:
            client = ComfyClient(sim.url, http=http)
            staged = await stage_inputs(client, blobs, workflow)
            name = staged["1"]["inputs"]["image"]
            assert name == f"cf-{digest[7:39]}.png" and staged["2"]["inputs"]["list"] == [name, 3]
            assert workflow["1"]["inputs"]["image"] is ref, "the stored workflow is left as it was"
            assert (Path(sim.dirs["input"]) / name).read_bytes() == FACE
            await stage_inputs(client, blobs, workflow)
            assert sim.requests["POST /upload/image"] == 1
            await blobs.delete(digest)
            (Path(sim.dirs["input"]) / name).unlink()
            with pytest.raises(InputMissing, match="gone"):
                await stage_inputs(client, blobs, workflow)
            unresolved = {"1": {"inputs": {"image": {"__type": "core/ASSET", "info": {"id": "y"}}}}}
            with pytest.raises(InputMissing, match="never resolved"):
                await stage_inputs(client, blobs, unresolved)
        finally:
            await http.close()


async def test_a_staged_file_removed_before_the_prompt_is_uploaded_again(tmp_path):
    """The file is there when staging looks, gone when ComfyUI validates the prompt (someone
    cleaned the input directory in between): the inputs are uploaded again and the prompt sent
    once more. A refusal of a file that is not ours stands."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    digest = await blobs.put(FACE, content_type="image/png")
    ref = {"__type": "core/ASSET", "info": {"id": "x", "comfyfleet_blob": digest, "comfyfleet_name": "face.png"}}
    async with Simulator(SimConfig(name="race"), port=0) as sim:
        http = open_session(limit=4)
        try:
            client = ComfyClient(sim.url, http=http)
            staged = Path(sim.dirs["input"]) / staged_name(digest, "face.png")
            await stage_inputs(client, blobs, edit_workflow(ref))  # the file is on the backend
            looked = client.input_size

            async def there_then_cleaned(name: str) -> int | None:
                size = await looked(name)
                staged.unlink(missing_ok=True)  # removed right after the look
                return size
            client.input_size = there_then_cleaned  # type: ignore[method-assign]

            prompt = await stage_inputs(client, blobs, edit_workflow(ref))
            await submit_staged(client, blobs, edit_workflow(ref), prompt, prompt_id="p-1",
                                client_id="c-1", extra_data={})
            assert sim.requests["POST /prompt"] == 2, "refused once, then accepted"
            assert sim.requests["POST /upload/image"] == 2, "uploaded when staged, and again"
            assert staged.read_bytes() == FACE
            assert (await client.queue()).find("p-1") or await client.history("p-1") is not None

            with pytest.raises(PromptRejected, match="rejected"):
                await submit_staged(client, blobs, edit_workflow("not-ours.png"), edit_workflow("not-ours.png"),
                                    prompt_id="p-2", client_id="c-1", extra_data={})
            assert sim.requests["POST /prompt"] == 3, "a file we did not stage: refused once, no retry"
        finally:
            await http.close()


async def test_the_cli_uploads_an_input_file(fleet, tmp_path, monkeypatch):
    import json

    from comfyfleet.client_cli import submit_workflow

    monkeypatch.delenv("COMFYFLEET_API_KEY", raising=False)
    face = tmp_path / "face.png"
    face.write_bytes(FACE)
    graph = tmp_path / "edit.json"
    graph.write_text(json.dumps(edit_workflow("placeholder.png")))
    await submit_workflow(graph, server=fleet.base_url, wait=True, metadata=[], out=tmp_path / "out",
                          inputs=[f"1.image={face}"])
    assert list((tmp_path / "out").iterdir()), "the job succeeded and its output was downloaded"
    staged = Path(fleet.sims[0].dirs["input"]) / staged_name("sha256:" + hashlib.sha256(FACE).hexdigest(), "face.png")
    assert staged.read_bytes() == FACE


async def test_a_large_output_streams_into_the_blob_store_intact(fleet):
    """A 12 MB output (past what a worker keeps in memory) arrives byte for byte."""
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "big",
                                                            "sim_size_px": 2000}}}
    job = await fleet.wait((await fleet.submit(workflow))["id"])
    assert job["status"] == "succeeded", job["error"]
    output = job["outputs"][0]
    produced = Path(fleet.sims[0].dirs["output"]) / output["name"]
    assert output["size_bytes"] == produced.stat().st_size > 10_000_000
    downloaded = await fleet.http.get(output["url"])
    assert downloaded.content == produced.read_bytes()


async def test_an_outputs_hash_is_its_blake3_and_its_owner_may_mint_from_it(fleet):
    """Output.hash is the contract's blake3 of the bytes served, and the job's owner can reuse
    them by hash (HEAD by-hash, from-hash) without sending them again."""
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 2}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "h"}}}
    job = await fleet.wait((await fleet.submit(workflow))["id"])
    assert job["status"] == "succeeded", job["error"]
    output = job["outputs"][0]
    content = (await fleet.http.get(output["url"])).content
    assert output["hash"] == "blake3:" + blake3(content).hexdigest()
    assert (await fleet.http.get(f"/api/v2/assets/{output['id']}")).json()["hash"] == output["hash"]
    assert (await fleet.http.head(f"/api/v2/assets/by-hash/{output['hash']}")).status_code == 200
    minted = await fleet.http.post("/api/v2/assets/from-hash", json={"hash": output["hash"], "file_path": "again.png"})
    assert minted.status_code == 201, minted.text
    assert (await fleet.http.get(f"/api/v2/assets/{minted.json()['id']}/content")).content == content
