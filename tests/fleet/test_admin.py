"""Run-time fleet administration through /api/v2/backends and ``comfyfleet backends``."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import image_workflow, running_fleet


@pytest.fixture
async def fleet(valkey_url, tmp_path):
    # A deleted pending prompt sends nothing on the socket: the tracker's watchdog notices it.
    async with running_fleet(valkey_url, tmp_path, sims=2, sim_config=SimConfig(step_s=0.05),
                             tracker_watchdog_s=0.5) as fleet:
        yield fleet


async def running_on(fleet, job_id: str, timeout_s: float = 20.0) -> str:
    async with asyncio.timeout(timeout_s):
        while True:
            job = await fleet.services.store.get(job_id)
            if job.current is not None and job.current.submitted_at is not None:
                return job.current.backend
            await asyncio.sleep(0.02)


async def test_draining_lets_the_running_job_finish_and_gives_nothing_new(fleet):
    long_job = await fleet.submit(image_workflow(20, seed=1))
    busy = await running_on(fleet, long_job["id"])
    other = "sim-1" if busy == "sim-0" else "sim-0"
    response = await fleet.http.patch(f"/api/v2/backends/{busy}", json={"state": "draining"})
    assert response.status_code == 200 and response.json()["state"] == "draining"
    drained_at = time.time()
    short = [await fleet.submit(image_workflow(2, seed=10 + i)) for i in range(4)]

    finished = await fleet.wait(long_job["id"])
    assert finished["status"] == "succeeded" and [a["backend"] for a in finished["attempts"]] == [busy]
    for job in short:
        done = await fleet.wait(job["id"])
        assert done["status"] == "succeeded" and [a["backend"] for a in done["attempts"]] == [other]
    sim = fleet.sims[int(busy[-1])]
    assert [r for r in sim.records if r.started_at >= drained_at] == []
    listed = (await fleet.http.get(f"/api/v2/backends/{busy}")).json()
    assert listed["admin_state"] == "draining" and listed["load"] == 0

    assert (await fleet.http.patch(f"/api/v2/backends/{busy}", json={"state": "active"})).status_code == 200
    again = [await fleet.submit(image_workflow(2, seed=30 + i)) for i in range(4)]
    used = {(await fleet.wait(j["id"]))["attempts"][-1]["backend"] for j in again}
    assert busy in used, "an enabled backend takes work again"


async def test_removing_a_backend_fails_its_work_over(fleet):
    victim, survivor = "sim-0", "sim-1"
    assert (await fleet.http.patch(f"/api/v2/backends/{survivor}", json={"state": "disabled"})).status_code == 200
    assert (await fleet.http.patch(f"/api/v2/backends/{victim}", json={"capacity": 2})).status_code == 200
    await asyncio.sleep(0.1)
    jobs = [await fleet.submit(image_workflow(40, seed=i)) for i in range(2)]
    for job in jobs:  # one running, one pending in the victim's own queue
        assert await running_on(fleet, job["id"]) == victim
    assert (await fleet.http.patch(f"/api/v2/backends/{survivor}", json={"state": "active"})).status_code == 200

    removed = await fleet.http.delete(f"/api/v2/backends/{victim}")
    assert removed.status_code == 200 and removed.json()["evacuated"] == 2
    removed_at = time.time()
    for job in jobs:
        done = await fleet.wait(job["id"])
        assert done["status"] == "succeeded"
        assert [(a["backend"], a["outcome"]) for a in done["attempts"]] == \
            [(victim, "retried"), (survivor, "succeeded")]
    assert [r for r in fleet.sims[0].records if r.started_at >= removed_at] == []
    names = [b["name"] for b in (await fleet.http.get("/api/v2/backends")).json()["backends"]]
    assert names == [survivor]
    assert (await fleet.http.get(f"/api/v2/backends/{victim}")).status_code == 404
    assert list((await fleet.http.get("/api/v2/stats")).json()["tracking"]) == [survivor]


async def test_backends_added_at_run_time_take_work_and_bad_input_gets_4xx(fleet):
    async with Simulator(SimConfig(step_s=0.05, name="extra")) as sim:
        created = await fleet.http.post("/api/v2/backends", json={"name": "extra", "url": sim.url,
                                                                  "capacity": 1, "tags": ["lora"]})
        assert created.status_code == 201, created.text
        assert created.json()["tags"] == ["lora"] and created.json()["source"] == "api"
        tagged = await fleet.submit(image_workflow(2, seed=3), metadata={"tags": "lora"})
        done = await fleet.wait(tagged["id"])
        assert done["status"] == "succeeded" and done["attempts"][0]["backend"] == "extra"
        nowhere = await fleet.submit(image_workflow(2, seed=4), metadata={"tags": "h100"})
        failed = await fleet.wait(nowhere["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "no_backend"

        registered = fleet.sims[0].url
        same_server = registered + "/"
        cases = [("POST", "/api/v2/backends", {"name": "extra", "url": sim.url}, 409),
                 # one server under two names would be sent twice its capacity
                 ("POST", "/api/v2/backends", {"name": "again", "url": same_server}, 409),
                 ("PATCH", "/api/v2/backends/extra", {"url": registered}, 409),
                 ("POST", "/api/v2/backends", {"name": "x", "url": "ftp://nope"}, 422),
                 ("POST", "/api/v2/backends", {"name": "x", "url": sim.url, "capacity": 0}, 422),
                 ("POST", "/api/v2/backends", [1, 2], 400),
                 ("PATCH", "/api/v2/backends/extra", {"state": "sleeping"}, 422),
                 ("PATCH", "/api/v2/backends/extra", {"colour": "red"}, 422),
                 ("PATCH", "/api/v2/backends/ghost", {"state": "draining"}, 404),
                 ("DELETE", "/api/v2/backends/ghost", None, 404)]
        for method, path, body, status in cases:
            response = await fleet.http.request(method, path, json=body)
            assert response.status_code == status, (method, path, body, response.text)
            assert "code" in response.json()["error"]
        assert (await fleet.http.get("/api/v2/backends/extra")).json()["url"] == sim.url


async def test_cli_lists_backends_with_state_load_and_breaker(fleet):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfyfleet.cli", "backends", "--server", fleet.base_url, "--drain", "sim-1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"COLUMNS": "200"})
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "sim-0" in text and "sim-1" in text and "draining" in text and "closed" in text and "0/1" in text
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfyfleet.cli", "backends", "--server", fleet.base_url, "--remove", "ghost",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1 and "no backend named 'ghost'" in err.decode()


async def test_a_job_type_falls_back_to_its_next_group_when_the_first_has_no_healthy_backend(
        valkey_url, tmp_path):
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text('[job_types.image]\nfallback = [["primary"], ["spare"]]\n')
    async with running_fleet(valkey_url, tmp_path, sims=2, sim_config=SimConfig(step_s=0.01),
                             backends_file=fleet_file, health_interval_s=0.2) as fleet:
        first, second = fleet.sims
        for name in ("sim-0", "sim-1"):  # the same servers come back tagged, under other names
            await fleet.http.delete(f"/api/v2/backends/{name}")
        for name, sim, tag in (("p", first, "primary"), ("s", second, "spare")):
            created = await fleet.http.post("/api/v2/backends", json={"name": name, "url": sim.url,
                                                                      "tags": [tag]})
            assert created.status_code == 201
        used = [(await fleet.wait((await fleet.submit(image_workflow(2, seed=i)))["id"]))["attempts"][-1]["backend"]
                for i in range(3)]
        assert used == ["p", "p", "p"]  # the first group while it can take work
        await first.set_refusing(True)
        async with asyncio.timeout(20):
            while (await fleet.http.get("/api/v2/backends/p")).json()["state"] != "down":
                await asyncio.sleep(0.05)
        done = await fleet.wait((await fleet.submit(image_workflow(2, seed=9)))["id"])
        assert done["status"] == "succeeded" and [a["backend"] for a in done["attempts"]] == ["s"]
