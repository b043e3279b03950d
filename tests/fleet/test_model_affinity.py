"""Model affinity, end to end: jobs go to the backend already holding their model.

Two simulated ComfyUI servers where a loader node that is not cached from the previous prompt
costs a model load (as ComfyUI keeps only the last prompt's node outputs). Jobs for two
checkpoints arrive one at a time in runs of two (A A B B A A ...), so both servers are free
and equally loaded at every choice: only the models decide. With affinity each server settles
on one checkpoint and loads it once; without it, turns alternate the servers and nearly every
job loads its checkpoint again. Loads are counted by the simulators themselves."""

from __future__ import annotations

import asyncio

import pytest

from comfyfleet.sim import SimConfig
from helpers.fleet import running_fleet

CHECKPOINTS = ("sd_xl_base_1.0.safetensors", "juggernautXL_v9.safetensors")
PATTERN = [0, 0, 1, 1] * 3


def checkpoint_workflow(checkpoint: str, seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "image": ["2", 0], "steps": 2, "seed": seed}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "t"}},
    }


async def run_pattern(valkey_url, data_dir, *, affinity: bool) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    config = SimConfig(step_s=0.01, model_load_s=0.05)
    async with running_fleet(valkey_url, data_dir, sims=2, sim_config=config,
                             model_affinity=affinity) as fleet:
        for seed, which in enumerate(PATTERN):
            job = await fleet.wait((await fleet.submit(checkpoint_workflow(CHECKPOINTS[which], seed)))["id"])
            assert job["status"] == "succeeded", job
        loads = sum(record.models_loaded for sim in fleet.sims for record in sim.records)
        listed = (await fleet.http.get("/api/v2/backends")).json()["backends"]
        return loads, {b["name"]: b["warm_models"] for b in listed}


@pytest.mark.parametrize("affinity", [True, False])
async def test_each_backend_keeps_one_checkpoint_loaded(valkey_url, tmp_path, affinity):
    loads, warm = await run_pattern(valkey_url, tmp_path / "data", affinity=affinity)
    print(f"affinity={affinity}: {loads} model loads for {len(PATTERN)} jobs; warm: {warm}")
    if affinity:
        assert loads == 2  # each checkpoint loaded once, on its own server
        assert sorted(map(tuple, warm.values())) == sorted((c,) for c in CHECKPOINTS)
    else:  # the same run without affinity: the control that shows what affinity saves
        assert loads >= len(PATTERN) // 2
        assert warm == {"sim-0": [], "sim-1": []}


async def test_a_backend_that_goes_down_forgets_its_models_one_that_stays_up_keeps_them(redis, keys):
    """A ComfyUI that went down may come back restarted, holding nothing: its warmth is dropped
    (in Redis, so every worker stops preferring it) when its health turns down."""
    from comfyfleet.comfy.transport import open_session
    from comfyfleet.runtime.dispatcher import Dispatcher, DispatchSettings
    from comfyfleet.runtime.health import HealthMonitor, HealthSettings
    from comfyfleet.sim import Simulator
    from comfyfleet.store.fleet import BackendRecord, FleetStore

    sdxl = frozenset({CHECKPOINTS[0]})
    async with Simulator(SimConfig(name="up")) as up, Simulator(SimConfig(name="gone")) as gone, \
            open_session() as http:
        fleet = FleetStore(redis, keys)
        await fleet.seed([BackendRecord(name=s.config.name, url=s.url) for s in (up, gone)])
        dispatcher = Dispatcher(fleet, http=http, settings=DispatchSettings(refresh_s=60.0))
        await dispatcher.start()
        try:
            monitor = HealthMonitor(dispatcher, settings=HealthSettings(interval_s=60.0, timeout_s=0.5), owner="w")
            await monitor.round()  # both healthy
            await dispatcher.memory.note_warm("up", sdxl)
            await dispatcher.memory.note_warm("gone", sdxl)
            assert (await fleet.snapshot()).warm == {"up": sdxl, "gone": sdxl}
            gone.faults.update({"slow_response_s": 5.0})  # hangs past the check timeout
            await monitor.check("up")
            await monitor.check("gone")
            assert (await fleet.snapshot()).warm == {"up": sdxl}
        finally:
            await dispatcher.close()


