"""A backend whose URL host does not encode (``gpu9..lan``, a label over 63 characters) or whose
header value holds a newline (a token read from a file) cannot be sent a request: aiohttp and
websockets raise UnicodeError / ValueError for it, before anything is sent. Every ComfyClient
call, a download, an upload and a socket's open must raise ``BackendRefused`` saying so, never
the foreign ValueError (which nothing above ``comfy/`` catches: it ended the health checks of
the whole fleet)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.socket import SocketSettings, open_socket
from comfyfleet.comfy.transport import open_session
from comfyfleet.errors import BackendRefused
from comfyfleet.sim import SimConfig, Simulator

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 3}}}

BAD_HOSTS = ["http://gpu9..lan:8188", f"http://{'a' * 64}.lan:8188"]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(name="c", step_s=0.0)) as server:
        yield server


async def every_call(client: ComfyClient) -> None:
    """Each kind of request a ComfyClient makes, each expected to raise BackendRefused."""
    calls = {
        "system_stats": lambda: client.system_stats(),
        "queue": lambda: client.queue(),
        "history": lambda: client.history("p"),
        "submit": lambda: client.submit(GRAPH, prompt_id=str(uuid.uuid4()), client_id="x"),
        "interrupt": lambda: client.interrupt("p"),
        "upload": lambda: client.upload_image(b"\x89PNG fake", "in.png"),
        "input_exists": lambda: client.input_exists("in.png"),
        "node_classes": lambda: client.node_classes(timeout_s=5),
    }
    for what, call in calls.items():
        with pytest.raises(BackendRefused) as caught:
            await call()
        assert caught.value.backend == client.name, what
    with pytest.raises(BackendRefused):
        async with client.download("any.png"):
            pass


@pytest.mark.parametrize("value", ["Bearer tok\n", "Bearer\r\ntok", "a\x00b"])
async def test_a_header_value_with_a_line_break_is_a_refused_backend_not_a_value_error(sim, value):
    async with open_session() as http:
        client = ComfyClient(sim.url, http=http, name="nl", headers={"Authorization": value})
        with pytest.raises(BackendRefused, match="nl: the request cannot be sent.*headers"):
            await client.system_stats()
        await every_call(client)
    assert sim.records == [] and sim.requests.get("GET /system_stats", 0) == 0  # nothing reached it


@pytest.mark.parametrize("url", BAD_HOSTS)
async def test_a_host_that_does_not_encode_is_a_refused_backend_not_a_unicode_error(url):
    async with open_session() as http:
        client = ComfyClient(url, http=http, name="typo")
        with pytest.raises(BackendRefused, match="typo: its URL's host is not a valid host name"):
            await client.system_stats()
        await every_call(client)
        with pytest.raises(BackendRefused, match="typo: cannot open socket"):
            await open_socket(client.ws_url("cid"), client_id="cid", backend="typo",
                              settings=SocketSettings(open_timeout_s=2.0))
