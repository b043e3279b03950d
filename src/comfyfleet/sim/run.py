"""`main()`: run one simulator in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal

from .config import SimConfig
from .server import Simulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyfleet-sim", description="A simulated ComfyUI server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--step-s", type=float, default=0.05, help="seconds per progress step")
    parser.add_argument("--name", default="sim-1")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--record-file", default=None, help="append a JSON line per prompt start/end")
    parser.add_argument("--history-delay-s", type=float, default=0.0)
    parser.add_argument("--legacy-events", action="store_true", help="no progress_state messages")
    parser.add_argument("--send-previews", action="store_true")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply every simulated duration (0.01 runs a 10 min prompt in 6 s)")
    return parser


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, announcing readiness on stdout."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Simulator(config, host=host, port=port) as sim:
        print(f"comfyui simulator listening on {sim.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = SimConfig(step_s=args.step_s, name=args.name, output_dir=args.output_dir,
                       record_file=args.record_file, history_delay_s=args.history_delay_s,
                       legacy_events=args.legacy_events, send_previews=args.send_previews,
                       time_scale=args.time_scale)
    asyncio.run(serve(config, args.host, args.port))
    return 0
