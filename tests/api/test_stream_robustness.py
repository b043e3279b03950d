"""A job's event stream and the dashboards' live feed against what goes wrong around them: a
client that stops reading, a store that goes away for a moment or for good, the server's
shutdown. Real Valkey throughout; the store is taken away by cutting a TCP relay in front of it
(``helpers.tcp_cut``), so only the API's own connections lose it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from comfyfleet.api import live, live_feed
from comfyfleet.api.app import ApiServices, ApiSettings, create_app
from comfyfleet.api.context import ApiContext
from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Job, JobError, JobStatus
from comfyfleet.launch import start_api
from comfyfleet.store import EventBus, RedisJobStore, connect

from api_helpers import BASE_URL, WORKFLOW, attempt
from helpers.fleet import free_port
from helpers.tcp_cut import TcpCut

PREVIEW_BYTES = 256 * 1024


# -- helpers -------------------------------------------------------------------------------------
async def new_job(store: RedisJobStore, *, running: bool) -> Job:
    now = time.time()
    job = Job(id=str(uuid4()), status=JobStatus.QUEUED, created_at=now, deadline_at=now + 600)
    await store.create(job, WORKFLOW)
    if running:
        job = await store.apply(job.id, t.Dispatch(attempt()), now)
    return job


async def fail(store: RedisJobStore, job_id: str) -> None:
    await store.apply(job_id, t.Fail(JobError(code="x", message="y")), time.time())


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` on a real uvicorn at 127.0.0.1:<free port>; its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def stalled_reader(base_url: str, job_id: str, *, small_window: bool = False) -> socket.socket:
    """A client that asks for the stream, reads up to its first frame, then reads nothing
    (``small_window``: its socket takes little before the server's send waits)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if small_window:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", urlsplit(base_url).port))
    await loop.sock_sendall(sock, f"GET /api/v2/jobs/{job_id}/events HTTP/1.1\r\n"
                                  f"Host: 127.0.0.1\r\n\r\n".encode())
    head = b""
    async with asyncio.timeout(10):
        while b"event: status" not in head:
            head += await loop.sock_recv(sock, 4096)
    return sock


async def frames(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    event = "message"
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line[5:])


async def until_status(stream: AsyncIterator[tuple[str, Any]], status: str) -> None:
    async with asyncio.timeout(30):
        async for event, data in stream:
            if event == "status" and data["status"] == status:
                return
    raise AssertionError(f"the stream ended before status {status}")


async def until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    async with asyncio.timeout(30):
        while not any(text in record.getMessage() for record in caplog.records):
            await asyncio.sleep(0.05)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# -- a client that stops reading -----------------------------------------------------------------
async def test_a_client_that_stops_reading_gets_the_newest_preview_not_each_one(api, live_server, store,
                                                                                event_bus):
    """What waits for a stalled client is the newest record and preview, not every event: once
    it reads again the terminal status comes after a few previews, not after all of them."""
    job = await new_job(store, running=True)
    sock = await stalled_reader(live_server, job.id)
    try:
        count = 80
        async with event_bus.subscription(job.id) as mine:
            for _ in range(count):
                await event_bus.set_preview(job.id, "image/jpeg", os.urandom(PREVIEW_BYTES), node_id="3")
            await fail(store, job.id)
            async with asyncio.timeout(30):  # the bus has handed every event to the stream too
                async for event in mine:
                    if event.get("kind") == "status" and event["job"]["status"] == "failed":
                        break
        loop, received, terminal = asyncio.get_running_loop(), b"", b'data: {"status":"failed"'
        async with asyncio.timeout(60):
            while terminal not in received:
                chunk = await loop.sock_recv(sock, 1 << 20)
                assert chunk, "the server closed the stream before the terminal status"
                received += chunk
        before = received[:received.index(terminal)].count(b"event: preview")
        assert before < count // 2, f"{before} of {count} previews were held for the stalled client"
    finally:
        sock.close()


async def test_a_client_that_takes_nothing_is_let_go_without_an_error(api, live_server, store,
                                                                      event_bus, monkeypatch):
    monkeypatch.setattr(live, "SEND_DEADLINE_S", 0.5, raising=False)
    errors = Records()
    for name in ("uvicorn.error", "comfyfleet"):
        logging.getLogger(name).addHandler(errors)
    ctx: ApiContext = api.app.state.api
    job = await new_job(store, running=True)
    sock = await stalled_reader(live_server, job.id, small_window=True)
    try:
        assert ctx.open_streams
        async with asyncio.timeout(60):  # previews fill the socket's buffers, then a send waits
            while ctx.open_streams:
                await event_bus.set_preview(job.id, "image/jpeg", os.urandom(PREVIEW_BYTES), node_id="3")
                await asyncio.sleep(0.05)
        assert job.id not in event_bus._boxes, "the stream's subscription ended with it"
        assert [r.getMessage() for r in errors.records if r.levelno >= logging.ERROR] == []
    finally:
        sock.close()
        for name in ("uvicorn.error", "comfyfleet"):
            logging.getLogger(name).removeHandler(errors)


async def stalled_feed_reader(base_url: str) -> socket.socket:
    """A dashboard that opens the live feed, reads its handshake answer, then reads nothing; its
    socket takes little before the server's send waits."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", urlsplit(base_url).port))
    await loop.sock_sendall(sock, b"GET /api/v2/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    async with asyncio.timeout(10):
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_dashboard_that_takes_nothing_is_let_go(api, live_server, store, monkeypatch):
    """A live feed whose client stopped reading ends once a send has waited ``SEND_DEADLINE_S``:
    its stream count and subscription go with it, and nothing is logged as an error."""
    monkeypatch.setattr(live_feed, "SEND_DEADLINE_S", 0.5)
    errors = Records()
    for name in ("uvicorn.error", "comfyfleet"):
        logging.getLogger(name).addHandler(errors)
    ctx: ApiContext = api.app.state.api
    sock = await stalled_feed_reader(live_server)
    try:
        async with asyncio.timeout(10):
            while not ctx.open_streams:
                await asyncio.sleep(0.02)
        bulky = {"note": "x" * 60_000}
        async with asyncio.timeout(60):  # new jobs fill the socket's buffers, then a send waits
            while ctx.open_streams:
                now = time.time()
                job = Job(id=str(uuid4()), status=JobStatus.QUEUED, created_at=now,
                          deadline_at=now + 600, metadata=bulky)
                await store.create(job, WORKFLOW)
                await asyncio.sleep(0.02)
        assert [r.getMessage() for r in errors.records if r.levelno >= logging.ERROR] == []
    finally:
        sock.close()
        for name in ("uvicorn.error", "comfyfleet"):
            logging.getLogger(name).removeHandler(errors)


# -- the store goes away ---------------------------------------------------------------------------
@dataclass
class CutApi:
    base_url: str
    cut: TcpCut
    context: ApiContext


@pytest.fixture
async def cut_api(valkey_url, redis, keys, blobs) -> AsyncIterator[CutApi]:  # type: ignore[no-untyped-def]
    """The API on its own connections to Valkey, through a relay the test can cut; the test's
    ``store`` keeps its own."""
    target = urlsplit(valkey_url)
    async with TcpCut(target.hostname, target.port) as cut:
        client = connect(valkey_url.replace(f":{target.port}", f":{cut.port}"), connect_timeout_s=1.0)
        bus = EventBus(client, keys, max_reconnect_delay_s=0.5)

        async def enqueue(_: Job) -> None:
            return None

        app = create_app(ApiServices(store=RedisJobStore(client, keys), events=bus, blobs=blobs,
                                     enqueue=enqueue), ApiSettings(public_base_url=BASE_URL))
        try:
            async with serving(app) as base_url:
                yield CutApi(base_url, cut, app.state.api)
        finally:
            cut.restore()
            await bus.close()
            await client.aclose()


async def test_a_short_store_outage_does_not_cut_an_open_stream(cut_api, store, caplog):
    caplog.set_level(logging.INFO, logger="comfyfleet.api.live")
    job = await new_job(store, running=False)  # queued: its position is re-read every second
    async with httpx.AsyncClient(base_url=cut_api.base_url, timeout=30) as http, \
            http.stream("GET", f"/api/v2/jobs/{job.id}/events") as response:
        stream = frames(response)
        await until_status(stream, "queued")
        cut_api.cut.cut()
        await until_logged(caplog, "event stream skipped")  # a read failed under the stream
        cut_api.cut.restore()
        await store.apply(job.id, t.Dispatch(attempt()), time.time())
        await until_status(stream, "running")  # from the bus, or the re-read after its resync
        await fail(store, job.id)
        await until_status(stream, "failed")
        assert [frame async for frame in stream] == []  # and then the stream ends, complete


async def test_a_store_gone_for_good_ends_the_stream_cleanly(cut_api, store, monkeypatch):
    monkeypatch.setattr(live, "STORE_RETRY_S", 0.2, raising=False)
    monkeypatch.setattr(live, "STORE_GIVE_UP_S", 1.0, raising=False)
    job = await new_job(store, running=False)
    async with httpx.AsyncClient(base_url=cut_api.base_url, timeout=30) as http, \
            http.stream("GET", f"/api/v2/jobs/{job.id}/events") as response:
        stream = frames(response)
        await until_status(stream, "queued")
        cut_api.cut.cut()
        async with asyncio.timeout(60):
            rest = [frame async for frame in stream]  # a complete body: no cut
        assert all(event != "status" or data["status"] == "queued" for event, data in rest)
    assert not cut_api.context.open_streams


async def test_a_short_store_outage_does_not_close_a_live_feed(cut_api, store, caplog):
    caplog.set_level(logging.INFO, logger="comfyfleet.api.live_feed")
    job = await new_job(store, running=False)
    async with ws_connect(cut_api.base_url.replace("http://", "ws://") + "/api/v2/live") as socket_:
        async with asyncio.timeout(15):
            snapshot = json.loads(await socket_.recv())
        assert snapshot["type"] == "snapshot" and snapshot["role"] == "admin"
        cut_api.cut.cut()
        await until_logged(caplog, "live feed skipped")  # the admin's fleet read failed
        cut_api.cut.restore()
        await store.apply(job.id, t.Dispatch(attempt()), time.time())
        async with asyncio.timeout(30):
            while True:
                message = json.loads(await socket_.recv())
                assert message["type"] != "error", message
                jobs = [message["job"]] if message["type"] == "job" else message.get("jobs", [])
                if any(j["id"] == job.id and j["status"] == "running" for j in jobs):
                    break


# -- the server stops ------------------------------------------------------------------------------
async def test_at_shutdown_a_stream_ends_and_a_live_feed_closes_with_1001(api, store):
    job = await new_job(store, running=True)
    port = free_port()
    server = await start_api(api.app, "127.0.0.1", port)
    base_url = f"http://127.0.0.1:{port}"
    stopping = None
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http, \
                http.stream("GET", f"/api/v2/jobs/{job.id}/events") as response, \
                ws_connect(base_url.replace("http://", "ws://") + "/api/v2/live") as feed:
            stream = frames(response)
            await until_status(stream, "running")
            async with asyncio.timeout(15):
                assert json.loads(await feed.recv())["type"] == "snapshot"
            stopping = asyncio.create_task(server.stop())
            async with asyncio.timeout(30):
                rest = [frame async for frame in stream]  # a complete body: no cut
            assert [event for event, _ in rest] == []  # nothing new happened to the job
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(30):
                    while True:
                        await feed.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == live_feed.CLOSE_GOING_AWAY
    finally:
        await (stopping if stopping is not None else server.stop())
