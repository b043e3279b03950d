"""The dashboard's count tiles in a real headless Chromium: they count the whole deployment, so
an admin's page shows them and a user's page (whose feed carries no counts) hides them rather
than count only the changes it happened to see. Skipped where Chromium is not installed."""

from __future__ import annotations

import json

import pytest

from comfyfleet.apikeys import key_entry, new_key

from helpers.browser import CHROMIUM, browser_page
from helpers.fleet import image_workflow, running_fleet

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

ALICE, OPS = new_key(), new_key()
CONNECTION = "document.getElementById('conn-text').textContent"
TILES = "document.getElementById('tiles')"
SUCCEEDED_TILE = "document.querySelector('#tiles .tile[data-status=\"succeeded\"] .tile-value').textContent"


async def test_a_users_page_hides_the_count_tiles_and_an_admins_shows_them(valkey_url, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(key_entry(ALICE, "alice", "user") + key_entry(OPS, "ops", "admin"))
    alice = {"Authorization": f"Bearer {ALICE}"}
    async with running_fleet(valkey_url, tmp_path / "data", api_keys_file=keys) as fleet, \
            browser_page() as page:

        async def run_as_alice() -> str:
            response = await fleet.http.post("/api/v2/jobs", json={"workflow": image_workflow(2)},
                                             headers=alice)
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
            assert (await fleet.wait(job_id))["status"] == "succeeded"
            return job_id

        async def as_key(key: str) -> None:
            await page.evaluate(f"localStorage.setItem('comfyfleet.apiKey', {json.dumps(key)})")
            await page.goto(f"{fleet.base_url}/dashboard")
            await page.wait_for(f"{CONNECTION} === 'live'")

        fleet.http.headers.update(alice)  # fleet.wait reads the job as its owner
        await run_as_alice()
        await page.goto(f"{fleet.base_url}/dashboard")
        await as_key(ALICE)
        assert await page.wait_for(f"{TILES}.hidden")
        second = await run_as_alice()  # a change seen live does not bring the tiles back
        await page.wait_for(f"document.querySelector('tr[data-job-id=\"{second}\"]') !== null")
        assert await page.evaluate(f"{TILES}.hidden")

        await as_key(OPS)
        assert await page.wait_for(f"!{TILES}.hidden && {SUCCEEDED_TILE} === '2'")
        assert page.problems == []
