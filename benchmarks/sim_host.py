"""Many simulated ComfyUI servers in one child process, for the benchmarks.

``python benchmarks/sim_host.py COUNT PORT_FILE [--step-s S] [--record-file F]`` starts COUNT
simulators named ``sim-0`` … ``sim-{COUNT-1}``, writes their URLs to PORT_FILE (JSON, written
whole), and serves until SIGTERM or SIGINT. ``start`` spawns it and waits for the URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path


async def serve(count: int, port_file: Path, step_s: float | None, record_file: str | None) -> None:
    from comfyfleet.sim import SimConfig, Simulator

    options = {} if step_s is None else {"step_s": step_s}
    sims = [await Simulator(SimConfig(name=f"sim-{i}", record_file=record_file, **options)).start()
            for i in range(count)]
    partial = port_file.with_suffix(".partial")
    partial.write_text(json.dumps([s.url for s in sims]))
    os.replace(partial, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for sim in sims:
        await sim.stop()


async def start(count: int, port_file: Path, *, step_s: float | None = None,
                record_file: Path | None = None, timeout_s: float = 60.0) -> tuple[subprocess.Popen, list[str]]:
    """Spawn the host; return it and the simulators' URLs once they all listen."""
    argv = [sys.executable, __file__, str(count), str(port_file)]
    if step_s is not None:
        argv += ["--step-s", str(step_s)]
    if record_file is not None:
        argv += ["--record-file", str(record_file)]
    child = subprocess.Popen(argv)
    async with asyncio.timeout(timeout_s):
        while not port_file.exists():
            if child.poll() is not None:
                raise RuntimeError(f"the simulator host exited with {child.returncode}")
            await asyncio.sleep(0.1)
    return child, json.loads(port_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int)
    parser.add_argument("port_file", type=Path)
    parser.add_argument("--step-s", type=float, default=None)
    parser.add_argument("--record-file", default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.count, args.port_file, args.step_s, args.record_file))


if __name__ == "__main__":
    main()
