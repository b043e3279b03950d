"""HTTP routes: /api prefix, queue, history, /view, upload, system info."""

from __future__ import annotations

import json
import struct
import zlib

from sim_helpers import submit, workflow


async def test_view_serves_outputs_and_rejects_bad_paths(sim, http, connect):
    """/view returns the PNG written by SaveImage; 400 for '..' or a leading '/', 404 when missing."""
    ws = await connect("c1")
    p1 = await submit(http, workflow(steps=1, prefix="v"), "c1")
    p2 = await submit(http, workflow(steps=1, prefix="v"), "c1")
    await ws.wait_type("executing", p2, node=None)
    names = [(await ws.wait_type("executed", p))["data"]["output"]["images"][0]["filename"] for p in (p1, p2)]
    assert names == ["v_00001_.png", "v_00002_.png"]
    bodies = []
    for name in names:
        r = await http.get("/view", params={"filename": name, "subfolder": "", "type": "output"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        bodies.append(r.content)
    assert bodies[0] != bodies[1] and bodies[0][:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", bodies[0][8:16])
    assert kind == b"IHDR" and zlib.crc32(bodies[0][12:16 + length]) == struct.unpack(">I", bodies[0][16 + length:20 + length])[0]
    assert (await http.get("/api/view", params={"filename": "../x"})).status_code == 400
    assert (await http.get("/view", params={"filename": "/etc/passwd"})).status_code == 400
    assert (await http.get("/view", params={"filename": "a.png", "type": "bogus"})).status_code == 400
    assert (await http.get("/view", params={"filename": "nope.png"})).status_code == 404
    assert (await http.get("/view", params={"filename": "a.png", "subfolder": "../.."})).status_code == 403


async def test_upload_dedupes_identical_bytes(sim, http):
    """Same bytes -> same name; different bytes -> ' (1)' suffix; the file is then viewable as input."""
    async def upload(data: bytes) -> dict:
        r = await http.post("/upload/image", files={"image": ("in.png", data, "image/png")}, data={"subfolder": "s"})
        assert r.status_code == 200
        return r.json()
    assert await upload(b"one") == {"name": "in.png", "subfolder": "s", "type": "input"}
    assert (await upload(b"one"))["name"] == "in.png"
    assert (await upload(b"two"))["name"] == "in (1).png"
    assert (await upload(b"two"))["name"] == "in (1).png"
    r = await http.get("/view", params={"filename": "in (1).png", "subfolder": "s", "type": "input"})
    assert r.content == b"two"


async def test_queue_history_and_api_prefix(sim, http, connect):
    """/queue items are 5-element lists, front/number priorities, delete/clear, history paging and delete."""
    ws = await connect("c1")
    running = await submit(http, workflow(steps=500), "c1", extra_data={"orch_job": "j1"})
    await ws.wait_type("progress", running, value=1)
    late = await submit(http, workflow(steps=1), "c1")
    first = (await http.post("/api/prompt", json={"prompt": workflow(steps=1), "front": True})).json()
    assert first["number"] == -2
    explicit = (await http.post("/prompt", json={"prompt": workflow(steps=1), "number": 7})).json()
    assert explicit["number"] == 7.0
    queue = (await http.get("/api/queue")).json()
    assert queue["queue_running"][0][:2] == [0, running]
    assert queue["queue_running"][0][3] == {"orch_job": "j1", "client_id": "c1"}
    assert sorted(item[0] for item in queue["queue_pending"]) == [-2, 1, 7.0]
    assert all(len(item) == 5 for item in queue["queue_pending"])
    assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 4}}
    assert (await http.post("/queue", json={"delete": [late, "unknown"]})).status_code == 200
    assert (await http.post("/queue", json={"clear": True})).status_code == 200
    assert (await http.get("/queue")).json()["queue_pending"] == []
    await http.post("/interrupt")
    await ws.wait_type("executing", running, node=None)
    assert (await http.get(f"/history/{late}")).json() == {}
    done = [await submit(http, workflow(steps=1), "c1") for _ in range(3)]
    await sim.wait_idle(5)
    assert list((await http.get("/history", params={"max_items": 2})).json()) == done[1:]
    assert list((await http.get("/history", params={"max_items": 1, "offset": 1})).json()) == [done[0]]
    await http.post("/history", json={"delete": [done[0]]})
    assert (await http.get(f"/history/{done[0]}")).json() == {}
    await http.post("/history", json={"clear": True})
    assert (await http.get("/history")).json() == {}
    assert sim.requests["POST /prompt"] == 7 and sim.requests["GET /queue"] == 2


async def test_duplicate_prompt_id_runs_twice(sim, http, connect):
    """Re-posting a prompt_id queues a second run; the later run overwrites history."""
    ws = await connect("c1")
    await submit(http, workflow(steps=1), "c1", prompt_id="dup")
    await submit(http, workflow(steps=1), "c1", prompt_id="dup")
    await sim.wait_idle(5)
    assert [r.prompt_id for r in sim.records] == ["dup", "dup"]
    assert (await http.get("/history/dup")).json()["dup"]["prompt"][0] == 1
    assert ws.types("dup").count("execution_success") == 2


async def test_system_stats_features_object_info(sim, http):
    """Static info routes have ComfyUI's shapes."""
    stats = (await http.get("/system_stats")).json()
    assert stats["system"]["comfyui_version"] and stats["devices"][0]["vram_total"] > stats["devices"][0]["vram_free"] > 0
    assert (await http.get("/api/features")).json() == {"supports_preview_metadata": True, "max_upload_size": 104857600}
    assert "SaveImage" in (await http.get("/object_info")).json()
    assert (await http.get("/object_info/Nope")).json() == {}


async def test_history_bodies_are_formatted_like_json_response(sim, http):
    """`/history` answers byte for byte what aiohttp's json_response(json.dumps) would send."""
    first = await submit(http, workflow(steps=1), "c1", extra_data={"note": "ünïcode"})
    second = await submit(http, workflow(steps=1))
    await sim.wait_idle(5)
    for path in (f"/history/{first}", "/history", "/history?max_items=1", "/history/unknown"):
        r = await http.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
        assert r.text == json.dumps(r.json())
    assert list((await http.get("/history")).json()) == [first, second]
    entry = (await http.get(f"/history/{first}")).json()[first]
    assert entry["prompt"][3] == {"note": "ünïcode", "client_id": "c1"}
    assert entry["status"]["status_str"] == "success" and list(entry) == ["prompt", "outputs", "status", "meta"]
