"""API keys: 401 without one, a user sees only their own jobs, the fleet routes need an admin."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from comfyfleet.api.schemas import new_job_id
from comfyfleet.apikeys import RECHECK_S, KeyRing, key_entry, new_key
from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Job, JobStatus

from api_helpers import WORKFLOW, attempt, error_code

ALICE, BOB, OPS = new_key(), new_key(), new_key()


@pytest.fixture
def keyed(api, tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text(key_entry(ALICE, "alice", "user") + key_entry(BOB, "bob", "user")
                    + key_entry(OPS, "ops", "admin"))
    api.services.keys = KeyRing(path).lookup
    return api


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(client: httpx.AsyncClient, key: str, **metadata: str) -> dict:
    response = await client.post("/api/v2/jobs", json={"workflow": WORKFLOW, "metadata": metadata},
                                 headers=as_(key))
    assert response.status_code == 201, response.text
    return response.json()


async def test_no_key_or_a_wrong_key_is_a_401_and_health_needs_none(keyed, client):
    for headers in ({}, as_("cfk_not-a-key"), {"Authorization": f"Basic {ALICE}"},
                    {"Authorization": "Bearer"}):
        for path in ("/api/v2/jobs", "/api/v2/backends", "/metrics",
                     "/api/v2/assets/by-hash/sha256:" + "0" * 64):
            method = "HEAD" if "by-hash" in path else "GET"
            response = await client.request(method, path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"].startswith("Bearer")
            if method == "GET":
                assert error_code(response) == "unauthorized"
        response = await client.post("/api/v2/jobs", json={"workflow": WORKFLOW}, headers=headers)
        assert response.status_code == 401
    for path in ("/health", "/api/v2/health"):
        anonymous = await client.get(path)
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "healthy", "redis": "ok"}, \
            "a probe learns the status, not the backends"
        assert (await client.get(path, headers=as_(ALICE))).json() == anonymous.json()
        assert "backends" in (await client.get(path, headers=as_(OPS))).json()


async def test_a_job_belongs_to_the_key_that_submitted_it(keyed, client, enqueued):
    job = await submit(client, ALICE, user_id="bob")  # a claimed user_id does not make it bob's
    assert enqueued[-1].owner == "alice"
    job_id = job["id"]
    assert (await client.get(f"/api/v2/jobs/{job_id}", headers=as_(ALICE))).status_code == 200
    for method, path in (("GET", f"/api/v2/jobs/{job_id}"), ("GET", f"/api/v2/jobs/{job_id}/workflow"),
                         ("GET", f"/api/v2/jobs/{job_id}/events"), ("GET", f"/api/v2/jobs/{job_id}/preview"),
                         ("POST", f"/api/v2/jobs/{job_id}/cancel")):
        response = await client.request(method, path, headers=as_(BOB))
        assert response.status_code == 404 and error_code(response) == "not_found", path
    assert (await client.get(f"/api/v2/jobs/{job_id}", headers=as_(ALICE))).json()["status"] == "queued", \
        "bob's cancel did nothing"
    admin_view = await client.get(f"/api/v2/jobs/{job_id}", headers=as_(OPS))
    assert admin_view.status_code == 200
    canceled = await client.post(f"/api/v2/jobs/{job_id}/cancel", headers=as_(ALICE))
    assert canceled.json()["status"] == "canceled"


async def test_listing_shows_a_user_only_their_jobs(keyed, client):
    alices = {(await submit(client, ALICE))["id"] for _ in range(2)}
    bobs = {(await submit(client, BOB))["id"]}

    async def listed(key: str, query: str = "") -> set[str]:
        response = await client.get(f"/api/v2/jobs?limit=100{query}", headers=as_(key))
        assert response.status_code == 200, response.text
        return {job["id"] for job in response.json()["jobs"]}

    assert await listed(ALICE) == alices
    assert await listed(BOB) == bobs
    assert await listed(ALICE, "&owner=alice") == alices
    assert await listed(OPS) >= alices | bobs
    assert await listed(OPS, "&owner=bob") == bobs
    response = await client.get("/api/v2/jobs?owner=bob", headers=as_(ALICE))
    assert response.status_code == 403 and error_code(response) == "forbidden"


async def test_outputs_are_served_only_to_their_owner(keyed, client, make_finished_job):
    job = await make_finished_job([(b"\x89PNG-data", "image/png", "a.png")], owner="alice")
    asset = job.outputs[0].id
    for path in (f"/api/v2/assets/{asset}", f"/api/v2/assets/{asset}/content"):
        assert (await client.get(path, headers=as_(ALICE))).status_code == 200
        response = await client.get(path, headers=as_(BOB))
        assert response.status_code == 404 and error_code(response) == "not_found"
    # nor can bob feed alice's output into a workflow of his
    workflow = {**WORKFLOW, "7": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": asset}}}}}
    response = await client.post("/api/v2/jobs", json={"workflow": workflow}, headers=as_(BOB))
    assert response.status_code == 422 and error_code(response) == "missing_asset"
    assert (await client.post("/api/v2/jobs", json={"workflow": workflow}, headers=as_(ALICE))).status_code == 201


async def test_the_fleet_stats_and_metrics_need_an_admin_key(keyed, client):
    for path in ("/api/v2/backends", "/api/v2/backends/sim-1", "/api/v2/stats", "/metrics"):
        response = await client.get(path, headers=as_(ALICE))
        assert response.status_code == 403 and error_code(response) == "forbidden", path
        assert (await client.get(path, headers=as_(OPS))).status_code != 403, path
    response = await client.patch("/api/v2/backends/sim-1", json={"state": "disabled"}, headers=as_(BOB))
    assert response.status_code == 403
    response = await client.delete("/api/v2/backends/sim-1", headers=as_(BOB))
    assert response.status_code == 403


async def test_an_open_server_takes_the_owner_from_metadata(api, client, enqueued):
    response = await client.post("/api/v2/jobs", json={"workflow": WORKFLOW, "metadata": {"user_id": "carol"}})
    assert response.status_code == 201
    assert enqueued[-1].owner == "carol"
    assert (await client.get("/api/v2/stats")).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"max_streams": 1}])
async def test_the_limit_of_open_event_streams_is_each_callers_own(keyed, live_server):
    async with httpx.AsyncClient(base_url=live_server, timeout=10) as http:
        alices, bobs = await submit(http, ALICE), await submit(http, BOB)
        async with http.stream("GET", f"/api/v2/jobs/{alices['id']}/events", headers=as_(ALICE)) as first:
            assert first.status_code == 200
            lines = first.aiter_lines()  # kept: a dropped iterator closes the stream
            await anext(lines)  # the stream is open and counted
            again = await http.get(f"/api/v2/jobs/{alices['id']}/events", headers=as_(ALICE))
            assert again.status_code == 429 and error_code(again) == "too_many_streams"
            async with http.stream("GET", f"/api/v2/jobs/{bobs['id']}/events", headers=as_(BOB)) as other:
                assert other.status_code == 200, "another caller is not held to alice's streams"


class SteppingClock:
    """Each reading a second later: the key ring looks at its file on every lookup."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += RECHECK_S
        return self.now


