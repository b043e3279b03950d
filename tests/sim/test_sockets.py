"""WebSocket behaviour: the duplicate-clientId trap, reconnect replay, drops, silence, restart."""

from __future__ import annotations

import asyncio

from sim_helpers import submit, workflow

from comfyfleet.sim import hub as hub_module


async def test_duplicate_client_id_leaves_new_socket_deaf(sim, http, connect):
    """Trace 06b: a 2nd socket with the same clientId replaces the 1st; closing the 1st deafens the 2nd."""
    ws1 = await connect("dup")
    prompt_id = await submit(http, workflow(steps=400), "dup")
    await ws1.wait_type("progress", prompt_id, value=1)
    ws2 = await connect("dup")
    assert ws2.messages[1] == {"type": "executing", "data": {"node": "2"}}
    await ws2.wait_type("progress", prompt_id)
    seen_by_ws1 = len(ws1.messages)
    await ws2.wait_type("progress", prompt_id, value=max(m["data"].get("value", 0) for m in ws2.messages
                                                         if m["type"] == "progress") + 1)
    assert len(ws1.messages) == seen_by_ws1  # the replaced socket stays open but receives nothing
    await ws1.close()
    async with asyncio.timeout(2):
        while "dup" in sim.hub.table:  # the old socket's cleanup pops the sid
            await asyncio.sleep(0.01)
    count = len(ws2.messages)
    await http.post("/interrupt")
    await sim.wait_idle(5)
    await submit(http, workflow(steps=1))  # even broadcasts no longer reach ws2
    await sim.wait_idle(5)
    assert len(ws2.messages) == count and not ws2.closed.is_set()


async def test_reconnect_gets_replay_executing_without_prompt_id(sim, http, connect):
    """Trace 06: after closing and reconnecting with the same clientId, the replay has no prompt_id."""
    ws1 = await connect("re")
    prompt_id = await submit(http, workflow(steps=8), "re")
    await ws1.wait_type("progress", prompt_id, value=2)
    await ws1.close()
    ws2 = await connect("re")
    assert ws2.messages[0]["data"]["sid"] == "re" and ws2.messages[0]["data"]["status"]["exec_info"]["queue_remaining"] == 1
    assert ws2.messages[1] == {"type": "executing", "data": {"node": "2"}}
    await ws2.wait_type("execution_success", prompt_id)
    await ws2.wait_type("executing", prompt_id, node=None)


async def test_drop_socket_at_step(sim, http, connect):
    """drop_socket_at_step cuts the client's socket (code 1006) once; the prompt still finishes."""
    sim.faults.drop_socket_at_step = 2
    ws = await connect("c1")
    other = await connect("other")
    prompt_id = await submit(http, workflow(steps=4), "c1")
    async with asyncio.timeout(5):
        await ws.closed.wait()
    assert ws.close_code == 1006 and ws.types(prompt_id).count("progress") == 2
    await sim.wait_idle(5)
    assert sim.records[-1].outcome == "success" and not other.closed.is_set()


async def test_silent_fault_stops_all_events(sim, http, connect):
    """silent: the prompt executes and lands in history but no socket hears anything."""
    ws = await connect("c1")
    sim.faults.silent = True
    count = len(ws.messages)
    prompt_id = await submit(http, workflow(steps=2), "c1")
    await sim.wait_idle(5)
    assert len(ws.messages) == count
    assert (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["status"]["status_str"] == "success"


async def test_restart_forgets_everything(sim, http, connect):
    """restart(): sockets get 1006; queue, history, counter gone; same port; the record ends with None."""
    ws = await connect("c1")
    done = await submit(http, workflow(steps=1), "c1")
    await ws.wait_type("executing", done, node=None)
    running = await submit(http, workflow(steps=500), "c1")
    await submit(http, workflow(steps=1), "c1")
    await ws.wait_type("progress", running, value=1)
    url = sim.url
    await sim.restart()
    async with asyncio.timeout(5):
        await ws.closed.wait()
    assert ws.close_code == 1006 and sim.url == url
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    assert (await http.get(f"/history/{done}")).json() == {} and (await http.get(f"/history/{running}")).json() == {}
    assert (await http.post("/prompt", json={"prompt": workflow(steps=1)})).json()["number"] == 0
    assert [r.outcome for r in sim.records[:2]] == ["success", None] and sim.records[1].ended_at is not None
    await sim.wait_idle(5)
    assert sim.records[-1].outcome == "success"



async def test_send_to_a_socket_that_never_reads_gives_up(sim, http, monkeypatch, caplog):
    """A client that stops reading fills every buffer; each send then waits SEND_TIMEOUT_S at
    most, and prompts still run."""
    monkeypatch.setattr(hub_module, "SEND_TIMEOUT_S", 0.2)
    caplog.set_level("DEBUG", logger=hub_module.__name__)
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    writer.write(b"GET /ws?clientId=stuck HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    try:
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        big = "x" * 100_000
        async with asyncio.timeout(60):
            while not any("TimeoutError" in r.getMessage() for r in caplog.records):
                await sim.hub.send("filler", big, "stuck")  # never read: the buffers fill up
        await submit(http, workflow(steps=1))
        await sim.wait_idle(10)
    finally:
        writer.close()
