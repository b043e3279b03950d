"""Live progress end to end: simulator -> worker -> Redis -> API -> SSE, with socket trouble."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from comfyfleet.sim import SimConfig
from helpers.fleet import running_fleet

from progress_helpers import workflow


@pytest.fixture
async def fleet(valkey_url, tmp_path):
    """A short watchdog, for tests that make the socket go silent."""
    async with running_fleet(valkey_url, tmp_path, sims=1,
                             sim_config=SimConfig(step_s=0.05, name="sim-0"),
                             tracker_watchdog_s=0.3, tracker_poll_min_s=0.1,
                             tracker_poll_max_s=0.5) as fleet:
        yield fleet


@pytest.fixture
async def default_fleet(valkey_url, tmp_path):
    """The default watchdog (30 s): a slow moment of a loaded machine is not socket silence."""
    async with running_fleet(valkey_url, tmp_path, sims=1,
                             sim_config=SimConfig(step_s=0.1, name="sim-0")) as fleet:
        yield fleet


def progress_values(events: list[tuple[str, dict]]) -> list[float]:
    return [data["value"] for kind, data in events if kind == "progress"]


async def assert_output_is_the_simulators_file(fleet, job: dict) -> None:
    [output] = job["outputs"]
    body = (await fleet.http.get(f"/api/v2/assets/{output['id']}/content")).content
    produced = [p for sim in fleet.sims for p in Path(sim.output_dir).rglob(output["name"])]
    assert produced and body == produced[0].read_bytes()


async def tracking_counters(fleet) -> dict[str, int]:
    """sim-0's shared tracker totals once the worker has flushed them (soon after a job)."""
    async with asyncio.timeout(20):
        while True:
            response = await fleet.http.get("/api/v2/stats")
            assert response.status_code == 200
            counters = response.json()["tracking"].get("sim-0", {})
            if counters.get("socket_connects"):
                return counters
            await asyncio.sleep(0.05)


async def test_healthy_socket_one_prompt_no_polling_and_live_sse(default_fleet):
    """20 steps, healthy socket: one POST /prompt, no polling, >= 15 distinct SSE values."""
    fleet = default_fleet
    job = await fleet.submit(workflow(20))
    events = await fleet.events(job["id"])
    assert [d["status"] for k, d in events if k == "status"][-1] == "succeeded"
    values = progress_values(events)
    assert values == sorted(values) and values[-1] == 1.0 and values.count(1.0) == 1
    assert len(set(values)) >= 15
    requests = fleet.sims[0].requests
    assert requests["POST /prompt"] == 1
    # every GET /queue came from a backend health check (which also reads /system_stats)
    assert requests["GET /queue"] == requests["GET /system_stats"]
    assert sum(n for key, n in requests.items() if key.startswith("GET /history")) <= 1
    counters = await tracking_counters(fleet)
    assert counters.get("poll_requests", 0) == 0 and counters.get("fallback_episodes", 0) == 0
    assert counters["socket_connects"] == 1 and counters["events_received"] > 20


@pytest.mark.parametrize("script, extra", [
    ({"drop_socket_at_step": 6}, {"socket_failures": 1}),
    ({"deafen_socket_at_step": 6}, {"socket_renewals": 1}),
])
async def test_socket_trouble_still_succeeds_and_counters_show_fallback_and_return(
        fleet, script, extra):
    """Socket dropped or silent mid-run: correct outputs; counters show fallback and return."""
    job = await fleet.submit(workflow(20, **script))
    events = await fleet.events(job["id"])
    final = await fleet.job(job["id"])
    assert final["status"] == "succeeded" and final["attempt"] == 1
    await assert_output_is_the_simulators_file(fleet, final)
    values = progress_values(events)
    assert values == sorted(values) and values[-1] == 1.0
    counters = await tracking_counters(fleet)
    assert counters["fallback_episodes"] >= 1 and counters["socket_returns"] >= 1
    assert counters["socket_connects"] >= 2 and counters["poll_requests"] >= 1
    for name, at_least in extra.items():
        assert counters[name] >= at_least
    assert fleet.sims[0].requests["POST /prompt"] == 1


