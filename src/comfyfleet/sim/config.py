"""Simulator configuration and the per-prompt run record."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SimConfig:
    """How one simulated ComfyUI server behaves (frozen; faults live in `Faults`)."""

    step_s: float = 0.05
    name: str = "sim-1"
    output_dir: str | None = None
    record_file: str | None = None
    history_delay_s: float = 0.0
    legacy_events: bool = False
    send_previews: bool = False
    time_scale: float = 1.0  # every simulated duration is multiplied by this (0.01: minutes in seconds)


@dataclass
class PromptRecord:
    """One prompt that started executing; `outcome` is None while running or if killed."""

    prompt_id: str
    client_id: str | None
    number: int | float
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None


class RecordLog:
    """Appends one JSON line per prompt start and end, flushed at once (survives SIGKILL)."""

    def __init__(self, path: str | None, server_name: str) -> None:
        self._path = path
        self._server_name = server_name

    def write(self, event: str, record: PromptRecord) -> None:
        if self._path is None:
            return
        line = {"event": event, "server": self._server_name, "pid": os.getpid(),
                "t": time.time(), **asdict(record)}
        with open(self._path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
