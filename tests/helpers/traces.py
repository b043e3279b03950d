"""Read the captured ComfyUI traces in tests/fixtures/comfyui-traces."""

from __future__ import annotations

import json
from pathlib import Path

TRACE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"


def trace_lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (TRACE_DIR / name).read_text().splitlines() if line.strip()]


def history_answers(name: str) -> dict[str, dict]:
    """prompt_id -> the last non-empty /history/{id} entry seen in the trace."""
    found: dict[str, dict] = {}
    for line in trace_lines(name):
        if line.get("src") == "http" and str(line.get("path", "")).startswith("/history/"):
            resp = line.get("resp")
            if isinstance(resp, dict) and resp:
                for prompt_id, entry in resp.items():
                    found[prompt_id] = entry
    return found
