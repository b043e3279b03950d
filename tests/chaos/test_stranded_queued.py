"""Queued jobs a worker had taken from the queue (waiting there for a slot) when it was
SIGKILLed are taken over by a live worker's sweep, before bullmq would hand them back.

bullmq's lock on a taken entry is set to 60 s here, so bullmq alone could not hand the dead
worker's entries back within the test's time: every job finishing in time shows the takeover.
Real worker processes, a real simulator, real Valkey."""

from __future__ import annotations

import asyncio
import signal

from chaos_helpers import api_only, prompt_starts, start_worker
from comfyfleet.domain.job import JobStatus
from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import image_workflow

JOBS, STEPS, STEP_S = 3, 5, 0.3  # about 1.5 s each, one at a time on the one backend
LONG_LOCK = {"COMFYFLEET_QUEUE_LOCK_S": "60"}


async def test_queued_jobs_taken_by_a_killed_worker_are_taken_over(valkey_url, tmp_path):
    record = tmp_path / "sim-0.jsonl"
    async with Simulator(SimConfig(step_s=STEP_S, name="sim-0", record_file=str(record))) as sim:
        async with api_only(valkey_url, tmp_path / "data", [f"sim-0={sim.url}"]) as api:
            doomed = await start_worker(api.settings, tmp_path / "doomed.log", env=LONG_LOCK)
            survivor = None
            try:
                ids = [await api.submit(image_workflow(STEPS, seed=n)) for n in range(JOBS)]
                async with asyncio.timeout(30):  # one running, the others taken and waiting
                    while True:
                        jobs = await api.jobs(ids)
                        waiting = [j for j in jobs if j.status is JobStatus.QUEUED]
                        states = [await api.services.queue.state_of(j) for j in waiting]
                        if sum(j.status is JobStatus.RUNNING for j in jobs) == 1 and \
                                len(waiting) == JOBS - 1 and set(states) == {"active"}:
                            break
                        await asyncio.sleep(0.05)
                survivor = await start_worker(api.settings, tmp_path / "survivor.log", env=LONG_LOCK)
                doomed.process.send_signal(signal.SIGKILL)
                await doomed.stop(timeout_s=10)
                # bullmq would hand the taken entries back only after 60 s
                jobs = await api.wait_all(ids, timeout_s=45)
            finally:
                doomed.kill()
                if survivor is not None:
                    survivor.kill()
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * JOBS, [(j.id, j.status, j.error) for j in jobs]
    starts = prompt_starts([record])
    assert all(n == 1 for n in starts.values()), f"a prompt ran twice: {starts}"
    assert all(j.attempt == 1 for j in jobs), "a takeover spends no attempt"
