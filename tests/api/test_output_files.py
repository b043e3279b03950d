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

