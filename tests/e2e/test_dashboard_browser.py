"""The dashboard in a real headless Chromium against a real fleet: it goes live on the feed,
shows the backends and a running job, asks for a key where the server has keys, and its console
stays free of script errors and CSP refusals. Skipped where Chromium is not installed
(``apt-get install chromium``)."""

from __future__ import annotations

import json

import pytest

from comfyfleet.apikeys import key_entry, new_key

from helpers.browser import CHROMIUM, browser_page
from helpers.fleet import image_workflow, running_fleet

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

CONNECTION = "document.getElementById('conn-text').textContent"
TEXT = "document.body.innerText"


async def test_the_page_goes_live_and_shows_the_fleet_and_a_running_job(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path) as fleet, browser_page() as page:
        job = await fleet.submit(image_workflow(steps=3000))  # runs for the whole look
        await page.goto(f"{fleet.base_url}/dashboard")
        assert await page.wait_for(f"{CONNECTION} === 'live' && {CONNECTION}")
        await page.wait_for(f"{TEXT}.includes('{job['id'][:8]}') && {TEXT}.includes('running')")
        text = await page.evaluate(TEXT)
        assert "sim-0" in text and "sim-1" in text
        await page.evaluate(f"document.querySelector('tr[data-job-id=\"{job['id']}\"]').click()")
        drawer = "document.getElementById('drawer')"
        await page.wait_for(f"!{drawer}.hidden && {drawer}.innerText.includes('{job['id']}')")
        await fleet.http.post(f"/api/v2/jobs/{job['id']}/cancel")
        await page.wait_for(f"{TEXT}.includes('canceled')")  # moved to the finished table, live
        await page.wait_for(f"{drawer}.innerText.includes('canceled')")  # the open job's details follow
        assert "ATTEMPTS" in (await page.evaluate(f"{drawer}.innerText")).upper()
        assert page.problems == []


async def test_the_page_asks_for_a_key_and_goes_live_with_one(valkey_url, tmp_path):
    key = new_key()
    keys = tmp_path / "keys.toml"
    keys.write_text(key_entry(key, "ops", "admin"))
    async with running_fleet(valkey_url, tmp_path / "data", api_keys_file=keys) as fleet, \
            browser_page() as page:
        await page.goto(f"{fleet.base_url}/dashboard")
        assert "unauthorized" in await page.wait_for(f"{CONNECTION}.includes('unauthorized') && {CONNECTION}")
        await page.evaluate(f"localStorage.setItem('comfyfleet.apiKey', {json.dumps(key)})")
        await page.goto(f"{fleet.base_url}/dashboard")
        await page.wait_for(f"{CONNECTION} === 'live'")
        await page.wait_for(f"{TEXT}.includes('sim-0') && {TEXT}.includes('ops')")
        problems = [p for p in page.problems if "401" not in p]  # the refused socket is expected
        assert problems == []
