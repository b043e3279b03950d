"""The protocol floor: what the ComfyUI protocol alone costs per prompt, with no comfyfleet.

A bare client drives the same 50 instant simulators as ``dispatch.py`` (one ``sim_host.py``
child process), one prompt at a time per simulator, doing only what any orchestrator that
follows a prompt live must do for it, with the same libraries comfyfleet uses:

  open a WebSocket under a fresh clientId (websockets), wait for its first ``status`` frame,
  ask for previews with node ids (``feature_flags``), ``POST /prompt``, read frames until the
  prompt's ``execution_success``, close the socket, ``GET /history/{id}``, ``GET /view`` for each
  output (aiohttp, one pooled session).

No Redis, no queue, no job records, no API, no health checks. The prompts per second and the
CPU each process spent per prompt are the ceiling an orchestrator that follows each prompt on
its own socket reaches on this machine with these simulators: ``dispatch.py`` figures are read
against them. Three rounds; the median one is reported (the machine is shared).

Writes benchmarks/results/protocol_floor.json.
Usage: python benchmarks/protocol_floor.py [--sims N] [--prompts N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp
import sim_host
from harness import run_in_temp_dir
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "protocol_floor.json"
TIMEOUT = aiohttp.ClientTimeout(total=30)


def workflow(seed: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "floor"}},
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_prompt(http: aiohttp.ClientSession, base_url: str, seed: int) -> None:
    client_id, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    ws_url = base_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    async with asyncio.timeout(30):
        async with connect(ws_url, open_timeout=5, close_timeout=2, max_size=None) as socket:
            first = json.loads(await socket.recv())
            assert first["type"] == "status", first
            await socket.send(json.dumps({"type": "feature_flags",  # previews with node ids
                                          "data": {"supports_preview_metadata": True}}))
            body = {"prompt": workflow(seed), "prompt_id": prompt_id, "client_id": client_id}
            async with http.post(f"{base_url}/prompt", json=body) as answer:
                assert answer.status == 200, await answer.text()
                await answer.json()
            while True:
                frame = await socket.recv()
                if isinstance(frame, bytes):
                    continue
                message = json.loads(frame)
                if message["type"] == "execution_success" and message["data"]["prompt_id"] == prompt_id:
                    break
                if message["type"] in ("execution_error", "execution_interrupted"):
                    raise RuntimeError(f"prompt failed: {message}")
        async with http.get(f"{base_url}/history/{prompt_id}") as answer:
            history = (await answer.json())[prompt_id]
        for node_output in history["outputs"].values():
            for image in node_output.get("images", []):
                query = {"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                         "type": image.get("type", "output")}
                async with http.get(f"{base_url}/view", params=query) as answer:
                    assert answer.status == 200
                    await answer.read()


async def run_round(http: aiohttp.ClientSession, urls: list[str], prompts: int, host_pid: int,
                    offset: int) -> dict:
    remaining = iter(range(offset, offset + prompts))

    async def lane(url: str) -> None:  # one prompt at a time per simulator: capacity 1
        for seed in remaining:
            await one_prompt(http, url, seed)

    cpu_client, cpu_sims = cpu_seconds(os.getpid()), cpu_seconds(host_pid)
    started = time.perf_counter()
    await asyncio.gather(*(lane(url) for url in urls))
    elapsed = time.perf_counter() - started
    return {"prompts": prompts, "prompts_per_s": round(prompts / elapsed, 1),
            "cpu_ms_per_prompt": {
                "client": round(1000 * (cpu_seconds(os.getpid()) - cpu_client) / prompts, 2),
                "simulators": round(1000 * (cpu_seconds(host_pid) - cpu_sims) / prompts, 2)}}


async def measure(args: argparse.Namespace, work: Path) -> dict:
    host, urls = await sim_host.start(args.sims, work / "ports.json", step_s=0.0)
    try:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=4)
        async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as http:
            await run_round(http, urls, args.sims * 4, host.pid, offset=0)  # warm-up
            rounds = [await run_round(http, urls, args.prompts, host.pid, offset=100_000 * (r + 1))
                      for r in range(args.rounds)]
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(30)
    by_rate = sorted(rounds, key=lambda r: r["prompts_per_s"])
    middle = by_rate[len(by_rate) // 2]
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "setup": {"simulators": args.sims, "prompts_at_once_per_simulator": 1, "simulated_work_s": 0.0},
        "median_round": middle,
        "prompts_per_s_each_round": [r["prompts_per_s"] for r in rounds],
        # CPU-bound: the machine's cores divided by the CPU one prompt costs both sides
        "total_cpu_ms_per_prompt": round(sum(middle["cpu_ms_per_prompt"].values()), 2),
        "cpu_bound_ceiling_prompts_per_s": round(
            1000 * (os.cpu_count() or 1) / sum(middle["cpu_ms_per_prompt"].values()), 1),
        "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=2000, help="prompts per round")
    parser.add_argument("--rounds", type=int, default=3)
    run_in_temp_dir(measure, parser.parse_args(), RESULT)


if __name__ == "__main__":
    main()
