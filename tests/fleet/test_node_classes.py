"""A workflow naming a node class no backend has is refused at submission (422), from the node
catalogs the health checks read off each backend's /object_info; a class any backend has
passes, and the job goes only to backends that have all its classes; nothing is judged while
some backend's catalog is unknown; catalogs are read again when a backend comes up."""

from __future__ import annotations

import asyncio
import time

import pytest

from comfyfleet.comfy.transport import open_session
from comfyfleet.runtime.dispatcher import Dispatcher, DispatchSettings
from comfyfleet.runtime.health import HealthMonitor, HealthSettings
from comfyfleet.sim import SimConfig, Simulator
from comfyfleet.store.fleet import BackendRecord, FleetStore
from comfyfleet.store.node_catalogs import NodeCatalogs
from helpers.fleet import free_port, image_workflow, running_fleet

CUSTOM = ("EmptyImage", "KSampler", "SaveImage", "CustomUpscale")


def with_node(class_type: str) -> dict:
    return image_workflow(2, extra_node={"4": {"class_type": class_type, "inputs": {"image": ["2", 0]}}})


async def catalogs_known(fleet, count: int) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(10):
        while len(await fleet.services.node_catalogs.catalogs()) < count:
            await asyncio.sleep(0.1)


async def test_a_class_no_backend_has_is_refused_and_one_any_backend_has_passes(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        async with Simulator(SimConfig(step_s=0.01, name="custom", node_classes=CUSTOM)) as custom:
            added = await fleet.http.post("/api/v2/backends", json={"name": "custom", "url": custom.url})
            assert added.status_code == 201, added.text
            await catalogs_known(fleet, 2)
            refused = await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("NoSuchNode")})
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["code"] == "invalid_workflow" and "'NoSuchNode'" in error["message"]
            assert error["details"]["node_errors"] == {"4": [{
                "field": "class_type", "reason": "unknown_node_class",
                "message": "no backend of this fleet has the node class 'NoSuchNode'"}]}
            assert (await fleet.http.get("/api/v2/jobs")).json()["jobs"] == []  # nothing was created
            # only "custom" has it: accepted, and sent there alone (sim-0 would refuse it)
            jobs = [await fleet.wait((await fleet.submit(with_node("CustomUpscale")))["id"]) for _ in range(4)]
            assert [(j["status"], [a["backend"] for a in j["attempts"]]) for j in jobs] == \
                [("succeeded", ["custom"])] * 4
            # each class is on some backend, but none has both: it can run nowhere
            both = with_node("CustomUpscale")
            both["5"] = {"class_type": "OrchSlowPassthrough", "inputs": {"image": ["1", 0], "steps": 1}}
            nowhere = await fleet.wait((await fleet.submit(both))["id"])
            assert nowhere["status"] == "failed" and nowhere["error"]["code"] == "no_backend"
            assert nowhere["attempts"] == [] and "CustomUpscale" in nowhere["error"]["message"]
            listed = {b["name"]: b["node_classes"] for b in (await fleet.http.get("/api/v2/backends")).json()["backends"]}
            assert {name: c["count"] for name, c in listed.items()} == {
                "sim-0": len(fleet.sims[0].node_classes), "custom": len(CUSTOM)}
            # alike backends share one stored list: two catalogs, two sets
            assert await fleet.services.redis.hlen(fleet.services.keys.fleet_node_sets) == 2


@pytest.mark.parametrize("checked", [True, False], ids=["at-submission", "at-dispatch"])
async def test_a_class_held_only_by_a_backend_the_jobs_tags_rule_out_counts_for_nothing(valkey_url, tmp_path, checked):
    """Only "custom" has the class, and the job's tags allow only sim-0 (which would refuse the
    prompt): the submission is refused, or, unchecked, the job fails at once with no_backend
    rather than waiting for a backend until its deadline."""
    async with running_fleet(valkey_url, tmp_path, sims=1, check_node_classes=checked) as fleet:
        async with Simulator(SimConfig(step_s=0.01, name="custom", node_classes=CUSTOM)) as custom:
            added = await fleet.http.post("/api/v2/backends", json={"name": "custom", "url": custom.url})
            assert added.status_code == 201, added.text
            tagged = await fleet.http.patch("/api/v2/backends/sim-0", json={"tags": ["sdxl"]})
            assert tagged.status_code == 200, tagged.text
            await catalogs_known(fleet, 2)
            async with asyncio.timeout(5):
                while fleet.services.dispatcher.snapshot.backends["sim-0"].tags != ("sdxl",):
                    await asyncio.sleep(0.05)
            untagged = await fleet.submit(with_node("CustomUpscale"))  # may go to custom: fine
            assert (await fleet.wait(untagged["id"]))["attempts"][-1]["backend"] == "custom"
            sent = await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("CustomUpscale"),
                                                               "metadata": {"tags": "sdxl"}})
            if checked:
                assert sent.status_code == 422, sent.text
                assert sent.json()["error"]["details"]["node_errors"]["4"][0]["message"] == \
                    "no backend this job's tags allow has the node class 'CustomUpscale'"
                return
            assert sent.status_code == 201, sent.text
            ruled_out = await fleet.wait(sent.json()["id"])
            assert ruled_out["status"] == "failed" and ruled_out["error"]["code"] == "no_backend"
            assert "may use" in ruled_out["error"]["message"], ruled_out["error"]
            assert ruled_out["attempts"] == []


