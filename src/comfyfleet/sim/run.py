"""`main()`: run one simulator in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import textwrap

from .catalog import DEFAULT_NODE_CLASSES
from .config import SimConfig
from .faults import FAULT_NAMES
from .server import Simulator


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    port = int(text)  # a ValueError is argparse's "invalid port_number value"
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port from 0 to 65535")
    return port


def seconds(text: str) -> float:
    """An argparse type: a finite number >= 0 (a duration or a scale)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return value


FAULTS_HELP = """faults, switched on and off while it runs:
  curl -X POST http://HOST:PORT/sim/faults -d '{"http_error_status": 503, "retry_after_s": 5}'
""" + textwrap.fill("keys: " + ", ".join(FAULT_NAMES) + ",", width=90, initial_indent="  ",
                  subsequent_indent="    ") + """
  refuse_for_s (refuse connections this long; refuse_connections: true refuses until a restart)
  GET /sim/faults shows them; POST /sim/restart forgets the queue and history like a restart"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyfleet sim", description="A simulated ComfyUI server.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FAULTS_HELP)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=8188)
    parser.add_argument("--step-s", type=seconds, default=0.05, help="seconds per progress step")
    parser.add_argument("--name", default="sim-1")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--record-file", default=None, help="append a JSON line per prompt start/end")
    parser.add_argument("--history-delay-s", type=seconds, default=0.0)
    parser.add_argument("--legacy-events", action="store_true", help="no progress_state messages")
    parser.add_argument("--send-previews", action="store_true")
    parser.add_argument("--model-load-s", type=seconds, default=0.0,
                        help="seconds a loader node takes when its model is not already loaded")
    parser.add_argument("--time-scale", type=seconds, default=1.0,
                        help="multiply every simulated duration (0.01 runs a 10 min prompt in 6 s)")
    parser.add_argument("--extra-node-classes", type=class_names, default=(), metavar="A,B",
                        help="node classes this server has besides the built-in ones (a custom "
                             "node only some servers of a fleet have)")
    return parser


def class_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected class names separated by commas, got {text!r}")
    return names


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, announcing readiness on stdout."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Simulator(config, host=host, port=port) as sim:
        print(f"comfyui simulator listening on {sim.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None, *, said_by: str = "comfyfleet-sim") -> int:
    """``said_by`` starts the line that says why it could not start. Exit codes: 0 stopped by a signal, 1 could not start (a plain line on stderr), 2 bad
    options (argparse's usage line), 130 interrupted."""
    args = build_parser().parse_args(argv)
    config = SimConfig(step_s=args.step_s, name=args.name, output_dir=args.output_dir,
                       record_file=args.record_file, history_delay_s=args.history_delay_s,
                       legacy_events=args.legacy_events, send_previews=args.send_previews,
                       time_scale=args.time_scale, model_load_s=args.model_load_s,
                       node_classes=(tuple(sorted(DEFAULT_NODE_CLASSES | set(args.extra_node_classes)))
                                     if args.extra_node_classes else None))
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:  # cannot bind the host/port, cannot make --output-dir or --record-file
        about = f" ({exc.filename})" if exc.filename else ""
        print(f"{said_by}: cannot start the simulator on {args.host}:{args.port}: "
              f"{exc.strerror or exc}{about}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
