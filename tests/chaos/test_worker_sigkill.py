"""Both worker processes SIGKILLed twice mid-run: every job still succeeds, no prompt runs twice.

20 jobs of about 2.4 s (8 steps of 0.3 s) on 3 simulators with 2 worker processes: about 16 s
of simulator time. Kills land at random moments while jobs are in flight; workers are started again
at once. The test prints the recovery time of each kill
(kill -> every in-flight job owned by a live worker again).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

from chaos_helpers import api_only, prompt_starts, start_worker, time_to_reattach, worker_id_of
from comfyfleet.domain.job import JobStatus
from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import image_workflow

JOBS, STEPS, STEP_S = 20, 8, 0.3


async def test_sigkill_both_workers_twice_loses_and_duplicates_nothing(valkey_url, tmp_path):
    rng = random.Random()
    records = [tmp_path / f"sim-{i}.jsonl" for i in range(3)]
    sims = [Simulator(SimConfig(step_s=STEP_S, name=f"sim-{i}", record_file=str(records[i])))
            for i in range(3)]
    for sim in sims:
        await sim.start()
    workers = []
    try:
        backends = [f"sim-{i}={s.url}" for i, s in enumerate(sims)]
        async with api_only(valkey_url, tmp_path / "data", backends) as api:
            workers = [await start_worker(api.settings, tmp_path / f"w{i}-0.log") for i in range(2)]
            ids = [await api.submit(image_workflow(STEPS, seed=n)) for n in range(JOBS)]
            recoveries = []
            for round_ in (1, 2):
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                async with asyncio.timeout(60):  # a moment with jobs in flight, so the kill matters
                    while not (in_flight := [j.id for j in await api.jobs(ids)
                                             if j.status is JobStatus.RUNNING]):
                        await asyncio.sleep(0.05)
                dead = {worker_id_of(w) for w in workers}
                killed_at = time.time()
                for worker in workers:
                    worker.process.send_signal(signal.SIGKILL)
                for worker in workers:
                    await worker.stop(timeout_s=10)
                workers = [await start_worker(api.settings, tmp_path / f"w{i}-{round_}.log")
                           for i in range(2)]
                seconds = await time_to_reattach(api, in_flight, dead, killed_at)
                recoveries.append((len(in_flight), seconds))
                print(f"kill {round_}: {len(in_flight)} job(s) in flight, all reattached "
                      f"{seconds:.2f} s after the SIGKILL")
            jobs = await api.wait_all(ids, timeout_s=400)
    finally:
        for worker in workers:
            worker.kill()
        for sim in sims:
            await sim.stop()

    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * JOBS, \
        [(j.id, j.status, j.error) for j in jobs if j.status is not JobStatus.SUCCEEDED]
    assert all(n for n, _ in recoveries), "a kill landed while no job was in flight"
    starts = prompt_starts(records)
    twice = {p: n for p, n in starts.items() if n > 1}
    assert not twice, f"prompts ran more than once: {twice}"
    for job in jobs:  # nobody lost a prompt here, so one attempt each, which ran exactly once
        assert job.attempt == 1, (job.id, [a.to_dict() for a in job.history])
        assert starts[job.history[-1].prompt_id] == 1
