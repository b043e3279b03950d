"""A ComfyUI server (a ``comfyfleet sim`` process) SIGKILLed mid-job and started again empty, as a
ComfyUI pod restart: the prompts it held are lost, so exactly those jobs get a new attempt
(a transient failure, on any healthy backend) and succeed; jobs on other servers are untouched."""

from __future__ import annotations

import asyncio
import signal

from chaos_helpers import api_only, prompt_starts, start_worker
from comfyfleet.domain.job import JobStatus
from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import free_port, image_workflow
from helpers.processes import Child

STEPS, STEP_S = 20, 0.1  # about 2 s per job


def sim_process(port: int, record_file, log_path) -> Child:  # type: ignore[no-untyped-def]
    return Child(["comfyfleet", "sim", "--port", str(port), "--step-s", str(STEP_S), "--name",
                  "gpu-0", "--record-file", str(record_file)], log_path)


async def test_restarted_backend_loses_its_prompts_and_only_its_jobs_run_again(valkey_url, tmp_path):
    records = [tmp_path / f"gpu-{i}.jsonl" for i in range(3)]
    port = free_port()
    doomed = sim_process(port, records[0], tmp_path / "gpu-0a.log")
    others = [Simulator(SimConfig(step_s=STEP_S, name=f"gpu-{i}", record_file=str(records[i])))
              for i in (1, 2)]
    restarted = worker = None
    try:
        await doomed.wait_for("comfyui simulator listening on", timeout_s=30)
        for sim in others:
            await sim.start()
        backends = [f"gpu-0=http://127.0.0.1:{port}", *(f"gpu-{i}={s.url}" for i, s in
                                                         zip((1, 2), others))]
        async with api_only(valkey_url, tmp_path / "data", backends) as api:
            worker = await start_worker(api.settings, tmp_path / "worker.log")
            ids = [await api.submit(image_workflow(STEPS, seed=n)) for n in range(6)]
            async with asyncio.timeout(30):  # gpu-0 is executing one of ours, part way
                while not any(j.current and j.current.backend == "gpu-0" and j.progress.value > 0.2
                              for j in await api.jobs(ids)):
                    await asyncio.sleep(0.05)
            on_gpu0 = {j.id for j in await api.jobs(ids) if j.current and j.current.backend == "gpu-0"}
            doomed.process.send_signal(signal.SIGKILL)
            await doomed.stop()
            await asyncio.sleep(0.5)
            restarted = sim_process(port, records[0], tmp_path / "gpu-0b.log")
            await restarted.wait_for("comfyui simulator listening on", timeout_s=30)
            jobs = await api.wait_all(ids, timeout_s=90)
    finally:
        for child in (doomed, restarted, worker):
            if child is not None:
                child.kill()
        for sim in others:
            await sim.stop()

    assert on_gpu0, "no job was on the restarted backend"
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 6, [j.error for j in jobs]
    starts = prompt_starts(records)
    assert not {p for p, n in starts.items() if n > 1}, "a prompt ran twice"
    for job in jobs:
        first = job.history[0]
        if job.id in on_gpu0:
            assert job.attempt == 2, [a.to_dict() for a in job.history]
            assert (first.backend, first.outcome, first.failure_class) == ("gpu-0", "retried", "transient")
            assert job.history[1].outcome == "succeeded"
        else:
            assert job.attempt == 1 and first.outcome == "succeeded", [a.to_dict() for a in job.history]
            assert starts[first.prompt_id] == 1
