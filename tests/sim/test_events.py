"""Event order and recipients of the simulator against the real traces."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from sim_helpers import submit, workflow

from comfyfleet.sim import SimConfig

TRACES = Path(__file__).parents[1] / "fixtures" / "comfyui-traces"


def _trace_messages(name: str, conn: str = "ws1") -> list[dict]:
    entries = [json.loads(line) for line in (TRACES / name).read_text().splitlines()]
    return [e["msg"] for e in entries if e["src"] == "ws" and e.get("conn") == conn and e["kind"] == "text"]


def _trace_types(name: str) -> list[str]:
    return [m["type"] for m in _trace_messages(name)]


def _snapshots(messages: list[dict]) -> list[dict]:
    return [{nid: (n["value"], n["max"], n["state"]) for nid, n in m["data"]["nodes"].items()}
            for m in messages if m["type"] == "progress_state"]


async def test_success_order_matches_trace_01(sim, http, connect):
    """A successful prompt emits trace 01's event types in trace 01's order."""
    ws = await connect("c1")
    prompt_id = await submit(http, workflow(steps=5), "c1")  # trace 01 ran 5 steps too
    await ws.wait_type("executing", prompt_id, node=None)
    assert [m["type"] for m in ws.messages] == _trace_types("01_success_progress.jsonl")
    assert _snapshots(ws.messages) == _snapshots(_trace_messages("01_success_progress.jsonl"))
    # node-level detail: the SaveImage node's executed precedes its finished progress_state
    executed = await ws.wait_type("executed", prompt_id)
    assert executed["data"]["output"]["images"][0] == {"filename": "t_00001_.png", "subfolder": "", "type": "output"}
    progress = [m["data"]["value"] for m in ws.messages if m["type"] == "progress"]
    assert progress == [1, 2, 3, 4, 5]
    entry = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["prompt"][4] == ["3"] and entry["meta"]["3"]["real_node_id"] == "3"
    assert sim.records[0].outcome == "success" and sim.records[0].client_id == "c1"


async def test_without_client_id_only_broadcasts_reach_sockets(sim, http, connect):
    """Trace 07: no client_id -> progress/progress_state broadcast, nothing else but status."""
    observer = await connect("observer")
    anon = await connect()
    assert len(anon.messages[0]["data"]["sid"]) == 32
    prompt_id = await submit(http, workflow(steps=2))
    await sim.wait_idle(5)
    await observer.wait_for(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0
                            and m is not observer.messages[0])
    for ws in (observer, anon):
        assert set(ws.types(prompt_id)) == {"progress_state", "progress"}
    entry = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
    assert entry["status"]["status_str"] == "success"


async def test_fully_cached_rerun_has_no_executing(sim, http, connect):
    """Trace 04: the same workflow again is fully cached and reuses the earlier file."""
    ws = await connect("c1")
    prompt = workflow(steps=2, seed=42)
    first = await submit(http, prompt, "c1")
    await ws.wait_type("executing", first, node=None)
    second = await submit(http, prompt, "c1")
    await ws.wait_type("executing", second, node=None)
    assert ws.types(second) == ["execution_start", "execution_cached", "executed", "progress_state",
                                "execution_success", "executing"]
    cached = await ws.wait_type("execution_cached", second)
    assert cached["data"]["nodes"] == ["1", "2", "3"]
    out1 = (await ws.wait_type("executed", first))["data"]["output"]
    out2 = (await ws.wait_type("executed", second))["data"]["output"]
    assert out1 == out2
    changed = dict(prompt, **{"3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}})
    third = await submit(http, changed, "c1")
    await ws.wait_type("executing", third, node=None)
    assert (await ws.wait_type("execution_cached", third))["data"]["nodes"] == ["1", "2"]


@pytest.mark.parametrize("config", [SimConfig(step_s=0.01, legacy_events=True)])
async def test_legacy_events_have_no_progress_state(sim, http, connect, config):
    """An older server (legacy_events) sends no progress_state."""
    ws = await connect("c1")
    prompt_id = await submit(http, workflow(steps=2), "c1")
    await ws.wait_type("executing", prompt_id, node=None)
    assert "progress_state" not in ws.types() and ws.types(prompt_id).count("progress") == 2


async def test_previews_type1_and_type4(sim, http, connect):
    """Previews: binary type 1 by default, type 4 with metadata after feature_flags."""
    plain = await connect("plain")
    flagged = await connect("flagged", feature_flags=True)
    p1 = await submit(http, workflow(steps=2, send_preview=True), "plain")
    p2 = await submit(http, workflow(steps=2, send_preview=True), "flagged")
    await plain.wait_type("executing", p1, node=None)
    await flagged.wait_type("executing", p2, node=None)
    assert [struct.unpack(">II", b[:8]) for b in plain.binary] == [(1, 1), (1, 1)]
    assert len(flagged.binary) == 2
    event, size = struct.unpack(">II", flagged.binary[0][:8])
    meta = json.loads(flagged.binary[0][8:8 + size])
    assert event == 4 and meta["prompt_id"] == p2 and meta["node_id"] == "2"
    assert flagged.binary[0][8 + size:8 + size + 2] == b"\xff\xd8"
