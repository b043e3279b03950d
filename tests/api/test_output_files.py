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
