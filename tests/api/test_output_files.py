"""Output files whose node ids or names are out of the ordinary, collected by a running fleet
(real simulators, Valkey, HTTP) and served back whole."""

from __future__ import annotations

import pytest

from helpers.fleet import image_workflow, running_fleet


@pytest.fixture
async def fleet(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        yield fleet


async def test_an_output_node_whose_id_is_a_non_ascii_digit_is_collected(fleet):
    workflow = image_workflow(2)
    workflow["²"] = workflow.pop("3")  # str.isdigit() is true for it, int() refuses it
    job = await fleet.wait((await fleet.submit(workflow))["id"], timeout_s=20)
    assert job["status"] == "succeeded", job
    assert [output["node_id"] for output in job["outputs"]] == ["²"]


async def test_an_output_whose_name_has_a_newline_is_served_with_a_clean_header(fleet):
    workflow = image_workflow(2)
    workflow["3"]["inputs"]["filename_prefix"] = "x\ny"
    job = await fleet.wait((await fleet.submit(workflow))["id"], timeout_s=20)
    assert job["status"] == "succeeded", job
    [output] = job["outputs"]
    assert "\n" in output["name"]
    response = await fleet.http.get(f"/api/v2/assets/{output['id']}/content")
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    disposition = response.headers["content-disposition"]
    assert disposition.isascii() and not any(ord(c) < 0x20 or c == "\x7f" for c in disposition)
    assert "filename*=UTF-8''x%0Ay_" in disposition, "the exact name survives, percent-encoded"


async def test_outputs_of_one_name_are_each_saved_by_the_cli(client, make_finished_job, tmp_path):
    """Two outputs named alike (ComfyUI's subfolders a/x.png and b/x.png): ``submit --wait
    --out`` writes each to a file of its own, not the second over the first."""
    from comfyfleet.client_cli import download_outputs

    job = await make_finished_job([(b"first", "image/png", "x_00001_.png"),
                                   (b"second", "image/png", "x_00001_.png")])
    rendered = (await client.get(f"/api/v2/jobs/{job.id}")).json()
    paths = await download_outputs(client, rendered, tmp_path)
    assert [p.read_bytes() for p in paths] == [b"first", b"second"]
    assert [p.name for p in paths] == [f"{job.id[:8]}-x_00001_.png", f"{job.id[:8]}-x_00001_-2.png"]


async def test_several_texts_of_one_node_are_named_apart(blobs):
    from comfyfleet.comfy.client import ComfyClient
    from comfyfleet.comfy.transport import open_session
    from comfyfleet.runtime.outputs import collect_outputs

    http = open_session(limit=1)
    try:  # text outputs come in the history entry itself: the backend is never asked
        outputs = await collect_outputs(ComfyClient("http://127.0.0.1:9", http=http), blobs, job_id="j",
                                        outputs={"5": {"text": ["a", "b"]}, "7": {"text": ["c"]}})
    finally:
        await http.close()
    assert [o.name for o in outputs] == ["5.txt", "5-2.txt", "7.txt"]
