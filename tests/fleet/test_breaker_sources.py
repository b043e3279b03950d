"""A backend's breaker hears from its jobs and from its health checks, and keeps them apart: a
backend that answers every health check while failing every prompt trips its breaker all the
same (the checks' successes cleared the count of failed jobs, and it never opened), and only a
probe job closes a breaker that failed jobs opened; a breaker failed checks alone opened (the
backend was down) is closed by a check that finds it up again, no job needed."""

from __future__ import annotations

import asyncio
import json
import time

from comfyfleet.domain.policy import BreakerState, BreakerStatus, OpenedBy
from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import image_workflow, running_fleet

BLACKHOLE = {"http_error_status": 503, "http_error_paths": ["POST /prompt"]}  # no Retry-After


async def stored_breaker(fleet, name: str) -> BreakerState:  # type: ignore[no-untyped-def]
    raw = await fleet.services.redis.hget(fleet.services.keys.fleet_breakers, f"backend:{name}")
    return BreakerState.from_dict(json.loads(raw) if raw else None)


async def checks_answered(sim: Simulator, count: int) -> None:
    """Wait until ``count`` more health checks of ``sim`` have begun. Checks of one backend run
    one after another, so all but the last of them have also been recorded."""
    target = sim.requests["GET /system_stats"] + count
    async with asyncio.timeout(30):
        while sim.requests["GET /system_stats"] < target:
            await asyncio.sleep(0.02)


async def one_job(fleet, seed: int) -> dict:  # type: ignore[no-untyped-def]
    job = await fleet.wait((await fleet.submit(image_workflow(2, seed=seed)))["id"], timeout_s=60)
    assert job["status"] == "succeeded", job
    return job


async def test_a_backend_failing_every_prompt_while_answering_its_checks_trips_its_breaker(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=2, sim_config=SimConfig(step_s=0.01),
                             health_interval_s=0.2, breaker_failures=3, breaker_cooldown_s=600.0) as fleet:
        bad, _ = fleet.sims
        await checks_answered(bad, 2)
        bad.faults.update(BLACKHOLE)
        seed = 0
        # one job at a time, each followed by health checks that all find the backend up
        while bad.faults.injected < 3 and seed < 20:
            await one_job(fleet, seed)
            await checks_answered(bad, 2)
            seed += 1
        assert bad.faults.injected == 3, "round-robin sent too few jobs to the failing backend"
        state = await stored_breaker(fleet, "sim-0")
        assert state.status is BreakerStatus.OPEN and state.opened_by is OpenedBy.JOBS, state
        for n in range(4):  # it stays open, whatever the checks say, and is sent nothing more
            job = await one_job(fleet, 100 + n)
            assert [a["backend"] for a in job["attempts"]] == ["sim-1"]
            await checks_answered(bad, 2)
        assert bad.faults.injected == 3
        assert await stored_breaker(fleet, "sim-0") == state


async def test_only_a_probe_job_closes_a_breaker_failed_jobs_opened(valkey_url, tmp_path):
    cooldown_s = 1.0
    async with running_fleet(valkey_url, tmp_path, sims=2, sim_config=SimConfig(step_s=0.01),
                             health_interval_s=0.2, breaker_failures=2,
                             breaker_cooldown_s=cooldown_s) as fleet:
        bad, _ = fleet.sims
        bad.faults.update(BLACKHOLE)
        seed = 0
        while (opened := await stored_breaker(fleet, "sim-0")).status is BreakerStatus.CLOSED and seed < 20:
            await one_job(fleet, seed)
            await checks_answered(bad, 2)
            seed += 1
        assert opened.status is BreakerStatus.OPEN and opened.opened_by is OpenedBy.JOBS, opened
        # past its cool-down, half-open, with checks finding the backend up: still not closed
        while time.time() < opened.opened_at + cooldown_s:
            await asyncio.sleep(0.05)
        await checks_answered(bad, 3)
        assert await stored_breaker(fleet, "sim-0") == opened  # the checks wrote nothing
        listed = (await fleet.http.get("/api/v2/backends/sim-0")).json()["breaker"]
        assert listed["status"] == "half_open"

        bad.faults.update({"http_error_status": None})  # it recovers: a probe job closes it
        ran_there = len(bad.records)
        while (state := await stored_breaker(fleet, "sim-0")).status is not BreakerStatus.CLOSED and seed < 60:
            await one_job(fleet, seed)
            seed += 1
        assert state.status is BreakerStatus.CLOSED, state
        assert [(a, b) for _, a, b in state.transitions][-2:] == [("open", "half_open"), ("half_open", "closed")]
        assert len(bad.records) == ran_there + 1  # the probe, the one job that closed it


async def test_a_breaker_failed_checks_opened_is_closed_by_a_check_without_any_job(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1, health_interval_s=0.1, breaker_failures=2,
                             breaker_cooldown_s=0.5) as fleet:
        sim = fleet.sims[0]
        await sim.set_refusing(True)
        async with asyncio.timeout(20):
            while (opened := await stored_breaker(fleet, "sim-0")).status is not BreakerStatus.OPEN:
                await asyncio.sleep(0.05)
        assert opened.opened_by is OpenedBy.CHECKS and len(opened.check_failures) == 2, opened
        await sim.set_refusing(False)
        async with asyncio.timeout(20):
            while (state := await stored_breaker(fleet, "sim-0")).status is not BreakerStatus.CLOSED:
                await asyncio.sleep(0.05)
        assert [(a, b) for _, a, b in state.transitions][-1] == ("half_open", "closed")
        assert state.pristine and sim.records == []  # no job was sent to find out
