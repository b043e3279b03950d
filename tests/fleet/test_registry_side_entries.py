"""What the fleet learns of a backend (health, breaker, warm models, rest, node catalog) is about
the server its name stands for: a url moved to another server starts afresh (the old server's
node classes refused workflows the new one runs, for ten minutes), a name added again starts
afresh, and the prompts a removal stops do not bring back the removed backend's breaker (re-added
under its name, it came back with an open breaker and took no work)."""

from __future__ import annotations

import asyncio
import json
import time

from comfyfleet.domain.failures import FailureClass
from comfyfleet.domain.policy import CircuitBreaker
from comfyfleet.runtime.fleet_memory import FleetMemory
from comfyfleet.sim import SimConfig, Simulator
from comfyfleet.sim.catalog import DEFAULT_NODE_CLASSES
from comfyfleet.store.fleet import BackendHealth, BackendRecord, FleetSnapshot, FleetStore
from helpers.fleet import image_workflow, running_fleet

MODELS = frozenset({"sdxl.safetensors"})


def with_node(class_type: str) -> dict:
    return image_workflow(2, extra_node={"4": {"class_type": class_type, "inputs": {"image": ["2", 0]}}})


async def side_entries(redis, keys, name: str) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    """What the fleet keeps about ``name`` besides its registry record (None: nothing)."""
    return {"health": await redis.hget(keys.fleet_health, name),
            "breaker": await redis.hget(keys.fleet_breakers, f"backend:{name}"),
            "warm": await redis.hget(keys.fleet_warm, name),
            "resting": await redis.hget(keys.fleet_resting, name),
            "nodes": await redis.hget(keys.fleet_nodes, name)}


async def learn_about(fleet: FleetStore, redis, keys, name: str) -> None:  # type: ignore[no-untyped-def]
    """Health, a failure on its breaker, warm models, a rest and a node catalog for ``name``."""
    await fleet.set_health(name, BackendHealth(state="healthy", checked_at=1.0), publish=False)
    await fleet.breakers.update(f"backend:{name}", lambda s: CircuitBreaker().record_failure(s, time.time()))
    await fleet.set_warm(name, MODELS)
    await fleet.rest(name, time.time() + 60.0)
    await redis.hset(keys.fleet_nodes, name, json.dumps({"digest": "d", "read_at": 1.0, "count": 3}))


