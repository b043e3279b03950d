"""Fixtures for simulator tests: a real server on 127.0.0.1:0, httpx, and a recording WS client."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from sim_helpers import TIMEOUT_S, WsClient

from comfyfleet.sim import SimConfig, Simulator


@pytest.fixture
def config() -> SimConfig:
    return SimConfig(step_s=0.02)


@pytest.fixture
async def sim(config: SimConfig):
    async with Simulator(config) as server:
        yield server


@pytest.fixture
async def http(sim: Simulator):
    async with httpx.AsyncClient(base_url=sim.url, timeout=TIMEOUT_S) as client:
        yield client


@pytest.fixture
async def connect(sim: Simulator):
    """`await connect(client_id, feature_flags=False)` -> WsClient that has received its status."""
    clients: list[WsClient] = []

    async def _connect(client_id: str | None = None, *, feature_flags: bool = False) -> WsClient:
        query = f"?clientId={client_id}" if client_id else ""
        async with asyncio.timeout(TIMEOUT_S):
            ws = await websockets.connect(sim.url.replace("http", "ws") + "/ws" + query, max_size=None)
            if feature_flags:
                await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        client = WsClient(ws)
        clients.append(client)
        await client.wait_type("status")
        if feature_flags:
            await client.wait_type("feature_flags")
        return client

    yield _connect
    for client in clients:
        client._task.cancel()
        await client.ws.close()
