"""Capacity across worker processes: three backends of capacity 1, four worker processes.

No backend ever holds two of our prompts: on each backend, every attempt is written (before its
POST /prompt) only after the previous prompt there ended, as recorded by the simulator. And no
backend idles while jobs wait: every gap between a prompt's end and the next start on the same
backend, while some job had still not started anywhere, is short against the job's length
(measured and printed; the bounds are generous safety nets, not timing targets).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import replace

from chaos.chaos_helpers import api_only, start_worker
from comfyfleet.domain.job import JobStatus
from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import image_workflow, running_fleet

JOBS, STEPS, STEP_S = 24, 10, 0.08
JOB_S = STEPS * STEP_S


async def test_four_workers_never_overfill_three_backends_and_keep_them_busy(valkey_url, tmp_path):
    sims = [Simulator(SimConfig(step_s=STEP_S, name=f"sim-{i}"), port=0) for i in range(3)]
    for sim in sims:
        await sim.start()
    workers = []
    try:
        backends = [f"sim-{i}={s.url}" for i, s in enumerate(sims)]
        async with api_only(valkey_url, tmp_path / "data", backends) as api:
            workers = await asyncio.gather(*(start_worker(api.settings, tmp_path / f"w{i}.log")
                                             for i in range(4)))
            ids = [await api.submit(image_workflow(STEPS, seed=n)) for n in range(JOBS)]
            jobs = await api.wait_all(ids, timeout_s=120)
    finally:
        for worker in workers:
            worker.kill()
        for sim in sims:
            await sim.stop()

    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * JOBS
    ended = {r.prompt_id: r for sim in sims for r in sim.records}
    by_backend: dict[str, list] = defaultdict(list)
    for job in jobs:
        for attempt in job.history:
            by_backend[attempt.backend].append(attempt)
    assert len(by_backend) == 3, "every backend took work"
    last_start = max(r.started_at for r in ended.values())  # until then some job was waiting
    gaps, to_dispatch = [], []
    for name, attempts in by_backend.items():
        attempts.sort(key=lambda a: a.started_at)
        for earlier, later in zip(attempts, attempts[1:]):
            finished = ended[earlier.prompt_id].ended_at
            assert later.started_at >= finished, f"{name} was given a prompt while one was running"
            gaps.append(ended[later.prompt_id].started_at - finished)
            to_dispatch.append(later.started_at - finished)  # end -> next write-ahead on it
        tail = ended[attempts[-1].prompt_id].ended_at
        if tail < last_start:  # idle at the end while a job still waited to start elsewhere
            gaps.append(last_start - tail)
    print(f"\n{len(gaps)} gaps while jobs waited: max {max(gaps) * 1000:.1f} ms, "
          f"mean {sum(gaps) / len(gaps) * 1000:.1f} ms (job length {JOB_S * 1000:.0f} ms); "
          f"prompt end -> next dispatch there: max {max(to_dispatch) * 1000:.1f} ms, "
          f"mean {sum(to_dispatch) / len(to_dispatch) * 1000:.1f} ms")
    # Waking on the release message keeps these to tens of milliseconds on a quiet machine; a
    # worker that only re-checked (0.25-0.75 s) would average a third of a job or more.
    assert sum(gaps) / len(gaps) < JOB_S / 4 and max(gaps) < JOB_S, (gaps, to_dispatch)


async def test_jobs_waiting_for_a_slot_start_when_the_capacity_is_raised(valkey_url, tmp_path):
    """Room that appears without a release (here a raised capacity) is looked for at once by
    every waiting job; none waits for the periodic re-check (set to an hour here)."""
    async with running_fleet(valkey_url, tmp_path, sims=1, sim_config=SimConfig(step_s=0.1),
                             health_interval_s=600) as fleet:
        dispatcher = fleet.services.dispatcher
        dispatcher.settings = replace(dispatcher.settings, recheck_s=3600.0)
        jobs = [await fleet.submit(image_workflow(40 if i == 0 else 2, seed=70 + i))  # the first 4 s
                for i in range(4)]
        async with asyncio.timeout(10):
            while fleet.sims[0].requests["POST /prompt"] < 1:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the other three wait in the worker for the one slot
        raised = await fleet.http.patch("/api/v2/backends/sim-0", json={"capacity": 4})
        assert raised.status_code == 200, raised.text
        async with asyncio.timeout(3):  # the first job runs for seconds yet: no release meanwhile
            while fleet.sims[0].requests["POST /prompt"] < 4:
                await asyncio.sleep(0.05)
        for job in jobs:
            assert (await fleet.wait(job["id"]))["status"] == "succeeded"
