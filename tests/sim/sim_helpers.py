"""Helpers for simulator tests: workflows, submit, and a recording WebSocket client."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import httpx
import websockets


TIMEOUT_S = 5.0


def workflow(steps: int = 3, prefix: str = "t", seed: int | None = None, **extra: object) -> dict:
    """EmptyImage -> SimSlowPassthrough(steps) -> SaveImage, like the captured traces."""
    seed = uuid.uuid4().int % 10**9 if seed is None else seed
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SimSlowPassthrough", "inputs": {"image": ["1", 0], "steps": steps, "seed": seed, **extra}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


class WsClient:
    """Collects every frame of one socket; `wait_for` waits for a matching message with a timeout."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict] = []
        self.binary: list[bytes] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                async with self._changed:
                    if isinstance(frame, bytes):
                        self.binary.append(frame)
                        self.messages.append({"type": "<binary>", "data": frame[:4]})
                    else:
                        self.messages.append(json.loads(frame))
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float = TIMEOUT_S) -> dict:
        async with asyncio.timeout(timeout_s):
            async with self._changed:
                while True:
                    for message in self.messages:
                        if predicate(message):
                            return message
                    await self._changed.wait()

    async def wait_type(self, kind: str, prompt_id: str | None = None, **data: object) -> dict:
        def match(m: dict) -> bool:
            d = m.get("data")
            return (m["type"] == kind and (prompt_id is None or (isinstance(d, dict) and d.get("prompt_id") == prompt_id))
                    and all(isinstance(d, dict) and d.get(k) == v for k, v in data.items()))
        return await self.wait_for(match)

    def types(self, prompt_id: str | None = None) -> list[str]:
        return [m["type"] for m in self.messages
                if prompt_id is None or (isinstance(m.get("data"), dict) and m["data"].get("prompt_id") == prompt_id)]

    async def close(self) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            await self.ws.close()
            await self.closed.wait()


async def submit(http: httpx.AsyncClient, prompt: dict, client_id: str | None = None, **body: object) -> str:
    payload = {"prompt": prompt, **body}
    if client_id is not None:
        payload["client_id"] = client_id
    response = await http.post("/prompt", json=payload)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]
