"""Read the captured ComfyUI traces and split their WebSocket frames into prompt runs.

A run is one execution of one prompt: its graph (from the ``POST /prompt`` that created it) and
its parsed messages in arrival order. ``drive`` feeds a message to a ``ProgressModel`` the way the
tracker does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.comfy import messages as m
from comfyfleet.comfy.tracker import apply_message
from comfyfleet.domain.job import Progress
from comfyfleet.domain.progress import ProgressModel

TRACE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"
TRACE_FILES = sorted(p.name for p in TRACE_DIR.iterdir() if p.suffix in (".jsonl", ".json"))


def trace_lines(name: str) -> list[dict[str, Any]]:
    text = (TRACE_DIR / name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ws_text(name: str, conn: str | None = None) -> list[tuple[str, m.Message]]:
    """(connection, parsed message) for every text frame, in file order."""
    return [(line["conn"], m.parse(json.dumps(line["msg"])))
            for line in trace_lines(name)
            if line.get("src") == "ws" and line.get("kind") == "text"
            and (conn is None or line["conn"] == conn)]


def ws_binary(name: str) -> list[dict[str, Any]]:
    """The summaries of binary frames (the bytes were not stored)."""
    return [line for line in trace_lines(name) if line.get("src") == "ws" and line.get("kind") == "binary"]


@dataclass
class Submission:
    prompt_id: str
    graph: dict[str, Any]
    outputs: list[str] | None  # None: all sinks; else the sinks minus outputs that failed validation


@dataclass
class Run:
    submission: Submission
    messages: list[m.Message] = field(default_factory=list)

    @property
    def prompt_id(self) -> str:
        return self.submission.prompt_id


def submissions(name: str) -> list[Submission]:
    found = []
    for line in trace_lines(name):
        if line.get("src") != "http" or line.get("method") != "POST" or \
                line.get("path") not in ("/prompt", "/api/prompt"):
            continue
        resp, req = line.get("resp"), line.get("req")
        if line.get("status") != 200 or not isinstance(resp, dict) or not isinstance(req, dict):
            continue
        graph = req["prompt"]
        failed = {o for err in (resp.get("node_errors") or {}).values()
                  for o in err.get("dependent_outputs", [])}
        outputs = None
        if failed:
            consumed = {v[0] for node in graph.values() for v in node["inputs"].values()
                        if isinstance(v, list)}
            outputs = [n for n in graph if n not in consumed and n not in failed]
        found.append(Submission(resp["prompt_id"], graph, outputs))
    return found


def runs(name: str, conn: str | None = None) -> list[Run]:
    """Runs in order of their first event. A prompt-less ``executing`` (the reconnect replay)
    belongs to the run that received the last event."""
    pending = submissions(name)
    result: list[Run] = []
    open_runs: dict[str, Run] = {}
    last: Run | None = None
    for _, msg in ws_text(name, conn):
        prompt_id = m.prompt_id_of(msg)
        if prompt_id is None:
            if isinstance(msg, m.Executing) and last is not None:
                last.messages.append(msg)
            continue
        run = open_runs.get(prompt_id)
        if run is None or (isinstance(msg, m.ExecutionStart) and run.messages):
            submission = next(s for s in pending if s.prompt_id == prompt_id)
            pending.remove(submission)
            run = open_runs[prompt_id] = Run(submission)
            result.append(run)
        run.messages.append(msg)
        last = run
    return result


def drive(model: ProgressModel, msg: m.Message) -> None:
    """Feed one message to the model exactly as ``comfy.tracker`` does; the tracker confirms
    success from ``/history`` before ``succeeded()``, the replay takes ``execution_success``."""
    if isinstance(msg, m.ExecutionSuccess):
        model.succeeded()
    else:
        apply_message(model, msg)


def replay(run: Run, **model_options: Any) -> tuple[ProgressModel, list[Progress]]:
    """Feed a run to a fresh model; every snapshot, starting with the one before any event."""
    model = ProgressModel(run.submission.graph, outputs_to_execute=run.submission.outputs,
                          **model_options)
    snapshots = [model.snapshot()]
    for msg in run.messages:
        drive(model, msg)
        snapshots.append(model.snapshot())
    return model, snapshots


def distinct(snapshots: list[Progress]) -> list[tuple[float, int]]:
    """(value, nodes_done) pairs with consecutive repeats dropped."""
    pairs: list[tuple[float, int]] = []
    for snap in snapshots:
        pair = (snap.value, snap.nodes_done)
        if not pairs or pairs[-1] != pair:
            pairs.append(pair)
    return pairs
