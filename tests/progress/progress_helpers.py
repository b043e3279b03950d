"""Helpers for the live-progress tests: a listener that records what a tracker reports, the
test workflow, and a simulator with a ComfyClient on it (``Rig``)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.socket import open_socket
from comfyfleet.comfy.tracker import PromptTracker, TrackerSettings
from comfyfleet.domain.job import Progress
from comfyfleet.domain.progress import ProgressModel
from comfyfleet.sim import Simulator


@dataclass
class RecordingListener:
    """What a tracker reported, in order; ``progressed`` wakes waiters on each snapshot."""

    started: int = 0
    snapshots: list[Progress] = field(default_factory=list)
    previews: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    progressed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_started(self) -> None:
        self.started += 1

    async def on_progress(self, progress: Progress) -> None:
        self.snapshots.append(progress)
        self.progressed.set()

    async def on_preview(self, content_type: str, data: bytes, node_id: str | None) -> None:
        self.previews.append((content_type, data, node_id))

    async def wait_for_step(self, step: int, timeout_s: float = 20.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not any((s.step or 0) >= step for s in self.snapshots):
                self.progressed.clear()
                await self.progressed.wait()

    @property
    def values(self) -> list[float]:
        return [s.value for s in self.snapshots]


def workflow(steps: int = 20, *, seed: int | None = None, **script: Any) -> dict[str, Any]:
    """EmptyImage -> KSampler(steps, plus simulator script inputs) -> SaveImage."""
    seed = uuid.uuid4().int % 10**9 if seed is None else seed
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "steps": steps, "seed": seed, **script}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "p"}},
    }


@dataclass
class Rig:
    sim: Simulator
    client: ComfyClient

    def tracker(self, prompt_id: str, client_id: str, graph: dict, listener: RecordingListener,
                opener: Any = open_socket, **settings: Any) -> PromptTracker:
        return PromptTracker(self.client, prompt_id=prompt_id, client_id=client_id,
                             model=ProgressModel(graph), listener=listener, opener=opener,
                             settings=TrackerSettings(**{"watchdog_s": 5.0, "poll_min_s": 0.1,
                                                         "poll_max_s": 0.5, "reconnect_min_s": 0.05,
                                                         "reconnect_max_s": 0.2, **settings}))

    async def submit(self, graph: dict, client_id: str) -> str:
        prompt_id = str(uuid.uuid4())
        await self.client.submit(graph, prompt_id=prompt_id, client_id=client_id)
        return prompt_id


def polls(sim: Simulator) -> int:
    """``/queue`` and ``/history`` requests the simulator answered."""
    return sum(n for key, n in sim.requests.items()
               if key == "GET /queue" or key.startswith("GET /history"))
