"""``serve`` and its worker processes live and die together. Real processes, real embedded
Valkey, a real simulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx

from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import TERMINAL, free_port, image_workflow, run_one_job
from helpers.processes import serve_child


def workers_of(pid: int) -> list[int]:
    listing = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True,
                             text=True, timeout=10).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "comfyfleet worker" in line]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def valkey_pid(data: Path) -> int:
    return json.loads((data / "valkey" / "comfyfleet-valkey.json").read_text())["pid"]


async def test_workers_stop_when_serve_is_sigkilled(tmp_path):
    """A worker left running took the jobs of whatever deployment later answered at its Redis
    address and wrote their outputs into this data dir."""
    data = tmp_path / "data"
    async with Simulator(SimConfig(step_s=0.01, name="sim-0")) as sim:
        serve = serve_child(data, sim.url, tmp_path / "serve.log", port=free_port(), workers=2)
        workers: list[int] = []
        try:
            await serve.wait_for("comfyfleet serving on", timeout_s=60)
            async with asyncio.timeout(30):
                while len(workers := workers_of(serve.process.pid)) < 2:
                    await asyncio.sleep(0.1)
            serve.process.send_signal(signal.SIGKILL)
            async with asyncio.timeout(30):
                while any(alive(pid) for pid in workers):
                    await asyncio.sleep(0.1)
        finally:
            serve.kill()
            for pid in workers:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            if (data / "valkey" / "comfyfleet-valkey.json").exists() and alive(valkey_pid(data)):
                os.kill(valkey_pid(data), signal.SIGKILL)


async def test_a_variable_that_a_flag_of_serve_overrides_does_not_reach_its_workers(tmp_path):
    """Workers get the settings serve resolved: they died on COMFYFLEET_PORT=abc although
    serve's --port overrode it, and jobs were never run."""
    data = tmp_path / "data"
    async with Simulator(SimConfig(step_s=0.01, name="sim-0")) as sim:
        port = free_port()
        serve = serve_child(data, sim.url, tmp_path / "serve.log", port=port, env={"COMFYFLEET_PORT": "abc"})
        try:
            await serve.wait_for("comfyfleet serving on", timeout_s=60)
            assert (await run_one_job(f"http://127.0.0.1:{port}"))["status"] == "succeeded"
            assert "invalid port" not in serve.output()
        finally:
            assert await serve.stop() == 0


async def test_serve_starts_its_embedded_valkey_again_when_it_dies(tmp_path):
    """SIGKILLed under a running serve, the embedded Valkey was never started again (nor
    reaped): serve answered 503s for ever. Now it is back on its port, with every write."""
    data = tmp_path / "data"
    async with Simulator(SimConfig(step_s=0.01, name="sim-0")) as sim:
        port = free_port()
        serve = serve_child(data, sim.url, tmp_path / "serve.log", port=port)
        try:
            await serve.wait_for("comfyfleet worker", timeout_s=60)  # up and running, not starting
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                before = (await http.post("/api/v2/jobs", json={"workflow": image_workflow(2)})).json()["id"]
                first = valkey_pid(data)
                os.kill(first, signal.SIGKILL)
                async with asyncio.timeout(30):
                    while not (data / "valkey" / "comfyfleet-valkey.json").exists() or valkey_pid(data) == first \
                            or not alive(valkey_pid(data)):
                        await asyncio.sleep(0.1)
                assert (await run_one_job(f"http://127.0.0.1:{port}"))["status"] == "succeeded"
                async with asyncio.timeout(30):
                    while (await http.get(f"/api/v2/jobs/{before}")).json()["status"] not in TERMINAL:
                        await asyncio.sleep(0.1)
            assert serve.process.poll() is None
        finally:
            assert await serve.stop() == 0


async def test_serve_exits_when_its_workers_keep_dying(tmp_path):
    """Past the restart intensity (here 2 restarts in 90 s) serve stops with an error, so what
    runs it (systemd, a container) starts it again, instead of answering with no worker for ever."""
    data = tmp_path / "data"
    intensity = {"COMFYFLEET_WORKER_MAX_RESTARTS": "2", "COMFYFLEET_WORKER_RESTART_WINDOW_S": "90"}
    async with Simulator(SimConfig(step_s=0.01, name="sim-0")) as sim:
        serve = serve_child(data, sim.url, tmp_path / "serve.log", port=free_port(), env=intensity)
        try:
            await serve.wait_for("comfyfleet serving on", timeout_s=60)
            async with asyncio.timeout(150):
                while serve.process.poll() is None:
                    for pid in workers_of(serve.process.pid):
                        os.kill(pid, signal.SIGKILL)
                    await asyncio.sleep(0.2)
            assert serve.process.returncode == 1, serve.output()
            assert "a worker process kept dying" in serve.output()
            assert "died 3 times within 90 s" in serve.output()
        finally:
            serve.kill()
            if (data / "valkey" / "comfyfleet-valkey.json").exists() and alive(valkey_pid(data)):
                os.kill(valkey_pid(data), signal.SIGKILL)