async def test_nothing_is_judged_while_a_backends_catalog_is_unknown_or_when_turned_off(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1) as fleet:
        await catalogs_known(fleet, 1)
        assert (await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("NoSuchNode")})).status_code == 422
        ghost = await fleet.http.post("/api/v2/backends", json={"name": "ghost",
                                                                 "url": f"http://127.0.0.1:{free_port()}"})
        assert ghost.status_code == 201  # never answers: its classes are never known
        async with asyncio.timeout(5):
            while "ghost" not in (fleet.services.dispatcher.snapshot.backends):
                await asyncio.sleep(0.05)
        accepted = await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("NoSuchNode")})
        assert accepted.status_code == 201, accepted.text
    async with running_fleet(valkey_url, tmp_path / "off", sims=1, check_node_classes=False) as fleet:
        await catalogs_known(fleet, 1)
        assert (await fleet.http.post("/api/v2/jobs", json={"workflow": with_node("NoSuchNode")})).status_code == 201


async def test_a_catalog_is_read_once_per_period_and_again_when_its_backend_comes_up(redis, keys):
    async with Simulator(SimConfig(step_s=0.01, name="gpu")) as sim, open_session() as http:
        fleet = FleetStore(redis, keys)
        await fleet.seed([BackendRecord(name="gpu", url=sim.url)])
        dispatcher = Dispatcher(fleet, http=http, settings=DispatchSettings(refresh_s=60.0))
        await dispatcher.start()
        catalogs = NodeCatalogs(redis, keys)
        monitor = HealthMonitor(dispatcher, catalogs=catalogs,
                                settings=HealthSettings(interval_s=60.0, timeout_s=1.0, node_catalog_refresh_s=3600))

        async def check(expected_reads: int) -> None:
            await monitor.check("gpu")
            await asyncio.sleep(0.3)  # the read runs beside the check
            assert sim.requests["GET /object_info"] == expected_reads

        try:
            await check(1)  # none known: read
            assert (await catalogs.catalogs())["gpu"].count == len(sim.node_classes)
            await check(1)  # known and fresh: not read again
            await sim.set_refusing(True)
            await monitor.check("gpu")
            assert dispatcher.snapshot.health["gpu"].state == "down"
            await sim.set_refusing(False)
            await check(2)  # came up (a restart may have added nodes): read again
            await check(2)
        finally:
            await monitor.close()
            await dispatcher.close()


async def test_a_backend_refusing_a_class_it_lacks_hands_the_job_to_one_that_has_it(valkey_url, tmp_path):
    """With a catalog out of date (here sim-0's claims a class it has not: a node removed since
    it was read, with no health round to notice for an hour), a job may reach a backend without
    its node class: the refusal is retried on another backend, not failed, and the refusing
    backend's catalog is dropped so that its next check reads it again."""
    async with running_fleet(valkey_url, tmp_path, sims=1, health_interval_s=3600) as fleet:
        await catalogs_known(fleet, 1)
        catalogs = fleet.services.node_catalogs
        await catalogs.record("sim-0", fleet.sims[0].url, fleet.sims[0].node_classes | {"CustomUpscale"},
                              read_at=time.time())
        async with Simulator(SimConfig(step_s=0.01, name="custom", node_classes=CUSTOM)) as custom:
            added = await fleet.http.post("/api/v2/backends", json={"name": "custom", "url": custom.url})
            assert added.status_code == 201, added.text
            async with asyncio.timeout(5):
                while "custom" not in fleet.services.dispatcher.snapshot.backends:
                    await asyncio.sleep(0.05)
            jobs = [await fleet.wait((await fleet.submit(with_node("CustomUpscale")))["id"]) for _ in range(4)]
            assert [j["status"] for j in jobs] == ["succeeded"] * 4
            refused = [a for j in jobs for a in j["attempts"] if a["backend"] == "sim-0"]
            assert refused, "round-robin sent no job to the backend without the class"
            assert all(a["failure_class"] == "recoverable" and "CustomUpscale does not exist" in a["message"]
                       for a in refused), refused
            assert all(j["attempts"][-1]["backend"] == "custom" for j in jobs)
            stored = await NodeCatalogs(fleet.services.redis, fleet.services.keys).catalogs()
            assert "sim-0" not in stored, "the catalog that misled the dispatcher is gone"
