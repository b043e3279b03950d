"""A headless Chromium driven over the DevTools protocol (websockets + httpx, no extra package):
enough to load a page, run JavaScript in it and collect what its console reported."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from websockets.asyncio.client import connect

from helpers.fleet import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.problems: list[str] = []  # uncaught exceptions, CSP refusals, console errors

    async def read(self) -> None:
        async for raw in self._socket:
            message = json.loads(raw)
            if message.get("id") in self._waiting:
                self._waiting.pop(message["id"]).set_result(message)
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.exceptionThrown":
                self.problems.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error" \
                    and params["entry"]["source"] != "network":
                self.problems.append(params["entry"]["text"])

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        self._waiting[number] = asyncio.get_running_loop().create_future()
        await self._socket.send(json.dumps({"id": number, "method": method, "params": params}))
        async with asyncio.timeout(30):
            answer = await self._waiting[number]
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    value = await self.evaluate(expression)
                except RuntimeError:  # mid-navigation
                    value = None
                if value:
                    return value
                await asyncio.sleep(0.1)


@asynccontextmanager
async def browser_page() -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    port = free_port()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:  # helpers may still write
        process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            target = await _first_page(port)
            async with connect(target, max_size=None) as socket:
                page = Page(socket)
                reader = asyncio.create_task(page.read())
                try:
                    for domain in ("Runtime", "Log", "Page"):
                        await page.send(f"{domain}.enable")
                    yield page
                finally:
                    reader.cancel()
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _first_page(port: int) -> str:
    async with httpx.AsyncClient(timeout=2.0) as http, asyncio.timeout(30):
        while True:
            try:
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
                pages = [t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(0.2)
