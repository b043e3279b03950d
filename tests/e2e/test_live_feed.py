"""The dashboards' WebSocket (``/api/v2/live``): a snapshot, then every change of the jobs the
caller may see and, for an admin, of the fleet; a bad key is refused with 4401."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from comfyfleet.apikeys import key_entry, new_key

from helpers.fleet import image_workflow, running_fleet

ALICE, BOB, OPS = new_key(), new_key(), new_key()


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/api/v2/live"


async def receive(socket: Any, timeout_s: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        return json.loads(await socket.recv())


async def until(socket: Any, wanted, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Messages up to and including the first for which ``wanted(message)`` holds."""
    seen = []
    async with asyncio.timeout(timeout_s):
        while True:
            seen.append(await receive(socket, timeout_s))
            if wanted(seen[-1]):
                return seen


@pytest.fixture
async def keyed_fleet(valkey_url, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(key_entry(ALICE, "alice", "user") + key_entry(BOB, "bob", "user")
                    + key_entry(OPS, "ops", "admin"))
    async with running_fleet(valkey_url, tmp_path / "data", api_keys_file=keys) as fleet:
        yield fleet


async def submit_as(fleet, key: str, steps: int = 20) -> str:
    response = await fleet.http.post("/api/v2/jobs", json={"workflow": image_workflow(steps=steps)},
                                     headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_an_admin_sees_the_fleet_and_a_job_from_queued_to_succeeded(keyed_fleet):
    fleet = keyed_fleet
    async with connect(ws_url(fleet.base_url)) as socket:
        await socket.send(json.dumps({"type": "auth", "token": OPS}))
        snapshot = await receive(socket)
        assert snapshot["type"] == "snapshot" and snapshot["role"] == "admin" and snapshot["owner"] == "ops"
        assert sorted(b["name"] for b in snapshot["fleet"]["backends"]) == ["sim-0", "sim-1"]
        assert set(snapshot["counts"]) >= {"queued", "running", "succeeded"}

        job_id = await submit_as(fleet, ALICE)
        seen = await until(socket, lambda m: m["type"] == "job" and m["job"]["id"] == job_id
                           and m["job"]["status"] == "succeeded")
        statuses = [m["job"]["status"] for m in seen if m["type"] == "job" and m["job"]["id"] == job_id]
        assert statuses[0] in ("queued", "running") and statuses[-1] == "succeeded"
        values = [m["progress"]["value"] for m in seen if m["type"] == "progress" and m["job_id"] == job_id]
        assert values and values == sorted(values) and 0 < values[-1] <= 1, values
        assert seen[-1]["job"]["outputs"], "the finished job carries its outputs"


async def test_the_fleet_message_follows_a_drain(keyed_fleet):
    fleet = keyed_fleet
    async with connect(ws_url(fleet.base_url), additional_headers={"Authorization": f"Bearer {OPS}"}) as socket:
        assert (await receive(socket))["type"] == "snapshot"
        response = await fleet.http.patch("/api/v2/backends/sim-1", json={"state": "draining"},
                                          headers={"Authorization": f"Bearer {OPS}"})
        assert response.status_code == 200
        seen = await until(socket, lambda m: m["type"] == "fleet" and any(
            b["name"] == "sim-1" and b["admin_state"] == "draining" for b in m["backends"]))
        assert "counts" in seen[-1] and "workflow_breakers" in seen[-1]


async def test_a_user_sees_only_their_jobs_and_no_fleet(keyed_fleet):
    fleet = keyed_fleet
    earlier = await submit_as(fleet, BOB, steps=1)
    async with connect(ws_url(fleet.base_url)) as socket:
        await socket.send(json.dumps({"type": "auth", "token": ALICE}))
        snapshot = await receive(socket)
        assert snapshot["role"] == "user" and snapshot["fleet"] is None and snapshot["counts"] is None
        assert earlier not in {job["id"] for job in snapshot["jobs"]}
        bobs = await submit_as(fleet, BOB, steps=5)
        alices = await submit_as(fleet, ALICE, steps=5)
        seen = await until(socket, lambda m: m["type"] == "job" and m["job"]["id"] == alices
                           and m["job"]["status"] == "succeeded")
        ids = {m["job"]["id"] for m in seen if m["type"] == "job"} | \
              {m["job_id"] for m in seen if m["type"] == "progress"}
        assert ids == {alices}, "bob's job never shows on alice's feed"
        async with asyncio.timeout(20):
            while not (await fleet.services.store.get(bobs)).is_terminal:
                await asyncio.sleep(0.05)


@pytest.mark.parametrize("first_message", [
    None,  # says nothing: refused after the auth timeout... shortened below
    json.dumps({"type": "auth", "token": "cfk_wrong"}),
    json.dumps({"type": "hello"}),
    "not json",
    json.dumps({"type": "auth", "token": 5}),
])
async def test_a_missing_or_wrong_key_is_refused_with_4401(keyed_fleet, monkeypatch, first_message):
    monkeypatch.setattr("comfyfleet.api.live_feed.AUTH_TIMEOUT_S", 0.5)
    async with connect(ws_url(keyed_fleet.base_url)) as socket:
        if first_message is not None:
            await socket.send(first_message)
        error = await receive(socket)
        assert error == {"type": "error", "code": "unauthorized", "message": error["message"]}
        with pytest.raises(ConnectionClosed) as closed:
            await receive(socket)
        assert closed.value.rcvd.code == 4401


async def test_an_open_server_needs_no_auth_message(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path) as fleet, connect(ws_url(fleet.base_url)) as socket:
        snapshot = await receive(socket)
        assert snapshot["type"] == "snapshot" and snapshot["role"] == "admin"
        job = await fleet.submit(image_workflow(steps=2))
        await until(socket, lambda m: m["type"] == "job" and m["job"]["id"] == job["id"]
                    and m["job"]["status"] == "succeeded")
