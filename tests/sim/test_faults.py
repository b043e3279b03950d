"""HTTP-level faults, refused connections, the history race and the /sim control routes."""

from __future__ import annotations

import time

import httpx
import pytest

from comfyfleet.sim import SimConfig
from comfyfleet.sim.faults import Faults
from sim_helpers import submit, workflow


async def test_http_error_status_with_retry_after(sim, http, connect):
    """http_error_status answers every route but /ws with that status and a Retry-After header."""
    sim.faults.http_error_status = 503
    sim.faults.retry_after_s = 2
    r = await http.get("/queue")
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert (await http.post("/prompt", json={"prompt": workflow()})).status_code == 503
    ws = await connect("c1")  # /ws is exempt
    assert ws.messages[0]["type"] == "status"
    sim.faults.http_error_status = None
    assert (await http.get("/queue")).status_code == 200
    assert sim.requests["GET /queue"] == 2 and sim.requests["WS connect"] == 1


async def test_http_error_rate_is_deterministic(sim, http):
    """http_error_rate fails a seeded fraction of requests: the same sequence on every run of a
    simulator of that name, another for another name (simulators fault independently)."""
    sim.faults.http_error_status, sim.faults.http_error_rate = 500, 0.5
    codes = [(await http.get("/prompt")).status_code for _ in range(40)]
    assert 8 < codes.count(500) < 32 and set(codes) == {200, 500}

    def rolls(name: str) -> list[int]:
        faults = Faults(http_error_status=500, http_error_rate=0.5, seed=name)
        return [500 if faults.roll_http_error() else 200 for _ in range(40)]
    assert rolls(sim.config.name) == codes
    assert rolls(sim.config.name + "-other") != codes


async def test_slow_response(sim, http):
    """slow_response_s delays every HTTP answer."""
    sim.faults.slow_response_s = 0.2
    start = time.monotonic()
    assert (await http.get("/prompt")).status_code == 200
    assert time.monotonic() - start >= 0.2
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/prompt", timeout=0.05)


async def test_refuse_connections_then_reopen_same_port(sim, http, connect):
    """set_refusing(True) closes the listener and existing connections; False reopens the same port."""
    ws = await connect("c1")
    await sim.set_refusing(True)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=sim.url, timeout=2) as fresh:
            await fresh.get("/prompt")
    await ws.closed.wait()
    await sim.set_refusing(False)
    async with httpx.AsyncClient(base_url=sim.url, timeout=2) as fresh:
        assert (await fresh.get("/prompt")).status_code == 200


async def test_a_connection_that_slipped_past_the_cut_is_cut_at_its_next_request(sim):
    """A connection accepted just before the listener closed is not yet among the server's
    connections when they are cut; its requests are cut while refusing (a keep-alive health check
    on such a connection once kept a refusing backend healthy for good)."""
    async with httpx.AsyncClient(base_url=sim.url, timeout=2) as keep_alive:
        assert (await keep_alive.get("/prompt")).status_code == 200
        sim.faults.refuse_connections = True  # the flag is set; this connection was never cut
        with pytest.raises(httpx.TransportError):
            await keep_alive.get("/prompt")


async def test_a_refusing_simulator_keeps_its_port_from_other_servers():
    """While refusing, the port stays bound (not listening): connects are refused, and no other
    server asking for a free port can be given it and answer in the simulator's place."""
    import socket

    from comfyfleet.sim import Simulator

    async with Simulator(SimConfig(name="held"), port=0) as sim:  # nothing connected: no TIME_WAIT
        await sim.set_refusing(True)
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", sim.port))
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", sim.port))
        await sim.set_refusing(False)
        async with httpx.AsyncClient(base_url=sim.url, timeout=2) as fresh:
            assert (await fresh.get("/prompt")).status_code == 200


@pytest.mark.parametrize("config", [SimConfig(step_s=0.01, history_delay_s=0.3)])
async def test_history_race(sim, http, connect, config):
    """history_delay_s: history is {} at execution_success but present at executing{node:null}."""
    ws = await connect("c1")
    prompt_id = await submit(http, workflow(steps=2), "c1")
    await ws.wait_type("execution_success", prompt_id)
    assert (await http.get(f"/history/{prompt_id}")).json() == {}
    assert (await http.get("/queue")).json()["queue_running"][0][1] == prompt_id
    await ws.wait_type("executing", prompt_id, node=None)
    assert prompt_id in (await http.get(f"/history/{prompt_id}")).json()


async def test_control_routes(sim, http, connect):
    """/sim/faults sets faults (unknown names 400), /sim/records lists runs, /sim/restart restarts."""
    r = await http.post("/sim/faults", json={"history_delay_s": 0.2, "fail_class_type": "X"})
    assert r.status_code == 200 and r.json()["history_delay_s"] == 0.2 and sim.faults.fail_class_type == "X"
    assert (await http.post("/sim/faults", json={"nope": 1})).status_code == 400
    await http.post("/sim/faults", json={"history_delay_s": 0.0, "fail_class_type": None})
    prompt_id = await submit(http, workflow(steps=1))
    await sim.wait_idle(5)
    records = (await http.get("/sim/records")).json()
    assert records[0]["prompt_id"] == prompt_id and records[0]["outcome"] == "success"
    ws = await connect("c1")
    assert (await http.post("/sim/restart")).json() == {"restarting": True}
    await ws.closed.wait()
    async with httpx.AsyncClient(base_url=sim.url, timeout=2) as fresh:
        assert (await fresh.get(f"/history/{prompt_id}")).json() == {}
