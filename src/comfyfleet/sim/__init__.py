"""A ComfyUI-compatible HTTP + WebSocket server for tests, scriptable with faults.

    async with Simulator(SimConfig(step_s=0.02)) as sim:
        sim.url, sim.records, sim.requests, sim.faults
        await sim.restart(); await sim.wait_idle(5); await sim.set_refusing(True)

Layers: `validation` and `nodes` are pure; `queue` holds ComfyUI's in-memory state;
`hub` is the sid -> socket table; `executor` runs prompts and emits events; `routes` is
the aiohttp surface; `server` owns the port and lifecycle; `run` is the CLI entry.
Helpers: `record_log` (the record file), `filenames` (save names), `files` (`/view` answers),
`images` (PNG and preview bytes), `deadline` (the send timeout).
"""

from .config import PromptRecord, SimConfig
from .faults import FAULT_NAMES, Faults
from .server import Simulator

__all__ = ["FAULT_NAMES", "Faults", "PromptRecord", "SimConfig", "Simulator"]
