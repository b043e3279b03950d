"""A job whose run keeps raising an error nobody foresaw (here: collecting its outputs, as a
bug there once did) fails with internal_error after a few tries, with its slot freed, instead
of being requeued every two seconds until its record expires; other jobs are untouched."""

from __future__ import annotations

import comfyfleet.runtime.outputs as outputs_module
from helpers.fleet import image_workflow, running_fleet


async def test_a_job_that_keeps_raising_the_unforeseen_fails_and_frees_its_slot(valkey_url, tmp_path, monkeypatch):
    collect = outputs_module.collect_outputs

    async def collect_or_break(client, blobs, *, job_id, outputs, **rest):  # type: ignore[no-untyped-def]
        if outputs.get("3", {}).get("images", [{}])[0].get("filename", "").startswith("broken"):
            raise ValueError("an output unlike any expected")
        return await collect(client, blobs, job_id=job_id, outputs=outputs, **rest)

    monkeypatch.setattr(outputs_module, "collect_outputs", collect_or_break)
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        broken = image_workflow(2, seed=23)
        broken["3"]["inputs"]["filename_prefix"] = "broken"
        job = await fleet.wait((await fleet.submit(broken))["id"], timeout_s=60)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "internal_error", job["error"]
        assert "ValueError: an output unlike any expected (5 times in a row" in job["error"]["message"]
        assert len(fleet.sims[0].records) == 1  # collected again each time, never run again
        assert await fleet.services.dispatcher.fleet.leases.holders("sim-0") == []
        fine = await fleet.wait((await fleet.submit(image_workflow(2, seed=29)))["id"])
        assert fine["status"] == "succeeded"
