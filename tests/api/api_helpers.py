"""Constants and small helpers shared by the API tests."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

from comfyfleet.domain.job import Attempt

BASE_URL = "https://fleet.example.test"
WORKFLOW: dict[str, Any] = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 4, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
}
JOB_KEYS = ("id", "status", "created_at", "started_at", "completed_at", "expires_at",
            "queue_position", "progress", "outputs", "error", "urls")


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """``[(event, data)]`` for every frame; a comment line becomes ``(":", text)``."""
    frames: list[tuple[str, Any]] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line]
        if not lines:
            continue
        if lines[0].startswith(":"):
            frames.append((":", lines[0][1:].strip()))
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        frames.append((fields["event"], json.loads(fields["data"])))
    return frames


def error_code(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    return body["error"]["code"]


def attempt(number: int = 1) -> Attempt:
    return Attempt(number=number, backend="sim-1", prompt_id=str(uuid4()),
                   client_id=str(uuid4()), worker="w-1", started_at=0.0)