async def test_a_job_waits_a_while_for_the_busy_backend_holding_its_model_then_takes_any(redis, keys):
    """With ``affinity_wait_s``: the only backend holding the job's checkpoint is busy and
    another is free. The job waits for the warm one (and gets it when it frees within the
    wait); when it does not free in time, the job takes the free one."""
    from comfyfleet.comfy.transport import open_session
    from comfyfleet.domain.job import Job, JobStatus
    from comfyfleet.runtime.dispatcher import Dispatcher, DispatchSettings
    from comfyfleet.store.fleet import BackendRecord, FleetStore

    sdxl = frozenset({CHECKPOINTS[0]})
    fleet = FleetStore(redis, keys)
    await fleet.seed([BackendRecord(name=n, url=f"http://{n}.invalid") for n in ("warm", "cold")])
    settings = DispatchSettings(slot_wait_s=60.0, refresh_s=60.0, affinity_wait_s=1.0)
    async with open_session() as http:
        dispatcher = Dispatcher(fleet, http=http, settings=settings)
        await dispatcher.start()
        try:
            await dispatcher.memory.note_warm("warm", sdxl)

            def job(job_id: str) -> Job:
                return Job(id=job_id, status=JobStatus.QUEUED, created_at=0.0)

            held = await dispatcher.acquire(job("busy"), models=sdxl, wait_s=0)
            assert held.backend.name == "warm"  # free and warm: taken at once
            waiting = asyncio.create_task(dispatcher.acquire(job("patient"), models=sdxl))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # "cold" is free, yet the job waits for "warm"
            await dispatcher.release("warm", "busy")
            assert (await asyncio.wait_for(waiting, 10)).backend.name == "warm"

            # "warm" stays busy past the wait: the job takes "cold" (and loads the model there)
            assert (await dispatcher.acquire(job("late"), models=sdxl)).backend.name == "cold"
            # a job loading nothing never waits, and the wait is off by default
            await dispatcher.release("cold", "late")
            assert (await dispatcher.acquire(job("plain"), wait_s=0)).backend.name == "cold"
        finally:
            await dispatcher.close()


@pytest.mark.parametrize(("wait_s", "second_served"), [(30.0, "c"), (0.2, "a")])
async def test_a_freed_backend_goes_to_a_job_loading_its_model_unless_the_first_was_passed_over_too_long(
        redis, keys, wait_s, second_served):
    """One backend holding SDXL, busy; job ``a`` (another checkpoint) waits first, then ``b`` and
    ``c`` (SDXL). The first release goes to ``b`` (``a`` is passed over); the second goes to ``c``
    while ``a`` has been passed over for less than ``affinity_wait_s``, and to ``a`` once it has
    been passed over that long (no job waits longer than that for another's models)."""
    from comfyfleet.comfy.transport import open_session
    from comfyfleet.domain.job import Job, JobStatus
    from comfyfleet.runtime.dispatcher import Dispatcher, DispatchSettings
    from comfyfleet.store.fleet import BackendRecord, FleetStore

    sdxl = frozenset({CHECKPOINTS[0]})
    fleet = FleetStore(redis, keys)
    await fleet.seed([BackendRecord(name="solo", url="http://solo.invalid")])
    settings = DispatchSettings(slot_wait_s=60.0, recheck_s=60.0, refresh_s=60.0, affinity_wait_s=wait_s)
    async with open_session() as http:
        dispatcher = Dispatcher(fleet, http=http, settings=settings)
        await dispatcher.start()
        waiting: dict[str, asyncio.Task] = {}

        def job(job_id: str) -> Job:
            return Job(id=job_id, status=JobStatus.QUEUED, created_at=0.0)

        async def next_served() -> str:
            async with asyncio.timeout(10):
                done, _ = await asyncio.wait(waiting.values(), return_when=asyncio.FIRST_COMPLETED)
            [served] = [name for name, task in waiting.items() if task in done]
            assert waiting.pop(served).result().backend.name == "solo"
            return served

        try:
            await dispatcher.memory.note_warm("solo", sdxl)
            assert (await dispatcher.acquire(job("busy"), models=sdxl, wait_s=0)).backend.name == "solo"
            waiting["a"] = asyncio.create_task(dispatcher.acquire(job("a"), models=frozenset({CHECKPOINTS[1]})))
            await asyncio.sleep(0.1)
            waiting["b"] = asyncio.create_task(dispatcher.acquire(job("b"), models=sdxl))
            waiting["c"] = asyncio.create_task(dispatcher.acquire(job("c"), models=sdxl))
            await asyncio.sleep(0.1)
            await dispatcher.release("solo", "busy")
            assert await next_served() == "b"
            await asyncio.sleep(0.3)  # longer than the short wait: "a" has been passed over too long
            await dispatcher.release("solo", "b")
            assert await next_served() == second_served
        finally:
            for task in waiting.values():
                task.cancel()
            await asyncio.gather(*waiting.values(), return_exceptions=True)
            await dispatcher.close()
