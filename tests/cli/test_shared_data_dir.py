"""Commands an operator runs beside a live ``comfyfleet serve`` on its data dir (``cleanup``,
``recover --dry-run``) share its embedded Valkey and leave it running when they end. Real
processes, real embedded Valkey, a real simulator."""

from __future__ import annotations

import asyncio
import subprocess
import sys


from comfyfleet.sim import SimConfig, Simulator
from helpers.fleet import free_port, run_one_job
from helpers.processes import serve_child



async def test_ops_commands_on_a_serving_data_dir_leave_its_valkey_running(tmp_path):
    data = tmp_path / "data"
    async with Simulator(SimConfig(step_s=0.01, name="sim-0")) as sim:
        port = free_port()
        serve = serve_child(data, sim.url, tmp_path / "serve.log", port=port)
        try:
            await serve.wait_for("comfyfleet serving on", timeout_s=60)
            for command in (["cleanup", "--dry-run"], ["recover", "--dry-run"]):
                done = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "comfyfleet", *command, "--data-dir", str(data)],
                    capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
                assert done.returncode == 0, done.stderr

            job = await run_one_job(f"http://127.0.0.1:{port}", timeout_s=30)
            assert job["status"] == "succeeded"
            assert "connecting to" not in serve.output(), "serve lost its Redis"
        finally:
            assert await serve.stop() == 0