async def test_a_url_naming_another_server_forgets_what_was_learnt_of_the_old_one(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([BackendRecord(name="a", url="http://127.0.0.1:8001")])
    await learn_about(fleet, redis, keys, "a")
    kept = await side_entries(redis, keys, "a")
    assert None not in kept.values()
    await fleet.update("a", capacity=3, tags=("lora",))
    assert await side_entries(redis, keys, "a") == kept
    await fleet.update("a", url="HTTP://127.0.0.1:8001/")  # the same server, spelled otherwise
    assert await side_entries(redis, keys, "a") == kept
    moved = await fleet.update("a", url="http://127.0.0.1:8002")
    assert moved.url == "http://127.0.0.1:8002" and moved.capacity == 3
    assert set((await side_entries(redis, keys, "a")).values()) == {None}
    # the same when the backends file moves it, read at a (re)start
    await learn_about(fleet, redis, keys, "a")
    await fleet.seed([BackendRecord(name="a", url="http://127.0.0.1:8002", capacity=3, tags=("lora",))])
    assert None not in (await side_entries(redis, keys, "a")).values()  # unchanged: kept
    await fleet.seed([BackendRecord(name="a", url="http://127.0.0.1:8003")])
    assert set((await side_entries(redis, keys, "a")).values()) == {None}
    assert (await fleet.get("a")).url == "http://127.0.0.1:8003"


async def test_a_name_added_again_starts_with_nothing_left_under_it(redis, keys):
    fleet = FleetStore(redis, keys)
    await learn_about(fleet, redis, keys, "b")  # landed after "b" was removed
    await fleet.add(BackendRecord(name="b", url="http://127.0.0.1:8001"))
    assert set((await side_entries(redis, keys, "b")).values()) == {None}
    await learn_about(fleet, redis, keys, "c")
    await fleet.seed([BackendRecord(name="c", url="http://127.0.0.1:8002")])  # a new configured one
    assert set((await side_entries(redis, keys, "c")).values()) == {None}


async def test_outcomes_on_a_backend_no_longer_registered_feed_no_breaker(redis, keys):
    fleet = FleetStore(redis, keys)
    await fleet.seed([BackendRecord(name="here", url="http://127.0.0.1:8001")])
    snapshot: list[FleetSnapshot | None] = [None]
    memory = FleetMemory(fleet, backend_breaker=CircuitBreaker(failure_threshold=1),
                         workflow_breaker=CircuitBreaker(), model_affinity=True,
                         snapshot=lambda: snapshot[0], changed=lambda: None, clock=time.time)
    # no snapshot: the registry answers, in the breaker's own transaction
    await memory.record("gone", None, FailureClass.TRANSIENT)
    await memory.record_backend("gone", ok=False)
    await memory.record("here", None, FailureClass.TRANSIENT)
    assert await redis.hkeys(keys.fleet_breakers) == ["backend:here"]
    assert await fleet.breakers.update("backend:gone", lambda s: s, registered="gone") is None
    # removed after this process's snapshot was read (it still lists it): the registry decides
    snapshot[0] = await fleet.snapshot()
    await fleet.remove("here")
    assert "here" in snapshot[0].backends
    await memory.record("here", None, FailureClass.TRANSIENT)
    await memory.record_backend("here", ok=False)
    assert await redis.hkeys(keys.fleet_breakers) == []


async def test_a_backend_moved_to_another_server_is_judged_afresh(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1, sim_config=SimConfig(step_s=0.01),
                             health_interval_s=600.0) as fleet:
        services = fleet.services
        dispatcher = services.dispatcher
        await dispatcher.health.first_round()
        async with asyncio.timeout(10):
            while "sim-0" not in await services.node_catalogs.catalogs():
                await asyncio.sleep(0.05)
        await services.fleet.set_warm("sim-0", MODELS)
        refused = await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("FooNode")})
        assert refused.status_code == 422, refused.text  # sim-0 has no FooNode

        classes = tuple(sorted(DEFAULT_NODE_CLASSES | {"FooNode"}))
        async with Simulator(SimConfig(step_s=0.01, name="new", node_classes=classes), port=0) as new:
            moved = await fleet.http.patch("/api/v2/backends/sim-0", json={"url": new.url})
            assert moved.status_code == 200, moved.text
            assert set((await side_entries(services.redis, services.keys, "sim-0")).values()) == {None}
            listed = (await fleet.http.get("/api/v2/backends/sim-0")).json()
            assert (listed["state"], listed["warm_models"]) == ("unknown", [])

            # nothing known of its classes: nothing refused (read at most a second behind)
            async with asyncio.timeout(10):
                while (created := await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("FooNode")})
                       ).status_code == 422:
                    await asyncio.sleep(0.1)
            assert created.status_code == 201, created.text
            done = await fleet.wait(created.json()["id"])
            assert done["status"] == "succeeded" and [a["backend"] for a in done["attempts"]] == ["sim-0"]
            assert len(new.records) == 1

            # its first check finds it up from unknown and reads its catalog
            async with asyncio.timeout(10):
                while dispatcher.by_name("sim-0").record.url != new.url:
                    await asyncio.sleep(0.05)
            assert (await dispatcher.health.check("sim-0")).state == "healthy"
            async with asyncio.timeout(10):
                while (c := (await services.node_catalogs.catalogs()).get("sim-0")) is None \
                        or c.count != len(classes):
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(10):  # the API judges by it again
                while (nowhere := await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("NoSuchNode")})
                       ).status_code == 201:
                    await asyncio.sleep(0.1)
            assert nowhere.status_code == 422, nowhere.text
            accepted = await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("FooNode")})
            assert accepted.status_code == 201, accepted.text
            assert (await fleet.wait(accepted.json()["id"]))["status"] == "succeeded"