async def test_a_revoked_key_loses_the_live_feed_it_opened(api, live_server, tmp_path, store):
    """A key revoked while its live feed is open stops receiving jobs: the feed closes with 4401."""
    path = tmp_path / "keys.toml"
    path.write_text(key_entry(ALICE, "alice", "user") + key_entry(OPS, "ops", "admin"))
    api.services.keys = KeyRing(path, clock=SteppingClock()).lookup
    url = live_server.replace("http://", "ws://") + "/api/v2/live"
    async with ws_connect(url, additional_headers=as_(ALICE)) as feed:
        assert json.loads(await feed.recv())["type"] == "snapshot"
        path.write_text(key_entry(OPS, "ops", "admin"))  # alice's key revoked
        await store.create(Job(id=new_job_id(), status=JobStatus.QUEUED, created_at=1.0,
                               owner="alice"), WORKFLOW)
        async with asyncio.timeout(10):
            message = json.loads(await feed.recv())
            assert message["type"] == "error" and message["code"] == "unauthorized", message
            with pytest.raises(ConnectionClosed):
                await feed.recv()
        assert feed.close_code == 4401


async def test_a_revoked_key_loses_the_event_stream_it_opened(api, live_server, tmp_path, store):
    """A key revoked while its job's event stream is open gets no further frame: the stream ends."""
    path = tmp_path / "keys.toml"
    path.write_text(key_entry(ALICE, "alice", "user"))
    api.services.keys = KeyRing(path, clock=SteppingClock()).lookup
    async with httpx.AsyncClient(base_url=live_server, timeout=10) as http:
        job = await submit(http, ALICE)
        async with http.stream("GET", f"/api/v2/jobs/{job['id']}/events", headers=as_(ALICE)) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("event: status")
            path.write_text("")  # every key revoked
            await store.apply(job["id"], t.Dispatch(attempt()), 2.0)
            async for line in lines:  # ends when the stream does
                assert '"status":"running"' not in line, "a frame went out after the key was revoked"


@pytest.mark.parametrize("settings_overrides", [{"max_streams": 2}])
async def test_sockets_that_never_authenticate_are_held_to_one_callers_limit(keyed, live_server):
    """Live feeds that never send their key count, while they wait, as one caller's streams: a
    flood of them is refused past ``max_streams`` and cannot hold the process's connections."""
    url = live_server.replace("http://", "ws://") + "/api/v2/live"
    async with ws_connect(url) as first, ws_connect(url) as second:
        async with asyncio.timeout(10):
            while keyed.app.state.api.open_streams.total() < 2:
                await asyncio.sleep(0.01)
        async with ws_connect(url) as third:
            async with asyncio.timeout(10):
                refused = json.loads(await third.recv())
            assert refused["type"] == "error" and refused["code"] == "too_many_streams"
        async with ws_connect(url, additional_headers=as_(OPS)) as admin:  # a caller with a key
            async with asyncio.timeout(10):
                assert json.loads(await admin.recv())["type"] == "snapshot"
        await first.send(json.dumps({"type": "auth", "token": ALICE}))  # one says who it is
        async with asyncio.timeout(10):
            assert json.loads(await first.recv())["type"] == "snapshot"
        async with ws_connect(url) as fourth:  # its place among the waiting is free again
            await fourth.send(json.dumps({"type": "auth", "token": BOB}))
            async with asyncio.timeout(10):
                assert json.loads(await fourth.recv())["type"] == "snapshot"
        assert second  # still open, still waiting