async def test_fully_cached_rerun_reports_one_and_succeeds(fleet):
    """The same workflow again: every node cached, no ``executing``; 1.0 and succeeded."""
    graph = workflow(6, seed=11)
    first = await fleet.wait((await fleet.submit(graph))["id"])
    second = await fleet.submit(graph)
    events = await fleet.events(second["id"])
    final = await fleet.job(second["id"])
    assert first["status"] == final["status"] == "succeeded"
    assert final["progress"]["value"] == 1.0
    assert final["progress"]["nodes_done"] == final["progress"]["nodes_total"] == 3
    assert progress_values(events)[-1] == 1.0
    await assert_output_is_the_simulators_file(fleet, final)
    assert len(fleet.sims[0].records) == 2


async def test_preview_kept_with_ttl_streamed_and_served(fleet):
    """Previews: SSE ``preview`` events, the latest in Redis with a TTL, GET .../preview."""
    job = await fleet.submit(workflow(10, send_preview=True))
    events = await fleet.events(job["id"])
    previews = [data for kind, data in events if kind == "preview"]
    assert previews and all(p["content_type"] == "image/jpeg" and p["node_id"] == "2"
                            for p in previews)
    assert base64.b64decode(previews[-1]["data_base64"])[:2] == b"\xff\xd8"
    response = await fleet.http.get(f"/api/v2/jobs/{job['id']}/preview")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == base64.b64decode(previews[-1]["data_base64"])
    services = fleet.services
    ttl = await services.redis.ttl(services.keys.preview(job["id"]))
    assert 0 < ttl <= 3600

    plain = await fleet.wait((await fleet.submit(workflow(2)))["id"])
    missing = await fleet.http.get(f"/api/v2/jobs/{plain['id']}/preview")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    unknown = await fleet.http.get("/api/v2/jobs/00000000-0000-4000-8000-000000000000/preview")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


async def test_jobs_ending_together_share_one_flush_of_the_counters(valkey_url, tmp_path):
    """Tracker counters are written at most once per ``stats_flush_s``, not once per job."""
    async with running_fleet(valkey_url, tmp_path, sims=1, sim_config=SimConfig(step_s=0.01, name="sim-0"),
                             stats_flush_s=5.0) as fleet:
        jobs = [await fleet.submit(workflow(2, seed=seed)) for seed in range(3)]
        for job in jobs:
            assert (await fleet.wait(job["id"]))["status"] == "succeeded"
        unflushed = (await fleet.http.get("/api/v2/stats")).json()["tracking"].get("sim-0", {})
        counters = await tracking_counters(fleet)
    assert unflushed == {}  # the first job ended well under 5 s ago: nothing written yet
    assert counters["socket_connects"] == 3  # then one write carried all three jobs


async def test_a_stopping_worker_flushes_what_it_counted(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1, sim_config=SimConfig(step_s=0.01, name="sim-0"),
                             stats_flush_s=60.0) as fleet:
        job = await fleet.submit(workflow(2))
        assert (await fleet.wait(job["id"]))["status"] == "succeeded"
        await fleet.worker.stop()
        counters = (await fleet.http.get("/api/v2/stats")).json()["tracking"].get("sim-0", {})
    assert counters.get("socket_connects") == 1


async def test_a_queued_jobs_stream_counts_down_its_queue_position(default_fleet):
    """Three jobs of about a second ahead on the one backend: the stream of the fourth tells each
    step of its position as the jobs ahead leave the queue, not only at the 15 s keepalive."""
    ahead = [await default_fleet.submit(workflow(10, seed=n)) for n in range(3)]
    last = await default_fleet.submit(workflow(10, seed=3))
    events = await default_fleet.events(last["id"], timeout_s=60)
    statuses = [(data["status"], data.get("queue_position")) for kind, data in events if kind == "status"]
    positions = [p for s, p in statuses if s == "queued"]
    assert positions[-1] == 0 and len(positions) >= 2, statuses
    assert positions == sorted(positions, reverse=True), statuses
    assert statuses[-1] == ("succeeded", None)
    for job in ahead:
        assert (await default_fleet.wait(job["id"]))["status"] == "succeeded"