async def test_a_removed_backends_stopped_prompts_leave_no_breaker_behind(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=2, sim_config=SimConfig(step_s=0.1),
                             health_interval_s=600.0, tracker_watchdog_s=0.5) as fleet:
        redis, keys = fleet.services.redis, fleet.services.keys
        spare, victim = fleet.sims
        assert (await fleet.http.patch("/api/v2/backends/sim-0", json={"state": "disabled"})).status_code == 200
        assert (await fleet.http.patch("/api/v2/backends/sim-1", json={"capacity": 5})).status_code == 200
        jobs = [await fleet.submit(image_workflow(20, seed=i)) for i in range(3)]
        async with asyncio.timeout(30):
            for job in jobs:  # one running, two pending in its own queue
                while (record := await fleet.services.store.get(job["id"])).current is None \
                        or record.current.submitted_at is None:
                    await asyncio.sleep(0.02)
                assert record.current.backend == "sim-1"

        removed = await fleet.http.delete("/api/v2/backends/sim-1")
        assert removed.status_code == 200 and removed.json()["evacuated"] == 3
        assert (await fleet.http.patch("/api/v2/backends/sim-0", json={"state": "active"})).status_code == 200
        for job in jobs:
            done = await fleet.wait(job["id"], timeout_s=60)
            assert [(a["backend"], a["outcome"], a["failure_class"]) for a in done["attempts"]] == \
                [("sim-1", "retried", "transient"), ("sim-0", "succeeded", None)]
        # three failures of our own making were recorded on sim-1: none of them reached a breaker
        assert await redis.hget(keys.fleet_breakers, "backend:sim-1") is None

        added = await fleet.http.post("/api/v2/backends", json={"name": "sim-1", "url": victim.url})
        assert added.status_code == 201, added.text
        assert (added.json()["breaker"]["status"], added.json()["breaker"]["failures"]) == ("closed", 0)
        async with asyncio.timeout(10):
            while "sim-1" not in fleet.services.dispatcher.snapshot.backends:
                await asyncio.sleep(0.05)
        assert (await fleet.http.patch("/api/v2/backends/sim-0", json={"state": "disabled"})).status_code == 200
        again = await fleet.wait((await fleet.submit(image_workflow(2, seed=99)))["id"])
        assert again["status"] == "succeeded" and [a["backend"] for a in again["attempts"]] == ["sim-1"]


async def test_a_check_of_the_old_url_lands_after_a_move_and_is_not_kept(redis, keys):
    """A health check under way when the backend's url moves answers for the old server: it is
    not written under the name that now stands for the new one (it read the new, healthy server
    down, and fed its breaker a failed check)."""
    from comfyfleet.comfy.transport import open_session
    from comfyfleet.runtime.dispatcher import Dispatcher, DispatchSettings
    from comfyfleet.runtime.health import HealthMonitor, HealthSettings

    async with Simulator(SimConfig(name="old")) as old, Simulator(SimConfig(name="new")) as new, \
            open_session() as http:
        old.faults.update({"slow_response_s": 5.0})  # the check of the old server times out
        fleet = FleetStore(redis, keys)
        await fleet.seed([BackendRecord(name="a", url=old.url)])
        dispatcher = Dispatcher(fleet, http=http, settings=DispatchSettings(refresh_s=60.0))
        await dispatcher.start()
        monitor = HealthMonitor(dispatcher, settings=HealthSettings(interval_s=60.0, timeout_s=1.0))
        try:
            checking = asyncio.create_task(monitor.check("a"))
            async with asyncio.timeout(10):
                while not old.requests["GET /system_stats"]:
                    await asyncio.sleep(0.01)
            await fleet.update("a", url=new.url)
            stale = await checking
            assert stale.state == "down"
            assert await side_entries(redis, keys, "a") == dict.fromkeys(
                ("health", "breaker", "warm", "resting", "nodes"))
            await dispatcher.refresh()
            assert (await monitor.check("a")).state == "healthy"
            assert (await fleet.snapshot()).health["a"].state == "healthy"
        finally:
            await monitor.close()
            await dispatcher.close()
