"""ComfyClient against real servers: answers, files, and every transport failure arriving as a
``BackendError`` (never an aiohttp exception), with Retry-After kept."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from comfyfleet.comfy.client import ClientTimeouts, ComfyClient
from comfyfleet.comfy.transport import open_session
from comfyfleet.errors import (BackendError, BackendProtocolError, BackendTimeout,
                               BackendUnavailable, PromptRejected)
from comfyfleet.runtime.dispatcher import Dispatcher, DispatchSettings
from comfyfleet.sim import SimConfig, Simulator
from comfyfleet.store.fleet import BackendRecord, FleetStore

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 3}},
    "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "steps": 1, "seed": 1}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "c"}},
}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(name="c", step_s=0.0)) as server:
        yield server


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[ComfyClient]:
    async with open_session() as http:
        yield ComfyClient(sim.url, http=http, name="c", timeouts=ClientTimeouts(read_s=2.0))


async def finished(client: ComfyClient, prompt_id: str):
    async with asyncio.timeout(10):
        while (entry := await client.history(prompt_id)) is None:
            await asyncio.sleep(0.01)
    return entry


async def test_a_prompt_runs_and_its_output_downloads_whole(client, sim):
    prompt_id = str(uuid.uuid4())
    submitted = await client.submit(GRAPH, prompt_id=prompt_id, client_id="x")
    assert submitted.prompt_id == prompt_id and submitted.node_errors == {}
    entry = await finished(client, prompt_id)
    assert entry.outcome == "success"
    image = entry.outputs["3"]["images"][0]
    async with client.download(image["filename"], subfolder=image["subfolder"]) as (kind, chunks):
        body = b"".join([chunk async for chunk in chunks])
    assert kind == "image/png"
    assert body == (Path(sim.output_dir) / image["subfolder"] / image["filename"]).read_bytes()
    assert (await client.queue()).size == 0


async def test_an_upload_lands_in_the_input_folder(client, sim):
    answer = await client.upload_image(b"\x89PNG fake", "in.png")
    assert answer == {"name": "in.png", "subfolder": "", "type": "input"}
    assert (Path(sim.dirs["input"]) / "in.png").read_bytes() == b"\x89PNG fake"


async def test_a_refused_prompt_carries_the_servers_reasons(client):
    with pytest.raises(PromptRejected) as caught:
        await client.submit({"1": {"inputs": {}}}, prompt_id=str(uuid.uuid4()), client_id="x")
    assert caught.value.error_type == "invalid_prompt" and caught.value.status_code == 400


@pytest.mark.parametrize("status", [503, 429])
async def test_unavailable_answers_keep_their_retry_after(client, sim, status):
    sim.faults.update({"http_error_status": status, "retry_after_s": 2,
                       "http_error_paths": ["POST /prompt", "GET /view"]})
    with pytest.raises(BackendUnavailable) as caught:
        await client.submit(GRAPH, prompt_id=str(uuid.uuid4()), client_id="x")
    assert caught.value.status_code == status and caught.value.retry_after_s == 2.0
    with pytest.raises(BackendUnavailable) as caught:
        async with client.download("any.png"):
            pass
    assert caught.value.status_code == status and caught.value.retry_after_s == 2.0


async def test_other_error_statuses_are_plain_backend_errors(client, sim):
    sim.faults.update({"http_error_status": 500})
    with pytest.raises(BackendError) as caught:
        await client.system_stats()
    assert type(caught.value) is BackendError and caught.value.status_code == 500
    sim.faults.clear()
    with pytest.raises(BackendError) as caught:
        async with client.download("missing.png"):
            pass
    assert type(caught.value) is BackendError and caught.value.status_code == 404


async def test_a_closed_port_is_unavailable(client, sim):
    await client.system_stats()  # a pooled connection exists, and is cut with the listener
    await sim.set_refusing(True)
    with pytest.raises(BackendUnavailable):
        await client.system_stats()
    with pytest.raises(BackendUnavailable):
        await client.submit(GRAPH, prompt_id=str(uuid.uuid4()), client_id="x")
    with pytest.raises(BackendUnavailable):
        async with client.download("any.png"):
            pass


async def test_slow_answers_time_out(sim):
    sim.faults.update({"slow_response_s": 1.0})
    timeouts = ClientTimeouts(read_s=0.1, submit_s=0.1, download_s=0.1)
    async with open_session() as http:
        client = ComfyClient(sim.url, http=http, name="c", timeouts=timeouts)
        with pytest.raises(BackendTimeout):
            await client.history("p")
        with pytest.raises(BackendTimeout):
            await client.submit(GRAPH, prompt_id=str(uuid.uuid4()), client_id="x")
        with pytest.raises(BackendTimeout):
            async with client.download("any.png"):
                pass


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[tuple[str, web.AppRunner]]:
    """Run ``app`` on a free port: yields its base URL and runner."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", runner
    finally:
        await runner.cleanup()


@pytest.fixture
async def broken_server() -> AsyncIterator[str]:
    """Answers ``/system_stats`` with a body that is not JSON, and ``/view`` with a body cut short."""
    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>", content_type="text/html")

    async def cut_short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"x" * 1000)
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/system_stats", not_json)
    app.router.add_get("/view", cut_short)
    async with serve(app) as (url, _):
        yield url


async def test_garbled_answers_are_protocol_errors_and_a_cut_body_is_unavailable(broken_server):
    async with open_session() as http:
        client = ComfyClient(broken_server, http=http, name="b")
        with pytest.raises(BackendProtocolError, match="proxy error"):
            await client.system_stats()
        received = []
        with pytest.raises(BackendUnavailable):
            async with client.download("cut.png") as (_, chunks):
                async for chunk in chunks:
                    received.append(chunk)
        assert sum(map(len, received)) < 100000


async def test_a_dispatcher_closes_the_connection_pools_it_opened(redis, keys):
    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"system": {}, "devices": []})

    app = web.Application()
    app.router.add_get("/system_stats", stats)
    async with serve(app) as (url, runner):
        fleet = FleetStore(redis, keys)
        await fleet.seed([BackendRecord(name="c", url=url), BackendRecord(name="d", url=url)])
        dispatcher = Dispatcher(fleet, settings=DispatchSettings(refresh_s=60.0))
        await dispatcher.start()
        for name in ("c", "d"):
            await dispatcher.by_name(name).client.system_stats()
        assert len(runner.server.connections) == 2  # one kept alive in each backend's pool
        await dispatcher.close()
        async with asyncio.timeout(10):
            while runner.server.connections:
                await asyncio.sleep(0.01)


async def test_a_queue_or_history_of_an_unexpected_shape_is_a_protocol_error():
    """A proxy or a fork answering JSON of another shape: a BackendProtocolError, never a
    KeyError or AttributeError from deep inside the parsing."""
    async def queue(request: web.Request) -> web.Response:
        return web.json_response({"queue_running": [{"prompt_id": "p"}], "queue_pending": []})

    async def history(request: web.Request) -> web.Response:
        return web.json_response({"p": {"status": ["not", "a", "mapping"]}})

    app = web.Application()
    app.router.add_get("/queue", queue)
    app.router.add_get("/history/{prompt_id}", history)
    async with serve(app) as (url, _), open_session() as http:
        client = ComfyClient(url, http=http, name="odd")
        with pytest.raises(BackendProtocolError, match="malformed /queue"):
            await client.queue()
        with pytest.raises(BackendProtocolError, match="malformed /history"):
            await client.history("p")
